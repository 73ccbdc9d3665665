//! Assembles todo-audit (consumer + read API) the same way for `main` and
//! the tests.

use crate::routes::{self, AuditState};
use crate::store::AuditStore;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use todo_shared::auth::JwtKeys;
use todo_shared::config::{ConfigError, Env, JwtSettings, Settings};
use todo_shared::consumer::ConsumerConfig;
use todo_shared::db;
use todo_shared::envelope::Topic;
use todo_shared::service::ConsumerService;

pub type Audit = ConsumerService<AuditStore>;

/// todo-audit's settings: its consumer (group `todo-audit`, both topics,
/// `CONSUMER_*`) and `AUDIT_GAP_WAIT_MS`.
#[derive(Debug, Clone)]
pub struct Options {
    pub consumer: ConsumerConfig,
    /// How long `/events` waits for a missing sequence before passing over
    /// it.
    pub gap_wait: Duration,
}

impl Options {
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = Env::process();
        let gap_wait = env.millis_or("AUDIT_GAP_WAIT_MS", Duration::from_secs(30))?;
        if gap_wait > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::Invalid {
                var: "AUDIT_GAP_WAIT_MS",
                reason: "must be at most 86400000 (a day)".into(),
            });
        }
        Ok(Self {
            consumer: ConsumerConfig::new(crate::NAME, &[Topic::TaskEvents, Topic::Reminders])
                .with_env(&env)?,
            gap_wait,
        })
    }
}

pub async fn build(
    settings: &Settings,
    jwt: &JwtSettings,
    options: Options,
) -> anyhow::Result<Audit> {
    let pool = db::service_pool(&settings.database).await?;
    let state = AuditState {
        pool: pool.clone(),
        jwt: Arc::new(JwtKeys::new(jwt)),
        gap_wait: options.gap_wait,
    };
    ConsumerService::build(
        settings,
        options.consumer,
        pool,
        Registry::new(),
        Arc::new(AuditStore),
        routes::router(state),
        routes::DOCS,
    )
    .await
}
