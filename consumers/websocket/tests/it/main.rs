//! The integration tests of todo-realtime: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod common;
mod page;
mod realtime;
