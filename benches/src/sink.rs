//! `todo-sink`: the webhook receiver and push service of the reminder
//! channels benchmark. `POST /hook` answers 204 after `--delay-ms` (a slow
//! receiver); `POST /push/{device}` answers 201 at once, as a push service
//! does. Counts what it received at `GET /stats`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 18099)]
    port: u16,
    /// Added to every webhook request.
    #[arg(long, default_value_t = 200)]
    delay_ms: u64,
}

#[derive(Default)]
struct Counts {
    hooks: AtomicU64,
    pushes: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let delay = Duration::from_millis(args.delay_ms);
    let app = Router::new()
        .route(
            "/hook",
            post(move |State(c): State<Arc<Counts>>| async move {
                tokio::time::sleep(delay).await;
                c.hooks.fetch_add(1, Ordering::Relaxed);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/push/{device}",
            post(|State(c): State<Arc<Counts>>| async move {
                c.pushes.fetch_add(1, Ordering::Relaxed);
                StatusCode::CREATED
            }),
        )
        .route(
            "/stats",
            get(|State(c): State<Arc<Counts>>| async move {
                Json(serde_json::json!({
                    "hooks": c.hooks.load(Ordering::Relaxed),
                    "pushes": c.pushes.load(Ordering::Relaxed),
                }))
            }),
        )
        .with_state(counts);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
