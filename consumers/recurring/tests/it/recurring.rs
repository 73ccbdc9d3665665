//! todo-recurring end to end: through todo-api and a real broker.

use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::producer::FutureRecord;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_recurring::app::App;
use todo_testing::Received;
use tokio::task::JoinHandle;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

struct Recurring {
    base: String,
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Recurring {
    /// A todo-recurring in consumer group `group` (services in different
    /// groups both see every event: the hardest case for duplicates).
    async fn spawn(stack: &Stack, group: &str) -> Recurring {
        let mut config = ConsumerConfig::new(group, &[Topic::TaskEvents]);
        config.session_timeout = Duration::from_secs(6);
        let app = App::build(&stack.settings(), config)
            .await
            .expect("todo-recurring starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (trigger, shutdown) = shutdown::channel();
        Recurring {
            base,
            trigger,
            handle: tokio::spawn(app.run(shutdown)),
        }
    }

    /// The sum of a metric's samples in this service's /metrics.
    async fn metric(&self, stack: &Stack, name: &str) -> f64 {
        stack.metric_sum(&self.base, name).await
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.handle
            .await
            .expect("task")
            .expect("todo-recurring ran cleanly");
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn due_of(task: &Value) -> DateTime<Utc> {
    at(task["due_at"].as_str().expect("due_at"))
}

/// The instances of a series other than `origin`, oldest due first.
async fn instances(stack: &Stack, series: &str) -> Vec<(Uuid, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT id, due_at FROM tasks WHERE series_id = $1::uuid AND id <> series_id ORDER BY due_at",
    )
    .bind(series)
    .fetch_all(&stack.db.pool)
    .await
    .expect("instances")
}

async fn wait_instances(stack: &Stack, series: &str, n: usize) -> Vec<(Uuid, DateTime<Utc>)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = instances(stack, series).await;
        assert!(
            found.len() <= n,
            "{series}: {} instances, expected {n}: {found:?}",
            found.len()
        );
        if found.len() == n {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series}: {} of {n} instances",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `group` has processed `event_id` (and, the partition being
/// ordered, everything of that user before it).
async fn processed(stack: &Stack, group: &str, event_id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2::uuid)",
        )
        .bind(group)
        .bind(event_id)
        .fetch_one(&stack.db.pool)
        .await
        .expect("processed");
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} never processed {event_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn complete(stack: &Stack, api: &Api, token: &str, id: &str) -> Value {
    let (status, body) = stack
        .call(
            api,
            Method::POST,
            &format!("/tasks/{id}/complete"),
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The published event of `type` about `task_id`.
async fn event_of(stack: &Stack, kind: &str, task_id: &str) -> Received {
    let reader = stack.task_events().await;
    loop {
        let e = reader.next(WAIT).await.expect("event");
        if e.event_type() == kind && e.value["subject"] == task_id {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_an_instance_creates_the_next_one_in_the_tasks_zone() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    // Mondays 09:00 in Berlin; the first is Monday Jan 7 2030 (CET, 08:00Z).
    let task = stack
        .create(
            &api,
            &ann,
            json!({
                "title": "Team sync", "description": "weekly", "priority": "high", "tags": ["work"],
                "due_at": "2030-01-07T08:00:00Z",
                "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "on_completion"},
                "reminders": [{"before": "PT1H"}, {"at": "2030-01-06T18:00:00Z"}]
            }),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(task["series_id"], task["id"]);
    complete(&stack, &api, &ann, &id).await;
    let completion = event_of(&stack, "task.completed", &id).await;

    let next = wait_instances(&stack, &id, 1).await;
    assert_eq!(next[0].1, at("2030-01-14T08:00:00Z"));
    let next_id = next[0].0.to_string();
    let (status, next_task) = stack
        .call(&api, Method::GET, &format!("/tasks/{next_id}"), &ann, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{next_task}");
    for field in [
        "title",
        "description",
        "priority",
        "tags",
        "recurrence",
        "series_id",
    ] {
        assert_eq!(next_task[field], task[field], "{field} is kept");
    }
    assert_eq!(next_task["completed"], false);
    assert_eq!(
        next_task["reminders"],
        json!([{"before": "PT1H"}, {"at": "2030-01-13T18:00:00Z"}]),
        "an absolute reminder moves with the due time"
    );
    // Its event names the completion as its cause and keeps the correlation.
    let created = event_of(&stack, "task.created", &next_id).await;
    assert_eq!(created.value["source"], "todo-recurring");
    assert_eq!(created.value["causationid"], completion.value["id"]);
    assert_eq!(
        created.value["correlationid"],
        completion.value["correlationid"]
    );
    assert_eq!(created.key, "ann");

    // Completing the new instance continues the series.
    complete(&stack, &api, &ann, &next_id).await;
    let both = wait_instances(&stack, &id, 2).await;
    assert_eq!(both[1].1, at("2030-01-21T08:00:00Z"));
    recurring.stop().await;
    api.stop().await;
}

/// An assistant's way: add_task and complete_task over MCP (rmcp's client);
/// todo-recurring sees the same event as from REST and creates the next
/// instance, which list_tasks then shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_weekly_task_over_mcp_creates_the_next_instance() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let mcp = stack.mcp(&api, &stack.token("ann")).await;
    let added = mcp
        .call(
            "add_task",
            json!({
                "title": "Water the plants", "due_at": "2030-01-07T08:00:00Z",
                "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "on_completion"}
            }),
        )
        .await;
    let id = added.ok()["id"].as_str().expect("id").to_owned();
    assert_eq!(
        added.ok()["next_occurrence"],
        "2030-01-14T08:00:00Z",
        "an assistant sees what comes next"
    );
    let done = mcp.call("complete_task", json!({"task_id": id})).await;
    assert_eq!(done.ok()["completed"], true);

    let next = wait_instances(&stack, &id, 1).await;
    assert_eq!(
        next[0].1,
        at("2030-01-14T08:00:00Z"),
        "the next Monday, 09:00 Berlin"
    );
    let open = mcp.call("list_tasks", json!({"status": "open"})).await;
    let items = open.ok()["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], next[0].0.to_string());
    assert_eq!(items[0]["series_id"], id.as_str());
    assert_eq!(items[0]["title"], "Water the plants");
    let created = event_of(&stack, "task.created", &next[0].0.to_string()).await;
    let completion = event_of(&stack, "task.completed", &id).await;
    assert_eq!(
        created.value["correlationid"], completion.value["correlationid"],
        "the instance's event carries the completion's correlation id"
    );
    mcp.close().await;
    recurring.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_repeated_completions_create_one_instance() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "Daily", "due_at": "2030-03-01T07:00:00Z",
                   "recurrence": {"rule": "FREQ=DAILY;COUNT=2", "timezone": "UTC", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &id).await;
    let completion = event_of(&stack, "task.completed", &id).await;
    wait_instances(&stack, &id, 1).await;

    // The completion event delivered twice more ...
    let producer = todo_platform::kafka::producer(&stack.kafka).expect("producer");
    let raw = serde_json::to_vec(&completion.value).expect("json");
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
    // ... and the instance reopened and completed again (a new event).
    let (status, body) = stack
        .call(
            &api,
            Method::POST,
            &format!("/tasks/{id}/reopen"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    complete(&stack, &api, &ann, &id).await;
    // Completing the last instance of COUNT=2 creates nothing.
    let second = instances(&stack, &id).await[0].0.to_string();
    complete(&stack, &api, &ann, &second).await;
    let marker = stack.create(&api, &ann, json!({"title": "marker"})).await;
    let marker_event = event_of(
        &stack,
        "task.created",
        marker["id"].as_str().unwrap_or_default(),
    )
    .await;
    processed(&stack, "todo-recurring", marker_event.id()).await;

    let all = instances(&stack, &id).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].1, at("2030-03-02T07:00:00Z"));
    recurring.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_seeing_every_completion_create_one_instance_each() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let a = Recurring::spawn(&stack, "todo-recurring").await;
    let b = Recurring::spawn(&stack, "todo-recurring-replica").await;
    let users = ["ann", "ben", "cat"];
    let mut series = Vec::new();
    for (i, user) in users.iter().cycle().take(15).enumerate() {
        let token = stack.token(user);
        let task = stack
            .create(
                &api,
                &token,
                json!({"title": format!("chore {i}"), "due_at": "2030-05-31T10:00:00Z",
                       "recurrence": {"rule": "FREQ=MONTHLY", "timezone": "UTC", "mode": "on_completion"}}),
            )
            .await;
        let id = task["id"].as_str().expect("id").to_owned();
        complete(&stack, &api, &token, &id).await;
        series.push(id);
    }
    for id in &series {
        let next = wait_instances(&stack, id, 1).await;
        // May 31 monthly: June has 30 days.
        assert_eq!(next[0].1, at("2030-06-30T10:00:00Z"));
    }
    // Both services have seen everything by now; still one instance each.
    let last = stack
        .create(&api, &stack.token("ann"), json!({"title": "marker"}))
        .await;
    let marker = event_of(
        &stack,
        "task.created",
        last["id"].as_str().unwrap_or_default(),
    )
    .await;
    for group in ["todo-recurring", "todo-recurring-replica"] {
        processed(&stack, group, marker.id()).await;
    }
    for id in &series {
        assert_eq!(instances(&stack, id).await.len(), 1, "series {id}");
    }
    a.stop().await;
    b.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_mode_creates_instances_when_they_come_due_and_only_the_latest_missed() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    let now = Utc::now();
    let secs = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    // Daily, first due a day ago plus 4 s: the next occurrence is 4 s away.
    let soon = (now + TimeDelta::seconds(4)).with_nanosecond_zero();
    let upcoming = stack
        .create(
            &api,
            &ann,
            json!({"title": "water plants", "due_at": secs(soon - TimeDelta::days(1)),
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;
    // Daily, first due three days and an hour ago: two occurrences were
    // missed "during downtime"; only the latest (an hour ago) is created.
    let long_ago = (now - TimeDelta::days(3) - TimeDelta::hours(1)).with_nanosecond_zero();
    let missed = stack
        .create(
            &api,
            &ann,
            json!({"title": "feed cat", "due_at": secs(long_ago),
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;

    let caught_up = wait_instances(&stack, missed["id"].as_str().expect("id"), 1).await;
    assert_eq!(caught_up[0].1, long_ago + TimeDelta::days(3));

    let due = wait_instances(&stack, upcoming["id"].as_str().expect("id"), 1).await;
    assert_eq!(due[0].1, soon);
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT created_at FROM tasks WHERE id = $1")
            .bind(due[0].0)
            .fetch_one(&stack.db.pool)
            .await
            .expect("created_at");
    assert!(
        created_at >= soon,
        "created at {created_at}, before its occurrence {soon}"
    );
    eprintln!(
        "schedule: instance created {} ms after its occurrence",
        (created_at - soon).num_milliseconds()
    );
    assert_eq!(due_of(&upcoming), soon - TimeDelta::days(1));
    recurring.stop().await;
    api.stop().await;
}

trait NoNanos {
    fn with_nanosecond_zero(self) -> Self;
}

impl NoNanos for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

/// Publishes `envelope` to task-events as if a producer had written it,
/// past todo-api's checks.
async fn inject(stack: &Stack, user: &str, envelope: &Value) {
    let producer = todo_platform::kafka::producer(&stack.kafka).expect("producer");
    let raw = serde_json::to_vec(envelope).expect("json");
    producer
        .send(
            FutureRecord::to(&stack.topic(Topic::TaskEvents))
                .key(user)
                .payload(&raw),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// `event` as another event: a fresh id, `edit` applied to its task.
fn forged(event: &Received, kind: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = event.value.clone();
    v["id"] = json!(Uuid::new_v4());
    v["type"] = json!(kind);
    edit(&mut v["data"]["task"]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_impossible_task_does_not_stop_recurrence_for_anyone_else() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let mallory = stack.token("mallory");
    let seed = stack.create(&api, &mallory, json!({"title": "seed"})).await;
    let seed = event_of(
        &stack,
        "task.created",
        seed["id"].as_str().unwrap_or_default(),
    )
    .await;

    // Straight onto the topic: a recurring task due in year 262142 in
    // Berlin (its local time is past what the calendar can hold), the same
    // at UTC+14, and the completion of a series whose reminder would move
    // past the end of time.
    let far = |zone: &'static str| {
        move |task: &mut Value| {
            task["due_at"] = json!("+262142-12-31T23:59:59Z");
            task["series_id"] = task["id"].clone();
            task["recurrence"] =
                json!({"rule": "FREQ=DAILY", "timezone": zone, "mode": "schedule"});
        }
    };
    let poison = [
        forged(&seed, "task.created", far("Europe/Berlin")),
        forged(&seed, "task.created", far("Etc/GMT-14")),
        forged(&seed, "task.completed", |task| {
            task["due_at"] = json!("2030-01-07T08:00:00Z");
            task["series_id"] = task["id"].clone();
            task["completed"] = json!(true);
            task["completed_at"] = json!("2030-01-07T09:00:00Z");
            task["recurrence"] =
                json!({"rule": "FREQ=WEEKLY", "timezone": "UTC", "mode": "on_completion"});
            task["reminders"] = json!([{"at": "+262142-12-31T23:59:59Z"}]);
        }),
    ];
    for event in &poison {
        inject(&stack, "mallory", event).await;
    }

    // The next user's series carries on.
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "standup", "due_at": "2030-01-07T08:00:00Z",
                   "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &id).await;
    let next = wait_instances(&stack, &id, 1).await;
    assert_eq!(next[0].1, at("2030-01-14T08:00:00Z"));

    // Each impossible event is set aside, with the reason, and nothing else.
    let dlq = todo_testing::EventReader::new(
        stack.broker.bootstrap(),
        &todo_consumer::dlq_topic(&stack.topic(Topic::TaskEvents)),
    )
    .await;
    let letters = dlq.take(poison.len(), WAIT).await;
    let mut ids: Vec<&str> = letters.iter().map(|l| l.id()).collect();
    let mut expected: Vec<&str> = poison.iter().filter_map(|p| p["id"].as_str()).collect();
    ids.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for letter in &letters {
        assert_eq!(letter.header("dlq.consumer"), Some("todo-recurring"));
        assert!(letter.header("dlq.error").is_some_and(|e| !e.is_empty()));
    }
    assert!(dlq.drain(Duration::from_secs(2)).await.is_empty());
    recurring.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_without_the_token_secret() {
    let stack = Stack::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut child = stack
        .service_command(env!("CARGO_BIN_EXE_todo-recurring"))
        .env_remove("JWT_SECRET")
        .env("PORT", port.to_string())
        .spawn()
        .expect("starts");
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = stack.http.get(&health).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(
            child.try_wait().expect("status").is_none(),
            "todo-recurring exited without JWT_SECRET"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served /health"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_this_version_does_not_know_is_skipped_not_dead_lettered() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "weekly", "due_at": "2030-01-07T08:00:00Z",
                   "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "UTC", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    let created = event_of(&stack, "task.created", &id).await;
    // A newer producer's event type, in the middle of ann's stream.
    inject(&stack, "ann", &forged(&created, "task.archived", |_| {})).await;
    complete(&stack, &api, &ann, &id).await;
    wait_instances(&stack, &id, 1).await;
    let dlq = todo_testing::EventReader::new(
        stack.broker.bootstrap(),
        &todo_consumer::dlq_topic(&stack.topic(Topic::TaskEvents)),
    )
    .await;
    assert!(
        dlq.drain(Duration::from_secs(2)).await.is_empty(),
        "nothing set aside"
    );
    recurring.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_latest_instance_advances_its_series() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    // Weekly, first due on a Monday a month ago.
    let first_due = Utc::now() - TimeDelta::days(30);
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "review", "due_at": first_due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                   "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "UTC", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &id).await;
    let next = wait_instances(&stack, &id, 1).await;
    assert!(
        next[0].1 > Utc::now(),
        "the next instance is ahead: {next:?}"
    );
    // The old instance completed again, later than the next one's due time
    // (as if reopened and completed next month): the series is not the old
    // instance's to advance any more.
    let completion = event_of(&stack, "task.completed", &id).await;
    let late =
        (next[0].1 + TimeDelta::days(8)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    inject(
        &stack,
        "ann",
        &forged(&completion, "task.completed", |t| {
            t["completed_at"] = json!(late)
        }),
    )
    .await;
    let marker = stack.create(&api, &ann, json!({"title": "marker"})).await;
    let marker = event_of(
        &stack,
        "task.created",
        marker["id"].as_str().unwrap_or_default(),
    )
    .await;
    processed(&stack, "todo-recurring", marker.id()).await;
    let all = instances(&stack, &id).await;
    assert_eq!(all.len(), 1, "one open instance, not two: {all:?}");
    recurring.stop().await;
    api.stop().await;
}

/// A series that ended longer ago than the retention is forgotten, its row
/// too; a later completion of one of its older instances (reopened and
/// completed again) must not start it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_forgotten_after_its_retention_is_not_started_again_by_an_old_instance() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "water plants", "due_at": "2030-03-01T07:00:00Z",
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &id).await;
    let second = wait_instances(&stack, &id, 1).await[0].0.to_string();
    complete(&stack, &api, &ann, &second).await;
    let third = wait_instances(&stack, &id, 2).await[1].0.to_string();
    // Deleting the latest instance ends the series.
    let (status, body) = stack
        .call(&api, Method::DELETE, &format!("/tasks/{third}"), &ann, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let deleted = event_of(&stack, "task.deleted", &third).await;
    processed(&stack, "todo-recurring", deleted.id()).await;
    assert_eq!(series_active(&stack, &id).await, Some(false));
    // ... two hours ago; the retention is an hour.
    sqlx::query("UPDATE recurring_series SET updated_at = now() - interval '2 hours'")
        .execute(&stack.db.pool)
        .await
        .expect("age the series");
    let pruned = todo_recurring::retention::prune(&stack.db.pool, Duration::from_secs(3600), 100)
        .await
        .expect("prune");
    assert_eq!((pruned.instances, pruned.series), (3, 1));
    assert_eq!(
        series_active(&stack, &id).await,
        None,
        "the series row went too"
    );

    // The second instance reopened and completed again.
    let (status, body) = stack
        .call(
            &api,
            Method::POST,
            &format!("/tasks/{second}/reopen"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    complete(&stack, &api, &ann, &second).await;
    let marker = stack.create(&api, &ann, json!({"title": "marker"})).await;
    let marker = event_of(
        &stack,
        "task.created",
        marker["id"].as_str().unwrap_or_default(),
    )
    .await;
    processed(&stack, "todo-recurring", marker.id()).await;
    assert_eq!(
        instances(&stack, &id).await.len(),
        1,
        "the deleted third is not replaced"
    );
    assert_eq!(
        series_active(&stack, &id).await,
        None,
        "nor the series restarted"
    );
    recurring.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_locked_elsewhere_does_not_make_the_scheduler_spin() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    // Daily, its next occurrence 2 s away.
    let soon = Utc::now() + TimeDelta::seconds(2);
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "daily", "due_at": (soon - TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;
    let series = task["id"].as_str().expect("id").to_owned();
    // Another replica holds the series (here: the test's transaction).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut holder = stack.db.pool.begin().await.expect("begin");
    loop {
        let held: Option<Uuid> = sqlx::query_scalar(
            "SELECT series_id FROM recurring_series WHERE series_id = $1::uuid FOR UPDATE",
        )
        .bind(&series)
        .fetch_optional(&mut *holder)
        .await
        .expect("lock");
        if held.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the series never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(
        (soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500),
    )
    .await;
    let before = recurring
        .metric(&stack, "todo_recurring_scheduler_rounds_total")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rounds = recurring
        .metric(&stack, "todo_recurring_scheduler_rounds_total")
        .await
        - before;
    assert!(
        rounds <= 5.0,
        "{rounds} rounds in 3 s while the due series was held elsewhere"
    );
    holder.rollback().await.expect("release");
    // Released, it gets its instance (a new schedule series wakes the
    // scheduler).
    stack
        .create(
            &api,
            &ann,
            json!({"title": "wake", "due_at": "2030-01-01T00:00:00Z",
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;
    wait_instances(&stack, &series, 1).await;
    recurring.stop().await;
    api.stop().await;
}

/// Whether todo-recurring still runs `series` (false: COUNT or UNTIL ended it).
async fn series_active(stack: &Stack, series: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT active FROM recurring_series WHERE series_id = $1::uuid")
        .bind(series)
        .fetch_optional(&stack.db.pool)
        .await
        .expect("series")
}

fn next_of(task: &Value) -> Option<DateTime<Utc>> {
    task["next_occurrence"].as_str().map(at)
}

/// What a task says comes next, and what todo-recurring then creates: the
/// same instant every time, and null exactly when nothing follows. The rules
/// are the hard ones: month ends, a leap day, COUNT and UNTIL, DST changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_occurrence_is_always_the_due_time_of_the_instance_todo_recurring_creates() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    // (rule, zone, first due time, tasks the series has: None = unbounded,
    // completed this many times)
    let cases: &[(&str, &str, &str, Option<usize>, usize)] = &[
        (
            "FREQ=MONTHLY",
            "Europe/Berlin",
            "2030-01-31T08:00:00Z",
            None,
            4,
        ),
        ("FREQ=YEARLY", "UTC", "2032-02-29T09:00:00Z", None, 2),
        (
            "FREQ=WEEKLY;COUNT=3",
            "America/New_York",
            "2030-03-04T14:00:00Z",
            Some(3),
            3,
        ),
        (
            "FREQ=DAILY;UNTIL=20300103T000000Z",
            "Asia/Tokyo",
            "2030-01-01T00:00:00Z",
            Some(3),
            3,
        ),
        (
            "FREQ=DAILY;BYHOUR=2;BYMINUTE=30",
            "Europe/Berlin",
            "2030-03-30T01:30:00Z",
            None,
            2,
        ),
    ];
    for &(rule, zone, first, length, completions) in cases {
        let what = format!("{rule} in {zone} from {first}");
        let origin = stack
            .create(
                &api,
                &ann,
                json!({"title": what, "due_at": first,
                       "recurrence": {"rule": rule, "timezone": zone, "mode": "on_completion"}}),
            )
            .await;
        let series = origin["id"].as_str().expect("id").to_owned();
        assert_eq!(
            origin["series_start"].as_str().map(at),
            Some(at(first)),
            "{what}"
        );
        let mut current = origin;
        for done in 1..=completions {
            let id = current["id"].as_str().expect("id").to_owned();
            let completed = complete(&stack, &api, &ann, &id).await;
            let promised = next_of(&completed);
            assert_eq!(
                promised,
                next_of(&current),
                "{what}: completing before the due time changes nothing"
            );
            let ended = length == Some(done);
            assert_eq!(
                promised.is_none(),
                ended,
                "{what}: after {done}: {completed}"
            );
            if ended {
                let completion = event_of(&stack, "task.completed", &id).await;
                processed(
                    &stack,
                    "todo-recurring",
                    completion.value["id"].as_str().expect("id"),
                )
                .await;
                assert_eq!(series_active(&stack, &series).await, Some(false), "{what}");
                assert_eq!(instances(&stack, &series).await.len(), done - 1, "{what}");
                break;
            }
            let made = wait_instances(&stack, &series, done).await;
            let (next_id, next_due) = made[done - 1];
            assert_eq!(Some(next_due), promised, "{what}: instance {done}");
            let (status, next) = stack
                .call(&api, Method::GET, &format!("/tasks/{next_id}"), &ann, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{next}");
            assert_eq!(
                next["series_start"].as_str().map(at),
                Some(at(first)),
                "{what}"
            );
            current = next;
        }
    }

    // A new rule on a later instance starts the series afresh there.
    let origin = stack
        .create(
            &api,
            &ann,
            json!({"title": "restarted", "due_at": "2030-01-31T08:00:00Z",
                   "recurrence": {"rule": "FREQ=MONTHLY", "timezone": "Europe/Berlin", "mode": "on_completion"}}),
        )
        .await;
    let series = origin["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &series).await;
    let (first_instance, due) = wait_instances(&stack, &series, 1).await[0];
    let (status, changed) = stack
        .call(
            &api,
            Method::PATCH,
            &format!("/tasks/{first_instance}"),
            &ann,
            Some(json!({"recurrence": {"rule": "FREQ=WEEKLY;COUNT=2", "timezone": "Europe/Berlin", "mode": "on_completion"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["series_start"].as_str().map(at), Some(due));
    assert_eq!(next_of(&changed), Some(due + TimeDelta::days(7)));
    let completed = complete(&stack, &api, &ann, &first_instance.to_string()).await;
    let made = wait_instances(&stack, &series, 2).await;
    assert_eq!(Some(made[1].1), next_of(&completed));
    let (_, last) = stack
        .call(
            &api,
            Method::GET,
            &format!("/tasks/{}", made[1].0),
            &ann,
            None,
        )
        .await;
    assert_eq!(
        last["next_occurrence"],
        Value::Null,
        "COUNT=2 from the restart: {last}"
    );

    // `schedule`: the instance comes when its occurrence does. A daily
    // series whose first due time was a day ago, less a few seconds.
    let first = (Utc::now() - TimeDelta::days(1) + TimeDelta::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let origin = stack
        .create(
            &api,
            &ann,
            json!({"title": "scheduled", "due_at": first,
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;
    let promised = next_of(&origin).expect("a next occurrence");
    assert_eq!(promised, at(&first) + TimeDelta::days(1));
    let made = wait_instances(&stack, origin["id"].as_str().expect("id"), 1).await;
    assert_eq!(made[0].1, promised);
    recurring.stop().await;
    api.stop().await;
}

/// The series events of `series`, in the order published.
fn series_events<'a>(events: &'a [Received], series: &str) -> Vec<&'a Received> {
    events
        .iter()
        .filter(|e| {
            e.event_type().starts_with("recurring.") && e.value["data"]["series_id"] == series
        })
        .collect()
}

/// Every change of a series is a `recurring.*` event on task-events, keyed
/// by its user, in their sequence, once, valid against its schema, about
/// the task its history shows it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_of_a_series_is_one_recurring_event_in_its_users_order() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let ann = stack.token("ann");
    let weekly =
        |rule: &str| json!({"rule": rule, "timezone": "Europe/Berlin", "mode": "on_completion"});

    // Started, one instance (the last of COUNT=2), ended.
    let counted = stack
        .create(
            &api,
            &ann,
            json!({"title": "counted", "due_at": "2030-01-07T08:00:00Z",
                                   "recurrence": weekly("FREQ=WEEKLY;COUNT=2")}),
        )
        .await;
    let counted_id = counted["id"].as_str().expect("id").to_owned();
    complete(&stack, &api, &ann, &counted_id).await;
    let (instance, _) = wait_instances(&stack, &counted_id, 1).await[0];
    complete(&stack, &api, &ann, &instance.to_string()).await;

    // Started, its rule changed, its rule removed.
    let edited = stack
        .create(
            &api,
            &ann,
            json!({"title": "edited", "due_at": "2030-01-07T08:00:00Z",
                                   "recurrence": weekly("FREQ=DAILY")}),
        )
        .await;
    let edited_id = edited["id"].as_str().expect("id").to_owned();
    for recurrence in [weekly("FREQ=WEEKLY"), Value::Null] {
        let (status, body) = stack
            .call(
                &api,
                Method::PATCH,
                &format!("/tasks/{edited_id}"),
                &ann,
                Some(json!({"recurrence": recurrence})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Started, its latest (and only) instance deleted.
    let deleted = stack
        .create(
            &api,
            &ann,
            json!({"title": "deleted", "due_at": "2030-01-07T08:00:00Z",
                                   "recurrence": weekly("FREQ=DAILY")}),
        )
        .await;
    let deleted_id = deleted["id"].as_str().expect("id").to_owned();
    let (status, _) = stack
        .call(
            &api,
            Method::DELETE,
            &format!("/tasks/{deleted_id}"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A schedule's instance comes on its own.
    let first = (Utc::now() - TimeDelta::days(1) + TimeDelta::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let scheduled = stack
        .create(
            &api,
            &ann,
            json!({"title": "scheduled", "due_at": first,
              "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
        )
        .await;
    let scheduled_id = scheduled["id"].as_str().expect("id").to_owned();

    let reader = stack.task_events().await;
    let mut events: Vec<Received> = Vec::new();
    let expected = 3 + 3 + 2 + 2;
    while events
        .iter()
        .filter(|e| e.event_type().starts_with("recurring."))
        .count()
        < expected
    {
        let e = reader.next(WAIT).await.unwrap_or_else(|| {
            panic!(
                "series events so far: {:?}",
                events
                    .iter()
                    .map(|e| e.event_type().to_owned())
                    .collect::<Vec<_>>()
            )
        });
        events.push(e);
    }
    // And nothing more of them, once every task event so far has arrived.
    stack.outbox_drained(WAIT).await;
    while let Some(e) = reader.next(Duration::from_secs(2)).await {
        events.push(e);
    }
    todo_api::testing::assert_schema_valid(&events);
    let kinds = |series: &str| -> Vec<String> {
        series_events(&events, series)
            .iter()
            .map(|e| e.event_type().to_owned())
            .collect()
    };
    assert_eq!(
        kinds(&counted_id),
        [
            "recurring.created",
            "recurring.instance.created",
            "recurring.cancelled"
        ]
    );
    assert_eq!(
        kinds(&edited_id),
        [
            "recurring.created",
            "recurring.rule.changed",
            "recurring.cancelled"
        ]
    );
    assert_eq!(
        kinds(&deleted_id),
        ["recurring.created", "recurring.cancelled"]
    );
    assert_eq!(
        kinds(&scheduled_id),
        ["recurring.created", "recurring.instance.created"]
    );

    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e.value["id"] == id)
            .expect("the cause is published")
    };
    let c = series_events(&events, &counted_id);
    assert_eq!(c[0].value["subject"], counted_id.as_str());
    assert_eq!(c[0].value["source"], "todo-recurring");
    assert_eq!(c[0].key, "ann");
    assert_eq!(c[0].value["data"]["series_start"], "2030-01-07T08:00:00Z");
    assert_eq!(
        c[0].value["data"]["next_occurrence"],
        "2030-01-14T08:00:00Z"
    );
    assert_eq!(
        by_id(c[0].value["causationid"].as_str().expect("cause")).event_type(),
        "task.created"
    );
    assert_eq!(
        c[1].value["subject"],
        instance.to_string(),
        "about the new instance"
    );
    assert_eq!(c[1].value["data"]["occurrence"], "2030-01-14T08:00:00Z");
    assert_eq!(c[1].value["data"]["cause"], "completion");
    assert_eq!(
        c[1].value["data"]["next_occurrence"],
        Value::Null,
        "COUNT=2: the last"
    );
    let completion = by_id(c[1].value["causationid"].as_str().expect("cause"));
    assert_eq!(completion.event_type(), "task.completed");
    assert_eq!(completion.value["subject"], counted_id.as_str());
    assert_eq!(
        c[1].value["correlationid"],
        completion.value["correlationid"]
    );
    assert_eq!(c[2].value["data"]["reason"], "ended");
    assert_eq!(c[2].value["subject"], instance.to_string());

    let e = series_events(&events, &edited_id);
    assert_eq!(e[1].value["data"]["previous"]["rule"], "FREQ=DAILY");
    assert_eq!(e[1].value["data"]["recurrence"]["rule"], "FREQ=WEEKLY");
    assert_eq!(e[2].value["data"]["reason"], "rule_removed");
    assert_eq!(
        series_events(&events, &deleted_id)[1].value["data"]["reason"],
        "task_deleted"
    );
    let s = series_events(&events, &scheduled_id);
    assert_eq!(s[1].value["data"]["cause"], "schedule");
    assert!(
        s[1].value.get("causationid").is_none(),
        "the schedule caused it: {}",
        s[1].value
    );

    // One user's events, one partition, in their sequence.
    let sequences: Vec<i64> = events.iter().map(Received::sequence).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    recurring.stop().await;
    api.stop().await;
}

/// Instance records, then the series rows, go once their series has been
/// over for longer than the retention; running series and recent ends stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_series_lose_their_instance_records_after_the_retention_in_batches() {
    let db = todo_testing::TestDatabase::create().await;
    // (active, ended or last changed, instances, pruned?)
    let series = [
        (false, "now() - interval '2 hours'", 3, true),
        (false, "now() - interval '10 minutes'", 2, false),
        (true, "now() - interval '2 hours'", 2, false),
    ];
    let mut ids = Vec::new();
    for (active, updated, instances, _) in series {
        let id = Uuid::new_v4();
        sqlx::query(&format!(
            "INSERT INTO recurring_series (series_id, user_id, recurrence, mode, dtstart, template,
                                           active, updated_at)
             VALUES ($1, 'u', '{{}}', 'on_completion', now(), '{{}}', $2, {updated})"
        ))
        .bind(id)
        .bind(active)
        .execute(&db.pool)
        .await
        .expect("series row");
        for n in 0..instances {
            sqlx::query(
                "INSERT INTO recurring_instances (series_id, occurrence_at, task_id)
                 VALUES ($1, now() - make_interval(days => $2::int), gen_random_uuid())",
            )
            .bind(id)
            .bind(n)
            .execute(&db.pool)
            .await
            .expect("instance row");
        }
        ids.push(id);
    }
    let pruned = todo_recurring::retention::prune(&db.pool, Duration::from_secs(3600), 2)
        .await
        .expect("prune");
    assert_eq!((pruned.instances, pruned.series), (3, 1));
    for (id, (_, _, instances, gone)) in ids.iter().zip(series) {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM recurring_instances WHERE series_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .expect("count");
        assert_eq!(left, if gone { 0 } else { instances });
    }
    let rows: Vec<Uuid> = sqlx::query_scalar("SELECT series_id FROM recurring_series")
        .fetch_all(&db.pool)
        .await
        .expect("series left");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(!rows.contains(&ids[0]), "the ended series went: {rows:?}");
}

/// The window between an erasure's commit and todo-recurring reading its
/// `user.erased`: the scheduler makes no instance for the erased user, drops
/// their series, and goes on with everyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_makes_nothing_for_an_erased_user_and_holds_up_no_one() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let recurring = Recurring::spawn(&stack, "todo-recurring").await;
    let (ann, bob) = (stack.token("ann"), stack.token("bob"));
    let now = Utc::now();
    let secs = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Ann's next occurrence comes first, bob's 3 s later.
    let anns_at = (now + TimeDelta::seconds(4)).with_nanosecond_zero();
    let bobs_at = anns_at + TimeDelta::seconds(3);
    let mut series = Vec::new();
    for (token, at) in [(&ann, anns_at), (&bob, bobs_at)] {
        let task = stack
            .create(
                &api,
                token,
                json!({"title": "daily", "due_at": secs(at - TimeDelta::days(1)),
                       "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
            )
            .await;
        series.push(task["id"].as_str().expect("id").to_owned());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let started: i64 = sqlx::query_scalar("SELECT count(*) FROM recurring_series")
            .fetch_one(&stack.db.pool)
            .await
            .expect("series");
        if started == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "series never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // As todo-api's erasure leaves it, without the event.
    sqlx::query("UPDATE event_sequences SET erased_at = now() WHERE user_id = 'ann'")
        .execute(&stack.db.pool)
        .await
        .expect("tombstone");

    let bobs = wait_instances(&stack, &series[1], 1).await;
    assert_eq!(bobs[0].1, bobs_at);
    assert!(
        instances(&stack, &series[0]).await.is_empty(),
        "an instance for ann"
    );
    let anns_series: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recurring_series WHERE user_id = 'ann'")
            .fetch_one(&stack.db.pool)
            .await
            .expect("count");
    assert_eq!(anns_series, 0, "ann's series is forgotten");
    recurring.stop().await;
    api.stop().await;
}

/// A consumer that cannot be set up ends the service with its error; the
/// scheduler, retention and relay beside it end too instead of keeping the
/// process up, unready, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_cannot_start_ends_the_service_with_its_error() {
    let stack = Stack::new().await;
    let mut config = ConsumerConfig::new("todo-recurring", &[Topic::TaskEvents]);
    // librdkafka refuses a session timeout of 0 when the consumer is made.
    config.session_timeout = Duration::ZERO;
    let app = App::build(&stack.settings(), config)
        .await
        .expect("todo-recurring builds");
    let (_trigger, shutdown) = shutdown::channel();
    let ended = tokio::time::timeout(WAIT, app.run(shutdown))
        .await
        .expect("todo-recurring ended on its own, without a shutdown");
    let error = ended.expect_err("the consumer's error");
    assert!(
        format!("{error:#}").contains("session.timeout.ms"),
        "names the bad setting: {error:#}"
    );
}
