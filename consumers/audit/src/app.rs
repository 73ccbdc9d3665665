//! Assembles todo-audit (consumer + read API) the same way for `main` and
//! the tests.

use crate::partitions::{PartitionMetrics, Partitions, Retention};
use crate::routes::{self, AuditState};
use crate::store::AuditStore;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use todo_consumer::service::ConsumerService;
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_platform::auth::JwtKeys;
use todo_platform::config::{ConfigError, Env, JwtSettings, Settings};
use todo_platform::db;
use todo_platform::shutdown::Shutdown;

/// todo-audit: the consumer and its read API, and the job that keeps the
/// log's months.
pub struct Audit {
    service: ConsumerService<AuditStore>,
    partitions: Arc<Partitions>,
}

/// todo-audit's settings: its consumer (group `todo-audit`, both topics,
/// `CONSUMER_*`), `AUDIT_GAP_WAIT_MS` and `AUDIT_RETENTION_MONTHS`.
#[derive(Debug, Clone)]
pub struct Options {
    pub consumer: ConsumerConfig,
    /// How long `/events` waits for a missing sequence before passing over
    /// it.
    pub gap_wait: Duration,
    /// How many months of the log are kept.
    pub retention: Retention,
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
            retention: Retention::from_env(&env)?,
        })
    }
}

pub async fn build(
    settings: &Settings,
    jwt: &JwtSettings,
    options: Options,
) -> anyhow::Result<Audit> {
    let pool = db::service_pool(&settings.database).await?;
    let registry = Registry::new();
    let partitions = Arc::new(Partitions::new(
        pool.clone(),
        options.retention,
        PartitionMetrics::register(&registry)?,
    ));
    let state = AuditState {
        pool: pool.clone(),
        jwt: Arc::new(JwtKeys::new(jwt)),
        gap_wait: options.gap_wait,
    };
    let service = ConsumerService::build(
        settings,
        options.consumer,
        pool,
        registry,
        Arc::new(AuditStore {
            partitions: partitions.clone(),
        }),
        routes::router(state),
        routes::DOCS,
    )
    .await?;
    Ok(Audit {
        service,
        partitions,
    })
}

impl Audit {
    pub fn port(&self) -> u16 {
        self.service.port()
    }

    pub fn progress(&self) -> Arc<todo_consumer::Progress> {
        self.service.progress()
    }

    /// Consumes and serves until `shutdown`; the months are kept meanwhile.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let partitions = self.partitions;
        self.service
            .run_beside(shutdown, move |tasks, keeping| {
                tasks.spawn(async move { partitions.maintain_forever(keeping).await });
            })
            .await
    }
}
