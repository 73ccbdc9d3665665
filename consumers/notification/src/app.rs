//! Assembles todo-notifier (consumer, clock, outbox notifications) the same
//! way for `main` and the tests.

use crate::channels::breaker::{self, BreakerConfig};
use crate::channels::email::Email;
use crate::channels::net::Policy;
use crate::channels::webhook::Webhook;
use crate::channels::webpush::{Vapid, WebPush};
use crate::channels::worker::{ChannelMetrics, Worker, WorkerConfig};
use crate::channels::{Channel, ChannelKind, Unconfigured};
use crate::clock::{Clock, ClockMetrics};
use crate::delivery::{Delivery, LogDelivery};
use crate::retention::{self, Pruning, Retention};
use crate::schedule::Schedule;
use aide::axum::ApiRouter;
use lettre::message::Mailbox;
use prometheus::Registry;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use todo_consumer::service::ConsumerService;
use todo_consumer::ConsumerConfig;
use todo_contract::envelope::{Topic, TopicNames};
use todo_platform::config::{ConfigError, Env, Settings};
use todo_platform::db;
use todo_platform::openapi::Docs;
use todo_platform::preferences::WebhookKey;
use todo_platform::shutdown::Shutdown;
use todo_relay::Publishing;
use tokio::sync::Notify;

pub struct App {
    service: ConsumerService<Schedule>,
    pruning: Pruning,
    clock: Clock,
    /// One per channel, each with its own pool.
    workers: Vec<Worker>,
    /// A standby relay: the outbox rows this service writes are published
    /// even while no todo-api runs.
    publishing: Publishing,
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
    /// `REMINDER_RETENTION_DAYS`: how long done reminders and deliveries
    /// are kept.
    pub retention: Retention,
    pub channels: ChannelOptions,
}

/// Where reminders go besides the log, and how hard each channel is tried.
#[derive(Clone)]
pub struct ChannelOptions {
    /// `SMTP_URL` (with its credentials: a secret).
    pub smtp_url: Option<SecretString>,
    /// `SMTP_FROM`.
    pub smtp_from: Mailbox,
    /// `WEBHOOK_SECRET_KEY`: the key webhook secrets are made from.
    pub webhook_key: Option<WebhookKey>,
    /// `VAPID_PRIVATE_KEY` (a secret) and `VAPID_SUBJECT`.
    pub vapid: Option<(SecretString, String)>,
    /// `WEBHOOK_ALLOW_PRIVATE_NETWORKS`.
    pub policy: Policy,
    /// `APP_PUBLIC_URL`: the live page the messages link to.
    pub app_url: String,
    pub worker: WorkerConfig,
}

impl std::fmt::Debug for ChannelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelOptions")
            .field("smtp", &self.smtp_url.is_some())
            .field("smtp_from", &self.smtp_from.to_string())
            .field("webhooks", &self.webhook_key.is_some())
            .field("webpush", &self.vapid.is_some())
            .field("policy", &self.policy)
            .field("app_url", &self.app_url)
            .field("worker", &self.worker)
            .finish()
    }
}

/// When a channel's breaker opens, and for how long at first.
fn breaker_config<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<BreakerConfig, ConfigError> {
    let invalid = |var: &'static str, reason: String| ConfigError::Invalid { var, reason };
    let defaults = BreakerConfig::default();
    let min_users: usize = env.parse_or("REMINDER_BREAKER_MIN_USERS", defaults.min_users)?;
    if min_users > breaker::WINDOW {
        return Err(invalid(
            "REMINDER_BREAKER_MIN_USERS",
            format!("must be between 0 (never open) and {}", breaker::WINDOW),
        ));
    }
    let failure_percent: u8 =
        env.parse_or("REMINDER_BREAKER_FAILURE_PERCENT", defaults.failure_percent)?;
    if !(1..=99).contains(&failure_percent) {
        return Err(invalid(
            "REMINDER_BREAKER_FAILURE_PERCENT",
            "must be between 1 and 99".into(),
        ));
    }
    let open_for = env.millis_or("REMINDER_BREAKER_OPEN_MS", defaults.open_for)?;
    if !(Duration::from_millis(100)..=defaults.max_open).contains(&open_for) {
        return Err(invalid(
            "REMINDER_BREAKER_OPEN_MS",
            format!("must be between 100 and {}", defaults.max_open.as_millis()),
        ));
    }
    Ok(BreakerConfig {
        min_users,
        failure_percent,
        open_for,
        max_open: defaults.max_open,
    })
}

impl ChannelOptions {
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        max_attempts: i32,
    ) -> Result<Self, ConfigError> {
        let invalid = |var: &'static str, reason: String| ConfigError::Invalid { var, reason };
        let smtp_url = env.get("SMTP_URL").map(SecretString::from);
        if let Some(url) = &smtp_url {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url.expose_secret())
                .map_err(|e| invalid("SMTP_URL", format!("not an SMTP URL: {e}")))?;
        }
        let smtp_from: Mailbox = env
            .or("SMTP_FROM", "Todo reminders <reminders@localhost>")
            .parse()
            .map_err(|e| invalid("SMTP_FROM", format!("not a mailbox: {e}")))?;
        let vapid = match env.get("VAPID_PRIVATE_KEY") {
            None => None,
            Some(key) => {
                Vapid::from_base64url(&key, String::new())
                    .map_err(|e| invalid("VAPID_PRIVATE_KEY", e))?;
                Some((
                    SecretString::from(key),
                    env.or("VAPID_SUBJECT", "mailto:admin@localhost"),
                ))
            }
        };
        let allow_private: bool = env.parse_or("WEBHOOK_ALLOW_PRIVATE_NETWORKS", false)?;
        let concurrency: usize = env.parse_or("REMINDER_CHANNEL_CONCURRENCY", 32)?;
        if !(1..=1024).contains(&concurrency) {
            return Err(invalid(
                "REMINDER_CHANNEL_CONCURRENCY",
                "must be between 1 and 1024".into(),
            ));
        }
        let timeout = env.millis_or("REMINDER_CHANNEL_TIMEOUT_MS", Duration::from_secs(10))?;
        if !(Duration::from_millis(100)..=Duration::from_secs(120)).contains(&timeout) {
            return Err(invalid(
                "REMINDER_CHANNEL_TIMEOUT_MS",
                "must be between 100 and 120000".into(),
            ));
        }
        let breaker = breaker_config(env)?;
        Ok(Self {
            smtp_url,
            smtp_from,
            webhook_key: WebhookKey::from_lookup(env)?,
            vapid,
            policy: Policy { allow_private },
            app_url: env.or("APP_PUBLIC_URL", "http://localhost:8084"),
            worker: WorkerConfig {
                concurrency,
                timeout,
                max_attempts,
                breaker,
            },
        })
    }

    /// The three channels; one that is not configured fails its deliveries
    /// with a reason that says so.
    fn build(&self) -> anyhow::Result<Vec<Arc<dyn Channel>>> {
        let timeout = self.worker.timeout;
        let email: Arc<dyn Channel> = match &self.smtp_url {
            Some(url) => Arc::new(Email::new(
                url.expose_secret(),
                self.smtp_from.clone(),
                timeout,
                self.app_url.clone(),
            )?),
            None => Arc::new(Unconfigured(
                ChannelKind::Email,
                "e-mail is not configured (SMTP_URL)",
            )),
        };
        let vapid = match &self.vapid {
            Some((key, subject)) => Some(
                Vapid::from_base64url(key.expose_secret(), subject.clone())
                    .map_err(|e| anyhow::anyhow!("VAPID_PRIVATE_KEY: {e}"))?,
            ),
            None => None,
        };
        Ok(vec![
            email,
            Arc::new(Webhook::new(
                self.policy,
                self.webhook_key.clone(),
                timeout,
                self.app_url.clone(),
            )?),
            Arc::new(WebPush::new(
                self.policy,
                vapid,
                timeout,
                self.app_url.clone(),
            )?),
        ])
    }
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
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let keep = env.retention_or(
            "REMINDER_RETENTION_DAYS",
            DAY,
            DAY * retention::DEFAULT_DAYS as u32,
            DAY * 3650,
        )?;
        Ok(Options {
            consumer: ConsumerConfig::new(crate::NAME, &[Topic::TaskEvents]).with_env(&env)?,
            max_attempts,
            delivery_lease: Duration::from_secs(lease),
            retention: Retention { keep },
            channels: ChannelOptions::from_lookup(&env, max_attempts)?,
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
        let registry = Registry::new();
        let publishing = Publishing::for_service(settings, pool.clone(), &registry)?;
        let signal = publishing.signal();
        let clock_metrics = ClockMetrics::register(&registry)?;
        let channel_metrics = ChannelMetrics::register(&registry)?;
        let pruning = Pruning::new(pool.clone(), options.retention, &registry)?;
        let workers: Vec<Worker> = options
            .channels
            .build()?
            .into_iter()
            .map(|channel| {
                Worker::new(
                    pool.clone(),
                    channel,
                    options.channels.worker,
                    Arc::new(Notify::new()),
                    signal.clone(),
                    channel_metrics.clone(),
                )
            })
            .collect();
        let topic = TopicNames::new(settings.kafka.topic_prefix.clone()).name(Topic::TaskEvents);
        let service = ConsumerService::build(
            settings,
            options.consumer,
            pool.clone(),
            registry,
            Arc::new(Schedule {
                changed: changed.clone(),
                signal: signal.clone(),
                retention: options.retention,
            }),
            ApiRouter::new(),
            Docs {
                title: "todo-notifier",
                description: "Schedules and delivers reminders. Its HTTP port serves only the operations endpoints.",
            },
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
            channel_workers: workers.iter().map(Worker::wake).collect(),
        };
        Ok(App {
            service,
            pruning,
            clock,
            workers,
            publishing,
        })
    }

    /// With the log as the delivery channel.
    pub async fn with_log_delivery(settings: &Settings, options: Options) -> anyhow::Result<App> {
        Self::build(settings, options, Arc::new(LogDelivery)).await
    }

    pub fn port(&self) -> u16 {
        self.service.port()
    }

    /// Runs until `shutdown`, then waits for the clock, the channel
    /// workers, the relay and the notify forwarder to finish their work.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.service
            .run_beside(shutdown, move |tasks, shutdown| {
                tasks.spawn(self.clock.run(shutdown.clone()));
                tasks.spawn(self.pruning.run(shutdown.clone()));
                for worker in self.workers {
                    tasks.spawn(worker.run(shutdown.clone()));
                }
                self.publishing.spawn(tasks, shutdown);
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(pairs: &[(&str, &str)]) -> Result<BreakerConfig, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        breaker_config(&Env::new(move |k: &str| map.get(k).cloned()))
    }

    #[test]
    fn breaker_settings_have_defaults_and_out_of_range_values_name_their_variable() {
        assert_eq!(breaker(&[]).expect("defaults"), BreakerConfig::default());
        let set = breaker(&[
            ("REMINDER_BREAKER_MIN_USERS", "0"),
            ("REMINDER_BREAKER_FAILURE_PERCENT", "80"),
            ("REMINDER_BREAKER_OPEN_MS", "250"),
        ])
        .expect("in range");
        assert_eq!(
            (set.min_users, set.failure_percent, set.open_for),
            (0, 80, Duration::from_millis(250))
        );
        for (var, bad) in [
            ("REMINDER_BREAKER_MIN_USERS", "21"),
            ("REMINDER_BREAKER_FAILURE_PERCENT", "0"),
            ("REMINDER_BREAKER_FAILURE_PERCENT", "100"),
            ("REMINDER_BREAKER_OPEN_MS", "99"),
            ("REMINDER_BREAKER_OPEN_MS", "300001"),
            ("REMINDER_BREAKER_MIN_USERS", "many"),
        ] {
            let e = breaker(&[(var, bad)]).expect_err(bad);
            assert!(e.to_string().contains(var), "{var}={bad}: {e}");
        }
    }
}
