//! Assembles todo-notifier (consumer, clock, outbox notifications) the same
//! way for `main` and the tests.

use crate::clock::{Clock, ClockMetrics};
use crate::delivery::{Delivery, LogDelivery};
use crate::schedule::Schedule;
use axum::Router;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use todo_shared::config::{ConfigError, Env, Settings};
use todo_shared::consumer::ConsumerConfig;
use todo_shared::db;
use todo_shared::envelope::{Topic, TopicNames};
use todo_shared::outbox::OutboxSignal;
use todo_shared::relay::Relay;
use todo_shared::service::ConsumerService;
use todo_shared::shutdown::Shutdown;
use tokio::sync::Notify;

pub struct App {
    service: ConsumerService<Schedule>,
    clock: Clock,
    signal: OutboxSignal,
    pool: sqlx::PgPool,
    /// A standby relay: the outbox rows this service writes are published
    /// even while no todo-api runs.
    relay: Option<Relay>,
}

/// The notifier's own knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub consumer: ConsumerConfig,
    /// `REMINDER_MAX_ATTEMPTS`: delivery attempts before `reminder.failed`.
    pub max_attempts: i32,
    /// `REMINDER_DELIVERY_LEASE_SECS`: how long a delivery in progress keeps
    /// other attempts away; a replica that died mid-delivery is replaced
    /// after it.
    pub delivery_lease: Duration,
}

impl Options {
    pub fn from_env() -> Result<Options, ConfigError> {
        let env = Env::process();
        let max_attempts: i32 = env.parse_or("REMINDER_MAX_ATTEMPTS", 5)?;
        if !(1..=100).contains(&max_attempts) {
            return Err(ConfigError::Invalid {
                var: "REMINDER_MAX_ATTEMPTS",
                reason: "must be between 1 and 100".into(),
            });
        }
        let lease: u64 = env.parse_or("REMINDER_DELIVERY_LEASE_SECS", 60)?;
        if !(1..=3600).contains(&lease) {
            return Err(ConfigError::Invalid {
                var: "REMINDER_DELIVERY_LEASE_SECS",
                reason: "must be between 1 and 3600".into(),
            });
        }
        Ok(Options {
            consumer: ConsumerConfig::new(crate::NAME, &[Topic::TaskEvents]).with_env(&env)?,
            max_attempts,
            delivery_lease: Duration::from_secs(lease),
        })
    }
}

impl App {
    pub async fn build(
        settings: &Settings,
        options: Options,
        delivery: Arc<dyn Delivery>,
    ) -> anyhow::Result<App> {
        let pool = db::service_pool(&settings.database).await?;
        let changed = Arc::new(Notify::new());
        let signal = OutboxSignal::new();
        let registry = Registry::new();
        let relay = Relay::for_service(settings, pool.clone(), signal.clone(), &registry)?;
        let clock_metrics = ClockMetrics::register(&registry)?;
        let topic = TopicNames::new(settings.kafka.topic_prefix.clone()).name(Topic::TaskEvents);
        let service = ConsumerService::build(
            settings,
            options.consumer,
            pool.clone(),
            registry,
            Arc::new(Schedule {
                changed: changed.clone(),
                signal: signal.clone(),
            }),
            Router::new(),
        )
        .await?;
        let clock = Clock {
            pool: pool.clone(),
            changed,
            signal: signal.clone(),
            delivery,
            max_attempts: options.max_attempts,
            progress: service.progress(),
            topic,
            lease: options.delivery_lease,
            metrics: clock_metrics,
        };
        Ok(App {
            service,
            clock,
            signal,
            pool,
            relay,
        })
    }

    /// With the log as the delivery channel.
    pub async fn with_log_delivery(settings: &Settings, options: Options) -> anyhow::Result<App> {
        Self::build(settings, options, Arc::new(LogDelivery)).await
    }

    pub fn port(&self) -> u16 {
        self.service.port()
    }

    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let clock = tokio::spawn(self.clock.run(shutdown.clone()));
        let notifier = tokio::spawn(
            self.signal
                .forward_to_other_processes(self.pool.clone(), shutdown.clone()),
        );
        let relay = self.relay.map(|r| tokio::spawn(r.run(shutdown.clone())));
        let result = self.service.run(shutdown).await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        let _ = clock.await;
        let _ = notifier.await;
        result
    }
}
