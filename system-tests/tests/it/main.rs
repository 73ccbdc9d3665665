//! The integration tests of todo-system-tests: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod erasure;
mod observability;
mod processes;
