//! todo-recurring: creates the next instance of a recurring task, when an
//! instance is completed (`on_completion`) or when its occurrence arrives
//! (`schedule`), computed in the task's time zone.

pub mod app;
pub mod events;
pub mod handler;
pub mod retention;
pub mod scheduler;
pub mod series;

pub const NAME: &str = "todo-recurring";
pub const DEFAULT_PORT: u16 = 8081;
