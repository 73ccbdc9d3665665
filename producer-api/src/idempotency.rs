//! `Idempotency-Key`: the first response to a POST is stored in the same
//! transaction as its effect; a retry with the same key gets that response
//! back instead of a second effect. A concurrent retry waits on the key's
//! row lock until the first request commits, then replays it.

use crate::error::ApiError;
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use todo_contract::domain::UserId;

/// Keys are kept this long, then pruned.
pub const RETENTION_HOURS: i32 = 24;

/// What a key must be, as the refusal of a bad one says it.
pub const KEY_RULE: &str = "must be 1-255 visible ASCII characters";

pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

pub enum Claim {
    /// First use: go ahead, then [`store`] the response.
    New,
    /// Seen before with the same request: answer this.
    Replay {
        status: StatusCode,
        body: serde_json::Value,
    },
}

/// What identifies "the same request": method, path and body bytes.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().to_vec()
}

pub async fn claim(
    conn: &mut PgConnection,
    user: &UserId,
    key: &str,
    fingerprint: &[u8],
) -> Result<Claim, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, response)
         VALUES ($1, $2, $3, 0, 'null') ON CONFLICT DO NOTHING",
    )
    .bind(user.as_str())
    .bind(key)
    .bind(fingerprint)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let (hash, status, body): (Vec<u8>, i16, serde_json::Value) = sqlx::query_as(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user.as_str())
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if hash != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ApiError::Internal(format!("stored idempotent status {status}")))?;
    Ok(Claim::Replay { status, body })
}

pub async fn store(
    conn: &mut PgConnection,
    user: &UserId,
    key: &str,
    status: StatusCode,
    body: &serde_json::Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE user_id = $1 AND key = $2",
    )
    .bind(user.as_str())
    .bind(key)
    .bind(status.as_u16() as i16)
    .bind(body)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Most keys one pruning statement deletes (a short transaction each).
pub const PRUNE_BATCH: i64 = 5_000;

/// Deletes keys older than the retention period, at most `batch` per
/// statement; returns how many.
pub async fn prune(pool: &sqlx::PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    todo_platform::db::delete_in_batches(
        pool,
        "DELETE FROM idempotency_keys WHERE (user_id, key) IN (
             SELECT user_id, key FROM idempotency_keys
              WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        std::time::Duration::from_secs(u64::from(RETENTION_HOURS.unsigned_abs()) * 3600),
        batch,
    )
    .await
}
