//! What the benchmarks of the todo platform share: realistic events
//! ([`sample`]), latency plots as SVG ([`plot`]) and the WebSocket client of
//! `todo-load` ([`ws`]).

pub mod plot;
pub mod sample;
pub mod ws;

use todo_platform::config::{Env, KafkaSettings, Settings};

/// The platform's Kafka settings from the environment (`KAFKA_*`), as the
/// services read them.
pub fn kafka_settings() -> anyhow::Result<KafkaSettings> {
    Ok(Settings::from_lookup(&Env::process(), 0)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .kafka)
}
