//! `todo-load`: drives `todo-api` with a mix of task changes from many users
//! and reports latency percentiles, throughput and errors.
//!
//! With `--rate` it is open-loop: request *i* is due at `start + i / rate`
//! and its latency is measured from that due time, so a slow server cannot
//! hide its queueing by slowing the generator down (no coordinated
//! omission). Without `--rate` it is closed-loop: `--concurrency` workers send
//! back to back, which finds the highest sustainable throughput.
//!
//! Every request carries a unique `X-Correlation-Id`. With `--ws-clients`,
//! WebSocket clients of todo-realtime (spread over the users) match the
//! events they receive to the requests that caused them: the delay from
//! sending a request to the first receipt of its event on a socket.
//! `--ws-idle` only opens idle connections, for memory per connection.
//!
//! `--reminders-in` gives every created task an absolute reminder within one
//! window (reminder lateness of todo-notifier, pipeline step 7).
//!
//! The op `mcp_create` creates the same task as `create` through the MCP
//! tool `add_task` (a `tools/call` POST to `/mcp`, as an assistant's client
//! sends once it has initialized), so `--mix create=1,mcp_create=1 --rate R`
//! measures both edges at the same rate, interleaved, in one run.

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_bench::plot;
use todo_bench::ws::{self, Tracker};
use todo_contract::domain::UserId;
use todo_platform::auth::JwtKeys;
use todo_platform::config::JwtSettings;
use tokio::sync::{mpsc, Semaphore};

#[derive(Parser, Debug, Clone)]
#[command(name = "todo-load", version)]
struct Args {
    /// Base URL of todo-api.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API's HS256 secret, to mint a token per user.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Requests per second, open-loop. Without it: closed-loop at full speed.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed-loop workers, or the cap on requests in flight when open-loop.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Distinct users (each with its own token and tasks).
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Weights of the operations, e.g. `create=6,update=2,complete=1,delete=1`.
    #[arg(long, default_value = "create=1")]
    mix: Mix,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Create recurring tasks (daily, Europe/Berlin, `on_completion`), so
    /// that completions make todo-recurring create the next instances.
    #[arg(long)]
    recurring: bool,
    /// Stop after this many requests (warm-up included), or at the end of
    /// the time, whichever comes first: e.g. exactly 10,000 creates.
    #[arg(long)]
    requests: Option<u64>,
    /// Give each created task one absolute reminder `{"at": T}`, T = start +
    /// this many seconds + uniform(0, --reminders-window), due an hour later.
    #[arg(long, value_name = "SECONDS")]
    reminders_in: Option<f64>,
    /// Instead of one window for all: give each created task one reminder
    /// this many seconds + uniform(0, --reminders-window) after its own
    /// creation (a steady stream of reminders, for a soak).
    #[arg(long, value_name = "SECONDS", conflicts_with = "reminders_in")]
    reminders_after: Option<f64>,
    /// The window the reminders fall in, in seconds.
    #[arg(long, default_value_t = 60.0)]
    reminders_window: f64,
    /// The users' names start with this (`<prefix>-<i>`); by default a
    /// random one per run. Two runs with the same prefix act for the same
    /// users.
    #[arg(long)]
    user_prefix: Option<String>,
    /// Before the load, give every user all three reminder channels
    /// (`PUT /me/notifications`): e-mail to `<user>@bench.invalid`, a webhook
    /// at `<URL>/hook` and a push subscription at `<URL>/push/<i>` (what
    /// `todo-sink` serves).
    #[arg(long, value_name = "URL")]
    channels: Option<String>,
    /// Write the latency plot (SVG) here; by default next to `--report`,
    /// with `.svg`.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// WebSocket clients of todo-realtime, spread over the users (client i
    /// is user i mod --users): latency from a request's send to its event
    /// on a socket.
    #[arg(long, default_value_t = 0)]
    ws_clients: usize,
    /// todo-realtime's WebSocket endpoint (`?token=<JWT>` is added).
    #[arg(long, default_value = "ws://127.0.0.1:8084/ws")]
    ws_url: String,
    /// Seconds to wait after the load for events still on their way.
    #[arg(long, default_value_t = 5.0)]
    ws_grace: f64,
    /// Only open this many idle WebSocket connections (no HTTP load), hold
    /// them for --seconds and report todo-realtime's RSS (--ws-pid).
    #[arg(long, value_name = "N")]
    ws_idle: Option<usize>,
    /// todo-realtime's process id, to read its VmRSS before and after.
    #[arg(long)]
    ws_pid: Option<u32>,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    ws_parallel: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Create,
    Update,
    Complete,
    Delete,
    #[serde(rename = "mcp_create")]
    McpCreate,
    /// `GET /tasks?status=open`: the user's open tasks, which then replace
    /// what the generator knows of them (so the instances todo-recurring
    /// creates are updated, completed and deleted too).
    List,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Create,
        Op::Update,
        Op::Complete,
        Op::Delete,
        Op::McpCreate,
        Op::List,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::McpCreate => "mcp_create",
            Op::Update => "update",
            Op::Complete => "complete",
            Op::Delete => "delete",
            Op::List => "list",
        }
    }
}

#[derive(Debug, Clone)]
struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected op=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    format!(
                        "{name:?}: expected create, update, complete, delete, mcp_create or list"
                    )
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|e| format!("{part:?}: {e}"))?;
            weights.push((op, weight));
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("the weights add up to zero".into());
        }
        Ok(Mix { weights, total })
    }
}

impl Mix {
    fn pick(&self, rng: &mut impl Rng) -> Op {
        let mut n = rng.random_range(0..self.total);
        for (op, w) in &self.weights {
            if n < *w {
                return *op;
            }
            n -= w;
        }
        Op::Create
    }
}

/// One user: a token and the ids of their open tasks.
/// Every user's channels, set before the load.
async fn set_channels(
    client: &reqwest::Client,
    base: &str,
    users: &[User],
    sink: &str,
) -> anyhow::Result<()> {
    // A valid P-256 point and auth secret: the sink does not decrypt.
    const P256DH: &str =
        "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    for (i, user) in users.iter().enumerate() {
        let body = serde_json::json!({
            "email": {"address": format!("user{i}@bench.invalid"), "enabled": true},
            "webhook": {"url": format!("{sink}/hook"), "enabled": true},
            "webpush": {"subscriptions": [{
                "endpoint": format!("{sink}/push/{i}"),
                "keys": {"p256dh": P256DH, "auth": "_ordMnz7uTCmrpBTeUV4Bw"},
            }]},
        });
        client
            .put(format!("{base}/me/notifications"))
            .header("authorization", &user.auth)
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .context("PUT /me/notifications")?;
    }
    Ok(())
}

struct User {
    token: String,
    auth: String,
    open: Mutex<Vec<String>>,
    /// Tasks this user completed: a delete takes one of these first, so
    /// that completed tasks do not pile up.
    done: Mutex<Vec<String>>,
    /// A WebSocket client listens for this user's events.
    watched: bool,
}

struct Target {
    client: reqwest::Client,
    base: String,
    users: Vec<User>,
    mix: Mix,
    recurring: bool,
    reminders: Option<ReminderDue>,
    tracker: Option<Arc<Tracker>>,
}

/// When the reminder of a created task is due.
#[derive(Clone, Copy)]
enum ReminderDue {
    /// In [start, start + window), for every task.
    Window {
        start: chrono::DateTime<chrono::Utc>,
        window: f64,
    },
    /// `after` s + uniform(0, window) after the task is created.
    After { after: f64, window: f64 },
}

struct Sample {
    op: Op,
    micros: u64,
    outcome: Result<(), String>,
    at: Instant,
}

impl Target {
    /// Performs one operation for a random user; update/complete/delete fall
    /// back to a create while that user has no open task.
    async fn one(&self) -> (Op, Result<(), String>) {
        let (user, op) = {
            let mut rng = rand::rng();
            (
                &self.users[rng.random_range(0..self.users.len())],
                self.mix.pick(&mut rng),
            )
        };
        let existing = match op {
            Op::Create => None,
            Op::McpCreate => return (op, self.create_over_mcp(user).await),
            Op::List => return (op, self.list(user).await),
            Op::Delete => {
                let mut done = user.done.lock().unwrap_or_else(|e| e.into_inner());
                let mut open = user.open.lock().unwrap_or_else(|e| e.into_inner());
                let list = if done.is_empty() {
                    &mut *open
                } else {
                    &mut *done
                };
                let n = list.len();
                (n > 0).then(|| list.swap_remove(rand::rng().random_range(0..n)))
            }
            Op::Complete => {
                let mut open = user.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.len();
                (n > 0).then(|| open.swap_remove(rand::rng().random_range(0..n)))
            }
            Op::Update => {
                let open = user.open.lock().unwrap_or_else(|e| e.into_inner());
                (!open.is_empty()).then(|| open[rand::rng().random_range(0..open.len())].clone())
            }
        };
        let Some(id) = existing else {
            return (Op::Create, self.create(user).await);
        };
        let url = format!("{}/tasks/{id}", self.base);
        let request = match op {
            // A new title every time: an update that changes nothing has no
            // event (and nothing for a WebSocket client to wait for).
            Op::Update => self.client.patch(&url).json(&serde_json::json!({
                "title": format!("Renamed by todo-load {:08x}", rand::random::<u32>()),
                "priority": "urgent",
            })),
            Op::Complete => self.client.post(format!("{url}/complete")),
            _ => self.client.delete(&url),
        };
        let result = self.send(user, request).await;
        if op == Op::Complete && result.is_ok() {
            user.done.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
        (op, result.map(|_| ()))
    }

    /// The user's open tasks (the first 100), now what the generator knows.
    /// Not through `send`: a read has no event for the WebSocket clients to
    /// wait for.
    async fn list(&self, user: &User) -> Result<(), String> {
        let request = self
            .client
            .get(format!("{}/tasks?status=open&limit=100", self.base))
            .header("authorization", &user.auth);
        let page: serde_json::Value = check(request.send().await)
            .await?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect();
        *user.open.lock().unwrap_or_else(|e| e.into_inner()) = ids;
        Ok(())
    }

    /// Sends with the user's token and a fresh correlation id, which the
    /// WebSocket clients (if any) wait for.
    async fn send(
        &self,
        user: &User,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let correlation = uuid::Uuid::new_v4().to_string();
        let request = request
            .header("authorization", &user.auth)
            .header("x-correlation-id", &correlation);
        let tracker = self.tracker.as_ref().filter(|_| user.watched);
        if let Some(t) = tracker {
            t.sent(correlation.clone(), Instant::now());
        }
        let result = check(request.send().await).await;
        if let (Some(t), Err(_)) = (tracker, &result) {
            t.failed(&correlation);
        }
        result
    }

    async fn create(&self, user: &User) -> Result<(), String> {
        let body = self.task_body();
        let response = self
            .send(
                user,
                self.client.post(format!("{}/tasks", self.base)).json(&body),
            )
            .await?;
        let task: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        self.opened(user, &task);
        Ok(())
    }

    /// The same create as [`Self::create`], as the tool call `add_task`.
    async fn create_over_mcp(&self, user: &User) -> Result<(), String> {
        let call = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "add_task", "arguments": self.task_body()}
        });
        let request = self
            .client
            .post(format!("{}/mcp", self.base))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&call);
        let response = self.send(user, request).await?;
        let answer: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let result = &answer["result"];
        if result["isError"] != false {
            let why = result["content"][0]["text"]
                .as_str()
                .or(answer["error"]["message"].as_str())
                .unwrap_or("no result");
            return Err(format!("MCP {why}"));
        }
        self.opened(user, &result["structuredContent"]);
        Ok(())
    }

    fn opened(&self, user: &User, task: &serde_json::Value) {
        if let Some(id) = task["id"].as_str() {
            user.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.to_owned());
        }
    }

    fn task_body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "title": "Buy milk and bread on the way home",
            "priority": "high",
            "tags": ["home", "errand"],
            "due_at": due_tomorrow(),
        });
        if self.recurring {
            body["recurrence"] = serde_json::json!({
                "rule": "FREQ=DAILY", "timezone": "Europe/Berlin", "mode": "on_completion"
            });
        }
        if let Some(reminders) = self.reminders {
            let (start, window) = match reminders {
                ReminderDue::Window { start, window } => (start, window),
                ReminderDue::After { after, window } => (
                    chrono::Utc::now() + chrono::TimeDelta::milliseconds((after * 1000.0) as i64),
                    window,
                ),
            };
            let offset = rand::rng().random_range(0.0..window.max(0.001));
            let at = start + chrono::TimeDelta::microseconds((offset * 1e6) as i64);
            body["reminders"] = serde_json::json!([{ "at": rfc3339(at) }]);
            body["due_at"] = rfc3339(at + chrono::TimeDelta::hours(1)).into();
        }
        body
    }
}

/// A due time a day ahead.
fn due_tomorrow() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn check(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, String> {
    let response = sent.map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(response)
    } else {
        // A task deleted by a concurrent delete of the same user is a 404 the
        // generator caused itself; it still counts, as an error, and is named.
        Err(format!("HTTP {}", status.as_u16()))
    }
}

#[derive(Serialize)]
struct Latency {
    count: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Serialize)]
struct Second {
    second: u64,
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// What the WebSocket clients saw.
#[derive(Serialize)]
struct WsReport {
    clients: usize,
    connect_errors: usize,
    /// Request sent → first receipt of its event on a socket.
    latency: Latency,
    /// Measured requests whose event never arrived (within --ws-grace).
    missing: usize,
    /// Event frames received, and those that were a repeat or not ours.
    events: u64,
    unmatched_events: u64,
    disconnects: u64,
}

#[derive(Serialize)]
struct Reminders {
    first_at: String,
    window_s: f64,
    /// Creates that finished after the window had begun (their reminders may
    /// have been due before the notifier knew of them).
    late_creates: bool,
}

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    target_rate: Option<f64>,
    concurrency: usize,
    users: usize,
    mix: String,
    seconds: f64,
    requests: u64,
    errors: BTreeMap<String, u64>,
    throughput_per_s: f64,
    latency: Latency,
    by_op: BTreeMap<&'static str, Latency>,
    timeline: Vec<Second>,
    #[serde(skip_serializing_if = "Option::is_none")]
    websocket: Option<WsReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reminders: Option<Reminders>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.users == 0 || args.concurrency == 0 {
        bail!("--users and --concurrency must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number");
        }
    }
    let keys = JwtKeys::new(&JwtSettings::with_secret(&args.jwt_secret));
    let prefix = args
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("load-{:08x}", rand::random::<u32>()));
    let watched = args.ws_clients.min(args.users);
    let users = (0..args.users)
        .map(|i| {
            let id = UserId::try_from(format!("{prefix}-{i}"))
                .map_err(|e| anyhow::anyhow!("user id: {e}"))?;
            let token = keys.mint(&id, Duration::from_secs(86_400));
            Ok(User {
                auth: format!("Bearer {token}"),
                token,
                open: Mutex::new(Vec::new()),
                done: Mutex::new(Vec::new()),
                watched: i < watched,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(n) = args.ws_idle {
        return idle_connections(&args, &users, n).await;
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    client
        .get(format!("{base}/health"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("todo-api does not answer at {base}/health"))?;

    if let Some(sink) = &args.channels {
        set_channels(&client, &base, &users, sink.trim_end_matches('/')).await?;
        println!("{} users have e-mail, webhook and Web Push on", users.len());
    }

    // The WebSocket clients connect (and have their backlog) before the load.
    let mut sockets = Vec::new();
    let mut connect_errors = Vec::new();
    if args.ws_clients > 0 {
        raise_limit(args.ws_clients);
        let tokens = (0..args.ws_clients)
            .map(|i| users[i % users.len()].token.clone())
            .collect();
        (sockets, connect_errors) = ws::connect_many(
            &args.ws_url,
            tokens,
            args.ws_parallel,
            Duration::from_secs(30),
        )
        .await;
        if sockets.is_empty() {
            bail!(
                "no WebSocket client could connect to {}: {}",
                args.ws_url,
                connect_errors.first().map(String::as_str).unwrap_or("?")
            );
        }
        println!(
            "{} WebSocket clients connected to {} ({} failed)",
            sockets.len(),
            args.ws_url,
            connect_errors.len()
        );
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let tracker = (!sockets.is_empty()).then(|| Arc::new(Tracker::new(measure_from)));
    let listeners: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            tokio::spawn(ws::listen(
                s,
                tracker.clone().expect("clients have a tracker"),
            ))
        })
        .collect();
    let reminders_start = args
        .reminders_in
        .map(|s| chrono::Utc::now() + chrono::TimeDelta::milliseconds((s * 1000.0) as i64));
    let target = Arc::new(Target {
        client,
        base,
        users,
        mix: args.mix.clone(),
        recurring: args.recurring,
        reminders: match (reminders_start, args.reminders_after) {
            (Some(start), _) => Some(ReminderDue::Window {
                start,
                window: args.reminders_window,
            }),
            (None, Some(after)) => Some(ReminderDue::After {
                after,
                window: args.reminders_window,
            }),
            (None, None) => None,
        },
        tracker: tracker.clone(),
    });

    let (tx, rx) = mpsc::unbounded_channel::<Sample>();
    let progress = ProgressBar::new((args.warmup + args.seconds).ceil() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let collector = tokio::spawn(collect(rx, measure_from, progress.clone()));

    let cap = args.requests.unwrap_or(u64::MAX);
    match args.rate {
        Some(rate) => open_loop(&target, &tx, rate, args.concurrency, start, end, cap).await,
        None => closed_loop(&target, &tx, args.concurrency, end, cap).await,
    }
    let finished = Instant::now();
    let finished_wall = chrono::Utc::now();
    drop(tx);
    let (all, by_op, errors, timeline) = collector.await?;
    progress.finish_and_clear();
    // Measured time: to the end, or to the last request when --requests
    // stopped the load earlier.
    let seconds = finished
        .min(end)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-3);

    let websocket = match &tracker {
        Some(t) => {
            let missing = t.drain(Duration::from_secs_f64(args.ws_grace)).await;
            for l in &listeners {
                l.abort();
            }
            Some(WsReport {
                clients: listeners.len(),
                connect_errors: connect_errors.len(),
                latency: Latency::of(&t.latency()),
                missing,
                events: t.events.load(Ordering::Relaxed),
                unmatched_events: t.unmatched.load(Ordering::Relaxed),
                disconnects: t.disconnects.load(Ordering::Relaxed),
            })
        }
        None => None,
    };

    let requests = all.len() + errors.values().sum::<u64>();
    let report = Report {
        mode: if args.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        target_rate: args.rate,
        concurrency: args.concurrency,
        users: args.users,
        mix: format!("{:?}", args.mix.weights),
        seconds,
        requests,
        throughput_per_s: all.len() as f64 / seconds,
        latency: Latency::of(&all),
        by_op: by_op
            .iter()
            .map(|(op, h)| (op.name(), Latency::of(h)))
            .collect(),
        errors,
        timeline,
        websocket,
        reminders: reminders_start.map(|t| Reminders {
            first_at: rfc3339(t),
            window_s: args.reminders_window,
            late_creates: finished_wall > t,
        }),
    };
    print_summary(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    let plot_path = args
        .plot
        .clone()
        .or_else(|| args.report.as_ref().map(|r| r.with_extension("svg")));
    if let Some(path) = plot_path {
        write_plot(&path, &report, &all, &by_op, tracker.as_deref())?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE for `sockets` connections, or says why not.
fn raise_limit(sockets: usize) {
    match ws::raise_nofile_limit() {
        Ok(limit) if (limit as usize) < sockets + 64 => {
            eprintln!("warning: the open-file limit is {limit}: not enough for {sockets} sockets")
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise the open-file limit: {e}"),
    }
}

/// `--ws-idle`: opens `n` connections, measures the server's RSS before and
/// after, holds them for --seconds.
async fn idle_connections(args: &Args, users: &[User], n: usize) -> anyhow::Result<()> {
    raise_limit(n);
    let rss = || args.ws_pid.and_then(ws::rss_kib);
    let before = rss();
    let tokens = (0..n)
        .map(|i| users[i % users.len()].token.clone())
        .collect();
    let started = Instant::now();
    let (sockets, errors) = ws::connect_many(
        &args.ws_url,
        tokens,
        args.ws_parallel,
        Duration::from_secs(60),
    )
    .await;
    let connect_s = started.elapsed().as_secs_f64();
    let open = sockets.len();
    let holders: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(ws::idle(s)))
        .collect();
    // Let the server settle (buffers, allocator) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    println!(
        "{open} idle WebSocket connections to {} in {connect_s:.1} s ({} failed{})",
        args.ws_url,
        errors.len(),
        errors
            .first()
            .map(|e| format!(", e.g. {e}"))
            .unwrap_or_default()
    );
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if open > 0 => {
            let per = (a as f64 - b as f64) / open as f64;
            println!(
                "todo-realtime RSS: {:.1} MiB before, {:.1} MiB with {open} connections: {per:.1} KiB per connection",
                b as f64 / 1024.0,
                a as f64 / 1024.0
            );
            Some(per)
        }
        _ => None,
    };
    if let Some(path) = &args.report {
        let report = serde_json::json!({
            "mode": "ws-idle",
            "url": args.ws_url,
            "requested": n,
            "open": open,
            "connect_errors": errors.len(),
            "connect_seconds": connect_s,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_connection": per_connection,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let still_open = holders.iter().filter(|h| !h.is_finished()).count();
    println!(
        "{still_open} of {open} still open after {:.0} s",
        args.seconds
    );
    for h in holders {
        h.abort();
    }
    Ok(())
}

fn write_plot(
    path: &Path,
    report: &Report,
    all: &Histogram<u64>,
    by_op: &BTreeMap<Op, Histogram<u64>>,
    tracker: Option<&Tracker>,
) -> anyhow::Result<()> {
    let mut curves = vec![plot::percentile_curve("all requests", all)];
    if by_op.len() > 1 {
        curves.extend(
            by_op
                .iter()
                .map(|(op, h)| plot::percentile_curve(op.name(), h)),
        );
    }
    if let Some(t) = tracker {
        curves.push(plot::percentile_curve(
            "request sent → event on the WebSocket",
            &t.latency(),
        ));
    }
    let line = |label: &str, f: fn(&Second) -> f64| plot::Line {
        label: label.to_owned(),
        points: report
            .timeline
            .iter()
            .map(|s| (s.second as f64, f(s)))
            .collect(),
    };
    let over_time = [
        line("p50 per second", |s| s.p50_ms),
        line("p99 per second", |s| s.p99_ms),
        line("max per second", |s| s.max_ms),
    ];
    let title = format!(
        "todo-load: {} {}, {:.0} ok/s over {:.1} s",
        report.mode,
        report
            .target_rate
            .map(|r| format!("at {r:.0}/s"))
            .unwrap_or_else(|| format!("with {} workers", report.concurrency)),
        report.throughput_per_s,
        report.seconds
    );
    std::fs::write(path, plot::svg(&title, &curves, &over_time))
        .with_context(|| format!("writing {}", path.display()))
}

async fn open_loop(
    target: &Arc<Target>,
    tx: &mpsc::UnboundedSender<Sample>,
    rate: f64,
    in_flight: usize,
    start: Instant,
    end: Instant,
    cap: u64,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cap {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (target, tx) = (target.clone(), tx.clone());
        tasks.spawn(async move {
            let (op, outcome) = target.one().await;
            let _ = tx.send(Sample {
                op,
                micros: due.elapsed().as_micros() as u64,
                outcome,
                at: due,
            });
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(
    target: &Arc<Target>,
    tx: &mpsc::UnboundedSender<Sample>,
    workers: usize,
    end: Instant,
    cap: u64,
) {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (target, tx, issued) = (target.clone(), tx.clone(), issued.clone());
        tasks.spawn(async move {
            while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < cap {
                let at = Instant::now();
                let (op, outcome) = target.one().await;
                let _ = tx.send(Sample {
                    op,
                    micros: at.elapsed().as_micros() as u64,
                    outcome,
                    at,
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

type Collected = (
    Histogram<u64>,
    BTreeMap<Op, Histogram<u64>>,
    BTreeMap<String, u64>,
    Vec<Second>,
);

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    measure_from: Instant,
    progress: ProgressBar,
) -> Collected {
    let mut all = histogram();
    let mut by_op: BTreeMap<Op, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut seconds: BTreeMap<u64, (u64, u64, Histogram<u64>)> = BTreeMap::new();
    let started = Instant::now();
    let mut last_tick = Instant::now();
    while let Some(s) = rx.recv().await {
        if last_tick.elapsed() >= Duration::from_millis(250) {
            progress.set_position(started.elapsed().as_secs());
            let total_errors: u64 = errors.values().sum();
            progress.set_message(format!(
                "{} ok, {} errors, p99 so far {:.1} ms",
                all.len(),
                total_errors,
                all.value_at_quantile(0.99) as f64 / 1000.0
            ));
            last_tick = Instant::now();
        }
        if s.at < measure_from {
            continue;
        }
        let second = s.at.duration_since(measure_from).as_secs();
        let slot = seconds.entry(second).or_insert_with(|| (0, 0, histogram()));
        slot.0 += 1;
        match s.outcome {
            Ok(()) => {
                let micros = s.micros.max(1);
                let _ = all.record(micros);
                let _ = by_op.entry(s.op).or_insert_with(histogram).record(micros);
                let _ = slot.2.record(micros);
            }
            Err(e) => {
                slot.1 += 1;
                *errors.entry(format!("{} {e}", s.op.name())).or_default() += 1;
            }
        }
    }
    let timeline = seconds
        .into_iter()
        .map(|(second, (requests, errors, h))| Second {
            second,
            requests,
            errors,
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
        })
        .collect();
    (all, by_op, errors, timeline)
}

fn print_summary(r: &Report) {
    let l = &r.latency;
    println!(
        "{} {}: {} requests in {:.1} s, {:.0} ok/s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.mode,
        r.target_rate
            .map(|x| format!("at {x:.0}/s"))
            .unwrap_or_else(|| format!("with {} workers", r.concurrency)),
        r.requests,
        r.seconds,
        r.throughput_per_s,
        l.p50_ms,
        l.p95_ms,
        l.p99_ms,
        l.max_ms
    );
    for (op, l) in &r.by_op {
        println!(
            "  {op:<10} {:>8} ok  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.count, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if r.errors.is_empty() {
        println!("  no errors");
    }
    for (kind, n) in &r.errors {
        println!("  error: {kind} × {n}");
    }
    if let Some(w) = &r.websocket {
        let l = &w.latency;
        println!(
            "  websocket ({} clients): request sent -> event received p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} requests; {} missing, {} repeated or foreign events, {} disconnects",
            w.clients, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count, w.missing, w.unmatched_events, w.disconnects
        );
    }
    if let Some(m) = &r.reminders {
        println!(
            "  reminders at {} + uniform(0, {} s){}",
            m.first_at,
            m.window_s,
            if m.late_creates {
                "; warning: creates went on after the first reminders were due"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix: Mix = "create=3,delete=1".parse().unwrap();
        assert_eq!(mix.total, 4);
        assert!("create".parse::<Mix>().is_err());
        assert!("explode=1".parse::<Mix>().is_err());
        assert!("create=0".parse::<Mix>().is_err());
        let both: Mix = "create=1,mcp_create=1".parse().unwrap();
        assert_eq!(both.weights, [(Op::Create, 1), (Op::McpCreate, 1)]);
    }
}
