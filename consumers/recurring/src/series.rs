//! The service's record of each series, and the creation of instances.

use crate::events::{self, Cause};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use todo_consumer::HandlerError;
use todo_contract::domain::{Recurrence, RecurrenceMode, Reminder, Task, Timestamp, UserId};
use todo_contract::envelope::{EventType, InstanceCause, Origin, RecurringEventData, SeriesEnd};
use todo_contract::recurrence::Series as Rule;
use todo_platform::telemetry::TraceParent;
use todo_store::writes::{self, Actor};
use uuid::Uuid;

pub const SOURCE: &str = "todo-recurring";

#[derive(Debug, sqlx::FromRow)]
pub struct SeriesRow {
    pub series_id: Uuid,
    pub user_id: String,
    pub recurrence: Json<Recurrence>,
    pub dtstart: DateTime<Utc>,
    pub template: Json<Task>,
    pub active: bool,
}

impl SeriesRow {
    pub fn rule(&self) -> Result<Rule, HandlerError> {
        let r = &self.recurrence.0;
        Rule::new(&r.rule, &r.timezone, self.dtstart)
            .map_err(|e| HandlerError::rejected(format!("series {}: {e}", self.series_id)))
    }
}

fn mode_name(mode: RecurrenceMode) -> &'static str {
    match mode {
        RecurrenceMode::OnCompletion => "on_completion",
        RecurrenceMode::Schedule => "schedule",
    }
}

pub async fn find(
    conn: &mut PgConnection,
    series_id: Uuid,
) -> Result<Option<SeriesRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT series_id, user_id, recurrence, dtstart, template, active
           FROM recurring_series WHERE series_id = $1 FOR UPDATE",
    )
    .bind(series_id)
    .fetch_optional(conn)
    .await
}

/// Records `task` as the start of its series, or (the recurrence changed) as
/// a new start; the task's own occurrence counts as taken. Publishes
/// `recurring.created`, or `recurring.rule.changed` for a series running.
pub async fn start(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    series_id: Uuid,
    task: &Task,
    recurrence: &Recurrence,
    due_at: DateTime<Utc>,
) -> Result<(), HandlerError> {
    let rule = Rule::new(&recurrence.rule, &recurrence.timezone, due_at)
        .map_err(HandlerError::rejected)?;
    let next = rule.next_after(due_at).map_err(HandlerError::rejected)?;
    let next_at = match recurrence.mode {
        RecurrenceMode::Schedule => next,
        RecurrenceMode::OnCompletion => None,
    };
    let before = find(conn, series_id).await?;
    sqlx::query(
        "INSERT INTO recurring_series (series_id, user_id, recurrence, mode, dtstart, template, active, next_at,
                                       traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8)
         ON CONFLICT (series_id) DO UPDATE
            SET recurrence = EXCLUDED.recurrence, mode = EXCLUDED.mode, dtstart = EXCLUDED.dtstart,
                template = EXCLUDED.template, active = true, next_at = EXCLUDED.next_at,
                traceparent = EXCLUDED.traceparent, updated_at = now()",
    )
    .bind(series_id)
    .bind(cause.user)
    .bind(Json(recurrence))
    .bind(mode_name(recurrence.mode))
    .bind(due_at)
    .bind(Json(task))
    .bind(next_at)
    // Scheduled instances continue the trace of the change that started
    // (or last changed) the series.
    .bind(TraceParent::current().map(|t| t.to_string()))
    .execute(&mut *conn)
    .await?;
    claim(conn, series_id, due_at, Some(task.id)).await?;
    let (event_type, previous) = match before {
        Some(running) if running.active => {
            (EventType::RecurringRuleChanged, Some(running.recurrence.0))
        }
        _ => (EventType::RecurringCreated, None),
    };
    let data = RecurringEventData {
        series_id,
        task_id: task.id,
        recurrence: recurrence.clone(),
        series_start: due_at,
        next_occurrence: next,
        occurrence: None,
        cause: None,
        previous,
        reason: None,
    };
    events::publish(conn, cause, event_type, data).await
}

/// The latest instance is the one the next copies.
pub async fn set_template(
    conn: &mut PgConnection,
    series_id: Uuid,
    task: &Task,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE recurring_series SET template = $2, updated_at = now()
          WHERE series_id = $1 AND (template->>'id')::uuid = $3",
    )
    .bind(series_id)
    .bind(Json(task))
    .bind(task.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends a running series and publishes `recurring.cancelled` about `task_id`
/// (the task whose change ended it); a series already ended stays quiet.
pub async fn stop(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    series_id: Uuid,
    task_id: Uuid,
    reason: SeriesEnd,
) -> Result<(), HandlerError> {
    let ended: Option<(Json<Recurrence>, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE recurring_series SET active = false, next_at = NULL, updated_at = now()
          WHERE series_id = $1 AND active
      RETURNING recurrence, dtstart",
    )
    .bind(series_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((recurrence, series_start)) = ended else {
        return Ok(());
    };
    let data = RecurringEventData {
        series_id,
        task_id,
        recurrence: recurrence.0,
        series_start,
        next_occurrence: None,
        occurrence: None,
        cause: None,
        previous: None,
        reason: Some(reason),
    };
    events::publish(conn, cause, EventType::RecurringCancelled, data).await
}

/// Forgets every series of an erased user, with its instance records.
pub async fn erase(conn: &mut PgConnection, user: &str) -> Result<(), HandlerError> {
    let (series, instances): (i64, i64) = sqlx::query_as(
        "WITH series AS (DELETE FROM recurring_series WHERE user_id = $1 RETURNING series_id),
              instances AS (DELETE FROM recurring_instances
                             WHERE series_id IN (SELECT series_id FROM series) RETURNING 1)
         SELECT (SELECT count(*) FROM series), (SELECT count(*) FROM instances)",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    tracing::info!(series, instances, "erased the user's series");
    Ok(())
}

/// Takes an occurrence for an instance; false if it already has one.
async fn claim(
    conn: &mut PgConnection,
    series_id: Uuid,
    occurrence: DateTime<Utc>,
    task_id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO recurring_instances (series_id, occurrence_at, task_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(series_id)
    .bind(occurrence)
    .bind(task_id)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Creates the instance of `series` due at `occurrence`, unless that
/// occurrence already has one: a copy of the latest instance (title,
/// description, priority, tags, recurrence, reminders moved with the due
/// time), incomplete, through the same task + outbox code as todo-api.
pub async fn create_instance(
    conn: &mut PgConnection,
    series: &SeriesRow,
    occurrence: DateTime<Utc>,
    cause: &Cause<'_>,
    why: InstanceCause,
) -> Result<Option<Task>, HandlerError> {
    let template = &series.template.0;
    let mut spec = writes::spec_of(template).map_err(HandlerError::rejected)?;
    let shift = template
        .due_at
        .map(|due| occurrence.signed_duration_since(due))
        .unwrap_or_default();
    let moved: Vec<Reminder> = template
        .reminders
        .iter()
        .map(|r| match r {
            Reminder::At(at) => at
                .get()
                .checked_add_signed(shift)
                .and_then(|t| Timestamp::try_from(t).ok())
                .map(Reminder::At)
                .ok_or_else(|| {
                    HandlerError::rejected(format!(
                        "reminder at {} moved by {shift} leaves the accepted range",
                        at.get()
                    ))
                }),
            other => Ok(other.clone()),
        })
        .collect::<Result<_, _>>()?;
    spec.reminders = moved.try_into().map_err(HandlerError::rejected)?;
    spec.due_at = Some(
        Timestamp::try_from(occurrence)
            .map_err(|e| HandlerError::rejected(format!("occurrence {occurrence}: {e}")))?,
    );
    spec.recurrence = Some(series.recurrence.0.clone());
    let user = UserId::try_from(series.user_id.clone()).map_err(HandlerError::rejected)?;
    // Everything that can refuse this instance has been checked: only now
    // is its occurrence taken.
    if !claim(conn, series.series_id, occurrence, None).await? {
        return Ok(None);
    }
    let actor = Actor {
        user: &user,
        correlation_id: &cause.correlation_id,
        causation_id: cause.causation_id.clone(),
        source: SOURCE,
        origin: Origin::none(),
    };
    let link = writes::SeriesLink {
        id: series.series_id,
        start: series.dtstart,
    };
    let (task, _event) = writes::create(conn, &actor, spec, Some(link)).await?;
    sqlx::query(
        "UPDATE recurring_instances SET task_id = $3 WHERE series_id = $1 AND occurrence_at = $2",
    )
    .bind(series.series_id)
    .bind(occurrence)
    .bind(task.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE recurring_series SET template = $2, updated_at = now() WHERE series_id = $1",
    )
    .bind(series.series_id)
    .bind(Json(&task))
    .execute(&mut *conn)
    .await?;
    let data = RecurringEventData {
        series_id: series.series_id,
        task_id: task.id,
        recurrence: series.recurrence.0.clone(),
        series_start: series.dtstart,
        next_occurrence: task.next_occurrence,
        occurrence: Some(occurrence),
        cause: Some(why),
        previous: None,
        reason: None,
    };
    events::publish(conn, cause, EventType::RecurringInstanceCreated, data).await?;
    Ok(Some(task))
}
