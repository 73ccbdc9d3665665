//! The WebSocket side of `todo-load`: clients of todo-realtime that match
//! the events they receive to the requests that caused them (by correlation
//! id), and idle connections for measuring memory per connection.
//!
//! Protocol: `GET /ws?token=<JWT>` upgrades; the server sends text frames of
//! JSON, events (`{"type":"task.created","correlationid":…,…}`) and control
//! messages (`{"type":"ready",…}` once after the backlog, `{"type":"resync",…}`).

use futures::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client reads of a frame.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    correlationid: Option<String>,
}

/// Requests sent and not yet seen on a socket, and the latency of those seen.
pub struct Tracker {
    pending: Mutex<HashMap<String, Instant>>,
    latency: Mutex<Histogram<u64>>,
    /// Sends before this instant (the warm-up) are matched but not recorded.
    measure_from: Instant,
    /// Event frames received, on all sockets.
    pub events: AtomicU64,
    /// Event frames whose correlation id was not pending: a second receipt
    /// (another connection of the same user, or a later event of the same
    /// request), or an event nobody here caused.
    pub unmatched: AtomicU64,
    /// Sockets that closed or failed while the load ran.
    pub disconnects: AtomicU64,
}

impl Tracker {
    pub fn new(measure_from: Instant) -> Self {
        Tracker {
            pending: Mutex::new(HashMap::new()),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid"),
            ),
            measure_from,
            events: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        }
    }

    /// A request with this correlation id is about to be sent.
    pub fn sent(&self, correlation_id: String, at: Instant) {
        lock(&self.pending).insert(correlation_id, at);
    }

    /// The request failed: no event will come.
    pub fn failed(&self, correlation_id: &str) {
        lock(&self.pending).remove(correlation_id);
    }

    /// An event with this correlation id arrived on some socket; the first
    /// receipt of each counts.
    pub fn received(&self, correlation_id: &str) {
        let now = Instant::now();
        let sent = lock(&self.pending).remove(correlation_id);
        match sent {
            Some(at) if at >= self.measure_from => {
                let micros = now.duration_since(at).as_micros().max(1) as u64;
                let _ = lock(&self.latency).record(micros);
            }
            Some(_) => {}
            None => {
                self.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Measured requests whose event has not arrived yet.
    pub fn outstanding(&self) -> usize {
        lock(&self.pending)
            .values()
            .filter(|at| **at >= self.measure_from)
            .count()
    }

    /// Waits until every measured request's event has arrived, or `grace`
    /// has passed; returns how many never arrived.
    pub async fn drain(&self, grace: Duration) -> usize {
        let until = Instant::now() + grace;
        loop {
            let left = self.outstanding();
            if left == 0 || Instant::now() >= until {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn latency(&self) -> Histogram<u64> {
        lock(&self.latency).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `base` (`ws://host:port/ws`) with the token as query parameter.
pub fn url_with_token(base: &str, token: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    // A JWT is base64url and dots: nothing to escape.
    format!("{base}{sep}token={token}")
}

/// Connects and waits for the server's `ready` (sent after any backlog).
pub async fn connect(base: &str, token: &str, timeout: Duration) -> anyhow::Result<Socket> {
    let url = url_with_token(base, token);
    let connected = tokio::time::timeout(timeout, async {
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await?;
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message? {
                let frame: Frame = serde_json::from_str(text.as_str())?;
                if frame.kind == "ready" {
                    return Ok(socket);
                }
            }
        }
        anyhow::bail!("closed before it was ready")
    })
    .await;
    match connected {
        Ok(result) => result,
        Err(_) => anyhow::bail!("not ready within {timeout:?}"),
    }
}

/// Opens one connection per token, `parallel` handshakes at a time.
/// Returns the sockets and the errors (first few kept).
pub async fn connect_many(
    base: &str,
    tokens: Vec<String>,
    parallel: usize,
    timeout: Duration,
) -> (Vec<Socket>, Vec<String>) {
    let results: Vec<anyhow::Result<Socket>> = stream::iter(tokens)
        .map(|token| async move { connect(base, &token, timeout).await })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut sockets = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => sockets.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (sockets, errors)
}

/// Reads a socket until it closes, reporting every event to `tracker`.
pub async fn listen(mut socket: Socket, tracker: Arc<Tracker>) {
    while let Some(message) = socket.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        if let Some(id) = frame.correlationid.as_deref() {
            if frame.kind != "ready" && frame.kind != "resync" {
                tracker.events.fetch_add(1, Ordering::Relaxed);
                tracker.received(id);
            }
        }
    }
    tracker.disconnects.fetch_add(1, Ordering::Relaxed);
}

/// Reads and drops everything (answers pings) until the socket closes.
pub async fn idle(mut socket: Socket) {
    while let Some(message) = socket.next().await {
        if matches!(message, Ok(Message::Close(_)) | Err(_)) {
            break;
        }
    }
}

/// A process's resident set size in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Raises this process's open-file limit to its hard limit (10,000 sockets
/// need more than the usual 1,024); returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_receipt_counts_and_the_warm_up_does_not() {
        let start = Instant::now();
        let tracker = Tracker::new(start + Duration::from_millis(1));
        tracker.sent("warm".into(), start);
        std::thread::sleep(Duration::from_millis(2));
        tracker.sent("a".into(), Instant::now());
        tracker.sent("b".into(), Instant::now());
        tracker.sent("c".into(), Instant::now());
        assert_eq!(tracker.outstanding(), 3);
        tracker.received("warm");
        tracker.received("a");
        tracker.received("a");
        tracker.failed("b");
        assert_eq!(tracker.latency().len(), 1);
        assert_eq!(tracker.unmatched.load(Ordering::Relaxed), 1);
        assert_eq!(tracker.outstanding(), 1);
    }

    #[test]
    fn tokens_go_in_the_query() {
        assert_eq!(
            url_with_token("ws://h:1/ws", "x.y.z"),
            "ws://h:1/ws?token=x.y.z"
        );
        assert_eq!(
            url_with_token("ws://h/ws?since=3", "t"),
            "ws://h/ws?since=3&token=t"
        );
    }

    #[test]
    fn the_open_file_limit_goes_up_to_the_hard_limit() {
        let limit = raise_nofile_limit().unwrap();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, limit);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
