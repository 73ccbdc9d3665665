//! `todo-load`: drives `todo-api` with a mix of task changes from many users
//! and reports latency percentiles, throughput and errors.
//!
//! With `--rate` it is open-loop: request *i* is due at `start + i / rate`
//! and its latency is measured from that due time, so a slow server cannot
//! hide its queueing by slowing the generator down (no coordinated
//! omission). Without `--rate` it is closed-loop: `--concurrency` workers send
//! back to back, which finds the highest sustainable throughput.

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use secrecy::SecretString;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_shared::auth::JwtKeys;
use todo_shared::domain::UserId;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Create,
    Update,
    Complete,
    Delete,
}

impl Op {
    const ALL: [Op; 4] = [Op::Create, Op::Update, Op::Complete, Op::Delete];

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Complete => "complete",
            Op::Delete => "delete",
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
                .ok_or_else(|| format!("{name:?}: expected create, update, complete or delete"))?;
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
struct User {
    auth: String,
    open: Mutex<Vec<String>>,
}

struct Target {
    client: reqwest::Client,
    base: String,
    users: Vec<User>,
    mix: Mix,
    recurring: bool,
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
            Op::Delete | Op::Complete => {
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
            Op::Update => self.client.patch(&url).json(
                &serde_json::json!({ "title": "Renamed by todo-load", "priority": "urgent" }),
            ),
            Op::Complete => self.client.post(format!("{url}/complete")),
            _ => self.client.delete(&url),
        };
        let result = check(request.header("authorization", &user.auth).send().await).await;
        (op, result.map(|_| ()))
    }

    async fn create(&self, user: &User) -> Result<(), String> {
        let due = due_tomorrow();
        let mut body = serde_json::json!({
            "title": "Buy milk and bread on the way home",
            "priority": "high",
            "tags": ["home", "errand"],
            "due_at": due,
        });
        if self.recurring {
            body["recurrence"] = serde_json::json!({
                "rule": "FREQ=DAILY", "timezone": "Europe/Berlin", "mode": "on_completion"
            });
        }
        let response = check(
            self.client
                .post(format!("{}/tasks", self.base))
                .header("authorization", &user.auth)
                .json(&body)
                .send()
                .await,
        )
        .await?;
        let task: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if let Some(id) = task["id"].as_str() {
            user.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.to_owned());
        }
        Ok(())
    }
}

/// A due time a day ahead.
fn due_tomorrow() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
    p99_ms: f64,
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
    let keys = JwtKeys::new(&SecretString::from(args.jwt_secret.clone()));
    let run_id: u32 = rand::random();
    let users = (0..args.users)
        .map(|i| {
            let id = UserId::try_from(format!("load-{run_id:08x}-{i}"))
                .map_err(|e| anyhow::anyhow!("user id: {e}"))?;
            Ok(User {
                auth: format!("Bearer {}", keys.mint(&id, Duration::from_secs(86_400))),
                open: Mutex::new(Vec::new()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    let target = Arc::new(Target {
        client,
        base,
        users,
        mix: args.mix.clone(),
        recurring: args.recurring,
    });

    let (tx, rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let progress = ProgressBar::new((args.warmup + args.seconds).ceil() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let collector = tokio::spawn(collect(rx, measure_from, progress.clone()));

    match args.rate {
        Some(rate) => open_loop(&target, &tx, rate, args.concurrency, start, end).await,
        None => closed_loop(&target, &tx, args.concurrency, end).await,
    }
    drop(tx);
    let (all, by_op, errors, timeline) = collector.await?;
    progress.finish_and_clear();

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
        seconds: args.seconds,
        requests,
        throughput_per_s: all.len() as f64 / args.seconds,
        latency: Latency::of(&all),
        by_op: by_op
            .iter()
            .map(|(op, h)| (op.name(), Latency::of(h)))
            .collect(),
        errors,
        timeline,
    };
    print_summary(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}

async fn open_loop(
    target: &Arc<Target>,
    tx: &mpsc::UnboundedSender<Sample>,
    rate: f64,
    in_flight: usize,
    start: Instant,
    end: Instant,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u64.. {
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
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (target, tx) = (target.clone(), tx.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
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
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        })
        .collect();
    (all, by_op, errors, timeline)
}

fn print_summary(r: &Report) {
    let l = &r.latency;
    println!(
        "{} {}: {} requests in {:.0} s, {:.0} ok/s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
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
            "  {op:<8} {:>8} ok  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.count, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if r.errors.is_empty() {
        println!("  no errors");
    }
    for (kind, n) in &r.errors {
        println!("  error: {kind} × {n}");
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
    }
}
