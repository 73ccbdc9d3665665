//! todo-notifier end to end: through todo-api and a real broker.

use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::producer::FutureRecord;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use todo_api::testing::{assert_schema_valid, Api, Stack};
use todo_notifier::app::{App, Options};
use todo_notifier::delivery::{Delivery, Due, LogDelivery};
use todo_shared::consumer::ConsumerConfig;
use todo_shared::envelope::Topic;
use todo_shared::shutdown::{self, ShutdownTrigger};
use todo_shared::testing::{EventReader, Received};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

struct Notifier {
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Notifier {
    async fn spawn(stack: &Stack, delivery: Arc<dyn Delivery>) -> Notifier {
        let mut consumer = ConsumerConfig::new(todo_notifier::NAME, &[Topic::TaskEvents]);
        consumer.session_timeout = Duration::from_secs(6);
        let options = Options {
            consumer,
            max_attempts: 3,
        };
        let app = App::build(&stack.settings(), options, delivery)
            .await
            .expect("todo-notifier starts");
        let (trigger, shutdown) = shutdown::channel();
        Notifier {
            trigger,
            handle: tokio::spawn(app.run(shutdown)),
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.handle
            .await
            .expect("task")
            .expect("todo-notifier ran cleanly");
    }
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn reminders(stack: &Stack) -> EventReader {
    EventReader::new(stack.broker.bootstrap(), &stack.topic(Topic::Reminders)).await
}

/// Reads reminder events until `done` says the list is complete.
async fn read_until(reader: &EventReader, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match reader.next(left).await {
            Some(e) => got.push(e),
            None => panic!(
                "reminder events so far: {:?}",
                got.iter()
                    .map(|e| e.event_type().to_owned())
                    .collect::<Vec<_>>()
            ),
        }
    }
    got
}

fn count(events: &[Received], kind: &str) -> usize {
    events.iter().filter(|e| e.event_type() == kind).count()
}

fn of_task<'a>(events: &'a [Received], task: &Value) -> Vec<&'a Received> {
    events
        .iter()
        .filter(|e| e.value["data"]["task_id"] == task["id"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_in_order_for_their_owner_only() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let notifier = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let (ann, bob) = (stack.token("ann"), stack.token("bob"));
    let now = Utc::now();
    // Due in 8 s: 2 s before it, 4 s before it, and at +5 s.
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "call the bank", "due_at": secs(now + TimeDelta::seconds(8)),
                   "reminders": [{"before": "PT2S"}, {"before": "PT4S"}, {"at": secs(now + TimeDelta::seconds(5))}]}),
        )
        .await;
    let bobs = stack
        .create(
            &api,
            &bob,
            json!({"title": "bob's", "due_at": secs(now + TimeDelta::seconds(7)), "reminders": [{"before": "PT1S"}]}),
        )
        .await;
    let reader = reminders(&stack).await;
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
        [4, 5, 6]
            .map(|s| now + TimeDelta::seconds(s))
            .map(|t| at(&json!(secs(t)))),
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
    assert_eq!(
        count(
            &of_task(&events, &task)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
            "reminder.scheduled"
        ),
        3
    );
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
    notifier.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_cancels_and_a_moved_due_time_moves_the_reminder() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let notifier = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let ann = stack.token("ann");
    let now = Utc::now();
    let done = stack
        .create(
            &api,
            &ann,
            json!({"title": "done early", "due_at": secs(now + TimeDelta::seconds(6)), "reminders": [{"before": "PT2S"}]}),
        )
        .await;
    let (status, body) = stack
        .call(
            &api,
            Method::POST,
            &format!(
                "/tasks/{}/complete",
                done["id"].as_str().unwrap_or_default()
            ),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let moved = stack
        .create(
            &api,
            &ann,
            json!({"title": "moved", "due_at": secs(now + TimeDelta::days(1)), "reminders": [{"before": "PT1H"}]}),
        )
        .await;
    let new_due = now + TimeDelta::hours(1) + TimeDelta::seconds(6);
    let (status, body) = stack
        .call(
            &api,
            Method::PATCH,
            &format!("/tasks/{}", moved["id"].as_str().unwrap_or_default()),
            &ann,
            Some(json!({"due_at": secs(new_due)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let reader = reminders(&stack).await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") == 1).await;
    // Let the completed task's reminder time pass too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = reader.drain(Duration::from_secs(1)).await;
    let all: Vec<Received> = events.into_iter().chain(later).collect();

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
    let target = now + TimeDelta::seconds(6);
    assert_eq!(
        at(&moved_events[1].value["data"]["remind_at"]),
        at(&json!(secs(target)))
    );
    assert_eq!(
        at(&moved_events[3].value["data"]["remind_at"]),
        at(&json!(secs(target)))
    );
    notifier.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_task_events_schedule_nothing_twice() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let notifier = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "far away", "due_at": secs(Utc::now() + TimeDelta::days(30)),
                   "reminders": [{"before": "P1D"}, {"before": "PT1H"}]}),
        )
        .await;
    let created = stack.task_events().await.take(1, WAIT).await;
    let producer = todo_shared::kafka::producer(&stack.kafka).expect("producer");
    let raw = serde_json::to_vec(&created[0].value).expect("json");
    for _ in 0..2 {
        producer
            .send(
                FutureRecord::to(&stack.topic(Topic::TaskEvents))
                    .key("ann")
                    .payload(&raw),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    // A later change of the same user: once its reminder is scheduled, the
    // copies before it have been read.
    let marker = stack
        .create(
            &api,
            &ann,
            json!({"title": "marker", "due_at": secs(Utc::now() + TimeDelta::days(30)), "reminders": [{"before": "PT1M"}]}),
        )
        .await;
    let reader = reminders(&stack).await;
    let events = read_until(&reader, |got| {
        got.iter()
            .any(|e| e.value["data"]["task_id"] == marker["id"])
    })
    .await;
    let extra = reader.drain(Duration::from_secs(1)).await;
    let all: Vec<Received> = events.into_iter().chain(extra).collect();
    assert_eq!(
        of_task(&all, &task).len(),
        2,
        "two reminders, scheduled once each"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM reminders WHERE task_id = $1::uuid")
        .bind(task["id"].as_str())
        .fetch_one(&stack.db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 2);
    notifier.stop().await;
    api.stop().await;
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
                json!({"title": format!("r{i}"), "reminders": [{"at": secs(now + TimeDelta::milliseconds(offset))}]}),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_send_each_reminder_once() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let a = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let b = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let tasks = reminders_due(&stack, &api, 40, 3, 6).await;
    let reader = reminders(&stack).await;
    let events = read_until(&reader, |got| count(got, "reminder.sent") >= tasks.len()).await;
    let more = reader.drain(Duration::from_secs(2)).await;
    let all: Vec<Received> = events.into_iter().chain(more).collect();
    let sent = sent_per_task(&all);
    assert_eq!(sent.len(), tasks.len());
    assert!(sent.values().all(|&n| n == 1), "{sent:?}");
    assert_eq!(count(&all, "reminder.triggered"), tasks.len());
    a.stop().await;
    b.stop().await;
    api.stop().await;
}

/// Fails the first `failures` attempts of every reminder, or all of them.
struct Flaky {
    failures: i32,
    calls: AtomicU32,
}

impl Delivery for Flaky {
    fn deliver(&self, due: &Due<'_>) -> Result<(), String> {
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
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    // Fails twice, then works (max_attempts is 3).
    let flaky = Arc::new(Flaky {
        failures: 2,
        calls: AtomicU32::new(0),
    });
    let notifier = Notifier::spawn(&stack, flaky.clone()).await;
    let ok = reminders_due(&stack, &api, 1, 2, 2).await;
    let reader = reminders(&stack).await;
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
    notifier.stop().await;

    // Always fails: three attempts, then reminder.failed with the reason.
    let hopeless = Arc::new(Flaky {
        failures: i32::MAX,
        calls: AtomicU32::new(0),
    });
    let notifier = Notifier::spawn(&stack, hopeless.clone()).await;
    let bad = reminders_due(&stack, &api, 1, 2, 2).await;
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
    api.stop().await;
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

fn spawn_binary(stack: &Stack) -> Killed {
    Killed(Some(
        stack
            .service_command(env!("CARGO_BIN_EXE_todo-notifier"))
            .spawn()
            .expect("todo-notifier binary starts"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_and_restart_fires_every_pending_reminder_once() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let mut notifier = spawn_binary(&stack);
    let tasks = reminders_due(&stack, &api, 30, 3, 9).await;
    let reader = reminders(&stack).await;
    // Kill it once some have been sent, mid-stream; it is down for 3 s.
    read_until(&reader, |got| count(got, "reminder.sent") >= 5).await;
    notifier.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    notifier = spawn_binary(&stack);

    let all = EventReader::new(stack.broker.bootstrap(), &stack.topic(Topic::Reminders)).await;
    let events = read_until(&all, |got| count(got, "reminder.sent") >= tasks.len()).await;
    let more = all.drain(Duration::from_secs(2)).await;
    let events: Vec<Received> = events.into_iter().chain(more).collect();
    let sent = sent_per_task(&events);
    assert_eq!(sent.len(), tasks.len());
    assert!(sent.values().all(|&n| n == 1), "{sent:?}");
    assert_eq!(count(&events, "reminder.triggered"), tasks.len());
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
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let notifier = Notifier::spawn(&stack, Arc::new(LogDelivery)).await;
    let mallory = stack.token("mallory");
    let seed_task = stack.create(&api, &mallory, json!({"title": "seed"})).await;
    let seed = stack.task_events().await.take(1, WAIT).await.remove(0);
    assert_eq!(seed.value["data"]["task"]["id"], seed_task["id"]);

    // Past todo-api's checks, onto the topic: a lead time before a due time
    // at the start of the calendar (the subtraction overflows), and a
    // reminder before 4713 BC (PostgreSQL cannot store it).
    let start_of_time =
        serde_json::to_value(DateTime::<Utc>::MIN_UTC + TimeDelta::days(1)).expect("time");
    let producer = todo_shared::kafka::producer(&stack.kafka).expect("producer");
    let mut poison = Vec::new();
    for (due, reminders) in [
        (start_of_time, json!([{"before": "P7D"}])),
        (json!(null), json!([{"at": "-4714-06-01T00:00:00Z"}])),
    ] {
        let mut event = seed.value.clone();
        event["id"] = json!(uuid::Uuid::new_v4());
        event["data"]["task"]["due_at"] = due;
        event["data"]["task"]["reminders"] = reminders;
        let raw = serde_json::to_vec(&event).expect("json");
        producer
            .send(
                FutureRecord::to(&stack.topic(Topic::TaskEvents))
                    .key("mallory")
                    .payload(&raw),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        poison.push(event);
    }

    // The next user's reminders: the extremes todo-api accepts are all
    // scheduled (one already past, fired at once), none dead-lettered.
    let ann = stack.token("ann");
    let soon = Utc::now() + TimeDelta::seconds(2);
    let extreme = stack
        .create(
            &api,
            &ann,
            json!({"title": "end of time", "due_at": "9999-12-31T23:59:59Z",
                   "reminders": [{"before": "P366D"}, {"at": "9999-12-31T23:59:59Z"}, {"at": "1970-01-01T00:00:00Z"}]}),
        )
        .await;
    let normal = stack
        .create(
            &api,
            &ann,
            json!({"title": "soon", "reminders": [{"at": secs(soon)}]}),
        )
        .await;
    let reader = reminders(&stack).await;
    let events = read_until(&reader, |got| {
        got.iter().any(|e| {
            e.event_type() == "reminder.sent" && e.value["data"]["task_id"] == normal["id"]
        }) && got.iter().any(|e| {
            e.event_type() == "reminder.sent" && e.value["data"]["task_id"] == extreme["id"]
        })
    })
    .await;
    assert_eq!(
        count(
            &of_task(&events, &extreme)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
            "reminder.scheduled"
        ),
        3,
        "every reminder the API accepted is scheduled"
    );
    let dlq = EventReader::new(
        stack.broker.bootstrap(),
        &todo_shared::consumer::dlq_topic(&stack.topic(Topic::TaskEvents)),
    )
    .await;
    let letters = dlq.drain(Duration::from_secs(3)).await;
    assert!(
        letters.iter().all(|l| l.key == "mallory"),
        "only the impossible events may be set aside: {:?}",
        letters.iter().map(|l| &l.value).collect::<Vec<_>>()
    );
    notifier.stop().await;
    api.stop().await;
}
