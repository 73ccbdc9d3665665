//! The integration tests of producer-api: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod api;
mod common;
mod erasure;
mod hostile;
mod mcp;
mod mcp_interop;
mod outbox;
mod preferences;
