//! The envelope on the hot paths: the outbox wraps and serializes every event
//! (`EventDraft::into_envelope` + `serde_json::to_vec`), every consumer parses
//! every message (`Envelope::from_slice`) and the task consumers then read
//! its payload (`TaskEventData::deserialize`, as `Event::task_data` does).
//!
//! `cargo bench -p todo-bench --bench envelope [-- --quick]`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::Deserialize;
use std::hint::black_box;
use todo_bench::sample;
use todo_contract::envelope::{Envelope, TaskEventData};
use uuid::Uuid;

fn serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox");
    let now = todo_contract::domain::now();
    let created = sample::created("load-user-17", 42);
    let updated = sample::updated("load-user-17", 43);
    for (name, env) in [("task.created", &created), ("task.updated", &updated)] {
        g.throughput(Throughput::Bytes(
            serde_json::to_vec(env).unwrap().len() as u64
        ));
        g.bench_function(format!("into_envelope+to_vec/{name}"), |b| {
            b.iter_batched(
                || {
                    sample::draft(
                        env.event_type.known().expect("a known type"),
                        "load-user-17",
                        env.data.task.clone(),
                        env.data.previous.clone(),
                    )
                },
                |draft| {
                    let env = draft.into_envelope(Uuid::now_v7(), now, 42);
                    serde_json::to_vec(black_box(&env)).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("consumer");
    let created = sample::created_payload("load-user-17", 42);
    let updated = serde_json::to_vec(&sample::updated("load-user-17", 43)).unwrap();
    for (name, bytes) in [("task.created", &created), ("task.updated", &updated)] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("from_slice/{name}"), |b| {
            b.iter(|| Envelope::from_slice(black_box(bytes)).unwrap())
        });
        g.bench_function(format!("from_slice+task_data/{name}"), |b| {
            b.iter(|| {
                let env = Envelope::from_slice(black_box(bytes)).unwrap();
                TaskEventData::deserialize(&env.data).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, serialize, parse);
criterion_main!(benches);
