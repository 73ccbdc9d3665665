//! Logs and traces.
//!
//! Logs are JSON lines on stdout. Request and event handlers run inside a
//! span that carries `correlation_id` (and `trace_id` when the work is
//! traced), so every line they log names them.
//!
//! Traces are OpenTelemetry spans exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; the exporter reads the other standard `OTEL_*` variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, ...). Without an endpoint no
//! OpenTelemetry layer is installed at all: spans cost what plain `tracing`
//! spans cost, and no trace context is written with events.
//!
//! A trace crosses Kafka as the W3C `traceparent`: stored with the outbox
//! row, sent as a message header and as the CloudEvents distributed-tracing
//! attribute, continued by every consumer ([`TraceParent`]).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt as logfmt, layer::SubscriberExt, util::SubscriberInitExt};
use tracing_subscriber::{EnvFilter, Layer};

/// The W3C Trace Context header, Kafka header and CloudEvents attribute.
pub const TRACEPARENT: &str = "traceparent";

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Flushes the spans still buffered when dropped: keep it alive in `main`.
#[must_use = "spans buffered at exit are lost unless this lives until the end of main"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("traces not flushed at exit: {e}");
            }
        }
    }
}

/// Installs the global subscriber: JSON lines on stdout, filtered by
/// `RUST_LOG` (default `info`), and the span exporter when an OTLP endpoint
/// is set (its spans filtered by `OTEL_TRACES_FILTER`, default `info`, so
/// that `RUST_LOG=warn` keeps logs quiet without losing traces). Safe to
/// call more than once (tests): only the first call installs anything.
pub fn init(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = logfmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(true)
        .with_filter(filter);
    let provider = match exporting(&|k| std::env::var(k).ok()) {
        true => match provider(service) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("{service}: traces are not exported: {e}");
                None
            }
        },
        false => None,
    };
    let traces = provider.as_ref().map(|p| {
        let filter = EnvFilter::try_from_env("OTEL_TRACES_FILTER")
            .unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(filter)
    });
    let installed = tracing_subscriber::registry()
        .with(json)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(service, "exporting traces over OTLP");
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

/// Whether the environment asks for traces: an endpoint, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
fn exporting(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let none = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    endpoint && !disabled && !none
}

fn provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// A W3C `traceparent` (version 00) as it crosses a process boundary: read
/// from an HTTP header, a Kafka header, an envelope or a database row, so
/// parsed strictly; anything else is ignored, never an error. Parsed here
/// rather than by OpenTelemetry's propagator because it is needed without
/// an exporter too (the trace id of log lines, a relay passing it on), and
/// per event, where the propagator's carrier map would allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    pub fn parse(value: &str) -> Option<TraceParent> {
        let b = value.as_bytes();
        let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        let zero = |s: &[u8]| s.iter().all(|c| *c == b'0');
        let well_formed = b.len() == 55
            && &b[..3] == b"00-"
            && b[35] == b'-'
            && b[52] == b'-'
            && hex(&b[3..35])
            && hex(&b[36..52])
            && hex(&b[53..])
            && !zero(&b[3..35])
            && !zero(&b[36..52]);
        well_formed.then(|| TraceParent(value.to_owned()))
    }

    pub fn from_bytes(value: &[u8]) -> Option<TraceParent> {
        std::str::from_utf8(value).ok().and_then(Self::parse)
    }

    /// The trace context of the current span, when spans are exported.
    pub fn current() -> Option<TraceParent> {
        if !tracing_on() {
            return None;
        }
        Self::of(&tracing::Span::current())
    }

    /// The trace context of `span`, when spans are exported.
    pub fn of(span: &tracing::Span) -> Option<TraceParent> {
        if !tracing_on() {
            return None;
        }
        let cx = span.context();
        let ctx = cx.span().span_context().clone();
        ctx.is_valid().then(|| {
            TraceParent(format!(
                "00-{}-{}-{:02x}",
                ctx.trace_id(),
                ctx.span_id(),
                ctx.trace_flags().to_u8()
            ))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 hex digits of the trace id, for log lines.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// As the remote parent of a span (the digits were checked by `parse`).
    fn span_context(&self) -> SpanContext {
        let hex = |range: std::ops::Range<usize>| &self.0[range];
        SpanContext::new(
            TraceId::from_hex(hex(3..35)).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(hex(36..52)).unwrap_or(SpanId::INVALID),
            TraceFlags::new(u8::from_str_radix(hex(53..55), 16).unwrap_or(0)),
            true,
            TraceState::default(),
        )
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes `span` a child of `parent` (when spans are exported) and records
/// the trace id in its `trace_id` field (declared `Empty` by the caller)
/// for log lines. Without a parent, an exported span starts a trace of its
/// own and records that one.
///
/// Call it right after creating the span: once its context has been read,
/// the span has started and its parent and name are fixed. A span that is
/// named later (a request, once its route is known) calls
/// [`record_trace_id`] after that instead of letting this read it.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) {
    adopt(span, parent);
    if parent.is_none() {
        record_trace_id(span);
    }
}

/// [`continue_trace`] without reading a root span's context: its trace id
/// is recorded by a later [`record_trace_id`].
pub fn adopt(span: &tracing::Span, parent: Option<&TraceParent>) {
    let Some(parent) = parent else {
        return;
    };
    if tracing_on() {
        // Fails only when the span is disabled (filtered out): then
        // there is nothing to continue.
        let cx = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        let _ = span.set_parent(cx);
    }
    span.record("trace_id", parent.trace_id());
}

/// Records the trace id of an exported span that started its own trace.
pub fn record_trace_id(span: &tracing::Span) {
    if !tracing_on() {
        return;
    }
    let cx = span.context();
    let ctx = cx.span().span_context().clone();
    if ctx.is_valid() {
        span.record("trace_id", tracing::field::display(ctx.trace_id()));
    }
}

/// Renames an exported span that has already started (a request's, once
/// its route is known): the tracing layer fixes a span's name when it is
/// first entered.
pub fn rename(span: &tracing::Span, name: String) {
    if tracing_on() {
        span.context().span().update_name(name);
    }
}

/// Links `span` to another span (a batch written once for several events
/// keeps every event's trace).
pub fn link(span: &tracing::Span, other: &tracing::Span) {
    if tracing_on() {
        span.add_link(other.context().span().span_context().clone());
    }
}

/// The `traceparent` of an HTTP request, if well-formed.
pub fn from_http(headers: &axum::http::HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| TraceParent::from_bytes(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_trace_contexts_are_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(good).expect("valid");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4é36-00f067aa0ba902b-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert_eq!(TraceParent::from_bytes(&[0xff; 55]), None);
    }

    #[test]
    fn traces_are_exported_only_when_an_endpoint_is_set_and_not_switched_off() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!exporting(&env(&[])));
        assert!(!exporting(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(exporting(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(exporting(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!exporting(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!exporting(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }
}
