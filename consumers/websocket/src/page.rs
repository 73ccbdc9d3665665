//! The live task page (`/`), its settings (`/config.json`), and, when
//! `REALTIME_DEV_TOKENS=true`, a development token minter (`POST /dev/token`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use todo_contract::domain::UserId;
use todo_platform::auth::JwtKeys;
use todo_platform::http::Problem;

const PAGE: &str = include_str!("../static/index.html");
/// The page's service worker (Web Push notifications).
const SERVICE_WORKER: &str = include_str!("../static/sw.js");

#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    /// The public URL of todo-api that the page calls (`REALTIME_API_URL`);
    /// todo-api's `CORS_ALLOWED_ORIGINS` must allow this page's origin.
    pub api_url: String,
    /// Whether anyone may mint a token here (`REALTIME_DEV_TOKENS`): for a
    /// local stack only, never in production.
    pub dev_tokens: bool,
    /// How often the page reloads the list over REST while its socket cannot
    /// connect (`REALTIME_PAGE_POLL_SECS`; the specs: 30 s).
    pub poll_interval_secs: u64,
}

#[derive(Clone)]
struct PageState {
    config: PageConfig,
    keys: Arc<JwtKeys>,
}

pub fn router(config: PageConfig, keys: Arc<JwtKeys>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/config.json", get(settings))
        .route("/sw.js", get(service_worker))
        .route("/dev/token", post(mint))
        .with_state(PageState { config, keys })
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn service_worker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SERVICE_WORKER,
    )
        .into_response()
}

async fn settings(State(state): State<PageState>) -> Json<PageConfig> {
    Json(state.config)
}

#[derive(Debug, Deserialize)]
struct MintRequest {
    user: String,
}

#[derive(Debug, Serialize)]
struct Minted {
    token: String,
}

async fn mint(
    State(state): State<PageState>,
    body: Result<Json<MintRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !state.config.dev_tokens {
        return Problem::new(StatusCode::NOT_FOUND, "/problems/not-found", "Not found")
            .detail("development tokens are disabled (REALTIME_DEV_TOKENS)")
            .into_response();
    }
    let Ok(Json(request)) = body else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-body",
            "Invalid body",
        )
        .detail(r#"expected {"user": "<user id>"}"#)
        .into_response();
    };
    match UserId::try_from(request.user) {
        Ok(user) => Json(Minted {
            token: state.keys.mint(&user, Duration::from_secs(24 * 3600)),
        })
        .into_response(),
        Err(reason) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-user",
            "Invalid user id",
        )
        .detail(reason)
        .into_response(),
    }
}
