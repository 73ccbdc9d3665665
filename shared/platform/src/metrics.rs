//! Registering a Prometheus metric in one expression.
//!
//! prometheus's `register_*_with_registry!` macros do the same but unwrap
//! the metric's construction; this keeps a bad name or label set an error
//! the service reports at startup.

use prometheus::core::Collector;
use prometheus::Registry;

/// Registers `metric` in `registry` and hands it back.
pub fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
