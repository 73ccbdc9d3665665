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

/// Forgets records older than `retention` (longer than the topics keep
/// messages, so nothing that can still be redelivered is forgotten).
pub async fn prune(
    pool: &sqlx::PgPool,
    consumer: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM processed_events
          WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)",
    )
    .bind(consumer)
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
