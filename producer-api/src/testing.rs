//! The test harness of todo-api, also used by the consumers' end-to-end
//! tests: a whole `todo-api` for a test, with its own database, its own
//! broker and topic prefix, and as many API instances (each with its relay)
//! as the test wants. Nothing is mocked.

pub mod mcp;

use crate::app::{ApiOptions, Application};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use todo_contract::domain::UserId;
use todo_contract::envelope::{Topic, TopicNames};
use todo_platform::auth::JwtKeys;
use todo_platform::config::{JwtSettings, KafkaSettings, Settings};
use todo_platform::server::HttpLimits;
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_relay::RelayConfig;
use todo_testing::schema::EventSchemas;
use todo_testing::{self as testing, Broker, EventReader, Received, TestDatabase};
use tokio::task::JoinHandle;

pub struct Stack {
    pub broker: Broker,
    pub db: TestDatabase,
    pub kafka: KafkaSettings,
    pub jwt: JwtKeys,
    pub http: reqwest::Client,
}

pub struct Api {
    pub base: String,
    trigger: Option<ShutdownTrigger>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    /// A service binary (`env!("CARGO_BIN_EXE_…")`) as a child process of
    /// this stack: its database, broker and topic prefix and nothing else of
    /// the test's environment, any free port, quiet but for errors.
    pub fn service_command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.db.url)
            .env("KAFKA_BOOTSTRAP_SERVERS", self.broker.bootstrap())
            .env("KAFKA_TOPIC_PREFIX", &self.kafka.topic_prefix)
            .env(
                "KAFKA_TOPIC_PARTITIONS",
                self.kafka.topic_partitions.to_string(),
            )
            .env("JWT_SECRET", testing::JWT_SECRET)
            .env("PORT", "0")
            .env("CONSUMER_SESSION_TIMEOUT_MS", "6000")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        command
    }

    pub async fn new() -> Stack {
        testing::init_logging();
        let broker = Broker::start();
        let kafka = testing::kafka_settings(&broker);
        let db = TestDatabase::create().await;
        Stack {
            broker,
            db,
            kafka,
            jwt: JwtKeys::new(&JwtSettings::with_secret(testing::JWT_SECRET)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            database: self.db.settings(),
            kafka: self.kafka.clone(),
            port: 0,
            http: HttpLimits::default(),
        }
    }

    /// The token settings of this stack's services (its tokens verify).
    pub fn jwt_settings(&self) -> JwtSettings {
        JwtSettings::with_secret(testing::JWT_SECRET)
    }

    /// The options of the `todo-api`s tests start: a relay quick to react.
    pub fn api_options(&self) -> ApiOptions {
        ApiOptions {
            relay: RelayConfig {
                poll_interval: Duration::from_millis(200),
                standby_interval: Duration::from_millis(200),
                stall_timeout: Duration::from_secs(5),
                ..RelayConfig::default()
            },
            channels: crate::preferences::ChannelSettings {
                webhook_key: Some(todo_platform::preferences::WebhookKey::new(
                    testing::WEBHOOK_SECRET_KEY,
                )),
                vapid_public_key: None,
            },
            ..ApiOptions::default()
        }
    }

    /// Starts one more `todo-api` on this stack's database and broker.
    pub async fn spawn_api(&self) -> Api {
        self.spawn_api_with(self.settings(), self.api_options())
            .await
    }

    /// Starts a `todo-api` with settings and options of the test's own.
    pub async fn spawn_api_with(&self, settings: Settings, options: ApiOptions) -> Api {
        let app = Application::build(&settings, &self.jwt_settings(), options)
            .await
            .expect("todo-api starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (trigger, shutdown) = shutdown::channel();
        let handle = tokio::spawn(app.run(shutdown));
        Api {
            base,
            trigger: Some(trigger),
            handle: Some(handle),
        }
    }

    pub fn token(&self, user: &str) -> String {
        let user = UserId::try_from(user.to_string()).expect("user id");
        self.jwt.mint(&user, Duration::from_secs(3600))
    }

    pub fn topic(&self, topic: Topic) -> String {
        TopicNames::new(self.kafka.topic_prefix.clone()).name(topic)
    }

    /// Publishes `envelope` to task-events, keyed by `user`, as if a
    /// producer had written it: past todo-api's checks, for what only a
    /// broken or hostile producer would send.
    pub async fn inject(&self, user: &str, envelope: &Value) {
        use rdkafka::producer::FutureRecord;
        let producer = todo_platform::kafka::producer(&self.kafka).expect("producer");
        let raw = serde_json::to_vec(envelope).expect("json");
        producer
            .send(
                FutureRecord::to(&self.topic(Topic::TaskEvents))
                    .key(user)
                    .payload(&raw),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    /// A reader of `task-events` from its beginning.
    pub async fn task_events(&self) -> EventReader {
        EventReader::new(self.broker.bootstrap(), &self.topic(Topic::TaskEvents)).await
    }

    /// How many events have been written to the outbox in all (every
    /// user's last sequence, summed), published or not.
    pub async fn events_written(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(sum(last_sequence), 0)::bigint FROM event_sequences")
            .fetch_one(&self.db.pool)
            .await
            .expect("sequences")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    /// A service's /metrics page (`base`: its `http://host:port`).
    pub async fn metrics(&self, base: &str) -> String {
        self.http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The sum of the samples whose lines start with `prefix` (a metric's
    /// name, perhaps with some of its labels) in a service's /metrics.
    pub async fn metric_sum(&self, base: &str, prefix: &str) -> f64 {
        sum_of(&self.metrics(base).await, prefix)
    }

    /// Waits until the relay has published every outbox row.
    pub async fn outbox_drained(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.count("outbox").await;
            if n == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} outbox rows still unpublished after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn request(&self, api: &Api, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", api.base, path))
            .bearer_auth(token)
    }

    /// Creates a task for the token's user and returns it (asserting 201).
    pub async fn create(&self, api: &Api, token: &str, body: Value) -> Value {
        let r = self
            .request(api, Method::POST, "/tasks", token)
            .json(&body)
            .send()
            .await
            .expect("POST /tasks");
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Sends a change and returns (status, body).
    pub async fn call(
        &self,
        api: &Api,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(api, method, path, token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let text = r.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }
}

impl Api {
    /// Shuts this instance down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(h) = self.handle.take() {
            h.await
                .expect("todo-api task")
                .expect("todo-api ran cleanly");
        }
    }

    /// Whether this instance's relay currently leads (from its /metrics).
    pub async fn relay_leads(&self, stack: &Stack) -> bool {
        stack
            .metrics(&self.base)
            .await
            .lines()
            .any(|l| l.trim() == "todo_outbox_relay_leader 1")
    }
}

/// The sum of the samples in a /metrics page whose lines start with `prefix`.
pub fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every event validated against its JSON Schema; panics naming the first
/// that is not.
pub fn assert_schema_valid(events: &[Received]) {
    let schemas = EventSchemas::load().expect("schemas load");
    for e in events {
        if let Err(err) = schemas.validate(&e.value) {
            panic!("{err}\nevent: {}", e.value);
        }
    }
}

/// Asserts that, per user (the Kafka key), events arrive with sequences
/// 1, 2, 3, … and no event id twice; returns the count per user.
pub fn assert_per_user_order(events: &[Received]) -> HashMap<String, i64> {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        assert!(
            ids.insert(e.id().to_owned()),
            "event {} delivered twice",
            e.id()
        );
        assert_eq!(
            e.key,
            e.value["userid"].as_str().unwrap_or_default(),
            "key is the user id"
        );
        let p = *partitions.entry(e.key.clone()).or_insert(e.partition);
        assert_eq!(p, e.partition, "user {} spread over partitions", e.key);
        let prev = last.entry(e.key.clone()).or_insert(0);
        assert_eq!(
            e.sequence(),
            *prev + 1,
            "user {}: sequence {} arrived after {}",
            e.key,
            e.sequence(),
            prev
        );
        *prev = e.sequence();
    }
    last
}

/// Runs `scripts/<script>` with the Python named by the environment
/// variable `python_var` (the virtualenv its `scripts/*.sh` made) and
/// `env`; panics unless it succeeds within `limit`.
pub async fn run_python_script(
    python_var: &str,
    script: &str,
    env: &[(&str, String)],
    limit: Duration,
) {
    let python = std::env::var(python_var).unwrap_or_else(|_| {
        panic!("{python_var}: the Python of the virtualenv scripts/ makes for {script}")
    });
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(python)
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{script} did not end within {limit:?}"))
        .expect("python runs");
    assert!(status.success(), "{script} failed: {status}");
}
