//! `todo-api`: the REST API of the task platform, its authentication, and the
//! outbox relay that publishes every change to Kafka.

pub mod app;
pub mod docs;
pub mod erasure;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod input;
pub mod limits;
pub mod mcp;
pub mod operations;
pub mod origin;
pub mod preferences;
pub mod routes;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
