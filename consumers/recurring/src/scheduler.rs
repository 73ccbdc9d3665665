//! `schedule` mode: each instance is created when its occurrence arrives,
//! whether or not the previous one was completed. The scheduler sleeps until
//! the nearest `next_at` (on the database's clock), or until a schedule
//! series starts or changes. After downtime only the latest missed
//! occurrence is created. Several replicas may run: series are taken with
//! `FOR UPDATE SKIP LOCKED`, and an occurrence gets one instance however
//! often it is attempted.
//!
//! Locks: one series per transaction, its user's sequence row first, as the
//! consumer takes them, so the two never deadlock.

use crate::events::Cause;
use crate::series::{self, SeriesRow};
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, Registry};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use todo_consumer::HandlerError;
use todo_contract::envelope::{InstanceCause, SeriesEnd};
use todo_platform::metrics::counter;
use todo_platform::retry::run_rounds;
use todo_platform::shutdown::Shutdown;
use todo_platform::telemetry::{self, TraceParent};
use todo_store::outbox::OutboxSignal;
use todo_store::writes;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

/// The longest sleep: a safety net against a missed wake-up (another
/// replica's change, a clock jump).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Due series looked up per query.
const BATCH: i64 = 100;

pub struct Scheduler {
    pub pool: PgPool,
    pub changed: Arc<Notify>,
    pub signal: OutboxSignal,
    pub rounds: IntCounter,
}

/// `todo_recurring_scheduler_rounds_total`.
pub fn rounds_metric(registry: &Registry) -> prometheus::Result<IntCounter> {
    let rounds = counter(
        registry,
        "todo_recurring_scheduler_rounds_total",
        "Rounds of the schedule-mode scheduler (each creates what is due and computes its next sleep)",
    )?;
    Ok(rounds)
}

impl Scheduler {
    pub async fn run(self, shutdown: Shutdown) {
        run_rounds("schedule", &self.changed, shutdown, || self.round()).await
    }

    /// Creates what is due; returns how long until the next thing is.
    async fn round(&self) -> anyhow::Result<Duration> {
        self.rounds.inc();
        loop {
            let due: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT series_id, user_id FROM recurring_series
                  WHERE active AND mode = 'schedule' AND next_at <= now()
                  ORDER BY next_at LIMIT $1",
            )
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            let mut created = 0;
            for (series_id, user) in &due {
                created += self.advance(*series_id, user).await?;
            }
            if created > 0 {
                self.signal.committed();
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        // The nearest series no other replica is working on right now:
        // counting a locked one (due, being handled elsewhere) would make
        // this loop spin until the other replica is done.
        let next: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(EXTRACT(EPOCH FROM next_at - clock_timestamp()), 0)::float8
               FROM recurring_series
              WHERE active AND mode = 'schedule'
              ORDER BY next_at LIMIT 1
                FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(todo_platform::wake::after(next, MAX_SLEEP))
    }

    /// Creates the due instance of one series and moves it to its next
    /// occurrence, in one transaction; how many instances it created.
    async fn advance(&self, series_id: Uuid, user: &str) -> anyhow::Result<usize> {
        let mut tx = todo_platform::db::begin(&self.pool).await?;
        if !writes::lock_unless_erased(&mut tx, user).await? {
            // Erased before the handler got to user.erased: forget the
            // series now (as that handler will) instead of meeting it in
            // every round.
            drop(tx);
            crate::series::erase(&mut *self.pool.acquire().await?, user)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(0);
        }
        let row: Option<SeriesRowAt> = sqlx::query_as(
            "SELECT series_id, user_id, recurrence, dtstart, template, active, now() AS now,
                    traceparent
               FROM recurring_series
              WHERE series_id = $1 AND active AND mode = 'schedule' AND next_at <= now()
                FOR UPDATE SKIP LOCKED",
        )
        .bind(series_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(SeriesRowAt {
            series: s,
            now,
            traceparent,
        }) = row
        else {
            // Another replica got there first.
            return Ok(0);
        };
        // The instance continues the trace of the change that set the
        // series up.
        let span = tracing::info_span!(
            "scheduled instance",
            otel.name = "recurring schedule",
            series_id = %s.series_id,
            user_id = %s.user_id,
            trace_id = tracing::field::Empty,
        );
        let parent = traceparent.as_deref().and_then(TraceParent::parse);
        telemetry::continue_trace(&span, parent.as_ref());
        // A schedule's events start a correlation of their own.
        let cause = Cause {
            user: &s.user_id,
            correlation_id: std::borrow::Cow::Owned(Uuid::new_v4().to_string()),
            causation_id: None,
        };
        let mut latest = s.template.0.id;
        // A series whose rule cannot be evaluated stops, alone.
        let evaluated = s
            .rule()
            .map_err(|e| e.to_string())
            .and_then(|rule| Ok((rule.latest_at_or_before(now)?, rule.next_after(now)?)));
        let (due_now, next) = match evaluated {
            Ok(times) => times,
            Err(e) => {
                tracing::error!(series_id = %s.series_id, error = %e, "unusable rule; series stopped");
                series::stop(&mut tx, &cause, s.series_id, latest, SeriesEnd::Failed)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tx.commit().await?;
                return Ok(0);
            }
        };
        let mut created = 0;
        if let Some(occurrence) = due_now {
            let instance =
                series::create_instance(&mut tx, &s, occurrence, &cause, InstanceCause::Schedule)
                    .instrument(span.clone())
                    .await;
            match instance {
                Ok(Some(task)) => {
                    created = 1;
                    latest = task.id;
                    span.in_scope(|| {
                        tracing::info!(
                            task_id = %task.id, due_at = %occurrence,
                            late_ms = (now - occurrence).num_milliseconds(), "scheduled instance created"
                        )
                    });
                }
                Ok(None) => {}
                Err(HandlerError::Rejected(e)) => {
                    tracing::error!(series_id = %s.series_id, error = %e, "instance cannot be created; series stopped");
                    series::stop(&mut tx, &cause, s.series_id, latest, SeriesEnd::Failed)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    tx.commit().await?;
                    return Ok(0);
                }
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
        }
        match next {
            Some(next) => {
                sqlx::query(
                    "UPDATE recurring_series SET next_at = $2, updated_at = now()
                      WHERE series_id = $1",
                )
                .bind(s.series_id)
                .bind(next)
                .execute(&mut *tx)
                .await?;
            }
            // COUNT or UNTIL reached.
            None => series::stop(&mut tx, &cause, s.series_id, latest, SeriesEnd::Ended)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        }
        tx.commit().await?;
        Ok(created)
    }
}

#[derive(sqlx::FromRow)]
struct SeriesRowAt {
    #[sqlx(flatten)]
    series: SeriesRow,
    now: DateTime<Utc>,
    traceparent: Option<String>,
}
