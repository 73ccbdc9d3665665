//! The consumer runtime's Prometheus metrics, labelled by consumer.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct ConsumerMetrics {
    pub(crate) consumed: IntCounterVec,
    pub(crate) duplicates: IntCounterVec,
    pub(crate) failed: IntCounterVec,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) dead_letter_failures: IntCounterVec,
    pub(crate) unknown_types: IntCounterVec,
    pub(crate) processing: HistogramVec,
    pub(crate) end_to_end: HistogramVec,
    pub(crate) lag: IntGaugeVec,
    pub(crate) assigned: IntGaugeVec,
    pub(crate) pruned: IntCounterVec,
    pub(crate) erased: IntCounterVec,
}

impl ConsumerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let consumed = IntCounterVec::new(
            Opts::new(
                "todo_events_consumed_total",
                "Events whose effect was committed, by consumer and type",
            ),
            &["consumer", "type"],
        )?;
        let duplicates = IntCounterVec::new(
            Opts::new(
                "todo_events_duplicate_total",
                "Redelivered events recognised as already processed",
            ),
            &["consumer"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "todo_events_failed_total",
                "Failed attempts to process an event, by consumer and type (unparsable: type=\"unknown\")",
            ),
            &["consumer", "type"],
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "todo_events_dead_lettered_total",
                "Events sent to a dead-letter topic, by consumer and origin topic",
            ),
            &["consumer", "topic"],
        )?;
        let dead_letter_failures = IntCounterVec::new(
            Opts::new(
                "todo_dead_letter_failures_total",
                "Attempts to write a dead letter that the broker refused (the consumer waits meanwhile)",
            ),
            &["consumer"],
        )?;
        let unknown_types = IntCounterVec::new(
            Opts::new(
                "todo_events_unknown_type_total",
                "Events skipped because this version does not know their type",
            ),
            &["consumer", "type"],
        )?;
        let processing = HistogramVec::new(
            HistogramOpts::new(
                "todo_event_processing_duration_seconds",
                "Time to process one batch of events, database commit included",
            )
            .buckets(prometheus::exponential_buckets(0.0002, 2.0, 16)?),
            &["consumer"],
        )?;
        let end_to_end = HistogramVec::new(
            HistogramOpts::new(
                "todo_event_end_to_end_seconds",
                "From the event's time (its commit in the producer) to its effect's commit here",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ]),
            &["consumer"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "todo_consumer_lag",
                "Messages between this consumer's position and the partition's end",
            ),
            &["consumer", "topic", "partition"],
        )?;
        let assigned = IntGaugeVec::new(
            Opts::new(
                "todo_consumer_assigned_partitions",
                "Partitions currently assigned to this consumer",
            ),
            &["consumer"],
        )?;
        let pruned = IntCounterVec::new(
            Opts::new(
                "todo_processed_events_pruned_total",
                "Processed-event records forgotten after CONSUMER_DEDUP_RETENTION_HOURS",
            ),
            &["consumer"],
        )?;
        let erased = IntCounterVec::new(
            Opts::new(
                "todo_events_skipped_erased_user_total",
                "Events skipped because their user has been erased (late or repeated deliveries)",
            ),
            &["consumer"],
        )?;
        registry.register(Box::new(erased.clone()))?;
        registry.register(Box::new(pruned.clone()))?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(dead_letter_failures.clone()))?;
        registry.register(Box::new(unknown_types.clone()))?;
        registry.register(Box::new(processing.clone()))?;
        registry.register(Box::new(end_to_end.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(assigned.clone()))?;
        Ok(Self {
            consumed,
            duplicates,
            failed,
            dead_lettered,
            dead_letter_failures,
            unknown_types,
            processing,
            end_to_end,
            lag,
            assigned,
            pruned,
            erased,
        })
    }
}
