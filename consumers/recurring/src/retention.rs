//! How long todo-recurring keeps the instance records of a series that has
//! ended: `RECURRING_RETENTION_DAYS` after its end, then they go, a batch
//! per statement. An ended series creates no instance, so nothing needs its
//! claims on occurrences any more; the series row itself stays (a few
//! hundred bytes), so that a late completion of one of its tasks still finds
//! the series over instead of starting it again.

use prometheus::{IntCounter, Registry};
use sqlx::PgPool;
use std::time::Duration;
use todo_shared::config::{ConfigError, Env};
use todo_shared::shutdown::Shutdown;

/// Most rows one statement deletes.
pub const BATCH: i64 = 5_000;

/// `RECURRING_RETENTION_DAYS`' default.
pub const DEFAULT_DAYS: u64 = 30;

/// `RECURRING_RETENTION_DAYS` (a minute to 3650 days).
pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Duration, ConfigError> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    env.retention_or(
        "RECURRING_RETENTION_DAYS",
        DAY,
        DAY * DEFAULT_DAYS as u32,
        DAY * 3650,
    )
}

/// Deletes the instance records of series that ended more than `keep` ago.
pub async fn prune(pool: &PgPool, keep: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    todo_shared::db::delete_in_batches(
        pool,
        "DELETE FROM recurring_instances WHERE (series_id, occurrence_at) IN (
             SELECT i.series_id, i.occurrence_at
               FROM recurring_series s JOIN recurring_instances i USING (series_id)
              WHERE NOT s.active AND s.updated_at < now() - make_interval(secs => $1)
              LIMIT $2)",
        keep,
        batch,
    )
    .await
}

/// `todo_recurring_instances_pruned_total`.
pub fn pruned_metric(registry: &Registry) -> prometheus::Result<IntCounter> {
    let pruned = IntCounter::new(
        "todo_recurring_instances_pruned_total",
        "Instance records of ended series deleted after RECURRING_RETENTION_DAYS",
    )?;
    registry.register(Box::new(pruned.clone()))?;
    Ok(pruned)
}

/// Prunes at start and then hourly, until `shutdown`.
pub async fn prune_forever(pool: PgPool, keep: Duration, pruned: IntCounter, shutdown: Shutdown) {
    shutdown
        .every(todo_shared::db::prune_every(keep), || async {
            match prune(&pool, keep, BATCH).await {
                Ok(0) => {}
                Ok(n) => {
                    pruned.inc_by(n);
                    tracing::info!(instances = n, "deleted instance records of ended series");
                }
                Err(e) => tracing::warn!(error = %e, "pruning instance records failed"),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retention_defaults_to_30_days_and_refuses_what_is_out_of_range() {
        let env = |v: Option<&'static str>| Env::new(move |_: &str| v.map(str::to_owned));
        assert_eq!(
            from_env(&env(None)).expect("default"),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            from_env(&env(Some("1"))).expect("a day"),
            Duration::from_secs(86_400)
        );
        // A fraction, for a soak of minutes.
        assert_eq!(
            from_env(&env(Some("0.002"))).expect("about three minutes"),
            Duration::from_millis(172_800)
        );
        for bad in ["0", "0.0001", "3651", "-1", "NaN", "inf", "a month"] {
            let e = from_env(&env(Some(bad))).expect_err(bad);
            assert!(e.to_string().contains("RECURRING_RETENTION_DAYS"), "{e}");
        }
    }
}
