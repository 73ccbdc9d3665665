//! Serving a service's router over HTTP/1.1 with the limits no client may
//! get around: a connection must send a request's headers within
//! `header_read_timeout` (which is also how long an idle keep-alive
//! connection is kept: hyper times the wait for the next request's first
//! byte the same way), and a request that has not been answered within
//! `request_timeout` gets 503. `axum::serve` sets neither, so a client that
//! dribbles its headers, or opens a connection and says nothing, would hold
//! it for ever.

use crate::config::{ConfigError, Env};
use crate::http::Problem;
use crate::shutdown::Shutdown;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutLayer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// `HTTP_HEADER_READ_TIMEOUT_MS`: from a connection's start, or the end
    /// of its previous response, until its request's headers are in.
    pub header_read_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_MS`: longest a request may take to be answered
    /// (503 after it). An upgraded WebSocket is answered at once and then
    /// lives on its own terms.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpLimits {
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let limits = Self {
            header_read_timeout: env
                .millis_or("HTTP_HEADER_READ_TIMEOUT_MS", defaults.header_read_timeout)?,
            request_timeout: env.millis_or("HTTP_REQUEST_TIMEOUT_MS", defaults.request_timeout)?,
        };
        for (var, value) in [
            ("HTTP_HEADER_READ_TIMEOUT_MS", limits.header_read_timeout),
            ("HTTP_REQUEST_TIMEOUT_MS", limits.request_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(ConfigError::Invalid {
                    var,
                    reason: "must be between 1 and 3600000".into(),
                });
            }
        }
        Ok(limits)
    }
}

/// The request timeout's bare 503 as the problem every other 503 is (and
/// the OpenAPI documents say), with when to come back.
async fn timeout_as_problem(response: Response) -> Response {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let mut problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "/problems/timeout",
        "Request timeout",
    )
    .detail("the request took longer than the server allows (HTTP_REQUEST_TIMEOUT_MS); retry")
    .into_response();
    problem
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    problem
}

/// How long connections still busy at shutdown get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Serves `router` on `listener` until `shutdown`, then lets the requests in
/// flight finish (up to a grace period) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let router = router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(timeout_as_problem));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Each connection holds a sender; once every one has dropped its own,
    // `all_closed` answers: the connections are done (mini-redis' way).
    let (closing, _) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Each request knows its peer (`ConnectInfo`), as with axum::serve's
        // `into_make_service_with_connect_info`.
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut closing = closing.subscribe();
        let open = open.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                    // Finish the request in hand, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                // Timeouts and clients that hang up: routine.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(open);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}
