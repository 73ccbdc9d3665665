//! The platform as an operator sees it: every service as its own process
//! (the binaries cargo built), a real broker and PostgreSQL, an OTLP
//! receiver decoding what the services export, and Debian's Prometheus
//! scraping them with the platform's alert rules loaded.
//!
//! - One create is one trace that covers todo-api's request, the relay's
//!   publish and each consumer's handling of the event; its reminder's
//!   firing and webhook delivery continue it; a completion's trace carries
//!   the next instance todo-recurring makes.
//! - Every query of the Grafana dashboard returns data after some load, and
//!   every alert expression parses and evaluates; a message no consumer can
//!   read fires the dead-letter alert.

use crate::processes::{
    create_daily, eventually, free_port, metric_lines, platform_env, produce, scratch_dir,
    serve_post, which, Stack, API, AUDIT, NOTIFIER, PATIENCE, REALTIME, RECURRING,
};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_testing::{self as testing, Broker, TestDatabase};
const CONSUMERS: [&str; 4] = [RECURRING, NOTIFIER, AUDIT, REALTIME];
/// The services that run an outbox relay: whichever leads publishes.
const RELAYS: [&str; 3] = [API, RECURRING, NOTIFIER];

// OTLP span kinds.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_is_one_trace_across_every_service_and_the_dashboard_and_alerts_hold() {
    testing::init_logging();
    let Some(prometheus) = which("prometheus") else {
        panic!("this test needs Debian's prometheus on PATH (apt-get install prometheus)");
    };
    let broker = Broker::start();
    let db = TestDatabase::create().await;
    let work = scratch_dir();
    let spans = Spans::default();
    let otlp = serve_post("/v1/traces", receive_traces, spans.clone()).await;
    let hooks = Arc::new(Mutex::new(0usize));
    let hook = serve_post("/hook", receive_hook, hooks.clone()).await;

    let prefix = testing::unique_prefix();
    let otlp_endpoint = format!("http://127.0.0.1:{otlp}");
    let mut common = platform_env(&db, &broker, &prefix);
    common.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint),
        // Spans leave every 200 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]);
    let secret = ("JWT_SECRET", testing::JWT_SECRET.to_owned());
    let webhook_key = ("WEBHOOK_SECRET_KEY", testing::WEBHOOK_SECRET_KEY.to_owned());
    let mut stack = Stack::new(work.clone());
    stack.start(API, &common, &[secret.clone(), webhook_key.clone()]);
    stack.start(RECURRING, &common, &[]);
    stack.start(
        NOTIFIER,
        &common,
        &[
            webhook_key,
            ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true".into()),
        ],
    );
    stack.start(AUDIT, &common, std::slice::from_ref(&secret));
    stack.start(REALTIME, &common, &[secret]);
    let http = reqwest::Client::new();
    stack.wait_all_ready(&http).await;
    let prom = Prometheus::start(&prometheus, &work, &stack);

    // A user with a webhook, a page open, a task with a reminder (traced
    // from the caller's own trace), a recurring task completed.
    let token = stack.token("alice");
    let api = format!("http://127.0.0.1:{}", stack.port(API));
    let (ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/ws?token={token}",
        stack.port(REALTIME)
    ))
    .await
    .expect("WebSocket to todo-realtime");
    let channels = http
        .put(format!("{api}/me/notifications"))
        .bearer_auth(&token)
        .json(
            &json!({"webhook": {"url": format!("http://127.0.0.1:{hook}/hook"), "enabled": true}}),
        )
        .send()
        .await
        .expect("PUT /me/notifications");
    assert_eq!(
        channels.status(),
        StatusCode::OK,
        "{:?}",
        channels.text().await
    );
    eventually("todo-notifier applied the user's channels", || async {
        metric_lines(&http, stack.port(NOTIFIER))
            .await
            .iter()
            .any(|l| {
                l.starts_with("todo_events_consumed_total")
                    && l.contains("user.notifications.updated")
            })
    })
    .await;

    let caller_trace = random_hex(32);
    let caller_span = random_hex(16);
    let remind_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let created: Value = http
        .post(format!("{api}/tasks"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({
            "title": "water the plants",
            "due_at": (remind_at + chrono::Duration::hours(1)).to_rfc3339(),
            "reminders": [{"at": remind_at.to_rfc3339()}],
        }))
        .send()
        .await
        .expect("POST /tasks")
        .json()
        .await
        .expect("created task");
    assert!(created["id"].is_string(), "{created}");

    let create = http.post(format!("{api}/tasks")).bearer_auth(&token);
    let due_at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let series = create_daily(create, "stand-up".into(), due_at).await;
    let completion_trace = random_hex(32);
    let completed = http
        .post(format!(
            "{api}/tasks/{}/complete",
            series["id"].as_str().unwrap_or_default()
        ))
        .bearer_auth(&token)
        .header(
            "traceparent",
            format!("00-{completion_trace}-{}-01", random_hex(16)),
        )
        .send()
        .await
        .expect("complete");
    assert!(
        completed.status().is_success(),
        "{:?}",
        completed.text().await
    );
    // Some more load for rates and histograms.
    for i in 0..20 {
        let r = http
            .post(format!("{api}/tasks"))
            .bearer_auth(&token)
            .json(&json!({"title": format!("task {i}")}))
            .send()
            .await
            .expect("POST /tasks");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // What no consumer can read: each sets it aside.
    let topic = format!("{prefix}task-events");
    produce(broker.bootstrap(), &topic, "mallory", "not an event").await;

    // One trace: the caller's, through every service.
    let deadline = Instant::now() + PATIENCE;
    let trace = loop {
        let trace = spans.trace(&caller_trace);
        if create_trace_complete(&trace) {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "the create's trace never reached every service; it has {:?}\nof {} spans from {:?}\n{}",
            trace.iter().map(|s| format!("{}: {} ({})", s.service, s.name, s.kind)).collect::<Vec<_>>(),
            spans.count(),
            spans.services(),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let request = trace
        .iter()
        .find(|s| s.service == API && s.kind == SERVER && s.name == "POST /tasks")
        .expect("todo-api's request span");
    assert_eq!(
        request.parent, caller_span,
        "the request continues the caller's trace"
    );
    let publish = trace
        .iter()
        .find(|s| {
            RELAYS.contains(&s.service.as_str())
                && s.kind == PRODUCER
                && s.name == "task-events publish"
        })
        .expect("the relay's publish span");
    assert!(
        descends(publish, &request.span_id, &trace),
        "publish under the request"
    );
    for consumer in CONSUMERS {
        let process = trace
            .iter()
            .find(|s| {
                s.service == consumer && s.kind == CONSUMER && s.name == "task.created process"
            })
            .unwrap_or_else(|| panic!("{consumer} handled the event in the trace"));
        assert_eq!(
            process.parent, publish.span_id,
            "{consumer} continues the publish span"
        );
        assert_eq!(
            process.attributes.get("event_type").map(String::as_str),
            Some("task.created")
        );
        for key in [
            "event_id",
            "user_id",
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
        ] {
            assert!(
                process.attributes.contains_key(key),
                "{consumer}'s span has {key}: {process:?}"
            );
        }
        assert!(
            trace
                .iter()
                .any(|s| s.service == consumer && s.parent == process.span_id),
            "{consumer}'s database work is a child span"
        );
    }
    let fire = trace
        .iter()
        .find(|s| s.service == NOTIFIER && s.name == "reminder fire")
        .expect("the reminder's firing");
    let deliver = trace
        .iter()
        .find(|s| s.service == NOTIFIER && s.name == "reminder deliver webhook")
        .expect("the webhook delivery");
    assert!(
        descends(deliver, &fire.span_id, &trace),
        "the delivery continues the firing"
    );
    assert!(*hooks.lock().unwrap_or_else(|p| p.into_inner()) >= 1);

    // The completion's trace holds the next instance, made by todo-recurring.
    eventually(
        "the completion's trace carries the next instance to the other consumers",
        || {
            let spans = spans.clone();
            let id = completion_trace.clone();
            async move {
                let trace = spans.trace(&id);
                let Some(recurring) = trace
                    .iter()
                    .find(|s| s.service == RECURRING && s.name == "task.completed process")
                else {
                    return false;
                };
                trace.iter().any(|s| {
                    s.service == AUDIT
                        && s.name == "task.created process"
                        && descends(s, &recurring.span_id, &trace)
                })
            }
        },
    )
    .await;

    // Prometheus: every target up, every rule healthy, the dead letter alert.
    prom.wait_targets_up(&http, 5).await;
    let rules = alert_rules();
    eventually(
        "every alert rule is loaded and evaluates without error",
        || async {
            let answer = prom.api(&http, "rules", &[]).await;
            let loaded: HashMap<String, String> = answer["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or_default().to_owned(),
                        r["health"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            rules
                .iter()
                .all(|(name, _)| loaded.get(name).map(String::as_str) == Some("ok"))
        },
    )
    .await;
    for (name, expr) in &rules {
        let answer = prom.api(&http, "query", &[("query", expr)]).await;
        assert_eq!(
            answer["status"], "success",
            "alert {name}: {expr}: {answer}"
        );
    }
    eventually(
        "the dead-letter alert fires for the poison message",
        || async {
            let answer = prom.api(&http, "alerts", &[]).await;
            answer["data"]["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["labels"]["alertname"] == "TodoDeadLetters" && a["state"] == "firing")
        },
    )
    .await;

    // Every dashboard query returns data.
    let mut waiting: Vec<(String, String)> = dashboard_queries();
    assert!(
        waiting.len() >= 10,
        "the dashboard has its panels: {waiting:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (title, expr) in waiting {
            let answer = prom.api(&http, "query", &[("query", &expr)]).await;
            assert_eq!(
                answer["status"], "success",
                "panel {title:?}: {expr}: {answer}"
            );
            let empty = answer["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty());
            if empty {
                still.push((title, expr));
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            assert!(
                Instant::now() < deadline,
                "dashboard queries that never returned data: {waiting:#?}\n{}",
                stack.logs()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(ws);
}

/// A trace is complete once every service took part: the request, the
/// publish, each consumer, the firing and the webhook.
fn create_trace_complete(trace: &[Collected]) -> bool {
    let has =
        |service: &str, name: &str| trace.iter().any(|s| s.service == service && s.name == name);
    has(API, "POST /tasks")
        && RELAYS.iter().any(|r| has(r, "task-events publish"))
        && CONSUMERS.iter().all(|c| has(c, "task.created process"))
        && has(NOTIFIER, "reminder fire")
        && has(NOTIFIER, "reminder deliver webhook")
}

fn descends(span: &Collected, ancestor: &str, trace: &[Collected]) -> bool {
    let by_id: HashMap<&str, &Collected> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut at = span;
    for _ in 0..64 {
        if at.parent == ancestor {
            return true;
        }
        match by_id.get(at.parent.as_str()) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

// --- Prometheus ------------------------------------------------------------

struct Prometheus {
    port: u16,
    child: Child,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, stack: &Stack) -> Prometheus {
        let port = free_port();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let jobs: Vec<Value> = stack
            .ports()
            .map(|(name, port)| {
                json!({"job_name": name, "static_configs": [{"targets": [format!("127.0.0.1:{port}")]}]})
            })
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": jobs,
        });
        // JSON is YAML.
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config.to_string()).expect("prometheus.yml");
        let log = File::create(dir.join("prometheus.log")).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("prometheus started");
        Prometheus { port, child }
    }

    async fn api(&self, http: &reqwest::Client, path: &str, query: &[(&str, &str)]) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = http
                .get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
                .query(query)
                .send()
                .await;
            if let Ok(r) = answer {
                if let Ok(v) = r.json::<Value>().await {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered /api/v1/{path}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_targets_up(&self, http: &reqwest::Client, count: usize) {
        eventually("Prometheus scrapes every service", || async {
            let answer = self.api(http, "targets", &[]).await;
            let up = answer["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["health"] == "up")
                .count();
            up == count
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// (alert name, expression) of every rule in `deploy/prometheus/alerts.yml`.
fn alert_rules() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let doc: Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let rules: Vec<(String, String)> = doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_owned(),
                r["expr"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(rules.len() >= 7, "the alert rules: {rules:?}");
    rules
}

/// (panel title, query) of every panel target of the dashboard, with
/// Grafana's `$__rate_interval` as it would be at this scrape interval.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/todo-platform.json"))
        .expect("the dashboard");
    let doc: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels: Vec<Value> = Vec::new();
    let mut stack: Vec<Value> = doc["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
        panels.push(p);
    }
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| {
                    let expr = t["expr"].as_str()?.replace("$__rate_interval", "1m");
                    Some((title.clone(), expr))
                })
        })
        .collect()
}

// --- the OTLP receiver ------------------------------------------------------

#[derive(Debug, Clone)]
struct Collected {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Collected>>>);

impl Spans {
    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn services(&self) -> Vec<String> {
        let spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn trace(&self, id: &str) -> Vec<Collected> {
        let spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spans.iter().filter(|s| s.trace_id == id).cloned().collect()
    }
}

/// OTLP/HTTP with protobuf bodies, as the services' exporter sends.
async fn receive_traces(State(spans): State<Spans>, body: Bytes) -> impl IntoResponse {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut collected = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            collected.push(Collected {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect(),
            });
        }
    }
    spans
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(collected);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

async fn receive_hook(State(count): State<Arc<Mutex<usize>>>) -> StatusCode {
    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    StatusCode::OK
}

// --- helpers ------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}
