//! The log's months: the migration converts an existing log in place, and
//! AUDIT_RETENTION_MONTHS drops whole months while every month inside it
//! stays append-only.

use crate::common::{self, eventually, is_stored, Audit, WAIT};
use chrono::{DateTime, Months, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use todo_api::testing::Stack;
use todo_audit::partitions::Retention;
use todo_testing::TestDatabase;
use uuid::Uuid;

/// The version that made the log partitioned.
const PARTITIONED: i64 = 20261210000001;

/// The months `audit_events` is made of, oldest first.
async fn months(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("partitions")
}

async fn rows(pool: &PgPool) -> Vec<(Uuid, i64, Value)> {
    sqlx::query_as("SELECT event_id, sequence, envelope FROM audit_events ORDER BY sequence")
        .fetch_all(pool)
        .await
        .expect("rows")
}

fn month_name(at: DateTime<Utc>) -> String {
    format!("audit_events_{}", at.format("y%Ym%m"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_log_is_converted_in_place_into_months() {
    let db = TestDatabase::create_empty().await;
    let before = sqlx::migrate::Migrator {
        migrations: todo_platform::db::MIGRATOR
            .iter()
            .filter(|m| m.version < PARTITIONED)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&db.pool).await.expect("the migrations before");

    // A log as the release before this one left it: four months, the same
    // user's sequence running across them.
    let times = [
        "2025-11-30T23:59:59Z",
        "2026-01-01T00:00:00Z",
        "2026-01-31T12:00:00+02:00",
        "2026-06-15T08:00:00Z",
    ];
    for (i, time) in times.iter().enumerate() {
        sqlx::query(
            "INSERT INTO audit_events (event_id, user_id, sequence, event_type, time, envelope,
                                       topic, partition, kafka_offset)
             VALUES (gen_random_uuid(), 'ann', $1, 'task.created', $2::timestamptz, $3, 'task-events', 0, $1)",
        )
        .bind(i as i64 + 1)
        .bind(time)
        .bind(json!({"n": i}))
        .execute(&db.pool)
        .await
        .expect("an old row");
    }
    let before_rows = rows(&db.pool).await;
    todo_platform::db::migrate(&db.pool).await.expect("migrate");
    assert_eq!(
        rows(&db.pool).await,
        before_rows,
        "every row kept as it was"
    );
    // Each in the partition of its UTC month ("+02:00" on the 31st at
    // noon is still January).
    let placed: Vec<String> =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM audit_events ORDER BY sequence")
            .fetch_all(&db.pool)
            .await
            .expect("placement");
    assert_eq!(
        placed,
        [
            "audit_events_y2025m11",
            "audit_events_y2026m01",
            "audit_events_y2026m01",
            "audit_events_y2026m06"
        ]
    );
    let now = Utc::now();
    let have = months(&db.pool).await;
    for month in [now, now.checked_add_months(Months::new(1)).expect("next")] {
        assert!(have.contains(&month_name(month)), "{have:?}");
    }

    // Append-only, also when a statement names a month directly.
    for statement in [
        "UPDATE audit_events SET user_id = 'eve'",
        "UPDATE audit_events_y2026m01 SET user_id = 'eve'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events_y2026m06",
        "TRUNCATE audit_events",
        "TRUNCATE audit_events_y2025m11",
    ] {
        let refused = sqlx::query(statement).execute(&db.pool).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    // A user's sequence is still one event's within a month.
    let taken = sqlx::query(
        "INSERT INTO audit_events (event_id, user_id, sequence, event_type, time, envelope,
                                   topic, partition, kafka_offset)
         VALUES (gen_random_uuid(), 'ann', 2, 'task.updated', '2026-01-02T00:00:00Z', '{}', 'task-events', 0, 9)",
    )
    .execute(&db.pool)
    .await;
    let error = taken
        .expect_err("a second event with sequence 2")
        .to_string();
    assert!(error.contains("user_sequence_idx"), "{error}");
    assert_eq!(
        before_rows.len() as i64,
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    );
}

/// One of `stack`'s events produced again as an event of `time`, with an
/// id and a sequence of its own.
async fn produce_dated(stack: &Stack, like: &Value, sequence: i64, time: DateTime<Utc>) -> Uuid {
    let id = Uuid::new_v4();
    let mut event = like.clone();
    event["id"] = json!(id);
    event["sequence"] = json!(sequence);
    event["time"] = json!(time.to_rfc3339());
    stack.inject("ann", &event).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn months_past_the_retention_are_dropped_whole_and_their_late_events_not_stored() {
    let stack = Stack::new().await;
    let pool = &stack.db.pool;
    let now = Utc::now();
    let back = |months: u32| now.checked_sub_months(Months::new(months)).expect("past");
    // Months of an older log: three months back (past a one-month
    // retention) and last month (inside it), each with an event in it.
    for (sequence, at) in [(1_i64, back(3)), (2, back(1))] {
        let created: bool = sqlx::query_scalar("SELECT audit_events_create_partition($1)")
            .bind(at)
            .fetch_one(pool)
            .await
            .expect("an old month");
        assert!(created);
        sqlx::query(
            "INSERT INTO audit_events (event_id, user_id, sequence, event_type, time, envelope,
                                       topic, partition, kafka_offset)
             VALUES (gen_random_uuid(), 'old', $1, 'task.created', $2, '{}', 'task-events', 0, $1)",
        )
        .bind(sequence)
        .bind(at)
        .execute(pool)
        .await
        .expect("an old event");
    }

    let api = stack.spawn_api().await;
    let options = todo_audit::app::Options {
        retention: Retention::months(1),
        ..common::options()
    };
    let audit = Audit::spawn_with_options(&stack, options).await;

    // At start the month past the retention goes, as a whole table.
    let have = eventually(WAIT, Duration::from_millis(100), async || {
        let have = months(pool).await;
        if have.contains(&month_name(back(3))) {
            Err(format!("{have:?}"))
        } else {
            Ok(have)
        }
    })
    .await;
    assert!(have.contains(&month_name(back(1))), "{have:?}");
    assert!(have.contains(&month_name(now)), "{have:?}");
    let old: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM audit_events WHERE user_id = 'old'")
            .fetch_all(pool)
            .await
            .expect("old user's log");
    assert_eq!(old, [2], "only last month's event is left");
    assert_eq!(
        audit
            .metric(&stack, "todo_audit_partitions_dropped_total")
            .await,
        1.0
    );

    // A late event of the dropped month is not stored and brings the month
    // back; one dated next year is stored in a month made for it; the
    // month inside the retention stays append-only.
    let ann = stack.token("ann");
    stack.create(&api, &ann, json!({"title": "now"})).await;
    stack.outbox_drained(WAIT).await;
    let first = stack.task_events().await.take(1, WAIT).await;
    let late = produce_dated(&stack, &first[0].value, 100, back(3)).await;
    let next_year = now.checked_add_months(Months::new(13)).expect("future");
    let future = produce_dated(&stack, &first[0].value, 101, next_year).await;
    eventually(WAIT, Duration::from_millis(100), async || {
        let expired = audit
            .metric(&stack, "todo_audit_events_expired_total")
            .await;
        if is_stored(&stack, future).await && expired >= 1.0 {
            Ok(())
        } else {
            Err("late events not handled".to_owned())
        }
    })
    .await;
    assert!(is_stored(&stack, first[0].id().parse().expect("uuid")).await);
    assert!(
        !is_stored(&stack, late).await,
        "an event past the retention is not stored"
    );
    let have = months(pool).await;
    assert!(!have.contains(&month_name(back(3))), "{have:?}");
    assert!(have.contains(&month_name(next_year)), "{have:?}");
    let refused = sqlx::query(&format!("DELETE FROM {}", month_name(back(1))))
        .execute(pool)
        .await;
    assert!(
        refused.is_err(),
        "a month inside the retention was deleted from"
    );

    audit.stop().await;
    api.stop().await;
}
