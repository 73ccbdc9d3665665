//! A consumer service as one unit: its [`Runtime`] and a small HTTP server
//! (`/health`, `/ready`, `/metrics`, plus any routes of its own), started
//! and stopped together, the same way by `main` and by the tests.

use crate::{ConsumerConfig, ConsumerMetrics, Handler, Health, Runtime};
use aide::axum::ApiRouter;
use axum::Router;
use futures::FutureExt;
use prometheus::Registry;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use todo_platform::config::Settings;
use todo_platform::openapi::{self, Docs};
use todo_platform::ops::{self, Readiness, ReadyCheck};
use todo_platform::shutdown::{self, Shutdown};
use todo_platform::{db, kafka};
use tokio_util::task::TaskTracker;

pub struct ConsumerService<H> {
    name: String,
    listener: tokio::net::TcpListener,
    router: Router,
    runtime: Runtime<H>,
    pool: PgPool,
    limits: todo_platform::server::HttpLimits,
}

impl<H: Handler> ConsumerService<H> {
    /// Binds `0.0.0.0:settings.port` (0: any free port). `routes` are the
    /// service's own, already given their state, documented with the
    /// operations endpoints at `/openapi.json` as `docs` says; `registry`
    /// holds any metrics of its own, and receives the runtime's.
    pub async fn build(
        settings: &Settings,
        config: ConsumerConfig,
        pool: PgPool,
        registry: Registry,
        handler: Arc<H>,
        routes: ApiRouter,
        docs: Docs,
    ) -> anyhow::Result<Self> {
        let metrics = ConsumerMetrics::register(&registry)?;
        let probe = kafka::producer(&settings.kafka)?;
        let ready_pool = pool.clone();
        let health = Arc::new(Health::default());
        let ready_health = health.clone();
        let ready: ReadyCheck = Arc::new(move || {
            let (pool, probe, health) = (ready_pool.clone(), probe.clone(), ready_health.clone());
            async move {
                let timeout = Duration::from_secs(2);
                let (db_ok, broker_ok) = tokio::join!(
                    db::ping(&pool, timeout),
                    ops::broker_reachable(&probe, timeout)
                );
                // Without the broker the service has nothing new to do but
                // loses nothing (it resumes from its committed offsets), and
                // what it serves comes from the database. A consumer loop
                // that never started, or that cannot set a failed event
                // aside, is stuck: that is not ready.
                Readiness::new()
                    .required("database", db_ok)
                    .required("consuming", health.consuming())
                    .required("dead_letters", health.dead_letters_ok())
                    .informational("broker", broker_ok)
            }
            .boxed()
        });
        let router = openapi::serve(routes.merge(ops::router(registry, ready)), docs, |_| {})?;
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], settings.port))).await?;
        Ok(Self {
            name: config.name.clone(),
            listener,
            router,
            runtime: Runtime {
                config,
                kafka: settings.kafka.clone(),
                pool: pool.clone(),
                handler,
                metrics,
                progress: Arc::default(),
                health,
                unknown_types: Default::default(),
            },
            pool,
            limits: settings.http.clone(),
        })
    }

    /// Whether the consumer has caught up since it started.
    pub fn progress(&self) -> Arc<crate::Progress> {
        self.runtime.progress.clone()
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Consumes and serves until `shutdown` (or until the consumer cannot be
    /// set up, which is returned as an error).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        // The server outlives the consumer (which ends on `shutdown` or when
        // it cannot be set up), so /health answers while it finishes.
        let (stop_serving, serving) = shutdown::channel();
        tracing::info!(service = %self.name, port = self.port(), "listening");
        let server = tokio::spawn(todo_platform::server::serve(
            self.listener,
            self.router,
            self.limits,
            serving,
        ));
        let consumed = self.runtime.run(shutdown).await;
        stop_serving.trigger();
        let served = server.await;
        self.pool.close().await;
        tracing::info!(service = %self.name, "stopped");
        consumed?;
        served??;
        Ok(())
    }

    /// [`run`](Self::run), with the service's own background work (a clock,
    /// a relay, retention), which `start` spawns into the tracker: that work
    /// gets a shutdown that also comes when the service ends on its own (its
    /// consumer could not be set up), and is waited for before returning.
    /// Without it, a service whose consumer failed would wait for ever on
    /// work that only a process signal ends.
    pub async fn run_beside(
        self,
        shutdown: Shutdown,
        start: impl FnOnce(&TaskTracker, Shutdown),
    ) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let (stop_beside, beside) = shutdown.child();
        start(&tasks, beside);
        let result = self.run(shutdown).await;
        stop_beside.trigger();
        tasks.close();
        tasks.wait().await;
        result
    }
}
