//! todo-audit: stores every event of the platform once, append-only, with
//! its envelope; serves a task's history and a user's log for incremental
//! sync; activity stats; rebuilds task state from the log and compares it with `tasks`.

pub mod app;
pub mod partitions;
pub mod replay;
pub mod routes;
pub mod snapshot;
pub mod stats;
pub mod store;

pub const NAME: &str = "todo-audit";
pub const DEFAULT_PORT: u16 = 8083;
