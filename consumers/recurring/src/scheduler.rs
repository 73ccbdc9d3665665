//! `schedule` mode: each instance is created when its occurrence arrives,
//! whether or not the previous one was completed. The scheduler sleeps until
//! the nearest `next_at`, or until a schedule series starts or changes.
//! After downtime only the latest missed occurrence is created. Several
//! replicas may run: series are taken with `FOR UPDATE SKIP LOCKED`, and an
//! occurrence gets one instance however often it is attempted.

use crate::series::{self, SeriesRow};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use todo_shared::consumer::HandlerError;
use todo_shared::outbox::OutboxSignal;
use todo_shared::retry::run_rounds;
use todo_shared::shutdown::Shutdown;
use tokio::sync::Notify;

/// The longest sleep: a safety net against a missed wake-up (another
/// replica's change, a clock jump).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Series handled per transaction.
const BATCH: i64 = 100;

pub struct Scheduler {
    pub pool: PgPool,
    pub changed: Arc<Notify>,
    pub signal: OutboxSignal,
}

impl Scheduler {
    pub async fn run(self, shutdown: Shutdown) {
        run_rounds("schedule", &self.changed, shutdown, || self.round()).await
    }

    /// Creates what is due; returns how long until the next thing is.
    async fn round(&self) -> anyhow::Result<Duration> {
        loop {
            let now = Utc::now();
            let mut tx = todo_shared::db::begin(&self.pool).await?;
            let due: Vec<SeriesRow> = sqlx::query_as(
                "SELECT series_id, user_id, recurrence, dtstart, template, active
                   FROM recurring_series
                  WHERE active AND mode = 'schedule' AND next_at <= $1
                  ORDER BY next_at LIMIT $2
                    FOR UPDATE SKIP LOCKED",
            )
            .bind(now)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let mut created = 0;
            for s in &due {
                // A series whose rule cannot be evaluated stops, alone: the
                // others in this round go on.
                let evaluated = s
                    .rule()
                    .map_err(|e| e.to_string())
                    .and_then(|rule| Ok((rule.latest_at_or_before(now)?, rule.next_after(now)?)));
                let (due_now, next) = match evaluated {
                    Ok(times) => times,
                    Err(e) => {
                        tracing::error!(series_id = %s.series_id, error = %e, "unusable rule; series stopped");
                        series::stop(&mut tx, s.series_id).await?;
                        continue;
                    }
                };
                if let Some(occurrence) = due_now {
                    let correlation = uuid::Uuid::new_v4().to_string();
                    match series::create_instance(&mut tx, s, occurrence, &correlation, None).await
                    {
                        Ok(Some(task)) => {
                            created += 1;
                            tracing::info!(
                                series_id = %s.series_id, task_id = %task.id, due_at = %occurrence,
                                late_ms = (now - occurrence).num_milliseconds(), "scheduled instance created"
                            );
                        }
                        Ok(None) => {}
                        Err(HandlerError::Rejected(e)) => {
                            tracing::error!(series_id = %s.series_id, error = %e, "instance cannot be created; series stopped");
                            series::stop(&mut tx, s.series_id).await?;
                            continue;
                        }
                        Err(e) => return Err(anyhow::anyhow!("{e}")),
                    }
                }
                sqlx::query(
                    "UPDATE recurring_series SET next_at = $2, active = $3, updated_at = now()
                      WHERE series_id = $1",
                )
                .bind(s.series_id)
                .bind(next)
                .bind(next.is_some())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            if created > 0 {
                self.signal.committed();
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(next_at) FROM recurring_series WHERE active AND mode = 'schedule'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP))
    }
}
