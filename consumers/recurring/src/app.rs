//! Assembles todo-recurring (consumer, scheduler, outbox notifications) the
//! same way for `main` and the tests.

use crate::handler::Recurring;
use crate::retention::Pruning;
use crate::scheduler::Scheduler;
use aide::axum::ApiRouter;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use todo_consumer::service::ConsumerService;
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::Topic;
use todo_platform::config::{ConfigError, Env, Settings};
use todo_platform::db;
use todo_platform::openapi::Docs;
use todo_platform::shutdown::Shutdown;
use todo_relay::Publishing;
use tokio::sync::Notify;

pub struct App {
    service: ConsumerService<Recurring>,
    scheduler: Scheduler,
    pruning: Pruning,
    /// A standby relay: the outbox rows this service writes are published
    /// even while no todo-api runs.
    publishing: Publishing,
}

pub fn consumer_config() -> Result<ConsumerConfig, ConfigError> {
    ConsumerConfig::new(crate::NAME, &[Topic::TaskEvents]).with_env(&Env::process())
}

impl App {
    pub async fn build(settings: &Settings, config: ConsumerConfig) -> anyhow::Result<App> {
        let pool = db::service_pool(&settings.database).await?;
        let changed = Arc::new(Notify::new());
        let registry = Registry::new();
        let publishing = Publishing::for_service(settings, pool.clone(), &registry)?;
        let handler = Recurring {
            schedule_changed: changed.clone(),
            signal: publishing.signal().clone(),
        };
        let rounds = crate::scheduler::rounds_metric(&registry)?;
        let pruning = Pruning::new(pool.clone(), &registry)?;
        let service = ConsumerService::build(
            settings,
            config,
            pool.clone(),
            registry,
            Arc::new(handler),
            ApiRouter::new(),
            Docs {
                title: "todo-recurring",
                description: "Creates the next instance of a recurring task. Its HTTP port serves only the operations endpoints.",
            },
        )
        .await?;
        Ok(App {
            service,
            scheduler: Scheduler {
                pool: pool.clone(),
                changed,
                signal: publishing.signal().clone(),
                rounds,
            },
            pruning,
            publishing,
        })
    }

    /// Keeps ended series this long (from
    /// `RECURRING_RETENTION_DAYS` in `main`).
    pub fn with_retention(self, retention: Duration) -> Self {
        Self {
            pruning: self.pruning.keeping(retention),
            ..self
        }
    }

    pub fn port(&self) -> u16 {
        self.service.port()
    }

    /// Runs until `shutdown`, then waits for the scheduler, the relay and
    /// the notify forwarder to finish their work.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.service
            .run_beside(shutdown, move |tasks, shutdown| {
                tasks.spawn(self.scheduler.run(shutdown.clone()));
                tasks.spawn(self.pruning.run(shutdown.clone()));
                self.publishing.spawn(tasks, shutdown);
            })
            .await
    }
}
