//! todo-recurring end to end: through todo-api and a real broker.

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_recurring::app::App;
use todo_testing::{EventReader, Received};
use tokio::task::JoinHandle;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// todo-recurring's consumer group as deployed.
const GROUP: &str = "todo-recurring";

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

    /// How many rounds the scheduler makes in `window` from now.
    async fn scheduler_rounds_in(&self, stack: &Stack, window: Duration) -> f64 {
        let rounds = || stack.metric_sum(&self.base, "todo_recurring_scheduler_rounds_total");
        let before = rounds().await;
        tokio::time::sleep(window).await;
        rounds().await - before
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.handle
            .await
            .expect("task")
            .expect("todo-recurring ran cleanly");
    }
}

/// What most tests run on: a stack of their own with a todo-api, one
/// todo-recurring in [`GROUP`], and ann, the user who owns the series.
struct Fixture {
    stack: Stack,
    api: Api,
    recurring: Recurring,
    ann: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let stack = Stack::new().await;
        let api = stack.spawn_api().await;
        let recurring = Recurring::spawn(&stack, GROUP).await;
        let ann = stack.token("ann");
        Fixture {
            stack,
            api,
            recurring,
            ann,
        }
    }

    /// Creates a task of `token`'s user: the task and its id.
    async fn create(&self, token: &str, body: Value) -> (Value, String) {
        let task = self.stack.create(&self.api, token, body).await;
        let id = task["id"].as_str().expect("id").to_owned();
        (task, id)
    }

    /// Starts a series of `token`'s user: its first task and its id.
    async fn series(
        &self,
        token: &str,
        title: &str,
        due_at: &str,
        recurrence: Value,
    ) -> (Value, String) {
        self.create(
            token,
            json!({"title": title, "due_at": due_at, "recurrence": recurrence}),
        )
        .await
    }

    /// A daily `schedule` series whose next occurrence is `next`: its first
    /// task was due a day before.
    async fn daily_schedule(
        &self,
        token: &str,
        title: &str,
        next: DateTime<Utc>,
    ) -> (Value, String) {
        let first =
            (next - TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.series(
            token,
            title,
            &first,
            recurrence("FREQ=DAILY", "UTC", "schedule"),
        )
        .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.stack.call(&self.api, method, path, token, body).await
    }

    /// A call that must answer 200: its body.
    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, token, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn complete(&self, token: &str, id: &str) -> Value {
        self.ok(Method::POST, &format!("/tasks/{id}/complete"), token, None)
            .await
    }

    async fn reopen(&self, token: &str, id: &str) {
        self.ok(Method::POST, &format!("/tasks/{id}/reopen"), token, None)
            .await;
    }

    async fn delete(&self, token: &str, id: &str) {
        let (status, body) = self
            .call(Method::DELETE, &format!("/tasks/{id}"), token, None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }

    /// The instances of `series` other than its first task, oldest due first.
    async fn instances(&self, series: &str) -> Vec<(Uuid, DateTime<Utc>)> {
        instances(&self.stack, series).await
    }

    async fn wait_instances(&self, series: &str, n: usize) -> Vec<(Uuid, DateTime<Utc>)> {
        wait_instances(&self.stack, series, n).await
    }

    async fn event_of(&self, kind: &str, task_id: &str) -> Received {
        event_of(&self.stack, kind, task_id).await
    }

    /// Waits until each of `groups` has read all of ann's events so far
    /// (those before a marker task's creation, her partition being ordered).
    async fn caught_up(&self, groups: &[&str]) {
        let (_, marker) = self.create(&self.ann, json!({"title": "marker"})).await;
        let marker = self.event_of("task.created", &marker).await;
        for group in groups {
            processed(&self.stack, group, marker.id()).await;
        }
    }

    /// Whether todo-recurring still runs `series` (false: COUNT or UNTIL
    /// ended it; None: it is forgotten).
    async fn series_active(&self, series: &str) -> Option<bool> {
        sqlx::query_scalar("SELECT active FROM recurring_series WHERE series_id = $1::uuid")
            .bind(series)
            .fetch_optional(&self.stack.db.pool)
            .await
            .expect("series")
    }

    async fn stop(self) {
        self.recurring.stop().await;
        self.api.stop().await;
    }
}

fn recurrence(rule: &str, timezone: &str, mode: &str) -> Value {
    json!({"rule": rule, "timezone": timezone, "mode": mode})
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn due_of(task: &Value) -> DateTime<Utc> {
    at(task["due_at"].as_str().expect("due_at"))
}

fn next_of(task: &Value) -> Option<DateTime<Utc>> {
    task["next_occurrence"].as_str().map(at)
}

/// Polls `check` until it is Ok; after [`WAIT`] fails with its last Err.
async fn eventually<T, F>(mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    todo_testing::eventually(WAIT, Duration::from_millis(50), async || check().await).await
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
    eventually(move || async move {
        let found = instances(stack, series).await;
        assert!(
            found.len() <= n,
            "{series}: {} instances, expected {n}: {found:?}",
            found.len()
        );
        if found.len() == n {
            Ok(found)
        } else {
            Err(format!("{series}: {} of {n} instances", found.len()))
        }
    })
    .await
}

/// Waits until `group` has processed `event_id` (and, the partition being
/// ordered, everything of that user before it).
async fn processed(stack: &Stack, group: &str, event_id: &str) {
    eventually(move || async move {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2::uuid)",
        )
        .bind(group)
        .bind(event_id)
        .fetch_one(&stack.db.pool)
        .await
        .expect("processed");
        done.then_some(())
            .ok_or_else(|| format!("{group} never processed {event_id}"))
    })
    .await
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

/// `event` as another event: a fresh id, `edit` applied to its task.
fn forged(event: &Received, kind: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = event.value.clone();
    v["id"] = json!(Uuid::new_v4());
    v["type"] = json!(kind);
    edit(&mut v["data"]["task"]);
    v
}

/// A reader of what todo-recurring set aside from task-events.
async fn dead_letters(stack: &Stack) -> EventReader {
    EventReader::new(
        stack.broker.bootstrap(),
        &todo_consumer::dlq_topic(&stack.topic(Topic::TaskEvents)),
    )
    .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_an_instance_creates_the_next_one_in_the_tasks_zone() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    // Mondays 09:00 in Berlin; the first is Monday Jan 7 2030 (CET, 08:00Z).
    let (task, id) = t
        .create(
            ann,
            json!({
                "title": "Team sync", "description": "weekly", "priority": "high", "tags": ["work"],
                "due_at": "2030-01-07T08:00:00Z",
                "recurrence": recurrence("FREQ=WEEKLY;BYDAY=MO", "Europe/Berlin", "on_completion"),
                "reminders": [{"before": "PT1H"}, {"at": "2030-01-06T18:00:00Z"}]
            }),
        )
        .await;
    assert_eq!(task["series_id"], task["id"]);
    t.complete(ann, &id).await;
    let completion = t.event_of("task.completed", &id).await;

    let next = t.wait_instances(&id, 1).await;
    assert_eq!(next[0].1, at("2030-01-14T08:00:00Z"));
    let next_id = next[0].0.to_string();
    let next_task = t
        .ok(Method::GET, &format!("/tasks/{next_id}"), ann, None)
        .await;
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
    let created = t.event_of("task.created", &next_id).await;
    assert_eq!(created.value["source"], "todo-recurring");
    assert_eq!(created.value["causationid"], completion.value["id"]);
    assert_eq!(
        created.value["correlationid"],
        completion.value["correlationid"]
    );
    assert_eq!(created.key, "ann");

    // Completing the new instance continues the series.
    t.complete(ann, &next_id).await;
    let both = t.wait_instances(&id, 2).await;
    assert_eq!(both[1].1, at("2030-01-21T08:00:00Z"));
    t.stop().await;
}

/// An assistant's way: add_task and complete_task over MCP (rmcp's client);
/// todo-recurring sees the same event as from REST and creates the next
/// instance, which list_tasks then shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_weekly_task_over_mcp_creates_the_next_instance() {
    let t = Fixture::start().await;
    let mcp = t.stack.mcp(&t.api, &t.ann).await;
    let added = mcp
        .call(
            "add_task",
            json!({
                "title": "Water the plants", "due_at": "2030-01-07T08:00:00Z",
                "recurrence": recurrence("FREQ=WEEKLY;BYDAY=MO", "Europe/Berlin", "on_completion")
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

    let next = t.wait_instances(&id, 1).await;
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
    let created = t.event_of("task.created", &next[0].0.to_string()).await;
    let completion = t.event_of("task.completed", &id).await;
    assert_eq!(
        created.value["correlationid"], completion.value["correlationid"],
        "the instance's event carries the completion's correlation id"
    );
    mcp.close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_repeated_completions_create_one_instance() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    let (_, id) = t
        .series(
            ann,
            "Daily",
            "2030-03-01T07:00:00Z",
            recurrence("FREQ=DAILY;COUNT=2", "UTC", "on_completion"),
        )
        .await;
    t.complete(ann, &id).await;
    let completion = t.event_of("task.completed", &id).await;
    t.wait_instances(&id, 1).await;

    // The completion event delivered twice more ...
    for _ in 0..2 {
        t.stack.inject("ann", &completion.value).await;
    }
    // ... and the instance reopened and completed again (a new event).
    t.reopen(ann, &id).await;
    t.complete(ann, &id).await;
    // Completing the last instance of COUNT=2 creates nothing.
    let second = t.instances(&id).await[0].0.to_string();
    t.complete(ann, &second).await;
    t.caught_up(&[GROUP]).await;

    let all = t.instances(&id).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].1, at("2030-03-02T07:00:00Z"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_seeing_every_completion_create_one_instance_each() {
    const REPLICA: &str = "todo-recurring-replica";
    let t = Fixture::start().await;
    let replica = Recurring::spawn(&t.stack, REPLICA).await;
    let users = ["ann", "ben", "cat"];
    let mut series = Vec::new();
    for (i, user) in users.iter().cycle().take(15).enumerate() {
        let token = t.stack.token(user);
        let (_, id) = t
            .series(
                &token,
                &format!("chore {i}"),
                "2030-05-31T10:00:00Z",
                recurrence("FREQ=MONTHLY", "UTC", "on_completion"),
            )
            .await;
        t.complete(&token, &id).await;
        series.push(id);
    }
    for id in &series {
        let next = t.wait_instances(id, 1).await;
        // May 31 monthly: June has 30 days.
        assert_eq!(next[0].1, at("2030-06-30T10:00:00Z"));
    }
    // Both services have seen everything by now; still one instance each.
    t.caught_up(&[GROUP, REPLICA]).await;
    for id in &series {
        assert_eq!(t.instances(id).await.len(), 1, "series {id}");
    }
    replica.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_mode_creates_instances_when_they_come_due_and_only_the_latest_missed() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    let now = Utc::now();

    // Daily, first due a day ago plus 4 s: the next occurrence is 4 s away.
    let soon = (now + TimeDelta::seconds(4)).with_nanosecond_zero();
    let (upcoming, upcoming_id) = t.daily_schedule(ann, "water plants", soon).await;
    // Daily, first due three days and an hour ago: two occurrences were
    // missed "during downtime"; only the latest (an hour ago) is created.
    let long_ago = (now - TimeDelta::days(3) - TimeDelta::hours(1)).with_nanosecond_zero();
    let (_, missed) = t
        .series(
            ann,
            "feed cat",
            &secs(long_ago),
            recurrence("FREQ=DAILY", "UTC", "schedule"),
        )
        .await;

    let caught_up = t.wait_instances(&missed, 1).await;
    assert_eq!(caught_up[0].1, long_ago + TimeDelta::days(3));

    let due = t.wait_instances(&upcoming_id, 1).await;
    assert_eq!(due[0].1, soon);
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT created_at FROM tasks WHERE id = $1")
            .bind(due[0].0)
            .fetch_one(&t.stack.db.pool)
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
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_impossible_task_does_not_stop_recurrence_for_anyone_else() {
    let t = Fixture::start().await;
    let mallory = t.stack.token("mallory");
    let (_, seed) = t.create(&mallory, json!({"title": "seed"})).await;
    let seed = t.event_of("task.created", &seed).await;

    // Straight onto the topic: a recurring task due in year 262142 in
    // Berlin (its local time is past what the calendar can hold), the same
    // at UTC+14, and the completion of a series whose reminder would move
    // past the end of time.
    let far = |zone: &'static str| {
        move |task: &mut Value| {
            task["due_at"] = json!("+262142-12-31T23:59:59Z");
            task["series_id"] = task["id"].clone();
            task["recurrence"] = recurrence("FREQ=DAILY", zone, "schedule");
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
            task["recurrence"] = recurrence("FREQ=WEEKLY", "UTC", "on_completion");
            task["reminders"] = json!([{"at": "+262142-12-31T23:59:59Z"}]);
        }),
    ];
    for event in &poison {
        t.stack.inject("mallory", event).await;
    }

    // The next user's series carries on.
    let (_, id) = t
        .series(
            &t.ann,
            "standup",
            "2030-01-07T08:00:00Z",
            recurrence("FREQ=WEEKLY;BYDAY=MO", "Europe/Berlin", "on_completion"),
        )
        .await;
    t.complete(&t.ann, &id).await;
    let next = t.wait_instances(&id, 1).await;
    assert_eq!(next[0].1, at("2030-01-14T08:00:00Z"));

    // Each impossible event is set aside, with the reason, and nothing else.
    let dlq = dead_letters(&t.stack).await;
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
    t.stop().await;
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
    let t = Fixture::start().await;
    let (_, id) = t
        .series(
            &t.ann,
            "weekly",
            "2030-01-07T08:00:00Z",
            recurrence("FREQ=WEEKLY", "UTC", "on_completion"),
        )
        .await;
    let created = t.event_of("task.created", &id).await;
    // A newer producer's event type, in the middle of ann's stream.
    t.stack
        .inject("ann", &forged(&created, "task.archived", |_| {}))
        .await;
    t.complete(&t.ann, &id).await;
    t.wait_instances(&id, 1).await;
    assert!(
        dead_letters(&t.stack)
            .await
            .drain(Duration::from_secs(2))
            .await
            .is_empty(),
        "nothing set aside"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_latest_instance_advances_its_series() {
    let t = Fixture::start().await;
    // Weekly, first due on a Monday a month ago.
    let first_due = Utc::now() - TimeDelta::days(30);
    let (_, id) = t
        .series(
            &t.ann,
            "review",
            &secs(first_due),
            recurrence("FREQ=WEEKLY", "UTC", "on_completion"),
        )
        .await;
    t.complete(&t.ann, &id).await;
    let next = t.wait_instances(&id, 1).await;
    assert!(
        next[0].1 > Utc::now(),
        "the next instance is ahead: {next:?}"
    );
    // The old instance completed again, later than the next one's due time
    // (as if reopened and completed next month): the series is not the old
    // instance's to advance any more.
    let completion = t.event_of("task.completed", &id).await;
    let late =
        (next[0].1 + TimeDelta::days(8)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    t.stack
        .inject(
            "ann",
            &forged(&completion, "task.completed", |task| {
                task["completed_at"] = json!(late)
            }),
        )
        .await;
    t.caught_up(&[GROUP]).await;
    let all = t.instances(&id).await;
    assert_eq!(all.len(), 1, "one open instance, not two: {all:?}");
    t.stop().await;
}

/// A series that ended longer ago than the retention is forgotten, its row
/// too; a later completion of one of its older instances (reopened and
/// completed again) must not start it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_forgotten_after_its_retention_is_not_started_again_by_an_old_instance() {
    let t = Fixture::start().await;
    let ann = &t.ann;
    let (_, id) = t
        .series(
            ann,
            "water plants",
            "2030-03-01T07:00:00Z",
            recurrence("FREQ=DAILY", "UTC", "on_completion"),
        )
        .await;
    t.complete(ann, &id).await;
    let second = t.wait_instances(&id, 1).await[0].0.to_string();
    t.complete(ann, &second).await;
    let third = t.wait_instances(&id, 2).await[1].0.to_string();
    // Deleting the latest instance ends the series.
    t.delete(ann, &third).await;
    let deleted = t.event_of("task.deleted", &third).await;
    processed(&t.stack, GROUP, deleted.id()).await;
    assert_eq!(t.series_active(&id).await, Some(false));
    // ... two hours ago; the retention is an hour.
    sqlx::query("UPDATE recurring_series SET updated_at = now() - interval '2 hours'")
        .execute(&t.stack.db.pool)
        .await
        .expect("age the series");
    let pruned = todo_recurring::retention::prune(&t.stack.db.pool, Duration::from_secs(3600), 100)
        .await
        .expect("prune");
    assert_eq!((pruned.instances, pruned.series), (3, 1));
    assert_eq!(t.series_active(&id).await, None, "the series row went too");

    // The second instance reopened and completed again.
    t.reopen(ann, &second).await;
    t.complete(ann, &second).await;
    t.caught_up(&[GROUP]).await;
    assert_eq!(
        t.instances(&id).await.len(),
        1,
        "the deleted third is not replaced"
    );
    assert_eq!(t.series_active(&id).await, None, "nor the series restarted");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_locked_elsewhere_does_not_make_the_scheduler_spin() {
    let t = Fixture::start().await;
    // Daily, its next occurrence 2 s away.
    let soon = Utc::now() + TimeDelta::seconds(2);
    let (_, series) = t.daily_schedule(&t.ann, "daily", soon).await;
    // Another replica holds the series (here: the test's transaction), once
    // todo-recurring has started it.
    let pool = &t.stack.db.pool;
    let series_ref = series.as_str();
    eventually(move || async move {
        let started: Option<Uuid> =
            sqlx::query_scalar("SELECT series_id FROM recurring_series WHERE series_id = $1::uuid")
                .bind(series_ref)
                .fetch_optional(pool)
                .await
                .expect("series");
        started
            .map(drop)
            .ok_or_else(|| "the series never started".to_owned())
    })
    .await;
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT series_id FROM recurring_series WHERE series_id = $1::uuid FOR UPDATE")
        .bind(&series)
        .fetch_one(&mut *holder)
        .await
        .expect("lock");
    // Past the occurrence: the scheduler has the series due now.
    tokio::time::sleep(
        (soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500),
    )
    .await;
    let rounds = t
        .recurring
        .scheduler_rounds_in(&t.stack, Duration::from_secs(3))
        .await;
    assert!(
        rounds <= 5.0,
        "{rounds} rounds in 3 s while the due series was held elsewhere"
    );
    holder.rollback().await.expect("release");
    // Released, it gets its instance (a new schedule series wakes the
    // scheduler).
    t.series(
        &t.ann,
        "wake",
        "2030-01-01T00:00:00Z",
        recurrence("FREQ=DAILY", "UTC", "schedule"),
    )
    .await;
    t.wait_instances(&series, 1).await;
    t.stop().await;
}

/// What a task says comes next, and what todo-recurring then creates: the
/// same instant every time, and null exactly when nothing follows. The rules
/// are the hard ones: month ends, a leap day, COUNT and UNTIL, DST changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_occurrence_is_always_the_due_time_of_the_instance_todo_recurring_creates() {
    let t = Fixture::start().await;
    let ann = &t.ann;
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
        let (origin, series) = t
            .series(ann, &what, first, recurrence(rule, zone, "on_completion"))
            .await;
        assert_eq!(
            origin["series_start"].as_str().map(at),
            Some(at(first)),
            "{what}"
        );
        let mut current = origin;
        for done in 1..=completions {
            let id = current["id"].as_str().expect("id").to_owned();
            let completed = t.complete(ann, &id).await;
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
                let completion = t.event_of("task.completed", &id).await;
                processed(
                    &t.stack,
                    GROUP,
                    completion.value["id"].as_str().expect("id"),
                )
                .await;
                assert_eq!(t.series_active(&series).await, Some(false), "{what}");
                assert_eq!(t.instances(&series).await.len(), done - 1, "{what}");
                break;
            }
            let made = t.wait_instances(&series, done).await;
            let (next_id, next_due) = made[done - 1];
            assert_eq!(Some(next_due), promised, "{what}: instance {done}");
            let next = t
                .ok(Method::GET, &format!("/tasks/{next_id}"), ann, None)
                .await;
            assert_eq!(
                next["series_start"].as_str().map(at),
                Some(at(first)),
                "{what}"
            );
            current = next;
        }
    }

    // A new rule on a later instance starts the series afresh there.
    let (_, series) = t
        .series(
            ann,
            "restarted",
            "2030-01-31T08:00:00Z",
            recurrence("FREQ=MONTHLY", "Europe/Berlin", "on_completion"),
        )
        .await;
    t.complete(ann, &series).await;
    let (first_instance, due) = t.wait_instances(&series, 1).await[0];
    let changed = t
        .ok(
            Method::PATCH,
            &format!("/tasks/{first_instance}"),
            ann,
            Some(
                json!({"recurrence": recurrence("FREQ=WEEKLY;COUNT=2", "Europe/Berlin", "on_completion")}),
            ),
        )
        .await;
    assert_eq!(changed["series_start"].as_str().map(at), Some(due));
    assert_eq!(next_of(&changed), Some(due + TimeDelta::days(7)));
    let completed = t.complete(ann, &first_instance.to_string()).await;
    let made = t.wait_instances(&series, 2).await;
    assert_eq!(Some(made[1].1), next_of(&completed));
    let (_, last) = t
        .call(Method::GET, &format!("/tasks/{}", made[1].0), ann, None)
        .await;
    assert_eq!(
        last["next_occurrence"],
        Value::Null,
        "COUNT=2 from the restart: {last}"
    );

    // `schedule`: the instance comes when its occurrence does. A daily
    // series whose first due time was a day ago, less a few seconds.
    let next = (Utc::now() + TimeDelta::seconds(4)).with_nanosecond_zero();
    let (origin, id) = t.daily_schedule(ann, "scheduled", next).await;
    let promised = next_of(&origin).expect("a next occurrence");
    // The time sent (a day before `next`) plus a day: the API's own
    // `due_at` would hide a due time it stored wrongly.
    assert_eq!(promised, next);
    let made = t.wait_instances(&id, 1).await;
    assert_eq!(made[0].1, promised);
    t.stop().await;
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
    let t = Fixture::start().await;
    let ann = &t.ann;
    let weekly = |rule: &str| recurrence(rule, "Europe/Berlin", "on_completion");
    let monday = "2030-01-07T08:00:00Z";

    // Started, one instance (the last of COUNT=2), ended.
    let (_, counted_id) = t
        .series(ann, "counted", monday, weekly("FREQ=WEEKLY;COUNT=2"))
        .await;
    t.complete(ann, &counted_id).await;
    let (instance, _) = t.wait_instances(&counted_id, 1).await[0];
    t.complete(ann, &instance.to_string()).await;

    // Started, its rule changed, its rule removed.
    let (_, edited_id) = t.series(ann, "edited", monday, weekly("FREQ=DAILY")).await;
    for recurrence in [weekly("FREQ=WEEKLY"), Value::Null] {
        t.ok(
            Method::PATCH,
            &format!("/tasks/{edited_id}"),
            ann,
            Some(json!({"recurrence": recurrence})),
        )
        .await;
    }

    // Started, its latest (and only) instance deleted.
    let (_, deleted_id) = t.series(ann, "deleted", monday, weekly("FREQ=DAILY")).await;
    t.delete(ann, &deleted_id).await;

    // A schedule's instance comes on its own.
    let next = (Utc::now() + TimeDelta::seconds(3)).with_nanosecond_zero();
    let (_, scheduled_id) = t.daily_schedule(ann, "scheduled", next).await;

    let reader = t.stack.task_events().await;
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
    t.stack.outbox_drained(WAIT).await;
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
    t.stop().await;
}

/// The window between an erasure's commit and todo-recurring reading its
/// `user.erased`: the scheduler makes no instance for the erased user, drops
/// their series, and goes on with everyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_makes_nothing_for_an_erased_user_and_holds_up_no_one() {
    let t = Fixture::start().await;
    let bob = t.stack.token("bob");
    let now = Utc::now();
    // Ann's next occurrence comes first, bob's 3 s later.
    let anns_at = (now + TimeDelta::seconds(4)).with_nanosecond_zero();
    let bobs_at = anns_at + TimeDelta::seconds(3);
    let (_, anns) = t.daily_schedule(&t.ann, "daily", anns_at).await;
    let (_, bobs) = t.daily_schedule(&bob, "daily", bobs_at).await;
    let pool = &t.stack.db.pool;
    eventually(move || async move {
        let started: i64 = sqlx::query_scalar("SELECT count(*) FROM recurring_series")
            .fetch_one(pool)
            .await
            .expect("series");
        (started == 2)
            .then_some(())
            .ok_or_else(|| "series never started".to_owned())
    })
    .await;
    // As todo-api's erasure leaves it, without the event.
    sqlx::query("UPDATE event_sequences SET erased_at = now() WHERE user_id = 'ann'")
        .execute(pool)
        .await
        .expect("tombstone");

    let bobs = t.wait_instances(&bobs, 1).await;
    assert_eq!(bobs[0].1, bobs_at);
    assert!(t.instances(&anns).await.is_empty(), "an instance for ann");
    let anns_series: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recurring_series WHERE user_id = 'ann'")
            .fetch_one(pool)
            .await
            .expect("count");
    assert_eq!(anns_series, 0, "ann's series is forgotten");
    t.stop().await;
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
