//! What the benchmarks of the todo platform share: realistic events
//! ([`sample`]), latency plots as SVG ([`plot`]) and the WebSocket client of
//! `todo-load` ([`ws`]).

pub mod plot;
pub mod sample;
pub mod ws;
