//! `/health`, `/ready` and `/metrics`: the operations endpoints every service
//! serves, on its main port or a small one of its own.

use aide::axum::routing::get_with;
use aide::axum::ApiRouter;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of a readiness check: each dependency and whether it answers.
/// `required` dependencies decide readiness; the others are reported only.
#[derive(Debug, Default, Clone, Serialize, schemars::JsonSchema)]
pub struct Readiness {
    /// Every required dependency answers.
    pub ready: bool,
    /// Each dependency (database, broker, consuming, ...) and whether it
    /// answers.
    pub checks: BTreeMap<&'static str, bool>,
}

impl Readiness {
    pub fn new() -> Self {
        Self {
            ready: true,
            checks: BTreeMap::new(),
        }
    }

    pub fn required(mut self, name: &'static str, ok: bool) -> Self {
        self.ready &= ok;
        self.checks.insert(name, ok);
        self
    }

    pub fn informational(mut self, name: &'static str, ok: bool) -> Self {
        self.checks.insert(name, ok);
        self
    }
}

pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Readiness> + Send + Sync>;

/// How long a readiness result is reused. `/ready` is unauthenticated: each
/// call would otherwise cost a database round trip and a broker metadata
/// request, whoever sends it and however often.
pub const READY_CACHE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    ready: ReadyCheck,
    /// The last result and when it was taken. Callers that arrive while a
    /// check runs wait for it instead of starting their own.
    last: Arc<tokio::sync::Mutex<Option<(Instant, Readiness)>>>,
}

/// The operations endpoints; a service without an OpenAPI document of its
/// own takes them as a plain router (`Router::from`).
pub fn router(registry: Registry, ready: ReadyCheck) -> ApiRouter {
    ApiRouter::new()
        .api_route(
            "/health",
            get_with(health, |op| {
                op.summary("Liveness")
                    .description("Answers while the process serves HTTP.")
                    .tag("operations")
            }),
        )
        .api_route(
            "/ready",
            get_with(ready_handler, |op| {
                op.summary("Readiness")
                    .description(
                        "Whether the service can do its work; checked at most once a second \
                         whoever asks.",
                    )
                    .tag("operations")
                    .response_with::<200, Json<Readiness>, _>(|r| r.description("Ready"))
                    .response_with::<503, Json<Readiness>, _>(|r| {
                        r.description("Not ready: a required check failed")
                    })
            }),
        )
        .api_route(
            "/metrics",
            get_with(metrics, |op| {
                op.summary("Prometheus metrics")
                    .description("Every metric of the service in Prometheus' text format.")
                    .tag("operations")
                    .response_with::<200, String, _>(|r| r.description("text/plain; version=0.0.4"))
            }),
        )
        .with_state(OpsState {
            registry,
            ready,
            last: Arc::default(),
        })
}

#[derive(Serialize, schemars::JsonSchema)]
struct Health {
    /// Always "ok".
    status: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn ready_handler(State(state): State<OpsState>) -> Response {
    let readiness = {
        let mut last = state.last.lock().await;
        match &*last {
            Some((at, cached)) if at.elapsed() < READY_CACHE => cached.clone(),
            _ => {
                let fresh = (state.ready)().await;
                *last = Some((Instant::now(), fresh.clone()));
                fresh
            }
        }
    };
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    render(&state.registry)
}

/// The registry in Prometheus' text format.
pub fn render(registry: &Registry) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Whether the brokers answer a metadata request within `timeout`.
pub async fn broker_reachable(producer: &FutureProducer, timeout: Duration) -> bool {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_is_checked_once_however_many_ask() {
        let checks = Arc::new(AtomicUsize::new(0));
        let counted = checks.clone();
        let ready: ReadyCheck = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Readiness::new().required("database", true) }.boxed()
        });
        let router = axum::Router::from(router(Registry::new(), ready));
        let calls = (0..20).map(|_| {
            router
                .clone()
                .oneshot(Request::get("/ready").body(Body::empty()).expect("request"))
        });
        for response in futures::future::join_all(calls).await {
            assert_eq!(response.expect("response").status(), StatusCode::OK);
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1, "20 callers, one check");
        tokio::time::sleep(READY_CACHE + Duration::from_millis(50)).await;
        let again = router
            .oneshot(Request::get("/ready").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(
            checks.load(Ordering::SeqCst),
            2,
            "a stale result is renewed"
        );
    }
}
