//! Which relay leads: the one holding the lease row, renewed well before it
//! expires. A leader that dies, freezes (SIGSTOP, a long pause) or is cut off
//! stops renewing, and a standby takes over once the lease has expired,
//! within `ttl` plus a standby's polling interval. A session advisory lock
//! would stay with a frozen or cut-off leader's connection for as long as
//! PostgreSQL keeps that connection: hours, without TCP keepalives.
//!
//! Fencing: the leader reads outbox rows only in a statement that checks it
//! still holds an unexpired lease, so a leader that wakes up after losing it
//! can at most publish again rows it had already read (duplicates, which
//! consumers recognise), never run ahead of the new leader.

use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// Takes the lease if it is free, expired, or already ours.
pub(super) async fn acquire(
    conn: &mut PgConnection,
    me: Uuid,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE outbox_relay_lease SET holder = $1, expires_at = now() + make_interval(secs => $2)
          WHERE id = 1 AND (holder = $1 OR holder IS NULL OR expires_at < now())",
    )
    .bind(me)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Extends the lease; false if another relay holds it now.
pub(super) async fn renew(
    conn: &mut PgConnection,
    me: Uuid,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query(
        "UPDATE outbox_relay_lease SET expires_at = now() + make_interval(secs => $2)
          WHERE id = 1 AND holder = $1",
    )
    .bind(me)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives the lease up (on shutdown), so that a standby takes over at once.
pub(super) async fn release(conn: &mut PgConnection, me: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_relay_lease SET holder = NULL, expires_at = '-infinity'
          WHERE id = 1 AND holder = $1",
    )
    .bind(me)
    .execute(conn)
    .await?;
    Ok(())
}
