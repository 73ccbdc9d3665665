//! The events todo-recurring publishes about its series (`recurring.*`, on
//! `task-events` keyed by user, like the tasks they are about): each in the
//! transaction of the change it reports, so none is published for a change
//! that did not commit and none is missed for one that did.

use crate::series::SOURCE;
use sqlx::PgConnection;
use todo_consumer::HandlerError;
use todo_contract::envelope::{EventType, RecurringEventData};

pub use todo_store::writes::Cause;

/// Appends a series event to the outbox; its subject is the task it is
/// about, so that the task's history shows it.
pub async fn publish(
    conn: &mut PgConnection,
    cause: &Cause<'_>,
    event_type: EventType,
    data: RecurringEventData,
) -> Result<(), HandlerError> {
    let subject = data.task_id.to_string();
    cause
        .append(conn, SOURCE, event_type, subject, data)
        .await?;
    Ok(())
}
