//! What both suites run on: a todo-notifier in the test's process, and the
//! reading and waiting around it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use todo_api::testing::Stack;
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_notifier::app::{App, ChannelOptions, Options};
use todo_notifier::delivery::Delivery;
use todo_platform::config::{Env, Settings};
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_testing::{EventReader, Received};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Notifier {
    pub base: String,
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// The options of the notifiers tests start: a short session and lease, so
/// that a replica's death is noticed within a test, and the channels
/// `lookup` configures.
pub fn options<F: Fn(&str) -> Option<String>>(
    lookup: &Env<F>,
    delivery_lease: Duration,
) -> Options {
    let mut consumer = ConsumerConfig::new(todo_notifier::NAME, &[Topic::TaskEvents]);
    consumer.session_timeout = Duration::from_secs(6);
    Options {
        consumer,
        max_attempts: 3,
        delivery_lease,
        retention: Default::default(),
        channels: ChannelOptions::from_lookup(lookup, 3).expect("channel settings"),
    }
}

impl Notifier {
    pub async fn spawn_with_options(
        settings: Settings,
        options: Options,
        delivery: Arc<dyn Delivery>,
    ) -> Notifier {
        let app = App::build(&settings, options, delivery)
            .await
            .expect("todo-notifier starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (trigger, shutdown) = shutdown::channel();
        Notifier {
            base,
            trigger,
            handle: tokio::spawn(app.run(shutdown)),
        }
    }

    /// The sum of a metric's samples in this notifier's /metrics.
    pub async fn metric(&self, stack: &Stack, name: &str) -> f64 {
        stack.metric_sum(&self.base, name).await
    }

    /// Gone at once, as with kill -9: nothing in flight is recorded.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle
            .await
            .expect("task")
            .expect("todo-notifier ran cleanly");
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// A reader of the reminders topic from its beginning.
pub async fn reminders(stack: &Stack) -> EventReader {
    EventReader::new(stack.broker.bootstrap(), &stack.topic(Topic::Reminders)).await
}

/// Reads reminder events until `done` holds for those read so far.
pub async fn read_until(reader: &EventReader, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match reader.next(left).await {
            Some(e) => got.push(e),
            None => panic!(
                "reminder events so far: {:?}",
                got.iter()
                    .map(|e| (e.event_type().to_owned(), e.value["data"].clone()))
                    .collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// Waits until `check` holds, polling (a condition, not a fixed sleep).
pub async fn wait_for<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    todo_testing::until(WAIT, Duration::from_millis(100), what, check).await
}

/// A port nothing listens on (until a test starts something there).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
