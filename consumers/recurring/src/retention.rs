//! How long todo-recurring keeps a series that has ended:
//! `RECURRING_RETENTION_DAYS` after its end, its instance records go, then
//! its row, a batch per statement. An ended series creates no instance, so
//! nothing needs its claims on occurrences any more. A later completion of
//! one of its instances finds no series and starts none (the handler starts
//! an unknown series only from its first task), so forgetting it does not
//! bring it back.

use prometheus::{IntCounter, Registry};
use sqlx::PgPool;
use std::time::Duration;
use todo_platform::config::{ConfigError, Env};
use todo_platform::metrics::counter;
use todo_platform::shutdown::Shutdown;

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

/// What one run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub instances: u64,
    pub series: u64,
}

/// Deletes series that ended more than `keep` ago: their instance records
/// first, then each row left without any.
pub async fn prune(pool: &PgPool, keep: Duration, batch: i64) -> Result<Pruned, sqlx::Error> {
    let instances = todo_platform::db::delete_in_batches(
        pool,
        "DELETE FROM recurring_instances WHERE (series_id, occurrence_at) IN (
             SELECT i.series_id, i.occurrence_at
               FROM recurring_series s JOIN recurring_instances i USING (series_id)
              WHERE NOT s.active AND s.updated_at < now() - make_interval(secs => $1)
              LIMIT $2)",
        keep,
        batch,
    )
    .await?;
    // A series whose instances a concurrent completion is still claiming is
    // locked by it (series::find takes the row FOR UPDATE): skipped, and
    // taken by the next run.
    let series = todo_platform::db::delete_in_batches(
        pool,
        "DELETE FROM recurring_series WHERE series_id IN (
             SELECT s.series_id FROM recurring_series s
              WHERE NOT s.active AND s.updated_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM recurring_instances i WHERE i.series_id = s.series_id)
              LIMIT $2
                FOR UPDATE SKIP LOCKED)",
        keep,
        batch,
    )
    .await?;
    Ok(Pruned { instances, series })
}

/// The loop that deletes ended series past their retention, counting
/// what it deleted in `todo_recurring_instances_pruned_total` and
/// `todo_recurring_series_pruned_total`.
pub struct Pruning {
    pool: PgPool,
    keep: Duration,
    instances: IntCounter,
    series: IntCounter,
}

impl Pruning {
    /// Keeps ended series [`DEFAULT_DAYS`] until [`Pruning::keeping`].
    pub fn new(pool: PgPool, registry: &Registry) -> prometheus::Result<Self> {
        let instances = counter(
            registry,
            "todo_recurring_instances_pruned_total",
            "Instance records of ended series deleted after RECURRING_RETENTION_DAYS",
        )?;
        let series = counter(
            registry,
            "todo_recurring_series_pruned_total",
            "Ended series deleted after RECURRING_RETENTION_DAYS",
        )?;
        Ok(Self {
            pool,
            keep: Duration::from_secs(DEFAULT_DAYS * 86_400),
            instances,
            series,
        })
    }

    /// Keeps ended series for `keep` instead.
    pub fn keeping(self, keep: Duration) -> Self {
        Self { keep, ..self }
    }

    /// Prunes at start and then every `db::prune_every(keep)`, until
    /// `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        let Self {
            pool,
            keep,
            instances,
            series,
        } = self;
        shutdown
            .every(todo_platform::db::prune_every(keep), || async {
                match prune(&pool, keep, BATCH).await {
                    Ok(Pruned {
                        instances: 0,
                        series: 0,
                    }) => {}
                    Ok(p) => {
                        instances.inc_by(p.instances);
                        series.inc_by(p.series);
                        tracing::info!(
                            instances = p.instances,
                            series = p.series,
                            "deleted ended series"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning ended series failed"),
                }
            })
            .await
    }
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
