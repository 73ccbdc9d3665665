//! The plumbing every todo service runs on: configuration from the
//! environment, PostgreSQL pools and migrations, Kafka clients and topics,
//! retries, shutdown, the HTTP server with its limits, authentication,
//! telemetry, the operations endpoints, and the notification preferences
//! both todo-api and todo-notifier read.

pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod preferences;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod wake;
