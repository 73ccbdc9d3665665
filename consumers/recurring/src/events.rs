//! The events todo-recurring publishes about its series (`recurring.*`, on
//! `task-events` keyed by user, like the tasks they are about): each in the
//! transaction of the change it reports, so none is published for a change
//! that did not commit and none is missed for one that did.

use crate::series::SOURCE;
use sqlx::PgConnection;
use todo_consumer::HandlerError;
use todo_contract::envelope::{EventDraft, EventType, RecurringEventData};
use todo_store::outbox;

/// Whose series changed, and what the event continues: the event that
/// caused it (a task change) or nothing (the schedule).
#[derive(Debug, Clone)]
pub struct Cause<'a> {
    pub user: &'a str,
    pub correlation_id: &'a str,
    pub causation_id: Option<String>,
}

/// Appends a series event to the outbox; its subject is the task it is
/// about, so that the task's history shows it.
pub async fn publish(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    event_type: EventType,
    data: RecurringEventData,
) -> Result<(), HandlerError> {
    outbox::append(
        conn,
        EventDraft {
            event_type,
            source: SOURCE,
            subject: data.task_id.to_string(),
            userid: cause.user.to_owned(),
            correlationid: cause.correlation_id.to_owned(),
            causationid: cause.causation_id.clone(),
            origin: Default::default(),
            data,
        },
    )
    .await?;
    Ok(())
}
