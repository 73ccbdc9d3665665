//! Per-user erasure across the platform, every service a process of its
//! own: after `DELETE /me` (and `todo-api erase-user`) nothing the user
//! wrote is left in any table of the database, their open page is told and
//! closed, later writes are refused, an event of theirs that arrives late is
//! skipped by every consumer, and another user keeps everything. A replay
//! snapshot taken before the erasure loses the user's tasks too.

use crate::processes::{
    binary, create_daily, eventually, metric_lines, platform_env, produce, run_to_success,
    scratch_dir, serve_post, Stack, API, AUDIT, NOTIFIER, REALTIME, RECURRING,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use todo_testing::{self as testing, Broker, TestDatabase};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// The tables a seeded person has rows in (besides recurring_instances,
/// whose rows hold no text of theirs).
const SEEDED: [&str; 8] = [
    "tasks",
    "audit_events",
    "reminders",
    "reminder_deliveries",
    "recurring_series",
    "notifier_channels",
    "notification_preferences",
    "idempotency_keys",
];

/// Webhook deliveries received, by the path's last segment.
type Hooks = Arc<Mutex<HashMap<String, usize>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_user_leaves_nothing_in_any_table_and_stays_erased() {
    testing::init_logging();
    let broker = Broker::start();
    let db = TestDatabase::create().await;
    let hooks = Hooks::default();
    let hook_port = serve_post("/hook/{who}", receive_hook, hooks.clone()).await;
    let prefix = testing::unique_prefix();
    let mut common = platform_env(&db, &broker, &prefix);
    common.extend([
        ("JWT_SECRET", testing::JWT_SECRET.to_owned()),
        ("WEBHOOK_SECRET_KEY", testing::WEBHOOK_SECRET_KEY.to_owned()),
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".into()),
    ]);
    let mut stack = Stack::new(scratch_dir());
    for name in [API, RECURRING, NOTIFIER, AUDIT, REALTIME] {
        stack.start(name, &common, &[]);
    }
    let http = reqwest::Client::new();
    stack.wait_all_ready(&http).await;
    let api = format!("http://127.0.0.1:{}", stack.port(API));

    let alice = Person::new("erase", &stack, &api);
    let bob = Person::new("keep", &stack, &api);
    let alice_series = alice.seed(&http, hook_port).await;
    bob.seed(&http, hook_port).await;
    for who in [&alice, &bob] {
        eventually(
            &format!("{}'s reminder reached their webhook", who.id),
            || async { hooks_of(&hooks, &who.marker) >= 1 },
        )
        .await;
        eventually(&format!("todo-audit stored {}'s reminder.sent", who.id), || async {
            count(&db.pool, "SELECT count(*) FROM audit_events WHERE user_id = $1 AND event_type = 'reminder.sent'", &who.id).await >= 1
        })
        .await;
        eventually(
            &format!("todo-recurring made {}'s next instance", who.id),
            || async { who.tasks(&http).await.len() == 3 },
        )
        .await;
    }
    // Everything the test will look for is there before the erasure.
    for table in SEEDED {
        for who in [&alice, &bob] {
            assert!(
                rows_holding(&db.pool, table, &who.marker).await > 0,
                "{table} holds {}'s text before the erasure",
                who.id
            );
        }
    }
    assert!(instances_of(&db.pool, alice_series).await > 0);
    // A replay snapshot holds her tasks too.
    let snapshot = Command::new(binary(AUDIT))
        .arg("snapshot")
        .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("todo-audit snapshot");
    assert!(snapshot.status.success(), "{snapshot:?}");
    assert!(rows_holding(&db.pool, "audit_snapshot_tasks", &alice.marker).await > 0);
    let late_task_event = stored_envelope(&db.pool, &alice.id, "task.created").await;
    let late_reminder_event = stored_envelope(&db.pool, &alice.id, "reminder.sent").await;

    // Alice's page is open when she erases herself.
    let (mut page, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/ws?token={}",
        stack.port(REALTIME),
        alice.token
    ))
    .await
    .expect("alice's WebSocket");
    let erased = http
        .delete(format!("{api}/me"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("DELETE /me");
    assert_eq!(erased.status(), StatusCode::ACCEPTED);
    let erased: Value = erased.json().await.expect("erasure body");
    assert_eq!(erased["tasks"], 3, "{erased}");
    assert!(erased["event_id"].is_string(), "{erased}");

    let (told, close) = read_until_closed(&mut page).await;
    assert!(
        told.iter().any(|f| f["type"] == "user.erased"),
        "the page was told: {told:?}"
    );
    assert_eq!(close, Some(4004), "and closed as erased");

    erasure_handled(&http, &stack, &db.pool, &alice, 1).await;
    assert_forgotten(&db.pool, &alice).await;
    assert_eq!(instances_of(&db.pool, alice_series).await, 0);

    // Late events: one already processed (a redelivery) and one no consumer
    // has seen (as from the other topic, after the erasure).
    for (topic, envelope) in [
        ("task-events", late_task_event.clone()),
        ("task-events", with_new_id(&late_task_event)),
        ("reminders", with_new_id(&late_reminder_event)),
    ] {
        let topic = format!("{prefix}{topic}");
        produce(broker.bootstrap(), &topic, &alice.id, &envelope.to_string()).await;
    }
    for (service, skipped) in [(RECURRING, 1), (NOTIFIER, 1), (AUDIT, 2)] {
        let port = stack.port(service);
        eventually(&format!("{service} skipped the late events"), || async {
            metric_value(&http, port, "todo_events_skipped_erased_user_total", "").await >= skipped
        })
        .await;
    }
    assert_forgotten(&db.pool, &alice).await;

    // Final: writes are refused, reads find nothing, erasing again is a no-op.
    let refused = http
        .post(format!("{api}/tasks"))
        .bearer_auth(&alice.token)
        .json(&json!({"title": "back again"}))
        .send()
        .await
        .expect("POST /tasks");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.expect("problem");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/problems/user-erased")),
        "{problem}"
    );
    let refused = http
        .put(format!("{api}/me/notifications"))
        .bearer_auth(&alice.token)
        .json(&json!({"webhook": null}))
        .send()
        .await
        .expect("PUT /me/notifications");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(alice.tasks(&http).await.is_empty());
    let again: Value = http
        .delete(format!("{api}/me"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("DELETE /me again")
        .json()
        .await
        .expect("body");
    assert_eq!(again, json!({"event_id": null, "tasks": 0}));

    // Bob keeps everything.
    assert_eq!(bob.tasks(&http).await.len(), 3);
    for table in SEEDED {
        assert!(
            rows_holding(&db.pool, table, &bob.marker).await > 0,
            "{table} still holds bob's rows"
        );
    }

    // The operators' command does the same.
    let carol = Person::new("cli", &stack, &api);
    carol.seed(&http, hook_port).await;
    eventually("todo-audit stored carol's events", || async {
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE user_id = $1",
            &carol.id,
        )
        .await
            >= 3
    })
    .await;
    run_to_success(
        "todo-api erase-user",
        Command::new(binary(API))
            .args(["erase-user", "--user", &carol.id])
            .envs(common.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    erasure_handled(&http, &stack, &db.pool, &carol, 2).await;
    assert_forgotten(&db.pool, &carol).await;
}

/// A user of the test: an id, a token, and a marker that every text they
/// write contains (title, description, tags, webhook URL, user agent).
struct Person {
    id: String,
    marker: String,
    token: String,
    api: String,
}

impl Person {
    fn new(kind: &str, stack: &Stack, api: &str) -> Person {
        let id = format!("{kind}-{}", Uuid::new_v4().simple());
        Person {
            marker: format!("marker{}", Uuid::new_v4().simple()),
            token: stack.token(&id),
            id,
            api: api.to_owned(),
        }
    }

    fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        http.request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .header("user-agent", format!("browser {}", self.marker))
    }

    /// A webhook, a task whose reminder fires now and one that fires in a
    /// week, and a recurring task completed once (so a second instance is
    /// made); the first create with an Idempotency-Key. Returns the series.
    async fn seed(&self, http: &reqwest::Client, hook_port: u16) -> Uuid {
        let m = &self.marker;
        let put = self
            .request(http, reqwest::Method::PUT, "/me/notifications")
            .json(&json!({"webhook": {"url": format!("http://127.0.0.1:{hook_port}/hook/{m}"), "enabled": true}}))
            .send()
            .await
            .expect("PUT /me/notifications");
        assert_eq!(put.status(), StatusCode::OK, "{:?}", put.text().await);
        let now = chrono::Utc::now();
        let due = (now + chrono::Duration::hours(1)).to_rfc3339();
        let soon = (now + chrono::Duration::seconds(2)).to_rfc3339();
        let later = (now + chrono::Duration::days(7)).to_rfc3339();
        let task = json!({
            "title": format!("call {m}"),
            "description": format!("about {m}"),
            "tags": [m],
            "due_at": due,
            "reminders": [{"at": soon}, {"at": later}],
        });
        let created = self
            .request(http, reqwest::Method::POST, "/tasks")
            .header("Idempotency-Key", format!("key-{m}"))
            .json(&task)
            .send()
            .await
            .expect("POST /tasks");
        assert_eq!(
            created.status(),
            StatusCode::CREATED,
            "{:?}",
            created.text().await
        );
        let create = self.request(http, reqwest::Method::POST, "/tasks");
        let series = create_daily(create, format!("stand-up {m}"), due).await;
        let id = series["id"].as_str().expect("id");
        let done = self
            .request(
                http,
                reqwest::Method::POST,
                &format!("/tasks/{id}/complete"),
            )
            .send()
            .await
            .expect("complete");
        assert!(done.status().is_success(), "{:?}", done.text().await);
        series["series_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("series_id")
    }

    async fn tasks(&self, http: &reqwest::Client) -> Vec<Value> {
        let page: Value = self
            .request(http, reqwest::Method::GET, "/tasks")
            .send()
            .await
            .expect("GET /tasks")
            .json()
            .await
            .expect("page");
        page["items"].as_array().cloned().unwrap_or_default()
    }
}

/// Waits until the services that keep data have handled the `erasures`th
/// user.erased and the relay has published `who`'s.
async fn erasure_handled(
    http: &reqwest::Client,
    stack: &Stack,
    pool: &PgPool,
    who: &Person,
    erasures: u64,
) {
    for service in [RECURRING, NOTIFIER, AUDIT] {
        let port = stack.port(service);
        eventually(
            &format!("{service} handled {}'s erasure", who.id),
            || async {
                metric_value(http, port, "todo_events_consumed_total", "user.erased").await
                    >= erasures
            },
        )
        .await;
    }
    eventually(
        &format!("the relay published {}'s user.erased", who.id),
        || async { count(pool, "SELECT count(*) FROM outbox WHERE key = $1", &who.id).await == 0 },
    )
    .await;
}

/// Every table of the database, every row as text (bytea as hex): none may
/// hold the person's text, and only the tombstone (`event_sequences`) their
/// id.
async fn assert_forgotten(pool: &PgPool, who: &Person) {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables.len() > 10, "{tables:?}");
    for table in &tables {
        assert_eq!(
            rows_holding(pool, table, &who.marker).await,
            0,
            "{table} still holds text of {}",
            who.id
        );
        let with_id = rows_holding(pool, table, &who.id).await;
        let allowed = i64::from(table == "event_sequences");
        assert_eq!(with_id, allowed, "{table} still holds {}'s id", who.id);
    }
    let tombstone: Option<bool> =
        sqlx::query_scalar("SELECT erased_at IS NOT NULL FROM event_sequences WHERE user_id = $1")
            .bind(&who.id)
            .fetch_optional(pool)
            .await
            .expect("tombstone");
    assert_eq!(tombstone, Some(true));
}

/// Rows of `table` whose text (or a bytea column's hex) contains `needle`.
async fn rows_holding(pool: &PgPool, table: &str, needle: &str) -> i64 {
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    let sql = format!(
        "SELECT count(*) FROM \"{table}\" x WHERE strpos(x::text, $1) > 0 OR strpos(x::text, $2) > 0"
    );
    sqlx::query_scalar(&sql)
        .bind(needle)
        .bind(hex)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"))
}

async fn count(pool: &PgPool, sql: &str, user: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(user)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn instances_of(pool: &PgPool, series: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM recurring_instances WHERE series_id = $1")
        .bind(series)
        .fetch_one(pool)
        .await
        .expect("instances")
}

async fn stored_envelope(pool: &PgPool, user: &str, event_type: &str) -> Value {
    sqlx::query_scalar(
        "SELECT envelope FROM audit_events WHERE user_id = $1 AND event_type = $2 LIMIT 1",
    )
    .bind(user)
    .bind(event_type)
    .fetch_one(pool)
    .await
    .expect("a stored envelope")
}

fn with_new_id(envelope: &Value) -> Value {
    let mut copy = envelope.clone();
    copy["id"] = json!(Uuid::now_v7());
    copy
}

/// The sum of a counter's samples whose labels contain `label`.
async fn metric_value(http: &reqwest::Client, port: u16, name: &str, label: &str) -> u64 {
    metric_lines(http, port)
        .await
        .iter()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

type Page =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The JSON frames until the server closes, and its close code.
async fn read_until_closed(page: &mut Page) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(crate::processes::PATIENCE, page.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                frames.push(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (frames, frame.map(|f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected frames and a close, got {other:?} after {frames:?}"),
        }
    }
}

async fn receive_hook(State(hooks): State<Hooks>, Path(who): Path<String>) -> StatusCode {
    *hooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(who)
        .or_default() += 1;
    StatusCode::OK
}

fn hooks_of(hooks: &Hooks, who: &str) -> usize {
    hooks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(who)
        .copied()
        .unwrap_or(0)
}
