//! The platform's services as processes of a test: each binary cargo built,
//! on a free port, logging to a file the failure messages quote.

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use todo_testing::{self as testing, Broker, TestDatabase};

/// How long anything may take to show up on a busy 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub const API: &str = "todo-api";
pub const RECURRING: &str = "todo-recurring";
pub const NOTIFIER: &str = "todo-notifier";
pub const AUDIT: &str = "todo-audit";
pub const REALTIME: &str = "todo-realtime";

pub struct Stack {
    dir: PathBuf,
    services: Vec<(&'static str, u16, Child)>,
}

impl Stack {
    pub fn new(dir: PathBuf) -> Self {
        Stack {
            dir,
            services: Vec::new(),
        }
    }

    pub fn start(&mut self, name: &'static str, common: &[(&str, String)], own: &[(&str, String)]) {
        let port = free_port();
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(binary(name))
            .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(own.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        self.services.push((name, port, child));
    }

    /// Each service's name and port.
    pub fn ports(&self) -> impl Iterator<Item = (&'static str, u16)> + '_ {
        self.services.iter().map(|(name, port, _)| (*name, *port))
    }

    pub fn port(&self, name: &str) -> u16 {
        self.services
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, p, _)| *p)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    pub async fn wait_ready(&mut self, http: &reqwest::Client, name: &str) {
        let port = self.port(name);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            let exited = self
                .services
                .iter_mut()
                .find(|(n, _, _)| *n == name)
                .and_then(|(_, _, c)| c.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "{name} exited ({exited:?}):\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "{name} never got ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for every service started so far, in the order they started.
    pub async fn wait_all_ready(&mut self, http: &reqwest::Client) {
        let names: Vec<&'static str> = self.ports().map(|(name, _)| name).collect();
        for name in names {
            self.wait_ready(http, name).await;
        }
    }

    /// A token minted by todo-api's own command.
    pub fn token(&self, user: &str) -> String {
        let out = run_to_success(
            "todo-api token",
            Command::new(binary(API))
                .args(["token", "--user", user])
                .env("JWT_SECRET", testing::JWT_SECRET)
                .env("DATABASE_URL", "postgres://unused")
                .env("KAFKA_BOOTSTRAP_SERVERS", "unused:9092"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|(name, _, _)| {
                let text = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name} ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.services {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to its end; panics with its stderr unless it succeeded.
pub fn run_to_success(what: &str, command: &mut Command) -> std::process::Output {
    let out = command.output().expect(what);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The binaries cargo built beside this test (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: this test runs the services' binaries; build them first \
         (`cargo test --workspace` does, or `cargo build --workspace --all-features --bins`)",
        path.display()
    );
    path
}

/// What every service of a test's platform is given: its database, its
/// broker and topics, and logs quiet but for warnings.
pub fn platform_env(
    db: &TestDatabase,
    broker: &Broker,
    prefix: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap().to_owned()),
        ("KAFKA_TOPIC_PREFIX", prefix.to_owned()),
        ("KAFKA_TOPIC_PARTITIONS", "2".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// Serves POSTs to `path` with `handler` on a free port; returns the port.
pub async fn serve_post<H, T, S>(path: &str, handler: H, state: S) -> u16
where
    H: axum::handler::Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    serve(
        axum::Router::new()
            .route(path, axum::routing::post(handler))
            .with_state(state),
    )
    .await
}

pub async fn serve(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

pub async fn metric_lines(http: &reqwest::Client, port: u16) -> Vec<String> {
    let Ok(r) = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return Vec::new();
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `check` until it holds; after [`PATIENCE`] fails naming `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testing::until(PATIENCE, Duration::from_millis(250), what, check).await
}

/// Creates, with `request` (a POST to /tasks), a task due at `due_at`
/// that recurs daily once completed; returns it.
pub async fn create_daily(
    request: reqwest::RequestBuilder,
    title: String,
    due_at: String,
) -> Value {
    request
        .json(&json!({
            "title": title,
            "due_at": due_at,
            "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "on_completion"},
        }))
        .send()
        .await
        .expect("POST /tasks (recurring)")
        .json()
        .await
        .expect("recurring task")
}

/// Puts `payload` on a topic as a producer other than the services would.
pub async fn produce(bootstrap: &str, topic: &str, key: &str, payload: &str) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("not sent to {topic}: {e}"));
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("todo-system-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
