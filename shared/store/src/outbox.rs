//! How the relay learns that outbox rows were committed: in-process, or by
//! `NOTIFY` when the relay that leads runs elsewhere. The rows themselves
//! are written by [`crate::writes`].

use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The PostgreSQL channel the relay listens on.
pub const CHANNEL: &str = "todo_outbox";

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
        shutdown: todo_platform::shutdown::Shutdown,
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
