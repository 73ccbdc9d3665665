//! The consumer runtime's Prometheus metrics, labelled by consumer.

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use todo_platform::metrics::{counter_vec, gauge_vec, histogram_vec, EVENT_AGE_BUCKETS};

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
        let consumed = counter_vec(
            registry,
            "todo_events_consumed_total",
            "Events whose effect was committed, by consumer and type",
            &["consumer", "type"],
        )?;
        let duplicates = counter_vec(
            registry,
            "todo_events_duplicate_total",
            "Redelivered events recognised as already processed",
            &["consumer"],
        )?;
        let failed = counter_vec(
            registry,
            "todo_events_failed_total",
            "Failed attempts to process an event, by consumer and type (unparsable: type=\"unknown\")",
            &["consumer", "type"],
        )?;
        let dead_lettered = counter_vec(
            registry,
            "todo_events_dead_lettered_total",
            "Events sent to a dead-letter topic, by consumer and origin topic",
            &["consumer", "topic"],
        )?;
        let dead_letter_failures = counter_vec(
            registry,
            "todo_dead_letter_failures_total",
            "Attempts to write a dead letter that the broker refused (the consumer waits meanwhile)",
            &["consumer"],
        )?;
        let unknown_types = counter_vec(
            registry,
            "todo_events_unknown_type_total",
            "Events skipped because this version does not know their type",
            &["consumer", "type"],
        )?;
        let processing = histogram_vec(
            registry,
            "todo_event_processing_duration_seconds",
            "Time to process one batch of events, database commit included",
            prometheus::exponential_buckets(0.0002, 2.0, 16)?,
            &["consumer"],
        )?;
        let end_to_end = histogram_vec(
            registry,
            "todo_event_end_to_end_seconds",
            "From the event's time (its commit in the producer) to its effect's commit here",
            EVENT_AGE_BUCKETS.to_vec(),
            &["consumer"],
        )?;
        let lag = gauge_vec(
            registry,
            "todo_consumer_lag",
            "Messages between this consumer's position and the partition's end",
            &["consumer", "topic", "partition"],
        )?;
        let assigned = gauge_vec(
            registry,
            "todo_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer",
            &["consumer"],
        )?;
        let pruned = counter_vec(
            registry,
            "todo_processed_events_pruned_total",
            "Processed-event records forgotten after CONSUMER_DEDUP_RETENTION_HOURS",
            &["consumer"],
        )?;
        let erased = counter_vec(
            registry,
            "todo_events_skipped_erased_user_total",
            "Events skipped because their user has been erased (late or repeated deliveries)",
            &["consumer"],
        )?;
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
