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
