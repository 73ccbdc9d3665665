//! `/ws`: authenticates before the upgrade, then runs one session per
//! connection: the start (backlog or resync), `ready`, then live events,
//! heartbeats and a bounded send buffer.

use crate::frame;
use crate::hub::{Hub, Live, Start};
use crate::slots::ConnectionSlots;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_platform::auth::{AuthError, JwtKeys, Verified};
use todo_platform::http::{Problem, Unauthorized};
use todo_platform::metrics::{counter, counter_vec, gauge, registered};
use todo_platform::shutdown::Shutdown;
use tokio::sync::mpsc;

/// The subprotocol a browser offers along with its token:
/// `new WebSocket(url, ["bearer", token])`.
pub const BEARER_PROTOCOL: &str = "bearer";

/// Close codes a client acts on (4000-4999 are the application's).
pub mod close {
    /// Its send buffer overflowed: reconnect with the last sequence seen.
    pub const TOO_SLOW: u16 = 4001;
    /// It answered no ping for two intervals.
    pub const SILENT: u16 = 4002;
    /// The token expired: reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// The user was erased (after the `user.erased` event): do not reconnect.
    pub const ERASED: u16 = 4004;
    /// The server is going away: reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Frames waiting for a connection before it is dropped as too slow.
    pub send_buffer: usize,
    pub ping_interval: Duration,
    /// Longest a write to one connection may take.
    pub send_timeout: Duration,
}

#[derive(Clone)]
pub struct Metrics {
    connections: IntGauge,
    sent: IntCounter,
    closed: IntCounterVec,
    resyncs: IntCounter,
    buffered: IntGauge,
    window: prometheus::Gauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let connections = gauge(
            registry,
            "realtime_connections",
            "Open WebSocket connections",
        )?;
        let sent = counter(
            registry,
            "realtime_frames_sent_total",
            "Event frames queued for connections",
        )?;
        let closed = counter_vec(
            registry,
            "realtime_connections_closed_total",
            "Connections closed, by reason",
            &["reason"],
        )?;
        let resyncs = counter(
            registry,
            "realtime_resyncs_total",
            "Resync frames sent (resume too old, or events lost)",
        )?;
        let buffered = gauge(
            registry,
            "realtime_resume_buffer_bytes",
            "Bytes of frames kept for resumes, all users",
        )?;
        let window = registered(
            registry,
            prometheus::Gauge::new(
                "realtime_resume_window_seconds",
                "How far back a resume reaches now",
            )?,
        )?;
        Ok(Metrics {
            connections,
            sent,
            closed,
            resyncs,
            buffered,
            window,
        })
    }

    pub fn resume_buffer(&self, bytes: usize, window: Duration) {
        self.buffered.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.window.set(window.as_secs_f64());
    }

    pub fn frames_sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    pub fn slow_dropped(&self, n: u64) {
        if n > 0 {
            self.closed.with_label_values(&["too_slow"]).inc_by(n);
        }
    }
}

#[derive(Clone)]
pub struct SocketState {
    pub hub: Arc<Hub>,
    pub keys: Arc<JwtKeys>,
    pub slots: Arc<ConnectionSlots>,
    pub metrics: Metrics,
    pub config: SessionConfig,
    pub shutdown: Shutdown,
}

impl FromRef<SocketState> for Arc<JwtKeys> {
    fn from_ref(state: &SocketState) -> Arc<JwtKeys> {
        state.keys.clone()
    }
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    since: Option<u64>,
}

/// `GET /ws?token=…&since=…`, or the token as a subprotocol.
pub async fn upgrade(
    State(state): State<SocketState>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-query",
                "Invalid query",
            )
            .detail(format!(
                "since must be a sequence number (a non-negative integer): {e}"
            ))
            .into_response()
        }
    };
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let verified = match authenticate(&state.keys, query.token.as_deref(), offered) {
        Ok(verified) => verified,
        Err(refused) => return refused.into_response(),
    };
    let Some(slot) = state.slots.take(verified.user.as_str()) else {
        state.metrics.closed.with_label_values(&["too_many"]).inc();
        let mut refused = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "/problems/too-many-connections",
            "Too many connections",
        )
        .detail(format!(
            "this user already has {} open connections (REALTIME_MAX_CONNECTIONS_PER_USER)",
            state.slots.per_user()
        ))
        .into_response();
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return refused;
    };
    let since = query.since;
    ws.protocols([BEARER_PROTOCOL])
        // Small buffers: most connections are idle most of the time.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            session(socket, state, verified, since).await;
            drop(slot);
        })
}

/// The user of a valid token from the query, or from the subprotocols
/// offered (`bearer, <token>`).
fn authenticate(
    keys: &JwtKeys,
    query_token: Option<&str>,
    offered: Option<&str>,
) -> Result<Verified, Unauthorized> {
    let from_protocols = offered.and_then(|list| {
        let items: Vec<&str> = list.split(',').map(str::trim).collect();
        items
            .contains(&BEARER_PROTOCOL)
            .then(|| items.into_iter().find(|p| *p != BEARER_PROTOCOL))
            .flatten()
    });
    let token = query_token
        .or(from_protocols)
        .ok_or_else(|| Unauthorized(AuthError::Missing.to_string()))?;
    keys.verify(token).map_err(|e| Unauthorized(e.to_string()))
}

async fn session(socket: WebSocket, state: SocketState, verified: Verified, since: Option<u64>) {
    let user = verified.user;
    let (tx, rx) = mpsc::channel(state.config.send_buffer);
    let sub = state
        .hub
        .subscribe(user.as_str(), since, tx, Instant::now());
    state.metrics.connections.inc();
    let reason = Session {
        socket,
        state: &state,
        latest: sub.latest,
        expires_at: verified.expires_at,
    }
    .run(sub.start, rx)
    .await;
    state.hub.unsubscribe(user.as_str(), sub.id);
    state.metrics.connections.dec();
    state.metrics.closed.with_label_values(&[reason]).inc();
    tracing::debug!(user = %user.as_str(), reason, "connection closed");
}

struct Session<'a> {
    socket: WebSocket,
    state: &'a SocketState,
    latest: Option<u64>,
    /// The token's `exp`: the session ends there, as a request with that
    /// token would be refused from then on.
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Why a session ended; the reason label of the closed-connections metric.
type Reason = &'static str;

impl Session<'_> {
    async fn run(mut self, start: Start, mut rx: mpsc::Receiver<Live>) -> Reason {
        let mut shutdown = self.state.shutdown.clone();
        let mut first = match start {
            Start::Backlog(events) => events,
            Start::Resync => {
                self.state.metrics.resyncs.inc();
                vec![frame::resync(self.latest)]
            }
        };
        first.push(frame::ready(self.latest));
        if let Err(reason) = self.send_all(first).await {
            return reason;
        }

        let interval = self.state.config.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut heard = Instant::now();
        let valid_for = (self.expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let expiry = tokio::time::sleep(valid_for);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                _ = &mut expiry => {
                    return self.close(close::TOKEN_EXPIRED, "token expired: reconnect with a fresh one", "token_expired").await;
                }
                live = rx.recv() => {
                    let Some(live) = live else {
                        return self.close(close::TOO_SLOW, "too slow: reconnect with since", "too_slow").await;
                    };
                    // Whatever else is waiting goes out in the same flush.
                    let waiting = std::iter::once(live).chain(std::iter::from_fn(|| rx.try_recv().ok()));
                    let mut frames = Vec::new();
                    let mut erased = false;
                    for live in waiting {
                        match self.frame_of(live) {
                            Some(frame) => frames.push(frame),
                            None => {
                                erased = true;
                                break;
                            }
                        }
                    }
                    if let Err(reason) = self.send_all(frames).await {
                        return reason;
                    }
                    if erased {
                        return self.close(close::ERASED, "user erased", "erased").await;
                    }
                }
                incoming = self.socket.next() => match incoming {
                    Some(Ok(Message::Close(_))) | None => return "client_closed",
                    Some(Err(_)) => return "error",
                    // Pongs, and anything a client says, show it is alive.
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > 2 * interval {
                        return self.close(close::SILENT, "no pong", "silent").await;
                    }
                    let sent = tokio::time::timeout(
                        self.state.config.send_timeout,
                        self.socket.send(Message::Ping(Default::default())),
                    ).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return "error";
                    }
                }
                _ = shutdown.recv() => {
                    return self.close(close::GOING_AWAY, "server shutting down", "shutdown").await;
                }
            }
        }
    }

    /// The frame to send; none when the session is to end (erased).
    fn frame_of(&mut self, live: Live) -> Option<Utf8Bytes> {
        match live {
            Live::Event(text) => Some(text),
            Live::Resync => {
                self.state.metrics.resyncs.inc();
                Some(frame::resync(None))
            }
            Live::Erased => None,
        }
    }

    /// Writes `frames` and flushes once, within the send timeout.
    async fn send_all(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), Reason> {
        if frames.is_empty() {
            return Ok(());
        }
        let socket = &mut self.socket;
        let write = async move {
            for text in frames {
                socket.feed(Message::Text(text)).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(self.state.config.send_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("error"),
            Err(_) => Err("send_timeout"),
        }
    }

    async fn close(mut self, code: u16, why: &'static str, reason: Reason) -> Reason {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(why),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_contract::domain::UserId;
    use todo_platform::config::JwtSettings;

    #[test]
    fn the_token_comes_from_the_query_or_the_offered_subprotocols() {
        let keys = JwtKeys::new(&JwtSettings::with_secret(&"s".repeat(32)));
        let alice = UserId::try_from("alice".to_string()).expect("valid user id");
        let token = keys.mint(&alice, Duration::from_secs(60));
        let user = |q: Option<&str>, p: Option<&str>| {
            authenticate(&keys, q, p).map(|v| v.user.as_str().to_owned())
        };
        assert_eq!(user(Some(&token), None).ok().as_deref(), Some("alice"));
        let offered = format!("bearer, {token}");
        assert_eq!(user(None, Some(&offered)).ok().as_deref(), Some("alice"));
        assert!(user(None, Some(&token)).is_err(), "needs the bearer marker");
        assert!(user(None, None).is_err());
        assert!(user(Some("not.a.jwt"), None).is_err());
    }
}
