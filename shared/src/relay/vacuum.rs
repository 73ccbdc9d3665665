//! VACUUM of the outbox by the relay that empties it.

use sqlx::PgConnection;
use std::time::{Duration, Instant};

/// Keeps the outbox small on disk. Every published row is deleted, so the
/// table is all dead tuples unless vacuumed, and the relay's read slows
/// down as they pile up (seen with autovacuum off: commit-to-ack latency went
/// from 5 ms to 50 ms after 150,000 events). The relay vacuums it itself,
/// cheaply, since the live table is tiny; with autovacuum on, the migration's
/// per-table settings do the same.
pub(super) struct Vacuum {
    deleted: usize,
    last: Instant,
    enabled: bool,
}

impl Vacuum {
    const EVERY_ROWS: usize = 20_000;
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn new() -> Self {
        Self {
            deleted: 0,
            last: Instant::now(),
            enabled: true,
        }
    }

    pub(super) async fn after(&mut self, deleted: usize, conn: &mut PgConnection) {
        self.deleted += deleted;
        let due = self.deleted >= Self::EVERY_ROWS
            || (self.deleted > 0 && self.last.elapsed() >= Self::EVERY);
        if !self.enabled || !due {
            return;
        }
        if let Err(e) = sqlx::query("VACUUM (SKIP_LOCKED) outbox")
            .execute(&mut *conn)
            .await
        {
            // E.g. not the table's owner: autovacuum has to do it.
            tracing::warn!(error = %e, "cannot vacuum the outbox; leaving it to autovacuum");
            self.enabled = false;
        }
        self.deleted = 0;
        self.last = Instant::now();
    }
}
