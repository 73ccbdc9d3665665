//! Assembles todo-audit (consumer + read API) the same way for `main` and
//! the tests.

use crate::routes::{self, AuditState};
use crate::store::AuditStore;
use prometheus::Registry;
use std::sync::Arc;
use todo_shared::auth::JwtKeys;
use todo_shared::config::{Env, JwtSettings, Settings};
use todo_shared::consumer::ConsumerConfig;
use todo_shared::db;
use todo_shared::envelope::Topic;
use todo_shared::service::ConsumerService;

pub type Audit = ConsumerService<AuditStore>;

/// The consumer's settings: group `todo-audit`, both topics, with the
/// `CONSUMER_*` variables applied.
pub fn consumer_config() -> Result<ConsumerConfig, todo_shared::config::ConfigError> {
    ConsumerConfig::new(crate::NAME, &[Topic::TaskEvents, Topic::Reminders])
        .with_env(&Env::process())
}

pub async fn build(
    settings: &Settings,
    jwt: &JwtSettings,
    config: ConsumerConfig,
) -> anyhow::Result<Audit> {
    let pool = db::service_pool(&settings.database).await?;
    let state = AuditState {
        pool: pool.clone(),
        jwt: Arc::new(JwtKeys::new(jwt)),
    };
    ConsumerService::build(
        settings,
        config,
        pool,
        Registry::new(),
        Arc::new(AuditStore),
        routes::router(state),
    )
    .await
}
