//! The integration tests of todo-recurring: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod recurring;
