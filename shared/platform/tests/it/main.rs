//! The integration tests of todo-platform, in one binary so librdkafka and
//! the test harness are linked once.

mod deploy_env;
mod topics;
