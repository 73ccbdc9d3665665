//! VACUUM of the outbox by the relay that empties it.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keeps the outbox small on disk. Every published row is deleted, so the
/// table is all dead tuples unless vacuumed, and the relay's read slows
/// down as they pile up (seen with autovacuum off: commit-to-ack latency went
/// from 5 ms to 50 ms after 150,000 events). The relay vacuums it itself,
/// cheaply, since the live table is tiny; with autovacuum on, the migration's
/// per-table settings do the same.
///
/// The VACUUM runs on a connection of its own, beside the relay: under load
/// one took 2.5 s, and while the relay waited for it, every event committed
/// meanwhile waited too (publish latency p99 2.3 s in that run).
pub(super) struct Vacuum {
    deleted: usize,
    last: Instant,
    connect: PgConnectOptions,
    /// False once the database refused (not the table's owner): autovacuum
    /// has to do it.
    enabled: Arc<AtomicBool>,
    /// One VACUUM at a time.
    running: Arc<AtomicBool>,
}

impl Vacuum {
    const EVERY_ROWS: usize = 20_000;
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn new(connect: PgConnectOptions) -> Self {
        Self {
            deleted: 0,
            last: Instant::now(),
            connect,
            enabled: Arc::new(AtomicBool::new(true)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts `deleted` rows and, when enough have gone or enough time has
    /// passed, starts a VACUUM in the background. Never waits for it.
    pub(super) fn after(&mut self, deleted: usize) {
        self.deleted += deleted;
        let due = self.deleted >= Self::EVERY_ROWS
            || (self.deleted > 0 && self.last.elapsed() >= Self::EVERY);
        if !due || !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            // The last one is still at it; this count waits for the next.
            return;
        }
        self.deleted = 0;
        self.last = Instant::now();
        let connect = self.connect.clone();
        let (enabled, running) = (self.enabled.clone(), self.running.clone());
        tokio::spawn(async move {
            match vacuum(&connect).await {
                Ok(()) => {}
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                    tracing::warn!(error = %e, "cannot vacuum the outbox; leaving it to autovacuum");
                    enabled.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vacuum of the outbox failed; it is tried again later")
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}

async fn vacuum(connect: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let mut conn = connect.connect().await?;
    sqlx::query("VACUUM (SKIP_LOCKED) outbox")
        .execute(&mut conn)
        .await?;
    conn.close().await
}
