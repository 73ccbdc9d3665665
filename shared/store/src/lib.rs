//! The task store: every write to a task and, in the same transaction, the
//! outbox row of the event it causes. What a task write and its event are
//! is decided here; publishing the outbox is todo-relay's job.

pub mod outbox;
pub mod tasks;
