//! The audit log's months: `audit_events` is partitioned by the calendar
//! month (UTC) of each event's time. Every month an event lands in gets its
//! partition before the insert; with `AUDIT_RETENTION_MONTHS` set, months
//! that ended more than that many months ago are dropped whole, hourly.
//! The DDL itself is in the migration (`audit_events_create_partition`,
//! `audit_events_drop_partitions_before`), run with the migrator's rights.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use prometheus::{IntCounter, Registry};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use todo_platform::config::{ConfigError, Env};
use todo_platform::metrics::counter;
use todo_platform::shutdown::Shutdown;

/// How many whole months the log keeps (`AUDIT_RETENTION_MONTHS`; unset:
/// every month, for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    months: Option<u32>,
}

impl Retention {
    pub const KEEP: Retention = Retention { months: None };

    pub fn months(months: u32) -> Retention {
        Retention {
            months: Some(months),
        }
    }

    /// `AUDIT_RETENTION_MONTHS`: 1 to 1200, or unset to keep everything.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let Some(raw) = env.get("AUDIT_RETENTION_MONTHS") else {
            return Ok(Self::KEEP);
        };
        let invalid = || ConfigError::Invalid {
            var: "AUDIT_RETENTION_MONTHS",
            reason: "must be a whole number of months between 1 and 1200 (unset: keep all)".into(),
        };
        let months: u32 = raw.trim().parse().map_err(|_| invalid())?;
        if !(1..=1200).contains(&months) {
            return Err(invalid());
        }
        Ok(Self::months(months))
    }

    /// The first instant kept at `now`: the start of the month `months`
    /// before this one. A month is dropped once it ended before it, so the
    /// log always holds at least `months` whole months before this one.
    pub fn horizon(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let months = self.months?;
        let this_month = month_of(now);
        let first = this_month
            .checked_sub_months(Months::new(months))
            .unwrap_or(NaiveDate::MIN);
        Some(first.and_hms_opt(0, 0, 0)?.and_utc())
    }
}

/// The first day of the month (UTC) holding `at`.
fn month_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive().with_day(1).unwrap_or(NaiveDate::MIN)
}

/// Creates and drops the log's months, remembering which exist so that an
/// insert asks the database only for a month it has not seen yet.
pub struct Partitions {
    pool: PgPool,
    retention: Retention,
    known: Mutex<HashSet<NaiveDate>>,
    metrics: PartitionMetrics,
}

#[derive(Clone)]
pub struct PartitionMetrics {
    dropped: IntCounter,
    expired: IntCounter,
}

impl PartitionMetrics {
    /// `todo_audit_partitions_dropped_total`, `todo_audit_events_expired_total`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let dropped = counter(
            registry,
            "todo_audit_partitions_dropped_total",
            "Months of the audit log dropped after AUDIT_RETENTION_MONTHS",
        )?;
        let expired = counter(
            registry,
            "todo_audit_events_expired_total",
            "Events not stored because their time is already past AUDIT_RETENTION_MONTHS",
        )?;
        Ok(Self { dropped, expired })
    }
}

impl Partitions {
    pub fn new(pool: PgPool, retention: Retention, metrics: PartitionMetrics) -> Self {
        Partitions {
            pool,
            retention,
            known: Mutex::default(),
            metrics,
        }
    }

    /// The time before which an event is no longer kept, if any.
    pub fn horizon(&self) -> Option<DateTime<Utc>> {
        self.retention.horizon(Utc::now())
    }

    /// Counts events passed over for being older than the horizon.
    pub fn expired(&self, n: usize) {
        self.metrics.expired.inc_by(n as u64);
    }

    /// Makes sure the months of `times` have their partitions. Runs on its
    /// own connection, so that the DDL's brief lock on the whole log is not
    /// held for the rest of the handler's transaction.
    pub async fn ensure(
        &self,
        times: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        let missing: Vec<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let mut months: Vec<NaiveDate> = times
                .into_iter()
                .map(month_of)
                .filter(|m| !known.contains(m))
                .collect();
            months.sort_unstable();
            months.dedup();
            months
        };
        for month in missing {
            let start = month.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
            let created: bool = sqlx::query_scalar("SELECT audit_events_create_partition($1)")
                .bind(start)
                .fetch_one(&self.pool)
                .await?;
            if created {
                tracing::info!(month = %month.format("%Y-%m"), "created the audit log's partition");
            }
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(month);
        }
        Ok(())
    }

    /// One round: this month's and next month's partitions exist (so the
    /// month's first events meet no DDL), and months past the horizon are
    /// gone. Returns the partitions dropped.
    pub async fn maintain(&self, now: DateTime<Utc>) -> Result<Vec<String>, sqlx::Error> {
        let next = now.checked_add_months(Months::new(1)).unwrap_or(now);
        self.ensure([now, next]).await?;
        let Some(horizon) = self.retention.horizon(now) else {
            return Ok(Vec::new());
        };
        let dropped: Vec<String> =
            sqlx::query_scalar("SELECT audit_events_drop_partitions_before($1)")
                .bind(horizon)
                .fetch_all(&self.pool)
                .await?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| {
                m.and_hms_opt(0, 0, 0)
                    .is_some_and(|s| s.and_utc() >= horizon)
            });
        self.metrics.dropped.inc_by(dropped.len() as u64);
        Ok(dropped)
    }

    /// [`Self::maintain`] at start and then hourly, until `shutdown`.
    pub async fn maintain_forever(&self, shutdown: Shutdown) {
        shutdown
            .every(Duration::from_secs(3600), || async {
                match self.maintain(Utc::now()).await {
                    Ok(dropped) if dropped.is_empty() => {}
                    Ok(dropped) => tracing::info!(
                        partitions = ?dropped,
                        "dropped months of the audit log past AUDIT_RETENTION_MONTHS"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "maintaining the audit log's partitions failed")
                    }
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_horizon_is_the_start_of_the_month_that_many_months_back() {
        let now = at("2026-12-03T01:00:00Z");
        assert_eq!(Retention::KEEP.horizon(now), None);
        assert_eq!(
            Retention::months(1).horizon(now),
            Some(at("2026-11-01T00:00:00Z"))
        );
        assert_eq!(
            Retention::months(12).horizon(now),
            Some(at("2025-12-01T00:00:00Z"))
        );
        // The month is UTC's: just after midnight in Auckland is still
        // November in UTC.
        assert_eq!(
            Retention::months(1).horizon(at("2026-12-01T05:00:00+13:00")),
            Some(at("2026-10-01T00:00:00Z"))
        );
    }

    #[test]
    fn the_setting_keeps_everything_unless_given_a_whole_number_of_months() {
        let env = |v: Option<&'static str>| Env::new(move |_: &str| v.map(str::to_owned));
        assert_eq!(Retention::from_env(&env(None)), Ok(Retention::KEEP));
        assert_eq!(
            Retention::from_env(&env(Some("13"))),
            Ok(Retention::months(13))
        );
        for bad in ["0", "-1", "1.5", "1201", "forever"] {
            let e = Retention::from_env(&env(Some(bad))).expect_err(bad);
            assert!(e.to_string().contains("AUDIT_RETENTION_MONTHS"), "{e}");
        }
    }
}
