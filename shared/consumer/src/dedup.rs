//! The record of processed events: "(consumer, event id) processed" is
//! written in the transaction that applies the event, which makes every
//! handler idempotent by construction.

use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// Records `ids` as processed by `consumer` and returns those that were not
/// recorded before (the ones to apply). Part of the caller's transaction:
/// if it rolls back, nothing is recorded.
pub async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id)
         SELECT $1, id FROM unnest($2::uuid[]) AS id
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Records one id as processed on its own (a dead-lettered event).
pub async fn claim_one(pool: &sqlx::PgPool, consumer: &str, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `id` is recorded as processed by `consumer`.
pub async fn is_processed(
    pool: &sqlx::PgPool,
    consumer: &str,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2)",
    )
    .bind(consumer)
    .bind(id)
    .fetch_one(pool)
    .await
}

/// Most records one pruning statement deletes: each is a short transaction
/// that locks little and leaves little for one vacuum, however large the
/// backlog (an hour of 2,000 events/s is 7.2 million rows).
pub const PRUNE_BATCH: i64 = 5_000;

/// Forgets records older than `retention` (longer than the topics keep
/// messages, so nothing that can still be redelivered is forgotten), at
/// most `batch` per statement; returns how many.
pub async fn prune(
    pool: &sqlx::PgPool,
    consumer: &str,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    todo_platform::db::delete_in_batches_with(pool, batch, |limit| {
        sqlx::query(
            "DELETE FROM processed_events
              WHERE consumer = $1 AND event_id IN (
                    SELECT event_id FROM processed_events
                     WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)
                     LIMIT $3)",
        )
        .bind(consumer)
        .bind(retention.as_secs_f64())
        .bind(limit)
    })
    .await
}
