//! The reminder schedule, kept from task events: created and updated tasks
//! schedule or move their reminders, completion and deletion cancel them,
//! reopening reschedules those still in the future. Every change is
//! published as a `reminder.*` event through the outbox, in the transaction
//! that makes it.

use crate::retention::Retention;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::Arc;
use todo_consumer::{Event, Handler, HandlerError};
use todo_contract::domain::{in_time_range, Reminder, Task};
use todo_contract::envelope::{EventKind, EventType, ReminderEventData};
use todo_platform::preferences::Preferences;
use todo_platform::telemetry::TraceParent;
use todo_store::outbox::OutboxSignal;
use tokio::sync::Notify;
use uuid::Uuid;

pub const SOURCE: &str = "todo-notifier";

/// A reminder keeps its id while its definition stays on the task.
pub fn reminder_id(task_id: Uuid, reminder: &Reminder) -> Uuid {
    let spec = serde_json::to_string(reminder).unwrap_or_default();
    Uuid::new_v5(&task_id, spec.as_bytes())
}

#[derive(sqlx::FromRow)]
struct Stored {
    reminder_id: Uuid,
    remind_at: DateTime<Utc>,
    state: String,
}

pub struct Schedule {
    /// Wakes the clock when a reminder is scheduled or moved.
    pub changed: Arc<Notify>,
    /// Wakes the outbox relay (in todo-api).
    pub signal: OutboxSignal,
    /// Done reminders are deleted after it; none that old is scheduled.
    pub retention: Retention,
}

pub use todo_store::writes::Cause;

/// Appends a reminder event to the outbox; its subject is the reminder.
pub async fn publish(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    event_type: EventType,
    data: ReminderEventData,
) -> Result<(), HandlerError> {
    let subject = data.reminder_id.to_string();
    cause
        .append(conn, SOURCE, event_type, subject, data)
        .await?;
    Ok(())
}

fn data(task: &Task, id: Uuid, remind_at: DateTime<Utc>) -> ReminderEventData {
    ReminderEventData {
        task_id: task.id,
        reminder_id: id,
        remind_at,
        due_at: task.due_at,
        title: task.title.clone(),
        ..Default::default()
    }
}

/// Task changes and the user's channels; not todo-recurring's series
/// events, which share the topic but carry no task.
fn handles(t: EventType) -> bool {
    t.is_task_change()
        || matches!(
            t,
            EventType::UserNotificationsUpdated | EventType::UserErased
        )
}

impl Handler for Schedule {
    fn wants(&self, kind: &EventKind) -> bool {
        kind.known().is_some_and(handles)
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        match event.known_type() {
            Some(EventType::UserNotificationsUpdated) => return keep_channels(conn, event).await,
            // No sequence lock: an erased user's row refuses it.
            Some(EventType::UserErased) => {
                return Ok(crate::erasure::forget(conn, &event.envelope.userid).await?)
            }
            _ => {}
        }
        let task = event.task_data()?.task;
        let env = &event.envelope;
        let cause = Cause {
            user: &env.userid,
            correlation_id: std::borrow::Cow::Borrowed(&env.correlationid),
            causation_id: Some(env.id.to_string()),
        };
        // The user's sequence row before their reminder rows, as the clock
        // takes them.
        todo_store::writes::lock_sequence(conn, &env.userid).await?;
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT reminder_id, remind_at, state FROM reminders WHERE task_id = $1 FOR UPDATE",
        )
        .bind(task.id)
        .fetch_all(&mut *conn)
        .await?;
        let mut stored: HashMap<Uuid, Stored> =
            stored.into_iter().map(|s| (s.reminder_id, s)).collect();

        let ends = match env.event_type.known() {
            Some(EventType::TaskDeleted) => Some("task deleted"),
            _ if task.completed => Some("task completed"),
            _ => None,
        };
        if let Some(reason) = ends {
            for s in stored.values().filter(|s| s.state == "scheduled") {
                cancel(conn, &cause, &task, s, reason).await?;
            }
            if env.event_type == EventType::TaskDeleted {
                // Those cancelled before (the task was completed) too:
                // the task never comes back, so none of them is kept
                // waiting for its time (see retention).
                sqlx::query(
                    "UPDATE reminders SET task_deleted = true, updated_at = now()
                      WHERE task_id = $1 AND state = 'cancelled'",
                )
                .bind(task.id)
                .execute(&mut *conn)
                .await?;
            }
            return Ok(());
        }

        let now = Utc::now();
        for reminder in &task.reminders {
            // A lead time without a due date has no time to fire at; a time
            // outside the platform's range (which todo-api refuses) cannot be
            // stored, and must not hold up the task's other reminders.
            let Some(remind_at) = reminder.fire_at(task.due_at).filter(|t| in_time_range(*t))
            else {
                if task.due_at.is_some() || matches!(reminder, Reminder::At(_)) {
                    tracing::warn!(task_id = %task.id, event_id = %env.id,
                        "reminder time outside the accepted range; not scheduled");
                }
                continue;
            };
            let id = reminder_id(task.id, reminder);
            let schedule = match stored.remove(&id) {
                // It may have fired and been deleted since: firing it again
                // would be a repeat, and late by more than the retention.
                None if self.retention.too_old(remind_at, now) => {
                    tracing::info!(task_id = %task.id, reminder_id = %id,
                        "reminder time further back than REMINDER_RETENTION_DAYS; not scheduled");
                    continue;
                }
                None => true,
                // Moved with its task's due time.
                Some(s) if s.remind_at != remind_at => true,
                // Reopened: those still in the future come back.
                Some(s) => s.state == "cancelled" && remind_at > now,
            };
            if schedule {
                sqlx::query(
                    "INSERT INTO reminders (reminder_id, task_id, user_id, spec, title, due_at,
                                            remind_at, state, attempts, attempt_at, kafka_partition,
                                            time_zone, traceparent)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'scheduled', 0, $7, $8, $9, $10)
                     ON CONFLICT (reminder_id) DO UPDATE
                        SET title = EXCLUDED.title, due_at = EXCLUDED.due_at,
                            time_zone = EXCLUDED.time_zone, traceparent = EXCLUDED.traceparent,
                            remind_at = EXCLUDED.remind_at, state = 'scheduled', attempts = 0,
                            attempt_at = EXCLUDED.attempt_at,
                            kafka_partition = EXCLUDED.kafka_partition, updated_at = now()",
                )
                .bind(id)
                .bind(task.id)
                .bind(&env.userid)
                .bind(sqlx::types::Json(reminder))
                .bind(&task.title)
                .bind(task.due_at)
                .bind(remind_at)
                .bind(event.origin.partition)
                .bind(zone(&task))
                // Its firing continues the trace of the change that set it.
                .bind(TraceParent::current().map(|t| t.to_string()))
                .execute(&mut *conn)
                .await?;
                publish(
                    conn,
                    &cause,
                    EventType::ReminderScheduled,
                    data(&task, id, remind_at),
                )
                .await?;
            } else {
                // Same time: keep what it shows up to date.
                sqlx::query(
                    "UPDATE reminders SET title = $2, due_at = $3, time_zone = $4, updated_at = now()
                      WHERE reminder_id = $1",
                )
                .bind(id)
                .bind(&task.title)
                .bind(task.due_at)
                .bind(zone(&task))
                .execute(&mut *conn)
                .await?;
            }
        }
        // Reminders no longer on the task.
        for s in stored.values().filter(|s| s.state == "scheduled") {
            cancel(conn, &cause, &task, s, "removed from the task").await?;
        }
        Ok(())
    }

    /// It appends reminder events: a user's sequence row is held for that
    /// user's events only.
    fn per_user_transactions(&self) -> bool {
        true
    }

    fn committed(&self, events: &[&Event]) {
        if !events.is_empty() {
            self.changed.notify_one();
            self.signal.committed();
        }
    }
}

/// The zone the person reads the task's times in: its recurrence's.
fn zone(task: &Task) -> &'static str {
    task.recurrence
        .as_ref()
        .map(|r| r.timezone.tz().name())
        .unwrap_or("UTC")
}

/// The notifier's copy of a user's channels: the latest event wins (they
/// arrive in the user's order, once each).
async fn keep_channels(conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
    let preferences = Preferences::deserialize(&event.envelope.data)
        .map_err(|e| HandlerError::rejected(format!("notification preferences: {e}")))?;
    sqlx::query(
        "INSERT INTO notifier_channels (user_id, preferences) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET preferences = EXCLUDED.preferences,
                                             updated_at = now()",
    )
    .bind(&event.envelope.userid)
    .bind(sqlx::types::Json(&preferences))
    .execute(conn)
    .await?;
    Ok(())
}

async fn cancel(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    task: &Task,
    stored: &Stored,
    reason: &str,
) -> Result<(), HandlerError> {
    sqlx::query(
        "UPDATE reminders SET state = 'cancelled', updated_at = now() WHERE reminder_id = $1",
    )
    .bind(stored.reminder_id)
    .execute(&mut *conn)
    .await?;
    let mut data = data(task, stored.reminder_id, stored.remind_at);
    data.reason = Some(reason.to_owned());
    publish(conn, cause, EventType::ReminderCancelled, data).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_handles_task_changes_channels_and_erasures_and_skips_series_events() {
        let handled: Vec<&str> = EventType::ALL
            .into_iter()
            .filter(|t| handles(*t))
            .map(EventType::as_str)
            .collect();
        assert_eq!(
            handled,
            [
                "task.created",
                "task.updated",
                "task.completed",
                "task.reopened",
                "task.deleted",
                "user.notifications.updated",
                "user.erased"
            ]
        );
    }
}
