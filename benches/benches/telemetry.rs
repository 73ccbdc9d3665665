//! What tracing costs each event and request: the span every consumer opens
//! per event (`consumer::event_span`, with its fields and the trace it
//! continues) and the trace context the outbox reads per write
//! (`TraceParent::current`), under the services' own subscriber (JSON logs,
//! `RUST_LOG` unset: `info`).
//!
//! `cargo bench -p todo-bench --bench telemetry`: spans not exported (no
//! endpoint, the default). With `OTEL_EXPORTER_OTLP_ENDPOINT` set (any
//! address; nothing has to listen, the export runs on its own thread and
//! its failures are dropped) the same spans are exported.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use todo_bench::sample;
use todo_consumer::{event_span, Origin};
use todo_platform::telemetry::{self, TraceParent};

fn spans(c: &mut Criterion) {
    let _telemetry = telemetry::init("todo-bench");
    let mode = if telemetry::tracing_on() {
        "exported"
    } else {
        "not exported"
    };
    let mut g = c.benchmark_group(format!("telemetry ({mode})"));
    let env = sample::created("load-user-17", 42);
    let envelope: todo_contract::envelope::Envelope =
        serde_json::from_slice(&serde_json::to_vec(&env).expect("serializes")).expect("parses");
    let origin = Origin {
        topic: "task-events".into(),
        partition: 3,
        offset: 123_456,
    };
    let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("valid");
    g.bench_function("event span, traced event", |b| {
        b.iter(|| {
            drop(event_span(
                "todo-audit",
                &envelope,
                &origin,
                Some(black_box(&parent)),
            ))
        })
    });
    g.bench_function("event span, untraced event", |b| {
        b.iter(|| drop(event_span("todo-audit", &envelope, &origin, None)))
    });
    g.bench_function("trace context for an outbox row", |b| {
        let span = event_span("todo-audit", &envelope, &origin, Some(&parent));
        let _inside = span.enter();
        b.iter(|| black_box(TraceParent::current()))
    });
    g.finish();
}

criterion_group!(benches, spans);
criterion_main!(benches);
