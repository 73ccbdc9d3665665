//! The integration tests of todo-audit: one binary, so librdkafka and the
//! test harness are linked once for all of them.

mod audit;
mod common;
mod contract;
mod faults;
mod partitions;
mod stats;
