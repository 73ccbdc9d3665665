//! Assembles todo-realtime (the log reader, the hub, `/ws`, the live page
//! and the operations endpoints) the same way for `main` and the tests.

use crate::hub::{Hub, HubConfig, Pushed};
use crate::page::{self, PageConfig};
use crate::slots::ConnectionSlots;
use crate::socket::{self, Metrics, SessionConfig, SocketState};
use crate::{frame, NAME};
use axum::routing::get;
use axum::Router;
use futures::FutureExt;
use prometheus::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_consumer::{ConsumerMetrics, Event, Progress, ReadHorizon, Tail, TailConfig};
use todo_contract::envelope::{EventType, Topic};
use todo_platform::auth::JwtKeys;
use todo_platform::config::{ConfigError, Env, JwtSettings, KafkaSettings, Settings};
use todo_platform::kafka;
use todo_platform::ops::{self, Readiness, ReadyCheck};
use todo_platform::server::HttpLimits;
use todo_platform::shutdown::{self, Shutdown};
use todo_platform::telemetry;

/// todo-realtime's own knobs (`REALTIME_*`).
#[derive(Debug, Clone)]
pub struct Options {
    pub hub: HubConfig,
    pub session: SessionConfig,
    /// `REALTIME_MAX_CONNECTIONS_PER_USER`: open sockets one user may hold.
    pub max_connections_per_user: usize,
    pub page: PageConfig,
    pub fetch_wait_max: Duration,
}

impl Options {
    pub fn from_env() -> Result<Options, ConfigError> {
        Self::from_lookup(&Env::process())
    }

    pub fn from_lookup<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<Options, ConfigError> {
        let window: u64 = env.parse_or("REALTIME_RESUME_WINDOW_SECS", 3600)?;
        let max_events: usize = env.parse_or("REALTIME_RESUME_MAX_EVENTS", 1000)?;
        let max_mib: usize = env.parse_or("REALTIME_RESUME_MAX_MIB", 256)?;
        let send_buffer: usize = env.parse_or("REALTIME_SEND_BUFFER", 256)?;
        let ping: u64 = env.parse_or("REALTIME_PING_INTERVAL_SECS", 20)?;
        let reorder = env.millis_or("REALTIME_REORDER_WAIT_MS", Duration::from_secs(5))?;
        let dev_tokens: bool = env.parse_or("REALTIME_DEV_TOKENS", false)?;
        let poll: u64 = env.parse_or("REALTIME_PAGE_POLL_SECS", 30)?;
        let per_user: usize = env.parse_or("REALTIME_MAX_CONNECTIONS_PER_USER", 20)?;
        let fetch_wait_max =
            env.millis_or("CONSUMER_FETCH_WAIT_MAX_MS", Duration::from_millis(10))?;
        let invalid = |var, reason: &str| ConfigError::Invalid {
            var,
            reason: reason.into(),
        };
        if window > 7 * 24 * 3600 {
            return Err(invalid(
                "REALTIME_RESUME_WINDOW_SECS",
                "must be at most 604800 (7 days)",
            ));
        }
        if !(1..=1_000_000).contains(&max_events) {
            return Err(invalid(
                "REALTIME_RESUME_MAX_EVENTS",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&max_mib) {
            return Err(invalid(
                "REALTIME_RESUME_MAX_MIB",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=100_000).contains(&send_buffer) {
            return Err(invalid(
                "REALTIME_SEND_BUFFER",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=100_000).contains(&per_user) {
            return Err(invalid(
                "REALTIME_MAX_CONNECTIONS_PER_USER",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=3600).contains(&poll) {
            return Err(invalid(
                "REALTIME_PAGE_POLL_SECS",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=3600).contains(&ping) {
            return Err(invalid(
                "REALTIME_PING_INTERVAL_SECS",
                "must be between 1 and 3600",
            ));
        }
        Ok(Options {
            hub: HubConfig {
                window: Duration::from_secs(window),
                max_events,
                reorder_wait: reorder,
                idle_cursor: Duration::from_secs(window.max(24 * 3600)),
                max_bytes: max_mib * 1024 * 1024,
            },
            session: SessionConfig {
                send_buffer,
                ping_interval: Duration::from_secs(ping),
                send_timeout: Duration::from_secs(10),
            },
            max_connections_per_user: per_user,
            page: PageConfig {
                api_url: env.or("REALTIME_API_URL", "http://localhost:8080"),
                dev_tokens,
                poll_interval_secs: poll,
            },
            fetch_wait_max,
        })
    }
}

pub struct App {
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    tail: Tail,
    hub: Arc<Hub>,
    metrics: Metrics,
    stop_sessions: shutdown::ShutdownTrigger,
}

impl App {
    /// Binds `0.0.0.0:settings.port` (0: any free port).
    pub async fn build(
        settings: &Settings,
        jwt: &JwtSettings,
        options: Options,
    ) -> anyhow::Result<App> {
        let registry = Registry::new();
        let consumer_metrics = ConsumerMetrics::register(&registry)?;
        let metrics = Metrics::register(&registry)?;
        // The reader says how far it has read; the hub waits on it.
        let horizon = Arc::new(ReadHorizon::default());
        let hub = Arc::new(Hub::new(options.hub.clone(), horizon.clone()));
        let keys = Arc::new(JwtKeys::new(jwt));
        let progress = Arc::new(Progress::default());
        let (stop_sessions, sessions_stop) = shutdown::channel();

        let sockets = SocketState {
            hub: hub.clone(),
            keys: keys.clone(),
            slots: ConnectionSlots::new(options.max_connections_per_user),
            metrics: metrics.clone(),
            config: options.session.clone(),
            shutdown: sessions_stop,
        };
        let router = Router::new()
            .route("/ws", get(socket::upgrade))
            .with_state(sockets)
            .merge(page::router(options.page.clone(), keys))
            .merge(crate::asyncapi::router())
            .merge(ops::router(
                registry,
                ready_check(&settings.kafka, progress.clone())?,
            ));
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], settings.port))).await?;
        let tail = Tail {
            config: TailConfig {
                name: NAME.to_owned(),
                topics: vec![Topic::TaskEvents, Topic::Reminders],
                window: options.hub.window,
                fetch_wait_max: options.fetch_wait_max,
            },
            kafka: settings.kafka.clone(),
            metrics: consumer_metrics,
            progress,
            horizon,
        };
        Ok(App {
            listener,
            router,
            limits: settings.http.clone(),
            tail,
            hub,
            metrics,
            stop_sessions,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Reads the log and serves until `shutdown`: then every connection is
    /// closed with 1001 (reconnect elsewhere) and the reader stops.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let App {
            listener,
            router,
            limits,
            tail,
            hub,
            metrics,
            stop_sessions,
        } = self;
        tracing::info!(
            service = NAME,
            port = listener.local_addr()?.port(),
            "listening"
        );
        let server = tokio::spawn(todo_platform::server::serve(
            listener,
            router,
            limits,
            shutdown.clone(),
        ));
        let mut sessions_shutdown = shutdown.clone();
        tokio::spawn(async move {
            sessions_shutdown.recv().await;
            stop_sessions.trigger();
        });
        let housekeeping = tokio::spawn(housekeeping(hub.clone(), metrics.clone()));
        let deliver = move |event: Event| {
            let Ok(sequence) = u64::try_from(event.envelope.sequence) else {
                tracing::warn!(event_id = %event.envelope.id, "event without a valid sequence skipped");
                return;
            };
            let pushed = Pushed {
                sequence,
                time: event.envelope.time,
                text: frame::event(&event.envelope),
            };
            // A child span only where it is exported: per event, it would
            // cost a formatted span for nothing.
            let fan_out = if telemetry::tracing_on() {
                tracing::info_span!("fan out", otel.name = "deliver to connections")
            } else {
                tracing::Span::none()
            };
            let user = &event.envelope.userid;
            let counts = if event.envelope.event_type == EventType::UserErased {
                fan_out.in_scope(|| hub.erase(user, pushed.text))
            } else {
                fan_out.in_scope(|| hub.publish(user, pushed, Instant::now()))
            };
            metrics.frames_sent(counts.sent);
            metrics.slow_dropped(counts.dropped);
        };
        let read = tail.run(deliver, shutdown).await;
        housekeeping.abort();
        let served = server.await;
        tracing::info!(service = NAME, "stopped");
        read?;
        served??;
        Ok(())
    }
}

/// Releases events held for a predecessor that never came, and forgets what
/// has left the window.
async fn housekeeping(hub: Arc<Hub>, metrics: Metrics) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let counts = hub.expire_held(Instant::now());
        metrics.frames_sent(counts.sent);
        metrics.slow_dropped(counts.dropped);
        if ticks.is_multiple_of(240) {
            hub.sweep(Instant::now());
        }
        if ticks.is_multiple_of(4) {
            metrics.resume_buffer(hub.buffered_bytes(), hub.window());
        }
    }
}

/// Ready once the log has been read up to where it stood at the start (a
/// resume can then be served); the broker is reported, not required, so a
/// broker outage does not take the open connections' replica out of service.
fn ready_check(settings: &KafkaSettings, progress: Arc<Progress>) -> anyhow::Result<ReadyCheck> {
    let probe = kafka::producer(settings)?;
    Ok(Arc::new(move || {
        let (probe, progress) = (probe.clone(), progress.clone());
        async move {
            let broker = ops::broker_reachable(&probe, Duration::from_secs(2)).await;
            Readiness::new()
                .required("caught_up", progress.is_caught_up())
                .informational("broker", broker)
        }
        .boxed()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Result<Options, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Options::from_lookup(&Env::new(move |k: &str| map.get(k).cloned()))
    }

    #[test]
    fn defaults_and_bad_values_name_the_variable() {
        let o = options(&[]).expect("defaults");
        assert_eq!(o.hub.window, Duration::from_secs(3600));
        assert_eq!(o.hub.max_events, 1000);
        assert!(!o.page.dev_tokens);
        let e = options(&[("REALTIME_SEND_BUFFER", "0")]).expect_err("zero buffer");
        assert!(e.to_string().contains("REALTIME_SEND_BUFFER"), "{e}");
        let e = options(&[("REALTIME_DEV_TOKENS", "maybe")]).expect_err("not a bool");
        assert!(e.to_string().contains("REALTIME_DEV_TOKENS"), "{e}");
        assert_eq!(o.page.poll_interval_secs, 30, "the specs' 30 seconds");
        for bad in ["0", "3601", "soon"] {
            let e = options(&[("REALTIME_PAGE_POLL_SECS", bad)]).expect_err(bad);
            assert!(
                e.to_string().contains("REALTIME_PAGE_POLL_SECS"),
                "{bad}: {e}"
            );
        }
        let o = options(&[("REALTIME_PAGE_POLL_SECS", "5")]).expect("in range");
        assert_eq!(o.page.poll_interval_secs, 5);
    }
}
