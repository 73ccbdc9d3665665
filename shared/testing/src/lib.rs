//! The integration-test harness every service's tests use: a fresh
//! PostgreSQL database, a real Kafka-protocol broker, a unique topic prefix
//! and a reader that sees what was published. Nothing here is mocked.
//!
//! - `TEST_DATABASE_URL`: the server's maintenance database (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`); each test creates and
//!   drops its own database there.
//! - `TEST_KAFKA_BOOTSTRAP_SERVERS`: use this broker (e.g. Redpanda from
//!   `docker compose up`) instead of starting one. Otherwise every test
//!   starts its own nisshi (`NISSHI_BIN`, or the one that
//!   `scripts/install-broker.sh` installed).

mod broker;
mod database;
mod events;
mod proxy;
pub mod schema;

pub use broker::Broker;
pub use database::TestDatabase;
pub use events::{EventReader, Received};
pub use proxy::TcpProxy;

use std::time::Duration;
use todo_platform::config::KafkaSettings;

/// A topic prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Settings for a plaintext broker with a fresh prefix, creating one
/// partition per topic fewer than production so tests stay quick.
pub fn kafka_settings(broker: &Broker) -> KafkaSettings {
    let mut s = KafkaSettings::plaintext(broker.bootstrap(), unique_prefix());
    s.topic_partitions = 4;
    s
}

/// A 32-byte secret for test tokens.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";
/// The `WEBHOOK_SECRET_KEY` of the services tests start.
pub const WEBHOOK_SECRET_KEY: &str = "test-webhook-key-test-webhook-key-0001";

/// Logs of the code under test, shown for failing tests (`RUST_LOG` filters).
pub fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// [`eventually`] for a yes-or-no condition: past `within`, fails saying
/// `what` never came to hold.
pub async fn until<F: std::future::Future<Output = bool>>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    eventually(within, every, async || {
        if check().await {
            Ok(())
        } else {
            Err(format!("never happened: {what}"))
        }
    })
    .await
}

/// Polls `check` every `every` until it gives a value; past `within`, fails
/// with what its last try said was still missing.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(missing) => assert!(tokio::time::Instant::now() < deadline, "{missing}"),
        }
        tokio::time::sleep(every).await;
    }
}
