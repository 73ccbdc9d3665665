//! `/health`, `/ready` and `/metrics`: the operations endpoints every service
//! serves, on its main port or a small one of its own.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of a readiness check: each dependency and whether it answers.
/// `required` dependencies decide readiness; the others are reported only.
#[derive(Debug, Default, Serialize)]
pub struct Readiness {
    pub ready: bool,
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

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    ready: ReadyCheck,
}

pub fn router(registry: Registry, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready_handler))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready_handler(State(state): State<OpsState>) -> Response {
    let readiness = (state.ready)().await;
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
