//! The integration tests of todo-shared: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod deploy_env;
mod next_occurrence_fill;
mod pruning;
mod relay_fatal;
mod topics;
