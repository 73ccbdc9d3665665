//! The one application state every handler shares.

use prometheus::{HistogramVec, IntCounterVec, Registry};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use std::sync::Arc;
use todo_platform::auth::JwtKeys;
use todo_platform::metrics::{counter_vec, histogram_vec};
use todo_store::outbox::OutboxSignal;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub jwt: Arc<JwtKeys>,
    pub writes: Arc<crate::limits::WriteLimiter>,
    pub signal: OutboxSignal,
    pub producer: FutureProducer,
    pub http: HttpMetrics,
    pub channels: Arc<crate::preferences::ChannelSettings>,
    /// What of a request's origin its events record.
    pub origin: Arc<crate::origin::OriginPolicy>,
}

impl axum::extract::FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = counter_vec(
            registry,
            "http_requests_total",
            "HTTP requests by route and status",
            &["method", "route", "status"],
        )?;
        let duration = histogram_vec(
            registry,
            "http_request_duration_seconds",
            "HTTP request latency",
            prometheus::exponential_buckets(0.0002, 2.0, 16)?,
            &["method", "route"],
        )?;
        Ok(Self { requests, duration })
    }
}
