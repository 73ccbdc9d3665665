//! The contract every todo service speaks: the domain types (tasks, users,
//! reminders), the CloudEvents envelope and its event types, recurrence
//! rules, and the AsyncAPI document with the event schemas. No I/O: the
//! crates above it bring PostgreSQL, Kafka and HTTP.

pub mod asyncapi;
pub mod domain;
pub mod envelope;
pub mod panics;
pub mod recurrence;
pub mod rfc3339;
