//! The writing side of the transactional outbox: an event is appended in the
//! same transaction as the change it describes, with the next number of its
//! user's `sequence`. [`OutboxSignal`] wakes the relay once that transaction
//! has committed.

use crate::envelope::{Envelope, EventDraft};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// The PostgreSQL channel the relay listens on.
pub const CHANNEL: &str = "todo_outbox";

/// Appends `draft` to the outbox inside the caller's transaction and returns
/// the envelope as it will be published.
///
/// Taking the user's next sequence locks their `event_sequences` row until
/// the transaction ends, so one user's events commit in sequence order and
/// their outbox ids grow with their sequence.
pub async fn append<D: Serialize>(
    conn: &mut PgConnection,
    draft: EventDraft<D>,
) -> Result<Envelope<D>, OutboxError> {
    let sequence: i64 = sqlx::query_scalar(
        "INSERT INTO event_sequences (user_id, last_sequence) VALUES ($1, 1)
         ON CONFLICT (user_id) DO UPDATE SET last_sequence = event_sequences.last_sequence + 1
         RETURNING last_sequence",
    )
    .bind(&draft.userid)
    .fetch_one(&mut *conn)
    .await?;
    let envelope = draft.into_envelope(Uuid::now_v7(), crate::domain::now(), sequence);
    let payload = serde_json::to_vec(&envelope)?;
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, key, event_type, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(envelope.id)
    .bind(envelope.event_type.topic().base_name())
    .bind(&envelope.userid)
    .bind(envelope.event_type.as_str())
    .bind(payload)
    .execute(&mut *conn)
    .await?;
    Ok(envelope)
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("event encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Tells the relay that outbox rows were committed.
///
/// In-process it is a [`Notify`] (no database round trip on the request
/// path). When the relay that currently leads runs in another process, a
/// background task sends one `NOTIFY` per burst of commits, outside the
/// request's transaction, so commits never queue on PostgreSQL's notify lock.
#[derive(Clone, Default)]
pub struct OutboxSignal {
    inner: Arc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    local: Notify,
    remote: Notify,
    leader_here: AtomicBool,
}

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after a transaction that appended events has committed.
    pub fn committed(&self) {
        if self.inner.leader_here.load(Ordering::Relaxed) {
            self.inner.local.notify_one();
        } else {
            self.inner.remote.notify_one();
        }
    }

    /// Resolves at the next local commit (or at once if one happened since
    /// the last call).
    pub async fn local_commit(&self) {
        self.inner.local.notified().await
    }

    /// Set by the relay when it gains or loses leadership in this process.
    pub fn set_leader_here(&self, leader: bool) {
        self.inner.leader_here.store(leader, Ordering::Relaxed);
    }

    /// Forwards commits to a relay in another process with `NOTIFY`; one
    /// notification covers every commit made while the previous one was sent.
    pub async fn forward_to_other_processes(
        self,
        pool: PgPool,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = self.inner.remote.notified() => {}
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&pool)
                .await
            {
                // The relay's polling fallback publishes the rows anyway.
                tracing::warn!(error = %e, "could not notify the outbox relay");
            }
        }
    }
}
