//! How long todo-notifier keeps what is done: a reminder that was sent,
//! failed or cancelled, and a delivery that was sent or failed, stay
//! `REMINDER_RETENTION_DAYS` (their history is in todo-audit), then go, a
//! batch per statement.
//!
//! A deleted reminder must not come back: when its task is saved again, the
//! schedule finds no row for it and would fire it anew. Everything deleted
//! here had its time more than the retention ago, so the schedule does not
//! take up a reminder whose time is that far in the past
//! ([`Retention::too_old`]); such a reminder would be a month late anyway.
//! The one exception is a reminder of a deleted task, which goes the
//! retention after the deletion: that task is never saved again.

use chrono::{DateTime, TimeDelta, Utc};
use prometheus::{IntCounterVec, Registry};
use sqlx::PgPool;
use std::time::Duration;
use todo_platform::db::delete_in_batches;
use todo_platform::metrics::counter_vec;

/// Most rows one statement deletes: short transactions, little to vacuum.
pub const BATCH: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: Duration,
}

/// `REMINDER_RETENTION_DAYS`' default.
pub const DEFAULT_DAYS: u64 = 30;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Duration::from_secs(DEFAULT_DAYS * 24 * 3600),
        }
    }
}

impl Retention {
    /// A reminder due before this is not scheduled (see the module).
    pub fn too_old(&self, remind_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let keep = TimeDelta::from_std(self.keep).unwrap_or(TimeDelta::MAX);
        now.checked_sub_signed(keep)
            .is_some_and(|horizon| remind_at < horizon)
    }
}

/// Rows deleted by one [`prune`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub reminders: u64,
    pub deliveries: u64,
}

/// Deletes what has been done for longer than `keep`, `batch` rows per
/// statement. A cancelled reminder whose time is still ahead stays, as the
/// task may be reopened, unless the task was deleted: a deleted task never
/// comes back, and its earlier events are deduplicated.
pub async fn prune(pool: &PgPool, keep: Duration, batch: i64) -> Result<Pruned, sqlx::Error> {
    let done = delete_in_batches(
        pool,
        "DELETE FROM reminders WHERE reminder_id IN (
             SELECT reminder_id FROM reminders
              WHERE state IN ('sent', 'failed', 'cancelled')
                AND GREATEST(updated_at, remind_at) < now() - make_interval(secs => $1)
              LIMIT $2)",
        keep,
        batch,
    )
    .await?;
    let of_deleted_tasks = delete_in_batches(
        pool,
        "DELETE FROM reminders WHERE reminder_id IN (
             SELECT reminder_id FROM reminders
              WHERE task_deleted AND updated_at < now() - make_interval(secs => $1)
              LIMIT $2)",
        keep,
        batch,
    )
    .await?;
    let deliveries = delete_in_batches(
        pool,
        "DELETE FROM reminder_deliveries WHERE (delivery_id, channel, target) IN (
             SELECT delivery_id, channel, target FROM reminder_deliveries
              WHERE state IN ('sent', 'failed') AND done_at < now() - make_interval(secs => $1)
              LIMIT $2)",
        keep,
        batch,
    )
    .await?;
    Ok(Pruned {
        reminders: done + of_deleted_tasks,
        deliveries,
    })
}

/// The loop that deletes done reminders and deliveries past their
/// retention, counting them in `todo_reminders_pruned_total{table}`.
pub struct Pruning {
    pool: PgPool,
    keep: Duration,
    pruned: IntCounterVec,
}

impl Pruning {
    pub fn new(
        pool: PgPool,
        retention: Retention,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let pruned = counter_vec(
            registry,
            "todo_reminders_pruned_total",
            "Done reminders and deliveries deleted after REMINDER_RETENTION_DAYS, by table",
            &["table"],
        )?;
        Ok(Self {
            pool,
            keep: retention.keep,
            pruned,
        })
    }

    /// Prunes at start and then hourly, until `shutdown`.
    pub async fn run(self, shutdown: todo_platform::shutdown::Shutdown) {
        let Self { pool, keep, pruned } = self;
        shutdown
            .every(todo_platform::db::prune_every(keep), || async {
                match prune(&pool, keep, BATCH).await {
                    Ok(n) if n == Pruned::default() => {}
                    Ok(n) => {
                        pruned.with_label_values(&["reminders"]).inc_by(n.reminders);
                        pruned
                            .with_label_values(&["reminder_deliveries"])
                            .inc_by(n.deliveries);
                        tracing::info!(
                            reminders = n.reminders,
                            deliveries = n.deliveries,
                            "deleted done reminders past their retention"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning done reminders failed"),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_times_further_back_than_the_retention_are_too_old() {
        let r = Retention {
            keep: Duration::from_secs(30 * 24 * 3600),
        };
        let now = Utc::now();
        assert!(!r.too_old(now - TimeDelta::days(29), now));
        assert!(!r.too_old(now + TimeDelta::days(400), now));
        assert!(r.too_old(now - TimeDelta::days(31), now));
        let forever = Retention {
            keep: Duration::MAX,
        };
        assert!(!forever.too_old(DateTime::<Utc>::MIN_UTC, now));
    }
}
