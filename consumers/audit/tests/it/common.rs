//! todo-audit next to a whole todo-api (`todo_api::testing::Stack`): in
//! process, or as a child process that a test can kill.

#![allow(dead_code)]

use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Output};
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_audit::app;
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_platform::config::{DatabaseSettings, Settings};
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_testing::Received;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(90);

/// A stack, its todo-api, and todo-audit beside them: where most tests
/// start.
pub async fn start() -> (Stack, Api, Audit) {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let audit = Audit::spawn(&stack).await;
    (stack, api, audit)
}

pub use todo_testing::eventually;

pub fn config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(todo_audit::NAME, &[Topic::TaskEvents, Topic::Reminders]);
    config.session_timeout = Duration::from_secs(6);
    config.max_attempts = 3;
    config
}

/// The audit as tests run it: a missing sequence is passed over after 2 s.
pub fn options() -> app::Options {
    app::Options {
        consumer: config(),
        gap_wait: Duration::from_secs(2),
        retention: todo_audit::partitions::Retention::KEEP,
    }
}

pub struct Audit {
    pub base: String,
    trigger: Option<ShutdownTrigger>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Audit {
    /// Starts todo-audit in this process on the stack's database.
    pub async fn spawn(stack: &Stack) -> Audit {
        Self::spawn_with(stack, stack.db.settings()).await
    }

    /// Starts it with its own way to the database (e.g. through a proxy).
    pub async fn spawn_with(stack: &Stack, database: DatabaseSettings) -> Audit {
        Self::start(stack, database, options()).await
    }

    /// Starts it with settings of its own.
    pub async fn spawn_with_options(stack: &Stack, options: app::Options) -> Audit {
        Self::start(stack, stack.db.settings(), options).await
    }

    async fn start(stack: &Stack, database: DatabaseSettings, options: app::Options) -> Audit {
        let settings = Settings {
            database,
            ..stack.settings()
        };
        let audit = app::build(&settings, &stack.jwt_settings(), options)
            .await
            .expect("todo-audit starts");
        let base = format!("http://127.0.0.1:{}", audit.port());
        let (trigger, shutdown) = shutdown::channel();
        Audit {
            base,
            trigger: Some(trigger),
            handle: Some(tokio::spawn(audit.run(shutdown))),
        }
    }

    pub async fn stop(mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(h) = self.handle.take() {
            h.await
                .expect("audit task")
                .expect("todo-audit ran cleanly");
        }
    }

    pub async fn get(&self, stack: &Stack, path: &str, token: &str) -> (StatusCode, Value) {
        let r = stack
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metric(&self, stack: &Stack, line_prefix: &str) -> f64 {
        stack.metric_sum(&self.base, line_prefix).await
    }
}

/// The `todo-audit` binary as a child process (killed with the test).
pub fn spawn_binary(stack: &Stack) -> Child {
    stack
        .service_command(env!("CARGO_BIN_EXE_todo-audit"))
        .spawn()
        .expect("todo-audit binary starts")
}

/// The `todo-audit` binary's command line, run to its end on the stack's
/// database.
pub fn audit_command(stack: &Stack, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_todo-audit"))
        .args(args)
        .env("DATABASE_URL", &stack.db.url)
        .env("JWT_SECRET", todo_testing::JWT_SECRET)
        .output()
        .expect("todo-audit runs")
}

pub fn producer(stack: &Stack) -> FutureProducer {
    todo_platform::kafka::producer(&stack.kafka).expect("producer")
}

/// Writes `payload` past todo-api; where it landed (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> (i32, i64) {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (delivery.partition, delivery.offset)
}

/// Every event the relay has published so far, read back from
/// `task-events`.
pub async fn published(stack: &Stack) -> Vec<Received> {
    stack.outbox_drained(WAIT).await;
    let total = stack.events_written().await;
    stack.task_events().await.take(total as usize, WAIT).await
}

/// Every event published so far, once todo-audit has stored them all.
pub async fn all_stored(stack: &Stack) -> Vec<Received> {
    let events = published(stack).await;
    wait_stored(stack, events.len() as i64).await;
    events
}

/// Rows in `audit_events`.
pub async fn stored(stack: &Stack) -> i64 {
    stack.count("audit_events").await
}

/// Waits until `audit_events` holds `n` rows (and no more arrive).
pub async fn wait_stored(stack: &Stack, n: i64) {
    eventually(WAIT, Duration::from_millis(100), async || {
        let have = stored(stack).await;
        assert!(have <= n, "{have} events stored, only {n} were published");
        if have == n {
            Ok(())
        } else {
            Err(format!("only {have} of {n} events stored after {WAIT:?}"))
        }
    })
    .await;
}

/// Whether the event `id` is in `audit_events`.
pub async fn is_stored(stack: &Stack, id: uuid::Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit_events WHERE event_id = $1)")
        .bind(id)
        .fetch_one(&stack.db.pool)
        .await
        .expect("stored?")
}

/// Events stored, by event id (each id at most once, by the primary key).
pub async fn stored_ids(stack: &Stack) -> Vec<String> {
    sqlx::query_scalar("SELECT event_id::text FROM audit_events ORDER BY event_id")
        .fetch_all(&stack.db.pool)
        .await
        .expect("stored ids")
}

/// Their ids, sorted as `stored_ids` returns the stored ones.
pub fn sorted_ids(events: &[Received]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    ids.sort();
    ids
}

/// The `field` of each event of a page of history or of the log.
pub fn each(page: &Value, field: &str) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The published events grouped by subject (task id), in sequence order.
pub fn by_task(events: &[Received]) -> HashMap<String, Vec<Received>> {
    let mut out: HashMap<String, Vec<Received>> = HashMap::new();
    for e in events {
        out.entry(e.value["subject"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(e.clone());
    }
    for list in out.values_mut() {
        list.sort_by_key(|e| e.sequence());
    }
    out
}
