//! todo-notifier end to end: through todo-api and a real broker.

use crate::harness::{
    at, free_port, options, read_until, reminders, rfc3339, wait_for, Notifier, WAIT,
};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use todo_api::testing::{assert_schema_valid, Api, Stack};
use todo_contract::envelope::Topic;
use todo_notifier::app::{App, Options};
use todo_notifier::delivery::{Delivery, Due, LogDelivery};
use todo_notifier::retention::{self, Retention};
use todo_platform::config::{Env, Settings};
use todo_platform::shutdown;
use todo_testing::{EventReader, Received};

impl Notifier {
    async fn spawn(stack: &Stack, delivery: Arc<dyn Delivery>) -> Notifier {
        Self::spawn_with(stack.settings(), delivery).await
    }

    async fn spawn_with(settings: Settings, delivery: Arc<dyn Delivery>) -> Notifier {
        Self::spawn_with_options(settings, no_channels(), delivery).await
    }

    /// A notifier that keeps done reminders only `keep` (logged deliveries).
    async fn spawn_keeping(stack: &Stack, keep: Duration) -> Notifier {
        let options = Options {
            retention: Retention { keep },
            ..no_channels()
        };
        Self::spawn_with_options(stack.settings(), options, Arc::new(LogDelivery)).await
    }
}

/// The options of a notifier that delivers only by its [`Delivery`].
fn no_channels() -> Options {
    options(&Env::new(|_: &str| None), Duration::from_secs(2))
}

/// What most tests run on: a stack of their own with a todo-api, one
/// todo-notifier, and ann, who owns the reminders.
struct Fixture {
    stack: Stack,
    api: Api,
    notifier: Notifier,
    ann: String,
}

impl Fixture {
    /// Delivering by logging.
    async fn start() -> Fixture {
        Self::delivering(Arc::new(LogDelivery)).await
    }

    async fn delivering(delivery: Arc<dyn Delivery>) -> Fixture {
        let stack = Stack::new().await;
        let api = stack.spawn_api().await;
        let notifier = Notifier::spawn(&stack, delivery).await;
        Self::around(stack, api, notifier)
    }

    /// Keeping done reminders only `keep`.
    async fn keeping(keep: Duration) -> Fixture {
        let stack = Stack::new().await;
        let api = stack.spawn_api().await;
        let notifier = Notifier::spawn_keeping(&stack, keep).await;
        Self::around(stack, api, notifier)
    }

    fn around(stack: Stack, api: Api, notifier: Notifier) -> Fixture {
        let ann = stack.token("ann");
        Fixture {
            stack,
            api,
            notifier,
            ann,
        }
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        self.stack.create(&self.api, token, body).await
    }

    /// A task of `token`'s user, due at `due` if any, with `reminders`.
    async fn task(
        &self,
        token: &str,
        title: &str,
        due: Option<DateTime<Utc>>,
        reminders: Value,
    ) -> Value {
        let mut body = json!({"title": title, "reminders": reminders});
        if let Some(due) = due {
            body["due_at"] = json!(rfc3339(due));
        }
        self.create(token, body).await
    }

    /// A change that must succeed with 200.
    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) {
        let (status, body) = self.stack.call(&self.api, method, path, token, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    async fn complete(&self, token: &str, task: &Value) {
        complete(&self.stack, &self.api, token, task).await;
    }

    async fn reminders(&self) -> EventReader {
        reminders(&self.stack).await
    }

    /// How many rounds the clock makes in `window` from now.
    async fn clock_rounds_in(&self, window: Duration) -> f64 {
        let before = self.clock_rounds().await;
        tokio::time::sleep(window).await;
        self.clock_rounds().await - before
    }

    async fn clock_rounds(&self) -> f64 {
        self.notifier
            .metric(&self.stack, "todo_reminder_clock_rounds_total")
            .await
    }

    /// The reminder rows of `task`.
    async fn rows_of(&self, task: &Value) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM reminders WHERE task_id = $1::uuid")
            .bind(task["id"].as_str())
            .fetch_one(&self.stack.db.pool)
            .await
            .expect("count")
    }

    async fn stop(self) {
        self.notifier.stop().await;
        self.api.stop().await;
    }
}

async fn complete(stack: &Stack, api: &Api, token: &str, task: &Value) {
    let id = task["id"].as_str().unwrap_or_default();
    let path = format!("/tasks/{id}/complete");
    let (status, body) = stack.call(api, Method::POST, &path, token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `events`, and what `reader` is sent within `window` after them.
async fn with_the_rest(
    reader: &EventReader,
    events: Vec<Received>,
    window: Duration,
) -> Vec<Received> {
    let rest = reader.drain(window).await;
    events.into_iter().chain(rest).collect()
}

/// What todo-notifier has set aside from task-events, read until nothing
/// more comes for `window`.
async fn set_aside(stack: &Stack, window: Duration) -> Vec<Received> {
    EventReader::new(
        stack.broker.bootstrap(),
        &todo_consumer::dlq_topic(&stack.topic(Topic::TaskEvents)),
    )
    .await
    .drain(window)
    .await
}

fn count<'a>(events: impl IntoIterator<Item = &'a Received>, kind: &str) -> usize {
    events
        .into_iter()
        .filter(|e| e.event_type() == kind)
        .count()
}

fn of_task<'a>(events: &'a [Received], task: &Value) -> Vec<&'a Received> {
    events
        .iter()
        .filter(|e| e.value["data"]["task_id"] == task["id"])
        .collect()
}

/// `t` to the millisecond, as a task's times are kept.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    at(&json!(rfc3339(t)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_in_order_for_their_owner_only() {
    let t = Fixture::start().await;
    let bob = t.stack.token("bob");
    let now = Utc::now();
    // Due in 8 s: 2 s before it, 4 s before it, and at +5 s.
    let task = t
        .task(
            &t.ann,
            "call the bank",
            Some(now + TimeDelta::seconds(8)),
            json!([{"before": "PT2S"}, {"before": "PT4S"}, {"at": rfc3339(now + TimeDelta::seconds(5))}]),
        )
        .await;
    let bobs = t
        .task(
            &bob,
            "bob's",
            Some(now + TimeDelta::seconds(7)),
            json!([{"before": "PT1S"}]),
        )
        .await;
    let reader = t.reminders().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 4).await;
    assert_schema_valid(&events);

    let anns = of_task(&events, &task);
    let fired: Vec<DateTime<Utc>> = anns
        .iter()
        .filter(|e| e.event_type() == "reminder.triggered")
        .map(|e| at(&e.value["data"]["remind_at"]))
        .collect();
    assert_eq!(
        fired,
        [4, 5, 6].map(|s| millis(now + TimeDelta::seconds(s))),
        "ann's reminders fire in time order"
    );
    for e in anns
        .iter()
        .filter(|e| e.event_type() == "reminder.triggered")
    {
        assert!(
            at(&e.value["data"]["fired_at"]) >= at(&e.value["data"]["remind_at"]),
            "never early: {}",
            e.value
        );
        assert_eq!(e.value["data"]["title"], "call the bank");
    }
    assert_eq!(count(of_task(&events, &task), "reminder.scheduled"), 3);
    // Every reminder event goes to its task's owner, keyed by them.
    for e in &events {
        let owner = if e.value["data"]["task_id"] == bobs["id"] {
            "bob"
        } else {
            "ann"
        };
        assert_eq!(e.key, owner, "{}", e.value);
        assert_eq!(e.value["userid"], owner);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_cancels_and_a_moved_due_time_moves_the_reminder() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    let now = Utc::now();
    let done = t
        .task(
            ann,
            "done early",
            Some(now + TimeDelta::seconds(6)),
            json!([{"before": "PT2S"}]),
        )
        .await;
    t.complete(ann, &done).await;
    let moved = t
        .task(
            ann,
            "moved",
            Some(now + TimeDelta::days(1)),
            json!([{"before": "PT1H"}]),
        )
        .await;
    let new_due = now + TimeDelta::hours(1) + TimeDelta::seconds(6);
    t.ok(
        Method::PATCH,
        &format!("/tasks/{}", moved["id"].as_str().unwrap_or_default()),
        ann,
        Some(json!({"due_at": rfc3339(new_due)})),
    )
    .await;

    let reader = t.reminders().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    // Let the completed task's reminder time pass too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = with_the_rest(&reader, events, Duration::from_secs(1)).await;

    let done_events: Vec<&str> = of_task(&all, &done)
        .iter()
        .map(|e| e.event_type())
        .collect();
    assert_eq!(done_events, ["reminder.scheduled", "reminder.cancelled"]);
    let cancelled = of_task(&all, &done)[1];
    assert_eq!(cancelled.value["data"]["reason"], "task completed");

    let moved_events: Vec<&Received> = of_task(&all, &moved);
    let kinds: Vec<&str> = moved_events.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        kinds,
        [
            "reminder.scheduled",
            "reminder.scheduled",
            "reminder.triggered",
            "reminder.sent"
        ]
    );
    let target = millis(now + TimeDelta::seconds(6));
    assert_eq!(at(&moved_events[1].value["data"]["remind_at"]), target);
    assert_eq!(at(&moved_events[3].value["data"]["remind_at"]), target);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_task_events_schedule_nothing_twice() {
    let t = Fixture::start().await;
    let month = Some(Utc::now() + TimeDelta::days(30));
    let task = t
        .task(
            &t.ann,
            "far away",
            month,
            json!([{"before": "P1D"}, {"before": "PT1H"}]),
        )
        .await;
    let created = t.stack.task_events().await.take(1, WAIT).await;
    for _ in 0..2 {
        t.stack.inject("ann", &created[0].value).await;
    }
    // A later change of the same user: once its reminder is scheduled, the
    // copies before it have been read.
    let marker = t
        .task(
            &t.ann,
            "marker",
            Some(Utc::now() + TimeDelta::days(30)),
            json!([{"before": "PT1M"}]),
        )
        .await;
    let reader = t.reminders().await;
    let events = read_until(&reader, |got| {
        got.iter()
            .any(|e| e.value["data"]["task_id"] == marker["id"])
    })
    .await;
    let all = with_the_rest(&reader, events, Duration::from_secs(1)).await;
    assert_eq!(
        of_task(&all, &task).len(),
        2,
        "two reminders, scheduled once each"
    );
    assert_eq!(t.rows_of(&task).await, 2);
    t.stop().await;
}

/// Changes that each leave a reminder due in `from`..`to` seconds.
async fn reminders_due(stack: &Stack, api: &Api, n: usize, from: i64, to: i64) -> Vec<String> {
    let mut ids = Vec::new();
    let now = Utc::now();
    for i in 0..n {
        let user = ["ann", "ben", "cat", "dan"][i % 4];
        let offset = from * 1000 + (to - from) * 1000 * i as i64 / n as i64;
        let task = stack
            .create(
                api,
                &stack.token(user),
                json!({"title": format!("r{i}"), "reminders": [{"at": rfc3339(now + TimeDelta::milliseconds(offset))}]}),
            )
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    ids
}

fn sent_per_task(events: &[Received]) -> HashMap<String, usize> {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.event_type() == "reminder.sent") {
        *sent
            .entry(
                e.value["data"]["task_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    sent
}

/// Every one of `tasks` sent once and triggered once, in `events`.
fn assert_each_sent_once(events: &[Received], tasks: &[String]) {
    let sent = sent_per_task(events);
    assert_eq!(sent.len(), tasks.len());
    assert!(sent.values().all(|&n| n == 1), "{sent:?}");
    assert_eq!(count(events, "reminder.triggered"), tasks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_send_each_reminder_once() {
    let t = Fixture::start().await;
    let b = Notifier::spawn(&t.stack, Arc::new(LogDelivery)).await;
    let tasks = reminders_due(&t.stack, &t.api, 40, 3, 6).await;
    let reader = t.reminders().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") >= tasks.len()).await;
    let all = with_the_rest(&reader, events, Duration::from_secs(2)).await;
    assert_each_sent_once(&all, &tasks);
    b.stop().await;
    t.stop().await;
}

/// Fails the first `failures` attempts of every reminder, or all of them.
struct Flaky {
    failures: i32,
    calls: AtomicU32,
}

impl Flaky {
    fn new(failures: i32) -> Arc<Flaky> {
        Arc::new(Flaky {
            failures,
            calls: AtomicU32::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Delivery for Flaky {
    async fn deliver(&self, due: &Due) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if due.attempt <= self.failures {
            Err(format!("mail server said no (attempt {})", due.attempt))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_then_reported() {
    // Fails twice, then works (max_attempts is 3).
    let flaky = Flaky::new(2);
    let t = Fixture::delivering(flaky.clone()).await;
    let ok = reminders_due(&t.stack, &t.api, 1, 2, 2).await;
    let reader = t.reminders().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    assert_eq!(
        count(&events, "reminder.triggered"),
        1,
        "triggered once, however often retried"
    );
    assert_eq!(flaky.calls.load(Ordering::Relaxed), 3);
    assert_eq!(
        events.last().map(|e| e.value["data"]["task_id"].clone()),
        Some(json!(ok[0]))
    );
    t.notifier.stop().await;

    // Always fails: three attempts, then reminder.failed with the reason.
    let hopeless = Flaky::new(i32::MAX);
    let notifier = Notifier::spawn(&t.stack, hopeless.clone()).await;
    let bad = reminders_due(&t.stack, &t.api, 1, 2, 2).await;
    let events = read_until(&reader, |got| count(got, "reminder.failed") == 1).await;
    let failed = events
        .iter()
        .find(|e| e.event_type() == "reminder.failed")
        .expect("failed");
    assert_eq!(failed.value["data"]["task_id"], json!(bad[0]));
    assert_eq!(
        failed.value["data"]["reason"],
        "mail server said no (attempt 3)"
    );
    assert_eq!(hopeless.calls.load(Ordering::Relaxed), 3);
    notifier.stop().await;
    t.api.stop().await;
}

struct Killed(Option<Child>);

impl Killed {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A todo-notifier binary, on `port` if given.
fn spawn_binary(stack: &Stack, port: Option<u16>) -> Killed {
    let mut command = stack.service_command(env!("CARGO_BIN_EXE_todo-notifier"));
    if let Some(port) = port {
        command.env("PORT", port.to_string());
    }
    Killed(Some(command.spawn().expect("todo-notifier binary starts")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_and_restart_fires_every_pending_reminder_once() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let mut notifier = spawn_binary(&stack, None);
    let tasks = reminders_due(&stack, &api, 30, 3, 9).await;
    let reader = reminders(&stack).await;
    // Kill it once some have been sent, mid-stream; it is down for 3 s.
    read_until(&reader, |got| count(got, "reminder.sent") >= 5).await;
    notifier.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    notifier = spawn_binary(&stack, None);

    let all = reminders(&stack).await;
    let events = read_until(&all, |got| count(got, "reminder.sent") >= tasks.len()).await;
    let events = with_the_rest(&all, events, Duration::from_secs(2)).await;
    assert_each_sent_once(&events, &tasks);
    // Those that came due during the downtime fired late, and say so.
    let late = events
        .iter()
        .filter(|e| e.event_type() == "reminder.triggered")
        .filter(|e| e.value["data"]["late_ms"].as_i64().unwrap_or_default() > 1000)
        .count();
    assert!(late > 0, "some reminders came due while it was down");
    notifier.kill();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_impossible_reminder_stops_no_one_and_the_extremes_the_api_accepts_are_kept() {
    let t = Fixture::start().await;
    let mallory = t.stack.token("mallory");
    let seed_task = t.create(&mallory, json!({"title": "seed"})).await;
    let seed = t.stack.task_events().await.take(1, WAIT).await.remove(0);
    assert_eq!(seed.value["data"]["task"]["id"], seed_task["id"]);

    // Past todo-api's checks, onto the topic: a lead time before a due time
    // at the start of the calendar (the subtraction overflows), and a
    // reminder before 4713 BC (PostgreSQL cannot store it).
    let start_of_time =
        serde_json::to_value(DateTime::<Utc>::MIN_UTC + TimeDelta::days(1)).expect("time");
    let mut poison = Vec::new();
    for (due, reminders) in [
        (start_of_time, json!([{"before": "P7D"}])),
        (json!(null), json!([{"at": "-4714-06-01T00:00:00Z"}])),
    ] {
        let mut event = seed.value.clone();
        event["id"] = json!(uuid::Uuid::new_v4());
        event["data"]["task"]["due_at"] = due;
        event["data"]["task"]["reminders"] = reminders;
        t.stack.inject("mallory", &event).await;
        poison.push(event);
    }

    // The next user's reminders: the extremes todo-api accepts are kept,
    // none dead-lettered. Those ahead are scheduled, one a day past fires
    // at once, and the start of the range, further back than
    // REMINDER_RETENTION_DAYS, is passed over.
    let soon = Utc::now() + TimeDelta::seconds(2);
    let yesterday = Utc::now() - TimeDelta::days(1);
    let extreme = t
        .create(
            &t.ann,
            json!({"title": "end of time", "due_at": "9999-12-31T23:59:59Z",
                   "reminders": [{"before": "P366D"}, {"at": "9999-12-31T23:59:59Z"},
                                 {"at": rfc3339(yesterday)}, {"at": "1970-01-01T00:00:00Z"}]}),
        )
        .await;
    let normal = t
        .task(&t.ann, "soon", None, json!([{"at": rfc3339(soon)}]))
        .await;
    let reader = t.reminders().await;
    let sent = |got: &[Received], task: &Value| {
        got.iter()
            .any(|e| e.event_type() == "reminder.sent" && e.value["data"]["task_id"] == task["id"])
    };
    let events = read_until(&reader, |got| sent(got, &normal) && sent(got, &extreme)).await;
    assert_eq!(
        count(of_task(&events, &extreme), "reminder.scheduled"),
        3,
        "every reminder the API accepted is scheduled, but one from 1970"
    );
    let letters = set_aside(&t.stack, Duration::from_secs(3)).await;
    assert!(
        letters.iter().all(|l| l.key == "mallory"),
        "only the impossible events may be set aside: {:?}",
        letters.iter().map(|l| &l.value).collect::<Vec<_>>()
    );
    t.stop().await;
}

/// Counts deliveries (by delivery id); the first one cuts the notifier's
/// way to the database right after it has delivered, so that recording it
/// fails.
struct CutAfterFirst {
    proxy: Arc<todo_testing::TcpProxy>,
    delivered: std::sync::Mutex<Vec<uuid::Uuid>>,
}

#[async_trait::async_trait]
impl Delivery for CutAfterFirst {
    async fn deliver(&self, due: &Due) -> Result<(), String> {
        let first = {
            let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            delivered.push(due.delivery_id);
            delivered.len() == 1
        };
        if first {
            self.proxy.cut();
            let proxy = self.proxy.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                proxy.restore();
            });
        }
        Ok(())
    }
}

/// Counts deliveries.
struct Counting(AtomicU32);

#[async_trait::async_trait]
impl Delivery for Counting {
    async fn deliver(&self, _due: &Due) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_is_delivered_only_after_its_firing_commits() {
    let counting = Arc::new(Counting(AtomicU32::new(0)));
    let t = Fixture::delivering(counting.clone()).await;
    // The commit of a firing fails, for as long as the flag is set (a
    // deferred trigger: the failure comes at COMMIT, after the firing's
    // statements all went through).
    for statement in [
        "CREATE TABLE test_fail_firing (fail boolean NOT NULL)",
        "INSERT INTO test_fail_firing VALUES (true)",
        "CREATE FUNCTION test_fail_firing() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.state = 'delivering' AND OLD.state = 'scheduled'
              AND (SELECT fail FROM test_fail_firing) THEN
             RAISE EXCEPTION 'injected failure at commit';
           END IF;
           RETURN NEW;
         END $$",
        "CREATE CONSTRAINT TRIGGER test_fail_firing AFTER UPDATE ON reminders
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_firing()",
    ] {
        sqlx::query(statement)
            .execute(&t.stack.db.pool)
            .await
            .expect(statement);
    }
    reminders_due(&t.stack, &t.api, 1, 1, 1).await;
    // Let the clock try (and fail) to fire it a few times.
    let start = t.clock_rounds().await;
    wait_for("the clock comes round three times", || async {
        t.clock_rounds().await >= start + 3.0
    })
    .await;
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        0,
        "a rolled-back firing delivered nothing"
    );
    sqlx::query("UPDATE test_fail_firing SET fail = false")
        .execute(&t.stack.db.pool)
        .await
        .expect("stop failing");
    let reader = t.reminders().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    assert_eq!(count(&events, "reminder.triggered"), 1);
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        1,
        "delivered once, once committed"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_record_is_lost_is_delivered_again_with_the_same_id() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let proxy = Arc::new(todo_testing::TcpProxy::start(stack.db.server_addr()).await);
    let delivery = Arc::new(CutAfterFirst {
        proxy: proxy.clone(),
        delivered: Default::default(),
    });
    let settings = Settings {
        database: stack.db.settings_via(proxy.port()),
        ..stack.settings()
    };
    let notifier = Notifier::spawn_with(settings, delivery.clone()).await;
    reminders_due(&stack, &api, 1, 1, 1).await;
    let reader = reminders(&stack).await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    let events = with_the_rest(&reader, events, Duration::from_secs(2)).await;
    assert_eq!(count(&events, "reminder.triggered"), 1);
    assert_eq!(count(&events, "reminder.sent"), 1);
    let delivered = delivery
        .delivered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(
        delivered.len(),
        2,
        "delivered again after the record was lost: {delivered:?}"
    );
    assert_eq!(delivered[0], delivered[1], "with the same delivery id");
    notifier.stop().await;
    api.stop().await;
}

/// Deadlocks PostgreSQL has detected in the test's database.
async fn deadlocks(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&stack.db.pool)
        .await
        .expect("deadlocks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_and_a_burst_of_task_events_never_deadlock() {
    let t = Fixture::start().await;
    let users = ["ann", "ben", "cat", "dan", "eve", "fay"];
    let due = Utc::now() + TimeDelta::seconds(8);
    // Each user's tasks alternate: one whose reminder fires at `due`, one
    // whose reminder is an hour later.
    let mut tasks = Vec::new();
    for (i, user) in users.iter().cycle().take(users.len() * 40).enumerate() {
        let token = t.stack.token(user);
        let at = if (i / users.len()).is_multiple_of(2) {
            due
        } else {
            due + TimeDelta::hours(1)
        };
        let task = t
            .task(
                &token,
                &format!("t{i}"),
                Some(at + TimeDelta::minutes(10)),
                json!([{"before": "PT10M"}]),
            )
            .await;
        tasks.push((
            token,
            task["id"].as_str().unwrap_or_default().to_owned(),
            at,
        ));
    }
    let before = deadlocks(&t.stack).await;
    // Just as the reminders fire, every task moves by a minute: the later
    // ones' reminders move (the consumer takes the user's sequence row),
    // the firing ones' rows are the clock's (the consumer waits for them).
    let start = due - TimeDelta::milliseconds(150);
    tokio::time::sleep((start - Utc::now()).to_std().unwrap_or_default()).await;
    let (stack_ref, api_ref) = (&t.stack, &t.api);
    let burst = tasks.iter().map(|(token, id, at)| {
        let body = json!({"due_at": rfc3339(*at + TimeDelta::minutes(11))});
        let path = format!("/tasks/{id}");
        async move {
            stack_ref
                .call(api_ref, Method::PATCH, &path, token, Some(body))
                .await
        }
    });
    for (status, body) in futures::future::join_all(burst).await {
        assert!(status.is_success(), "{status} {body}");
    }
    // Wait until the consumer has applied every task event (the creates and
    // the burst) and nothing due is left to fire or deliver.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (applied, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM processed_events WHERE consumer = 'todo-notifier'),
                    (SELECT count(*) FROM reminders
                      WHERE state IN ('scheduled', 'delivering') AND attempt_at <= now())",
        )
        .fetch_one(&t.stack.db.pool)
        .await
        .expect("progress");
        if applied >= 2 * tasks.len() as i64 && pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{applied} events applied, {pending} reminders still due"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        deadlocks(&t.stack).await,
        before,
        "deadlocks between clock and consumer"
    );
    assert!(
        set_aside(&t.stack, Duration::from_secs(2)).await.is_empty(),
        "nothing set aside"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_locked_elsewhere_does_not_make_the_clock_spin() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    let ahead = |by: TimeDelta| json!([{"at": rfc3339(Utc::now() + by)}]);
    let far = t.task(ann, "far", None, ahead(TimeDelta::hours(1))).await;
    let due = Utc::now() + TimeDelta::seconds(2);
    let task = t
        .task(ann, "held", None, json!([{"at": rfc3339(due)}]))
        .await;
    // Another replica holds the due reminder (here: the test's transaction),
    // once todo-notifier has scheduled it.
    const SCHEDULED: &str =
        "SELECT reminder_id FROM reminders WHERE task_id = $1::uuid AND state = 'scheduled'";
    let pool = &t.stack.db.pool;
    wait_for("the reminder is scheduled", || async {
        sqlx::query(SCHEDULED)
            .bind(task["id"].as_str())
            .fetch_optional(pool)
            .await
            .expect("reminder")
            .is_some()
    })
    .await;
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query(&format!("{SCHEDULED} FOR UPDATE"))
        .bind(task["id"].as_str())
        .fetch_one(&mut *holder)
        .await
        .expect("lock");
    // Past its time: the clock has the reminder due now.
    tokio::time::sleep(
        (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500),
    )
    .await;
    let rounds = t.clock_rounds_in(Duration::from_secs(3)).await;
    assert!(
        rounds <= 5.0,
        "{rounds} rounds in 3 s while the due reminder was held elsewhere"
    );
    holder.rollback().await.expect("release");
    // Once released, it fires (a schedule change wakes the clock).
    let reader = t.reminders().await;
    t.stack
        .call(
            &t.api,
            Method::PATCH,
            &format!("/tasks/{}", far["id"].as_str().unwrap_or_default()),
            ann,
            Some(json!({"title": "far, renamed", "reminders": ahead(TimeDelta::hours(2))})),
        )
        .await;
    read_until(&reader, |got| {
        got.iter()
            .any(|e| e.event_type() == "reminder.sent" && e.value["data"]["task_id"] == task["id"])
    })
    .await;
    t.stop().await;
}

async fn assigned_partitions(stack: &Stack, port: u16) -> f64 {
    let Ok(r) = stack
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    todo_api::testing::sum_of(
        &r.text().await.unwrap_or_default(),
        "todo_consumer_assigned_partitions",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_replica_dies_its_partitions_reminders_wait_for_their_completions() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_binary(&stack, Some(port_a));
    let mut b = spawn_binary(&stack, Some(port_b));
    wait_for("the replicas share the partitions", || async {
        assigned_partitions(&stack, port_a).await != 0.0
            && assigned_partitions(&stack, port_b).await != 0.0
    })
    .await;
    // Users spread over both replicas' partitions, each with a reminder
    // due shortly after the crash below.
    let reader = reminders(&stack).await;
    let due = Utc::now() + TimeDelta::seconds(6);
    let mut tasks = Vec::new();
    for u in 0..16 {
        let token = stack.token(&format!("user{u}"));
        let task = stack
            .create(
                &api,
                &token,
                json!({"title": "call back", "reminders": [{"at": rfc3339(due)}]}),
            )
            .await;
        tasks.push((token, task));
    }
    read_until(&reader, |got| {
        count(got, "reminder.scheduled") == tasks.len()
    })
    .await;
    // B dies without a goodbye; every task is completed right after, so the
    // completions of B's partitions sit unread until A takes them over (the
    // session timeout, 6 s), after the reminders are due.
    b.kill();
    for (token, task) in &tasks {
        complete(&stack, &api, token, task).await;
    }
    let events = read_until(&reader, |got| {
        count(got, "reminder.cancelled") == tasks.len()
    })
    .await;
    let events = with_the_rest(&reader, events, Duration::from_secs(2)).await;
    assert_eq!(
        count(&events, "reminder.triggered"),
        0,
        "a reminder fired although its task was completed before it was due"
    );
    a.kill();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_todo_api_down_the_notifiers_own_relay_publishes_its_reminders() {
    let t = Fixture::start().await;
    let soon = Utc::now() + TimeDelta::seconds(4);
    let task = t
        .task(&t.ann, "later", None, json!([{"at": rfc3339(soon)}]))
        .await;
    let reader = t.reminders().await;
    read_until(&reader, |got| count(got, "reminder.scheduled") == 1).await;
    // No todo-api any more: only the notifier's relay can publish.
    t.api.stop().await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    assert_eq!(count(&events, "reminder.triggered"), 1);
    assert!(events
        .iter()
        .all(|e| e.value["data"]["task_id"] == task["id"]));
    t.notifier.stop().await;
}

/// The window between an erasure's commit and todo-notifier reading its
/// `user.erased` (a consumer that lags, or is down): the tombstone alone
/// keeps the erased user's reminders from firing, while everyone else's
/// fire on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_reminders_never_fire_even_before_user_erased_arrives() {
    let t = Fixture::start().await;
    let (ann, bob) = (&t.ann, t.stack.token("bob"));
    let now = Utc::now();
    let due = Some(now + TimeDelta::seconds(60));
    let in_secs = |s: i64| json!([{"at": rfc3339(now + TimeDelta::seconds(s))}]);
    let anns = t.task(ann, "ann's", due, in_secs(3)).await;
    t.task(&bob, "bob's", due, in_secs(5)).await;
    let reader = t.reminders().await;
    read_until(&reader, |got| count(got, "reminder.scheduled") == 2).await;
    // As todo-api's erasure leaves it, without the event.
    sqlx::query("UPDATE event_sequences SET erased_at = now() WHERE user_id = 'ann'")
        .execute(&t.stack.db.pool)
        .await
        .expect("tombstone");

    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    let sent: Vec<&Received> = events
        .iter()
        .filter(|e| e.event_type() == "reminder.sent")
        .collect();
    assert_eq!(sent[0].key, "bob");
    // Ann's came due 2 s before bob's, and a round fires in time order.
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM reminders WHERE task_id = $1::uuid")
            .bind(anns["id"].as_str())
            .fetch_all(&t.stack.db.pool)
            .await
            .expect("ann's reminders");
    assert!(
        states.iter().all(|s| s == "scheduled"),
        "ann's reminder must not fire: {states:?}"
    );
    assert!(of_task(&events, &anns)
        .iter()
        .all(|e| e.event_type() == "reminder.scheduled"));
    let refused = t
        .stack
        .request(&t.api, Method::POST, "/tasks", ann)
        .json(&json!({"title": "again"}))
        .send()
        .await
        .expect("POST /tasks");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    t.stop().await;
}

/// A reminder that fired and was deleted after REMINDER_RETENTION_DAYS is
/// not fired again when its task is saved once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_reminder_does_not_come_back_when_its_task_is_saved_again() {
    let keep = Duration::from_secs(2);
    let t = Fixture::keeping(keep).await;
    let now = Utc::now();
    let task = t
        .task(
            &t.ann,
            "ann's",
            Some(now + TimeDelta::seconds(60)),
            json!([{"at": rfc3339(now + TimeDelta::seconds(1))}]),
        )
        .await;
    let reader = t.reminders().await;
    read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    assert_eq!(t.rows_of(&task).await, 1);
    let pool = &t.stack.db.pool;
    wait_for("the sent reminder is pruned", || async {
        retention::prune(pool, keep, 1)
            .await
            .expect("prune")
            .reminders
            > 0
    })
    .await;
    assert_eq!(t.rows_of(&task).await, 0);

    t.ok(
        Method::PATCH,
        &format!("/tasks/{}", task["id"].as_str().unwrap_or_default()),
        &t.ann,
        Some(json!({"title": "ann's, renamed"})),
    )
    .await;
    wait_for("task.updated is consumed", || async {
        t.notifier
            .metric(
                &t.stack,
                "todo_events_consumed_total{consumer=\"todo-notifier\",type=\"task.updated\"}",
            )
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        t.rows_of(&task).await,
        0,
        "the reminder was scheduled again"
    );
    t.stop().await;
}

/// A deleted task's reminders are never wanted again (the task cannot come
/// back, and its earlier events are deduplicated): they go the retention
/// after the deletion, however far ahead their time was. A completed task's
/// reminder whose time is still ahead stays: the task may be reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tasks_reminders_go_after_the_retention_though_their_time_is_ahead() {
    let keep = Duration::from_secs(2);
    let t = Fixture::keeping(keep).await;
    let ann = &t.ann;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    let mut ids = Vec::new();
    for title in ["deleted", "completed", "completed, then deleted"] {
        let task = t
            .task(
                ann,
                title,
                Some(tomorrow + TimeDelta::hours(1)),
                json!([{"at": rfc3339(tomorrow)}]),
            )
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let reader = t.reminders().await;
    read_until(&reader, |got| count(got, "reminder.scheduled") == 3).await;
    for (method, path) in [
        (Method::DELETE, format!("/tasks/{}", ids[0])),
        (Method::POST, format!("/tasks/{}/complete", ids[1])),
        (Method::POST, format!("/tasks/{}/complete", ids[2])),
        (Method::DELETE, format!("/tasks/{}", ids[2])),
    ] {
        let (status, body) = t.stack.call(&t.api, method, &path, ann, None).await;
        assert!(status.is_success(), "{path}: {status} {body}");
    }
    read_until(&reader, |got| count(got, "reminder.cancelled") == 3).await;

    let titles = || async {
        let t: Vec<String> = sqlx::query_scalar("SELECT title FROM reminders ORDER BY title")
            .fetch_all(&t.stack.db.pool)
            .await
            .expect("reminders");
        t
    };
    // The deletion is consumed asynchronously: prune until both went.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pruned = 0;
    while pruned < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted tasks' reminders were never pruned: {:?}",
            titles().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        pruned += retention::prune(&t.stack.db.pool, keep, 10)
            .await
            .expect("prune")
            .reminders;
    }
    assert_eq!(pruned, 2);
    assert_eq!(titles().await, ["completed"]);
    t.stop().await;
}

/// What the pruning deletes, and what it leaves, over real rows, a few
/// rows per statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_only_what_was_done_before_the_retention_in_batches() {
    let db = todo_testing::TestDatabase::create().await;
    let old = "now() - interval '2 hours'";
    let recent = "now() - interval '10 minutes'";
    let future = "now() + interval '1 day'";
    // (state, remind_at, updated_at, pruned?)
    let reminders = [
        ("sent", old, old, true),
        ("failed", old, old, true),
        ("cancelled", old, old, true),
        ("sent", old, old, true),
        ("scheduled", old, old, false),
        ("delivering", old, old, false),
        ("cancelled", future, old, false),
        ("sent", old, recent, false),
    ];
    for (i, (state, at, updated, _)) in reminders.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO reminders (reminder_id, task_id, user_id, spec, title, remind_at, state,
                                    attempt_at, updated_at)
             VALUES ($1, gen_random_uuid(), 'u', '{{}}', $2, {at}, $3, {at}, {updated})"
        ))
        .bind(uuid::Uuid::new_v4())
        .bind(format!("r{i}"))
        .bind(state)
        .execute(&db.pool)
        .await
        .expect("reminder row");
    }
    // (state, done_at, pruned?)
    let deliveries = [
        ("sent", Some(old), true),
        ("failed", Some(old), true),
        ("sent", Some(old), true),
        ("pending", None, false),
        ("sent", Some(recent), false),
    ];
    for (i, (state, done, _)) in deliveries.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO reminder_deliveries (delivery_id, channel, target, reminder_id, user_id,
                                              settings, reminder, state, attempt_at, done_at)
             VALUES (gen_random_uuid(), 'email', $1, gen_random_uuid(), 'u', '{{}}', '{{}}', $2,
                     now(), {})",
            done.unwrap_or("NULL")
        ))
        .bind(format!("t{i}"))
        .bind(state)
        .execute(&db.pool)
        .await
        .expect("delivery row");
    }
    let pruned = retention::prune(&db.pool, Duration::from_secs(3600), 2)
        .await
        .expect("prune");
    assert_eq!(
        pruned,
        retention::Pruned {
            reminders: 4,
            deliveries: 3
        }
    );
    let left = |sql: &'static str| async {
        let labels: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&db.pool)
            .await
            .expect("left");
        labels
    };
    // The labels `prefix{i}` of the rows that were to stay.
    let kept = |prefix: &str, pruned: &[bool]| -> Vec<String> {
        pruned
            .iter()
            .enumerate()
            .filter(|(_, &gone)| !gone)
            .map(|(i, _)| format!("{prefix}{i}"))
            .collect()
    };
    assert_eq!(
        left("SELECT title FROM reminders ORDER BY title").await,
        kept("r", &reminders.map(|r| r.3))
    );
    assert_eq!(
        left("SELECT target FROM reminder_deliveries ORDER BY target").await,
        kept("t", &deliveries.map(|d| d.2))
    );
}

/// A consumer that cannot be set up ends the service with its error; the
/// clock, channel workers, retention and relay beside it end too instead
/// of keeping the process up, unready, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_cannot_start_ends_the_service_with_its_error() {
    let stack = Stack::new().await;
    let mut options = no_channels();
    // librdkafka refuses a session timeout of 0 when the consumer is made.
    options.consumer.session_timeout = Duration::ZERO;
    let app = App::build(&stack.settings(), options, Arc::new(LogDelivery))
        .await
        .expect("todo-notifier builds");
    let (_trigger, shutdown) = shutdown::channel();
    let ended = tokio::time::timeout(WAIT, app.run(shutdown))
        .await
        .expect("todo-notifier ended on its own, without a shutdown");
    let error = ended.expect_err("the consumer's error");
    assert!(
        format!("{error:#}").contains("session.timeout.ms"),
        "names the bad setting: {error:#}"
    );
}
