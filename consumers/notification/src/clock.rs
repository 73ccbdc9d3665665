//! Fires reminders at their time. No polling: the clock sleeps until the
//! nearest reminder and is woken when one is scheduled or moved.
//!
//! Exactly once: a reminder is taken with `FOR UPDATE SKIP LOCKED` (other
//! replicas skip it), and its `reminder.triggered`, its delivery record and
//! `reminder.sent` commit in one transaction with its new state. A crash
//! before that commit leaves it scheduled and publishes nothing; after it,
//! it is never taken again.

use crate::delivery::{Delivery, Due};
use crate::schedule::{publish, Cause};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use todo_shared::consumer::{HandlerError, Progress};
use todo_shared::envelope::{EventType, ReminderEventData};
use todo_shared::outbox::OutboxSignal;
use todo_shared::retry::{backoff, run_rounds};
use todo_shared::shutdown::Shutdown;
use tokio::sync::Notify;

/// The longest sleep: a safety net for a wake-up another replica missed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Reminders fired per transaction.
const BATCH: i64 = 500;

pub struct Clock {
    pub pool: PgPool,
    pub changed: Arc<Notify>,
    pub signal: OutboxSignal,
    pub delivery: Arc<dyn Delivery>,
    /// Delivery attempts before `reminder.failed`.
    pub max_attempts: i32,
    /// Reminders that came due while the service was down wait until the
    /// task events of that time have been read (a completion cancels them).
    pub progress: Arc<Progress>,
}

#[derive(sqlx::FromRow)]
struct Row {
    reminder_id: uuid::Uuid,
    task_id: uuid::Uuid,
    user_id: String,
    title: String,
    due_at: Option<DateTime<Utc>>,
    remind_at: DateTime<Utc>,
    attempts: i32,
}

impl Clock {
    pub async fn run(self, mut shutdown: Shutdown) {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = self.progress.caught_up() => {}
        }
        run_rounds("reminder", &self.changed, shutdown, || self.round()).await
    }

    /// Fires what is due; returns how long until the next reminder.
    async fn round(&self) -> anyhow::Result<Duration> {
        loop {
            let mut tx = todo_shared::db::begin(&self.pool).await?;
            let due: Vec<Row> = sqlx::query_as(
                "SELECT reminder_id, task_id, user_id, title, due_at, remind_at, attempts
                   FROM reminders
                  WHERE state = 'scheduled' AND attempt_at <= now()
                  ORDER BY attempt_at LIMIT $1
                    FOR UPDATE SKIP LOCKED",
            )
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            for r in &due {
                self.fire(&mut tx, r)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            tx.commit().await?;
            if !due.is_empty() {
                self.signal.committed();
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        let next: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(attempt_at) FROM reminders WHERE state = 'scheduled'")
                .fetch_one(&self.pool)
                .await?;
        Ok(next
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP))
    }

    async fn fire(&self, conn: &mut sqlx::PgConnection, r: &Row) -> Result<(), HandlerError> {
        let now = Utc::now();
        let late_ms = (now - r.remind_at).num_milliseconds().max(0);
        let correlation = uuid::Uuid::new_v4().to_string();
        let cause = Cause {
            user: &r.user_id,
            correlation_id: &correlation,
            causation_id: Some(r.reminder_id.to_string()),
        };
        let data = ReminderEventData {
            task_id: r.task_id,
            reminder_id: r.reminder_id,
            remind_at: r.remind_at,
            due_at: r.due_at,
            title: r.title.clone(),
            reason: None,
            fired_at: Some(now),
            late_ms: Some(late_ms),
            sent_at: None,
        };
        if r.attempts == 0 {
            publish(conn, &cause, EventType::ReminderTriggered, data.clone()).await?;
        }
        let attempts = r.attempts + 1;
        let due = Due {
            reminder_id: r.reminder_id,
            task_id: r.task_id,
            user_id: &r.user_id,
            title: &r.title,
            due_at: r.due_at,
            remind_at: r.remind_at,
            late_ms,
            attempt: attempts,
        };
        match self.delivery.deliver(&due) {
            Ok(()) => {
                sqlx::query(
                    "UPDATE reminders SET state = 'sent', attempts = $2, updated_at = now()
                      WHERE reminder_id = $1",
                )
                .bind(r.reminder_id)
                .bind(attempts)
                .execute(&mut *conn)
                .await?;
                let sent = ReminderEventData {
                    sent_at: Some(now),
                    fired_at: None,
                    late_ms: None,
                    ..data
                };
                publish(conn, &cause, EventType::ReminderSent, sent).await
            }
            Err(reason) if attempts >= self.max_attempts => {
                tracing::error!(reminder_id = %r.reminder_id, user_id = %r.user_id, attempts, %reason, "reminder delivery failed for good");
                sqlx::query(
                    "UPDATE reminders SET state = 'failed', attempts = $2, updated_at = now()
                      WHERE reminder_id = $1",
                )
                .bind(r.reminder_id)
                .bind(attempts)
                .execute(&mut *conn)
                .await?;
                let failed = ReminderEventData {
                    reason: Some(reason),
                    fired_at: None,
                    late_ms: None,
                    ..data
                };
                publish(conn, &cause, EventType::ReminderFailed, failed).await
            }
            Err(reason) => {
                let retry = backoff(attempts as u32);
                tracing::warn!(reminder_id = %r.reminder_id, attempts, %reason, retry_in = ?retry, "reminder delivery failed; retrying");
                sqlx::query(
                    "UPDATE reminders SET attempts = $2, attempt_at = $3, updated_at = now()
                      WHERE reminder_id = $1",
                )
                .bind(r.reminder_id)
                .bind(attempts)
                .bind(now + TimeDelta::from_std(retry).unwrap_or_default())
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }
    }
}
