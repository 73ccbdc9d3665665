//! The relay's Prometheus metrics.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use todo_platform::metrics::{counter, counter_vec, gauge, histogram, EVENT_AGE_BUCKETS};

#[derive(Clone)]
pub struct RelayMetrics {
    pub(super) published: IntCounterVec,
    pub(super) failed: IntCounterVec,
    pub(super) set_aside: IntCounterVec,
    pub(super) latency: Histogram,
    pub(super) batch_duration: Histogram,
    pub(super) backlog: IntGauge,
    pub(super) in_flight: IntGauge,
    pub(super) leader: IntGauge,
    pub(super) stalls: IntCounter,
}

impl RelayMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let published = counter_vec(
            registry,
            "todo_events_published_total",
            "Events acknowledged by the broker",
            &["type"],
        )?;
        let failed = counter_vec(
            registry,
            "todo_events_publish_failed_total",
            "Deliveries the broker refused (sent again, or set aside when refused for good)",
            &["type"],
        )?;
        let set_aside = counter_vec(
            registry,
            "todo_outbox_set_aside_total",
            "Outbox rows the broker refused for good, moved to outbox_dead_letters",
            &["type"],
        )?;
        let latency = histogram(
            registry,
            "todo_outbox_publish_latency_seconds",
            "From the outbox row's commit to the broker's acknowledgement",
            EVENT_AGE_BUCKETS.to_vec(),
        )?;
        let batch_duration = histogram(
            registry,
            "todo_outbox_batch_duration_seconds",
            "Time to read a round of outbox rows and hand them to the producer",
            prometheus::exponential_buckets(0.0005, 2.0, 16)?,
        )?;
        let backlog = gauge(
            registry,
            "todo_outbox_backlog",
            "Outbox rows not yet acknowledged",
        )?;
        let in_flight = gauge(
            registry,
            "todo_outbox_in_flight",
            "Outbox rows sent to the broker and not yet acknowledged",
        )?;
        let leader = gauge(
            registry,
            "todo_outbox_relay_leader",
            "1 while this process's relay leads",
        )?;
        let stalls = counter(
            registry,
            "todo_outbox_stalls_total",
            "Times rows in flight went unacknowledged for the stall timeout and the producer was replaced",
        )?;
        // Every type's series exists from the start at 0: a first failure
        // is then an increase that rate() and the alert rules can see, and
        // the dashboard shows 0 instead of no data.
        for t in todo_contract::envelope::EventType::ALL {
            for m in [&published, &failed, &set_aside] {
                m.with_label_values(&[t.as_str()]);
            }
        }
        Ok(Self {
            published,
            failed,
            set_aside,
            latency,
            batch_duration,
            backlog,
            stalls,
            in_flight,
            leader,
        })
    }
}
