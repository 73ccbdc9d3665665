//! todo-realtime: pushes each user's task and reminder events to all of that
//! user's WebSocket connections, resumes a reconnecting client from the last
//! sequence it saw, and serves a live task page.

pub mod app;
pub mod asyncapi;
pub mod frame;
pub mod hub;
pub mod page;
pub mod slots;
pub mod socket;

pub const NAME: &str = "todo-realtime";
pub const DEFAULT_PORT: u16 = 8084;
