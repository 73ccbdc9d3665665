//! JSON logs via tracing. Request and event handlers run inside a span that
//! carries `correlation_id`, so every line they log names it.

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Installs the global subscriber: JSON lines on stdout, filtered by
/// `RUST_LOG` (default `info`). Safe to call more than once (tests).
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(true);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .try_init();
    tracing::debug!(service, "logging initialised");
}
