//! Registering a Prometheus metric in one expression.
//!
//! prometheus's `register_*_with_registry!` macros do the same but unwrap
//! the metric's construction; this keeps a bad name or label set an error
//! the service reports at startup.

use prometheus::core::Collector;
use prometheus::Registry;

/// Buckets for how old an event is when something happens to it (its
/// publishing, its effect), from a millisecond up to five minutes (a
/// backlog after an outage); shared so that the relay's and every
/// consumer's histograms compare bucket by bucket.
pub const EVENT_AGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Registers `metric` in `registry` and hands it back.
pub fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
