//! What task events mean for series: a recurring task starts (or restarts)
//! its series, edits of the latest instance are copied forward, and the
//! completion of an `on_completion` instance creates the next one.

use crate::events::Cause;
use crate::series;
use chrono::Utc;
use sqlx::PgConnection;
use std::sync::Arc;
use todo_consumer::{Event, Handler, HandlerError};
use todo_contract::domain::RecurrenceMode;
use todo_contract::envelope::{EventKind, EventType, InstanceCause, SeriesEnd};
use todo_store::outbox::OutboxSignal;
use tokio::sync::Notify;

pub struct Recurring {
    /// Wakes the scheduler when a `schedule` series starts or changes.
    pub schedule_changed: Arc<Notify>,
    /// Wakes the outbox relay (in todo-api) when instances were written.
    pub signal: OutboxSignal,
}

impl Handler for Recurring {
    fn wants(&self, kind: &EventKind) -> bool {
        matches!(
            kind.known(),
            Some(
                EventType::TaskCreated
                    | EventType::TaskUpdated
                    | EventType::TaskCompleted
                    | EventType::TaskDeleted
                    | EventType::UserErased
            )
        )
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if event.known_type() == Some(EventType::UserErased) {
            // No sequence lock: an erased user's row refuses it, and the
            // scheduler can no longer take it to write for them.
            return series::erase(conn, &event.envelope.userid).await;
        }
        let data = event.task_data()?;
        // The user's sequence row before the series row, as the scheduler
        // takes them.
        todo_store::writes::lock_sequence(conn, &event.envelope.userid).await?;
        // What this event causes continues its correlation.
        let cause = Cause {
            user: &event.envelope.userid,
            correlation_id: std::borrow::Cow::Borrowed(&event.envelope.correlationid),
            causation_id: Some(event.envelope.id.to_string()),
        };
        let task = &data.task;
        let (Some(series_id), Some(recurrence), Some(due_at)) =
            (task.series_id, task.recurrence.as_ref(), task.due_at)
        else {
            // Not (or no longer) recurring.
            if let (Some(EventType::TaskUpdated), Some(series_id)) =
                (event.known_type(), task.series_id)
            {
                if data
                    .changed
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|f| f == "recurrence"))
                {
                    series::stop(conn, &cause, series_id, task.id, SeriesEnd::RuleRemoved).await?;
                }
            }
            return Ok(());
        };
        match event.known_type() {
            Some(EventType::TaskCreated) => {
                // The first task of a series names it; instances created here
                // are already recorded.
                let known = series::find(conn, series_id).await?.is_some();
                if !known {
                    series::start(conn, &cause, series_id, task, recurrence, due_at).await?;
                }
            }
            Some(EventType::TaskUpdated) => {
                let changed = data.changed.as_deref().unwrap_or_default();
                if changed.iter().any(|f| f == "recurrence") {
                    series::start(conn, &cause, series_id, task, recurrence, due_at).await?;
                } else {
                    series::set_template(conn, series_id, task).await?;
                }
            }
            Some(EventType::TaskCompleted) if recurrence.mode == RecurrenceMode::OnCompletion => {
                let series = match series::find(conn, series_id).await? {
                    Some(s) => s,
                    // An instance of an unknown series: only todo-recurring
                    // makes instances, after recording their series, so the
                    // series ended and was forgotten (retention).
                    None if task.id != series_id => return Ok(()),
                    None => {
                        // Its start was never seen (e.g. it predates this
                        // service): its first task starts it.
                        series::start(conn, &cause, series_id, task, recurrence, due_at).await?;
                        series::find(conn, series_id)
                            .await?
                            .ok_or_else(|| HandlerError::rejected("series vanished"))?
                    }
                };
                // Only the latest instance advances its series: completing
                // an older one again (reopened, or late) must not open a
                // second instance next to the current one.
                if !series.active || series.template.0.id != task.id {
                    return Ok(());
                }
                // No backlog: the first occurrence after the later of the due
                // time and the completion.
                let after = task.completed_at.unwrap_or_else(Utc::now).max(due_at);
                let next = series
                    .rule()?
                    .next_after(after)
                    .map_err(HandlerError::rejected)?;
                match next {
                    Some(next) => {
                        let created = series::create_instance(
                            conn,
                            &series,
                            next,
                            &cause,
                            InstanceCause::Completion,
                        )
                        .await?;
                        if let Some(created) = created {
                            tracing::info!(
                                series_id = %series_id, task_id = %created.id, due_at = %next,
                                correlation_id = %event.envelope.correlationid,
                                "next instance created"
                            );
                        }
                    }
                    None => {
                        series::stop(conn, &cause, series_id, task.id, SeriesEnd::Ended).await?
                    }
                }
            }
            // No completion can continue an on_completion series whose
            // latest instance is gone. (A schedule goes on without it.)
            Some(EventType::TaskDeleted) if recurrence.mode == RecurrenceMode::OnCompletion => {
                if let Some(series) = series::find(conn, series_id).await? {
                    if series.active && series.template.0.id == task.id {
                        series::stop(conn, &cause, series_id, task.id, SeriesEnd::TaskDeleted)
                            .await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Instances are created through the outbox: a user's sequence row is
    /// held for that user's events only.
    fn per_user_transactions(&self) -> bool {
        true
    }

    fn committed(&self, events: &[&Event]) {
        let touches_schedule = events.iter().any(|e| {
            matches!(
                e.known_type(),
                Some(EventType::TaskCreated | EventType::TaskUpdated)
            ) && e.envelope.data["task"]["recurrence"]["mode"] == "schedule"
        });
        if touches_schedule {
            self.schedule_changed.notify_one();
        }
        // Instances and series events of any series task's change wait
        // in the outbox.
        if events
            .iter()
            .any(|e| !e.envelope.data["task"]["series_id"].is_null())
        {
            self.signal.committed();
        }
    }
}
