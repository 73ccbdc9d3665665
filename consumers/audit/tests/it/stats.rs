//! `GET /stats`: a user's activity counted from the event store, per day of
//! their time zone, their own only, and bad ranges refused.

use crate::common;

use chrono::{DateTime, NaiveDate, Utc};
use common::wait_stored;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use todo_api::testing::Stack;
use todo_contract::envelope::{EventDraft, EventType};

/// The local date of every stored `type` event of `user`, counted: the
/// test's own reading (chrono-tz) of what PostgreSQL groups.
async fn local_days(
    stack: &Stack,
    user: &str,
    kind: &str,
    tz: chrono_tz::Tz,
) -> BTreeMap<NaiveDate, i64> {
    let times: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT time FROM audit_events WHERE user_id = $1 AND event_type = $2")
            .bind(user)
            .bind(kind)
            .fetch_all(&stack.db.pool)
            .await
            .expect("times");
    let mut days = BTreeMap::new();
    for t in times {
        *days.entry(t.with_timezone(&tz).date_naive()).or_default() += 1;
    }
    days
}

fn counted(stats: &Value, field: &str) -> BTreeMap<NaiveDate, i64> {
    stats["days"]
        .as_array()
        .expect("days")
        .iter()
        .filter(|d| d[field].as_i64().unwrap_or(0) > 0)
        .map(|d| {
            (
                d["date"].as_str().expect("date").parse().expect("a date"),
                d[field].as_i64().expect("count"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_a_users_own_days_in_their_zone_and_refuse_bad_ranges() {
    let (stack, api, audit) = common::start().await;
    let (ann, bob) = (stack.token("ann"), stack.token("bob"));
    let hour_ago = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let plain = stack.create(&api, &ann, json!({"title": "plain"})).await;
    stack
        .create(&api, &ann, json!({"title": "late", "due_at": hour_ago}))
        .await;
    let done = stack.create(&api, &ann, json!({"title": "done"})).await;
    let gone = stack.create(&api, &ann, json!({"title": "gone"})).await;
    for (method, path) in [
        (
            Method::POST,
            format!("/tasks/{}/complete", done["id"].as_str().expect("id")),
        ),
        (
            Method::DELETE,
            format!("/tasks/{}", gone["id"].as_str().expect("id")),
        ),
    ] {
        let (status, _) = stack.call(&api, method, &path, &ann, None).await;
        assert!(status.is_success(), "{path}: {status}");
    }
    stack.create(&api, &bob, json!({"title": "bob's"})).await;
    // A delivered reminder, through the outbox as todo-notifier writes it.
    let task_id = plain["id"].as_str().expect("id").to_owned();
    let mut tx = stack.db.pool.begin().await.expect("tx");
    todo_store::writes::append(
        &mut tx,
        EventDraft {
            event_type: EventType::ReminderSent,
            source: "todo-notifier",
            subject: task_id.clone(),
            userid: "ann".into(),
            correlationid: uuid::Uuid::new_v4().to_string(),
            causationid: None,
            origin: Default::default(),
            data: json!({"task_id": task_id, "reminder_id": "r1", "sent_at": Utc::now(),
                         "channel": "email"}),
        },
    )
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    // ann: 4 created, 1 completed, 1 deleted, 1 reminder; bob: 1 created.
    wait_stored(&stack, 8).await;

    let (status, s) = audit.get(&stack, "/stats", &ann).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(s["days"].as_array().map(Vec::len), Some(30), "{s}");
    assert_eq!(s["created"], 4, "{s}");
    assert_eq!(s["completed"], 1, "{s}");
    assert_eq!(s["reminders_sent"], 1, "{s}");
    assert_eq!(s["overdue"], 1, "{s}");
    // Of the three created and not deleted, one is completed.
    let rate = s["completion_rate"].as_f64().expect("a rate");
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{s}");

    // Days are the zone's: 25 hours apart, the same instants fall on the
    // dates the zone gives them.
    for zone in [
        chrono_tz::Pacific::Kiritimati,
        chrono_tz::Pacific::Pago_Pago,
    ] {
        let today = Utc::now().with_timezone(&zone).date_naive();
        let path = format!(
            "/stats?tz={}&from={}&to={}",
            zone.name(),
            today - chrono::Duration::days(2),
            today + chrono::Duration::days(1)
        );
        let (status, s) = audit.get(&stack, &path, &ann).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        assert_eq!(s["days"].as_array().map(Vec::len), Some(4), "{s}");
        for (field, kind) in [
            ("created", "task.created"),
            ("completed", "task.completed"),
            ("reminders_sent", "reminder.sent"),
        ] {
            assert_eq!(
                counted(&s, field),
                local_days(&stack, "ann", kind, zone).await,
                "{field} in {zone}: {s}"
            );
        }
    }

    // Bob's own, and nothing of ann's.
    let (_, s) = audit.get(&stack, "/stats", &bob).await;
    assert_eq!(
        (s["created"].as_i64(), s["overdue"].as_i64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_eq!(s["reminders_sent"], 0);
    assert_eq!(s["completion_rate"], 0.0);

    for bad in [
        "/stats?tz=Mars/Olympus_Mons",
        "/stats?from=2026-13-01",
        "/stats?from=2026-02-30",
        "/stats?from=2026-12-02&to=2026-12-01",
        "/stats?from=2025-01-01&to=2026-12-01",
        "/stats?from=0001-01-01&to=0001-01-02",
        "/stats?since=1",
    ] {
        let (status, problem) = audit.get(&stack, bad, &ann).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        assert!(
            problem["errors"][0]["field"].is_string(),
            "{bad}: {problem}"
        );
    }
    let (status, _) = audit.get(&stack, "/stats", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    audit.stop().await;
    api.stop().await;
}
