//! todo-notifier: keeps each task's reminder schedule from task events,
//! fires every reminder on time and exactly once, and publishes what happens
//! to it as `reminder.*` events.

pub mod app;
pub mod channels;
pub mod clock;
pub mod delivery;
pub mod erasure;
pub mod retention;
pub mod schedule;

pub const NAME: &str = "todo-notifier";
pub const DEFAULT_PORT: u16 = 8082;
