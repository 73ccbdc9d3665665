//! The integration tests of todo-notifier: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod channels;
mod harness;
mod notifier;
