//! Assembles `todo-api`: the HTTP server, the outbox relay and their
//! background tasks, so that `main` and the tests start it the same way.

use crate::extract::{CorrelationId, CORRELATION_HEADER};
use crate::limits::{WriteLimiter, WriteQuota};
use crate::origin::OriginPolicy;
use crate::preferences::ChannelSettings;
use crate::state::{AppState, HttpMetrics};
use crate::{docs, idempotency, mcp, routes};
use aide::axum::routing::ApiMethodDocs;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use futures::FutureExt;
use prometheus::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_platform::auth::JwtKeys;
use todo_platform::config::{ConfigError, Env, JwtSettings, Settings};
use todo_platform::openapi;
use todo_platform::ops::{self, Readiness};
use todo_platform::preferences::WebhookKey;
use todo_platform::server::HttpLimits;
use todo_platform::shutdown::Shutdown;
use todo_platform::{db, kafka, telemetry};
use todo_relay::{Publishing, Relay, RelayConfig, RelayMetrics};
use todo_store::outbox::OutboxSignal;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

pub const DEFAULT_PORT: u16 = 8080;
/// Largest request body accepted (a task is at most ~25 kB of JSON).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Knobs of `todo-api` beyond the shared settings.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub relay: RelayConfig,
    /// Writes per user (`API_WRITES_PER_SECOND`, `API_WRITE_BURST`).
    pub writes: WriteQuota,
    /// Run the outbox relay in this process (one replica leads at a time).
    pub run_relay: bool,
    /// Origins allowed by CORS (`None`: any origin; tokens, not cookies,
    /// authenticate, so a foreign page gains nothing it was not given).
    pub cors_origins: Option<Vec<HeaderValue>>,
    /// What reminders may use (`WEBHOOK_SECRET_KEY`, `VAPID_PUBLIC_KEY`).
    pub channels: ChannelSettings,
    /// `AUDIT_CLIENT_IP`, `AUDIT_TRUSTED_PROXIES`.
    pub origin: OriginPolicy,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            relay: RelayConfig::default(),
            writes: WriteQuota::default(),
            run_relay: true,
            cors_origins: None,
            channels: ChannelSettings::default(),
            origin: OriginPolicy::default(),
        }
    }
}

impl ApiOptions {
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = Env::process();
        let cors_origins = match env.get("CORS_ALLOWED_ORIGINS") {
            None => None,
            Some(list) if list.trim() == "*" => None,
            Some(list) => Some(
                list.split(',')
                    .map(|o| {
                        HeaderValue::from_str(o.trim()).map_err(|_| ConfigError::Invalid {
                            var: "CORS_ALLOWED_ORIGINS",
                            reason: format!("{o:?} is not a valid origin"),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Self {
            relay: RelayConfig::from_lookup(&env)?,
            writes: WriteQuota::from_lookup(&env)?,
            run_relay: todo_relay::enabled_from(&env)?,
            cors_origins,
            channels: ChannelSettings {
                webhook_key: WebhookKey::from_lookup(&env)?,
                vapid_public_key: env.get("VAPID_PUBLIC_KEY"),
            },
            origin: OriginPolicy::from_lookup(&env)?,
        })
    }
}

pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
    state: AppState,
    publishing: Publishing,
    limits: HttpLimits,
}

impl Application {
    /// Binds `0.0.0.0:settings.port` (0: any free port), connects lazily to
    /// the broker, and waits for the database's schema.
    pub async fn build(
        settings: &Settings,
        jwt: &JwtSettings,
        options: ApiOptions,
    ) -> anyhow::Result<Application> {
        let pool = db::service_pool(&settings.database).await?;
        let producer = kafka::producer(&settings.kafka)?;
        let registry = Registry::new();
        let http = HttpMetrics::register(&registry)?;
        let relay_metrics = RelayMetrics::register(&registry)?;
        let signal = OutboxSignal::new();
        let state = AppState {
            pool: pool.clone(),
            jwt: Arc::new(JwtKeys::new(jwt)),
            writes: Arc::new(WriteLimiter::new(options.writes)),
            signal: signal.clone(),
            producer: producer.clone(),
            http: http.clone(),
            channels: Arc::new(options.channels.clone()),
            origin: Arc::new(options.origin.clone()),
        };
        let connect = db::connect_options(&settings.database)?;
        let relay = options.run_relay.then(|| Relay {
            pool: pool.clone(),
            connect,
            kafka: settings.kafka.clone(),
            signal: signal.clone(),
            config: options.relay.clone(),
            metrics: relay_metrics,
        });
        let router = router(state.clone(), registry, &options, http)?;
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], settings.port))).await?;
        Ok(Application {
            listener,
            router,
            state,
            publishing: Publishing::new(relay, signal, pool),
            limits: settings.http.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown`; then finishes the requests in flight, stops
    /// the relay (letting its batch in flight be acknowledged) and returns.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        self.publishing.spawn(&tasks, shutdown.clone());
        tasks.spawn(housekeeping(self.state.clone(), shutdown.clone()));
        tracing::info!(
            port = self.listener.local_addr()?.port(),
            "todo-api listening"
        );
        todo_platform::server::serve(self.listener, self.router, self.limits, shutdown).await?;
        tasks.close();
        tasks.wait().await;
        self.state.pool.close().await;
        tracing::info!("todo-api stopped");
        Ok(())
    }
}

/// Now and then: expired idempotency keys out of the database, and users
/// with a full write allowance out of the rate limiter's memory.
async fn housekeeping(state: AppState, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tick.tick() => {}
        }
        state.writes.forget_idle();
        rounds += 1;
        if rounds % 10 != 1 {
            continue;
        }
        match idempotency::prune(&state.pool, idempotency::PRUNE_BATCH).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "expired idempotency keys removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not prune idempotency keys"),
        }
    }
}

fn router(
    state: AppState,
    registry: Registry,
    options: &ApiOptions,
    http: HttpMetrics,
) -> anyhow::Result<Router> {
    let ready_state = state.clone();
    let ready: ops::ReadyCheck = Arc::new(move || {
        let s = ready_state.clone();
        async move {
            let timeout = Duration::from_secs(2);
            let (db_ok, broker_ok) = tokio::join!(
                db::ping(&s.pool, timeout),
                ops::broker_reachable(&s.producer, timeout)
            );
            // The API serves requests while the broker is away (events wait
            // in the outbox), so only the database decides readiness.
            Readiness::new()
                .required("database", db_ok)
                .informational("broker", broker_ok)
        }
        .boxed()
    });
    let cors = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::header::IF_MATCH,
            axum::http::HeaderName::from_static("idempotency-key"),
            axum::http::HeaderName::from_static(CORRELATION_HEADER),
            // A browser-based MCP client (MCP Inspector) sends these.
            axum::http::HeaderName::from_static("mcp-protocol-version"),
            axum::http::HeaderName::from_static("mcp-session-id"),
            axum::http::HeaderName::from_static("mcp-method"),
            axum::http::HeaderName::from_static("mcp-name"),
            axum::http::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            axum::http::header::ETAG,
            axum::http::header::LOCATION,
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderName::from_static(CORRELATION_HEADER),
            axum::http::HeaderName::from_static("mcp-session-id"),
        ])
        .max_age(Duration::from_secs(600))
        .allow_origin(match &options.cors_origins {
            None => AllowOrigin::any(),
            Some(list) => AllowOrigin::list(list.clone()),
        });
    let mcp = mcp::router(&state)?;
    let routes = routes::router()
        .merge(crate::preferences::router())
        .merge(crate::erasure::router())
        .merge(mcp)
        .api_route_docs(mcp::PATH, ApiMethodDocs::new("post", mcp::operation()))
        .route_layer(middleware::from_fn_with_state(http, record_metrics))
        .with_state(state)
        .merge(ops::router(registry, ready));
    let router = openapi::serve(routes, docs::DOCS, docs::finish)?;
    Ok(router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(correlate))
        .layer(cors))
}

/// Gives every request a correlation id (the caller's or a new one), runs it
/// in a span that carries the id and continues the caller's W3C trace (or
/// starts one, when spans are exported), and echoes the id in the response.
async fn correlate(mut req: Request, next: Next) -> Response {
    let id = CorrelationId::from_headers(req.headers());
    req.extensions_mut().insert(id.clone());
    let span = request_span(&req, &id);
    let caller_trace = telemetry::from_http(req.headers());
    // A root span's trace id is read once the route has named it
    // (`record_metrics`).
    telemetry::adopt(&span, caller_trace.as_ref());
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    let status = response.status().as_u16();
    if caller_trace.is_none() {
        telemetry::record_trace_id(&span);
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, "request failed");
        } else if status >= 400 {
            tracing::info!(status, "request refused");
        } else {
            tracing::debug!(status, "request served");
        }
    });
    response
}

/// The request's span: the OpenTelemetry HTTP attributes only when spans
/// are exported, since the JSON log layer formats every field of a span when
/// it is created (what an event's span costs: `benches/README.md`).
fn request_span(req: &Request, id: &CorrelationId) -> tracing::Span {
    if !telemetry::tracing_on() {
        return tracing::info_span!(
            "request",
            correlation_id = %id.0,
            method = %req.method(),
            path = %req.uri().path(),
            trace_id = tracing::field::Empty,
        );
    }
    tracing::info_span!(
        "request",
        otel.name = %req.method(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        correlation_id = %id.0,
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = tracing::field::Empty,
    )
}

async fn record_metrics(State(http): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    if telemetry::tracing_on() {
        // The request's span (see `correlate`) is named for its route.
        let span = tracing::Span::current();
        span.record("http.route", route.as_str());
        telemetry::rename(&span, format!("{method} {route}"));
    }
    let response = next.run(req).await;
    http.duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    http.requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}
