//! The task store: every write to a task and, in the same statement, the
//! outbox row of the event it causes. What a task write and its event are
//! is decided here; publishing the outbox is todo-relay's job.
//!
//! - [`writes`]: every write that publishes an event, the change and its
//!   outbox row in one statement (what `POST /tasks` ends in);
//! - [`tasks`]: reading tasks back;
//! - [`outbox`]: how the relay learns that outbox rows were committed.

pub mod outbox;
pub mod tasks;
pub mod writes;

use writes::OutboxError;

/// What reading or writing a task can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("stored task {id} is unreadable: {reason}")]
    Corrupt { id: uuid::Uuid, reason: String },
}

impl todo_platform::db::ConnectionError for StoreError {
    fn connection_gone(&self) -> bool {
        match self {
            StoreError::Db(e) | StoreError::Outbox(OutboxError::Db(e)) => {
                todo_platform::db::is_connection_gone(e)
            }
            _ => false,
        }
    }
}
