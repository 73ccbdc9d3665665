//! What a handler's failure means for the event: wait for a dependency,
//! retry a bounded number of times, or dead-letter at once.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency does not answer (database down, connection lost), or
    /// the transaction lost a race (a deadlock, a serialization failure).
    /// The event is not at fault: it is retried, with backoff, until it
    /// goes through, and never dead-lettered for this.
    #[error("unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The event cannot be processed as it is (its payload does not fit):
    /// dead-lettered at once.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Anything else: retried with backoff, dead-lettered after the
    /// runtime's `max_attempts`.
    #[error("failed: {0:#}")]
    Failed(anyhow::Error),
}

impl HandlerError {
    pub fn rejected(reason: impl fmt::Display) -> Self {
        HandlerError::Rejected(reason.to_string())
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, HandlerError::Unavailable(_))
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        // A handler that lost the race with an erasure (its user was erased
        // between the runtime's check and the handler's write) is retried
        // like a lost race: on the retry the runtime skips the event.
        if todo_platform::db::is_unavailable(&e)
            || todo_platform::db::is_transient_conflict(&e)
            || todo_platform::db::is_user_erased(&e)
        {
            HandlerError::Unavailable(e.into())
        } else {
            HandlerError::Failed(e.into())
        }
    }
}

impl From<todo_store::writes::OutboxError> for HandlerError {
    fn from(e: todo_store::writes::OutboxError) -> Self {
        match e {
            todo_store::writes::OutboxError::Db(db) => db.into(),
            other => HandlerError::Failed(other.into()),
        }
    }
}

impl From<todo_store::StoreError> for HandlerError {
    fn from(e: todo_store::StoreError) -> Self {
        use todo_store::StoreError;
        match e {
            StoreError::Db(db) => db.into(),
            StoreError::Outbox(outbox) => outbox.into(),
            other => HandlerError::Failed(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_waited_out_and_bad_statements_are_not() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(HandlerError::from(io).is_unavailable());
        assert!(HandlerError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        let decode = sqlx::Error::ColumnNotFound("x".into());
        assert!(matches!(
            HandlerError::from(decode),
            HandlerError::Failed(_)
        ));
    }
}
