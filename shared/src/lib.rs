//! What every todo service shares: the event envelope and domain types,
//! configuration, Kafka and PostgreSQL helpers, the outbox and its relay,
//! authentication, telemetry and the operations endpoints.

pub mod asyncapi;
pub mod auth;
pub mod config;
pub mod consumer;
pub mod db;
pub mod domain;
pub mod envelope;
pub mod http;
pub mod kafka;
pub mod openapi;
pub mod ops;
pub mod outbox;
pub mod panics;
pub mod preferences;
pub mod recurrence;
pub mod relay;
pub mod retry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;

#[cfg(any(test, feature = "testing"))]
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
