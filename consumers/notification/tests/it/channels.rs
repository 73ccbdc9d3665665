//! Reminders that reach people: e-mail to a real SMTP server (aiosmtpd),
//! webhooks to real HTTP receivers that check the signature, Web Push to an
//! endpoint that decrypts the payload and verifies the VAPID token; each
//! through todo-api's preferences, the broker and todo-notifier.

use crate::harness::{at, free_port, options, read_until, reminders, rfc3339, wait_for, Notifier};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, MethodRouter};
use axum::Router;
use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_notifier::delivery::LogDelivery;
use todo_platform::config::Env;
use todo_testing::{EventReader, Received, WEBHOOK_SECRET_KEY};
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ES256KeyPair, ES256PublicKey,
};
use web_push_native::jwt_simple::claims::NoCustomClaims;
use web_push_native::p256;

impl Notifier {
    /// A notifier whose channels `env` configures (on top of the webhook
    /// key, private networks allowed, and a 2 s channel timeout).
    async fn with_channels(stack: &Stack, env: &[(&str, String)]) -> Notifier {
        let mut vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        vars.insert("WEBHOOK_SECRET_KEY".into(), WEBHOOK_SECRET_KEY.into());
        vars.entry("WEBHOOK_ALLOW_PRIVATE_NETWORKS".into())
            .or_insert_with(|| "true".into());
        vars.entry("REMINDER_CHANNEL_TIMEOUT_MS".into())
            .or_insert_with(|| "2000".into());
        let lookup = Env::new(move |k: &str| vars.get(k).cloned());
        let options = options(&lookup, Duration::from_secs(5));
        Self::spawn_with_options(stack.settings(), options, Arc::new(LogDelivery)).await
    }
}

/// What every test here runs on: a stack of its own with a todo-api, a
/// todo-notifier with the channel settings `env`, and a reader of the
/// reminders topic.
struct Fixture {
    stack: Stack,
    api: Api,
    notifier: Notifier,
    reader: EventReader,
}

impl Fixture {
    async fn start(env: &[(&str, String)]) -> Fixture {
        let stack = Stack::new().await;
        let api = stack.spawn_api().await;
        let notifier = Notifier::with_channels(&stack, env).await;
        let reader = reminders(&stack).await;
        Fixture {
            stack,
            api,
            notifier,
            reader,
        }
    }

    /// Sets `token`'s user's channels: the answer.
    async fn set_channels(&self, token: &str, body: Value) -> Value {
        let (status, answer) = self
            .stack
            .call(
                &self.api,
                Method::PUT,
                "/me/notifications",
                token,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// Points `token`'s user's webhook at `url`, on or off: the answer.
    async fn webhook(&self, token: &str, url: &str, enabled: bool) -> Value {
        self.set_channels(token, json!({"webhook": {"url": url, "enabled": enabled}}))
            .await
    }

    /// A task of `token`'s user with one reminder at `in_secs` from now.
    async fn remind(&self, token: &str, title: &str, in_secs: i64) -> Value {
        let at = Utc::now() + TimeDelta::seconds(in_secs);
        self.stack
            .create(
                &self.api,
                token,
                json!({
                    "title": title,
                    "due_at": rfc3339(at + TimeDelta::hours(1)),
                    "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "Europe/Berlin", "mode": "on_completion"},
                    "reminders": [{"at": rfc3339(at)}],
                }),
            )
            .await
    }

    /// Reads reminder events until each of `tasks` has its outcome on
    /// `channel`.
    async fn outcomes(&self, tasks: &[&Value], channel: &str) -> Vec<Received> {
        read_until(&self.reader, |got| {
            tasks.iter().all(|t| outcome(got, t, channel).is_some())
        })
        .await
    }

    async fn stop(self) {
        self.notifier.stop().await;
        self.api.stop().await;
    }
}

fn outcome<'a>(events: &'a [Received], task: &Value, channel: &str) -> Option<&'a Received> {
    events.iter().find(|e| {
        matches!(e.event_type(), "reminder.sent" | "reminder.failed")
            && e.value["data"]["task_id"] == task["id"]
            && e.value["data"]["channel"] == channel
    })
}

// ---------------------------------------------------------------- e-mail

/// aiosmtpd, started by the test (`TEST_SMTP_PYTHON` is a Python with it,
/// as `scripts/test.sh` prepares).
struct SmtpServer {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl SmtpServer {
    fn start(refuse_first: u32) -> SmtpServer {
        Self::start_on(refuse_first, 0)
    }

    /// On `port` (0: a free one).
    fn start_on(refuse_first: u32, port: u16) -> SmtpServer {
        let python = std::env::var("TEST_SMTP_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/todo-platform/smtp-venv/bin/python")
        });
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/smtp_receiver.py"
        );
        let mut child = Command::new(&python)
            .arg(script)
            .arg("--refuse-first")
            .arg(refuse_first.to_string())
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start the SMTP server with {python} (scripts/test.sh installs aiosmtpd): {e}"
                )
            });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("the SMTP server's port");
        let port = first
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("SMTP server said {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lines").push(v);
                }
            }
        });
        SmtpServer { child, port, lines }
    }

    fn accepted(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|v| v.get("refused").is_none())
            .cloned()
            .collect()
    }

    fn refused(&self) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|v| v.get("refused").is_some())
            .count()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a header in a raw message (unfolded).
fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or(raw);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_arrives_once_with_its_message_id_after_a_transient_refusal() {
    let smtp = SmtpServer::start(1);
    let t = Fixture::start(&[
        ("SMTP_URL", format!("smtp://127.0.0.1:{}", smtp.port)),
        ("SMTP_FROM", "Reminders <reminders@todo.test>".into()),
    ])
    .await;
    let ann = t.stack.token("ann");
    t.set_channels(
        &ann,
        json!({"email": {"address": "ann@example.com", "enabled": true}}),
    )
    .await;
    let task = t.remind(&ann, "Water <the> plants", 4).await;

    let events = t.outcomes(&[&task], "email").await;
    let sent = outcome(&events, &task, "email").expect("outcome");
    assert_eq!(sent.event_type(), "reminder.sent", "{}", sent.value);
    assert_eq!(
        sent.value["data"]["attempts"], 2,
        "one refusal, then delivered"
    );
    assert_eq!(smtp.refused(), 1);
    let mails = smtp.accepted();
    assert_eq!(mails.len(), 1, "delivered once: {mails:?}");
    let mail = &mails[0];
    assert_eq!(mail["to"], json!(["ann@example.com"]));
    assert_eq!(mail["from"], "reminders@todo.test");
    let raw = mail["data"].as_str().expect("message");
    let delivery_id = sent.value["correlationid"].as_str().expect("delivery id");
    assert_eq!(
        header(raw, "Message-ID").as_deref(),
        Some(format!("<{delivery_id}@todo.test>").as_str()),
        "{raw}"
    );
    assert!(
        header(raw, "Subject").is_some_and(|s| s.contains("Water <the> plants")),
        "{raw}"
    );
    assert!(header(raw, "Content-Type").is_some_and(|c| c.starts_with("multipart/alternative")));
    // The due time in the task's zone (Berlin: CET or CEST), and the link.
    assert!(raw.contains("CET") || raw.contains("CEST"), "{raw}");
    assert!(raw.contains(task["id"].as_str().expect("id")), "{raw}");
    // The HTML part escapes the title.
    assert!(raw.contains("Water &lt;the&gt; plants"), "{raw}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_smtp_is_down_the_breaker_holds_every_reminder_and_delivers_each_once_it_is_up() {
    const USERS: usize = 6;
    let port = free_port();
    // Three attempts each (the harness's REMINDER_MAX_ATTEMPTS): without the
    // breaker, every reminder would fail for good within a second or two.
    let t = Fixture::start(&[
        ("SMTP_URL", format!("smtp://127.0.0.1:{port}")),
        ("REMINDER_BREAKER_OPEN_MS", "300".into()),
    ])
    .await;
    let metric = |name: &'static str| t.notifier.metric(&t.stack, name);
    let state = || metric("todo_reminder_channel_breaker_state");
    let opened = || metric("todo_reminder_channel_breaker_opened_total");
    assert_eq!(state().await, 0.0, "closed (and shown) from the start");
    // One moment for all: the attempts of many users fail together, as in
    // an outage (not one user's three attempts before the next has one).
    let at = rfc3339(Utc::now() + TimeDelta::seconds(4));
    let mut tasks = Vec::new();
    for n in 0..USERS {
        let token = t.stack.token(&format!("user{n}"));
        t.set_channels(
            &token,
            json!({"email": {"address": format!("user{n}@example.com"), "enabled": true}}),
        )
        .await;
        let task = json!({"title": format!("Task of user {n}"), "reminders": [{"at": at}]});
        tasks.push(t.stack.create(&t.api, &token, task).await);
    }

    // Most users' attempts fail: the breaker opens, and stays open (or
    // probing) while the server is down.
    wait_for("the e-mail breaker opens", || async {
        opened().await >= 1.0
    })
    .await;
    // Several failed probes later (300 ms, 600 ms, 1.2 s...) nothing has
    // failed for good, though each reminder had only three attempts.
    wait_for("probes fail while the server is down", || async {
        opened().await >= 4.0
    })
    .await;
    assert!(state().await > 0.0, "still open");
    let (failed, held): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'pending')
           FROM reminder_deliveries WHERE channel = 'email'",
    )
    .fetch_one(&t.stack.db.pool)
    .await
    .expect("deliveries");
    assert_eq!((failed, held), (0, USERS as i64), "all held, none failed");

    let smtp = SmtpServer::start_on(0, port);
    let events = t.outcomes(&tasks.iter().collect::<Vec<_>>(), "email").await;
    for task in &tasks {
        let sent = outcome(&events, task, "email").expect("outcome");
        assert_eq!(sent.event_type(), "reminder.sent", "{}", sent.value);
        let attempts = sent.value["data"]["attempts"].as_i64().expect("attempts");
        assert!((1..=3).contains(&attempts), "{attempts} counted attempts");
    }
    let mut to: Vec<String> = smtp
        .accepted()
        .iter()
        .map(|m| m["to"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    to.sort();
    let expected: Vec<String> = (0..USERS).map(|n| format!("user{n}@example.com")).collect();
    assert_eq!(to, expected, "each reminder delivered once");
    wait_for("the breaker closes", || async { state().await == 0.0 }).await;
    t.stop().await;
}

// -------------------------------------------------------------- webhooks

/// A request as a receiver saw it.
type Seen = (HeaderMap, Bytes);

#[derive(Clone, Default)]
struct Receiver {
    /// Requests seen, per path.
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
}

impl Receiver {
    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("seen")
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    fn record(&self, path: &str, headers: HeaderMap, body: Bytes) -> usize {
        let mut seen = self.seen.lock().expect("seen");
        let list = seen.entry(path.to_owned()).or_default();
        list.push((headers, body));
        list.len()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// A POST route that records each request under `path`, then answers as
/// `answer` says for the how-manieth request there it is.
fn recording<A, F>(path: &'static str, answer: A) -> MethodRouter<Receiver>
where
    A: Fn(usize) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = StatusCode> + Send + 'static,
{
    post(
        move |State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
            answer(r.record(path, headers, body)).await
        },
    )
}

/// A webhook receiver, served: it and its base URL.
async fn webhooks() -> (Receiver, String) {
    let receiver = Receiver::default();
    let router = Router::new()
        .route(
            "/ok",
            recording("/ok", |_| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/flaky",
            recording("/flaky", |n| async move {
                if n <= 2 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/hang",
            recording("/hang", |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/first-hangs",
            recording("/first-hangs", |n| async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                StatusCode::OK
            }),
        )
        .route("/gone", recording("/gone", |_| async { StatusCode::GONE }))
        .with_state(receiver.clone());
    (receiver, serve(router).await)
}

/// Checks a delivery as a Standard Webhooks receiver does, with the secret
/// the user was shown: HMAC-SHA256 over `id.timestamp.body`.
fn signature_valid(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", get("webhook-id"), get("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    get("webhook-signature").split(' ').any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_on_5xx_and_one_that_hangs_delays_nobody_else() {
    // An attempt may take 3 s: bob's receiver holds each of his for that long.
    let (receiver, base) = webhooks().await;
    let t = Fixture::start(&[
        ("REMINDER_CHANNEL_TIMEOUT_MS", "3000".into()),
        ("REMINDER_CHANNEL_CONCURRENCY", "32".into()),
    ])
    .await;
    let (ann, bob, cat, dan) = (
        t.stack.token("ann"),
        t.stack.token("bob"),
        t.stack.token("cat"),
        t.stack.token("dan"),
    );
    let mut secrets = HashMap::new();
    for (user, token, path) in [
        ("ann", &ann, "/flaky"),
        ("bob", &bob, "/hang"),
        ("cat", &cat, "/ok"),
        ("dan", &dan, "/gone"),
    ] {
        let answer = t.webhook(token, &format!("{base}{path}"), true).await;
        let secret = answer["webhook"]["secret"]
            .as_str()
            .expect("the secret, shown once");
        assert!(secret.starts_with("whsec_"), "{answer}");
        secrets.insert(user, secret.to_owned());
    }
    // bob's hangs first; cat's, due a moment later, must not wait for it.
    let hanging = t.remind(&bob, "bob's", 4).await;
    let flaky = t.remind(&ann, "ann's", 5).await;
    let ok = t.remind(&cat, "cat's", 5).await;
    let gone = t.remind(&dan, "dan's", 5).await;

    let events = t.outcomes(&[&hanging, &flaky, &ok, &gone], "webhook").await;

    // cat's: signed with the secret cat was shown, the delivery id as
    // webhook-id, on time.
    let sent = outcome(&events, &ok, "webhook").expect("cat's");
    assert_eq!(sent.event_type(), "reminder.sent");
    let seen = receiver.seen("/ok");
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert!(
        signature_valid(&secrets["cat"], headers, body),
        "{headers:?}"
    );
    assert!(
        !signature_valid(&secrets["ann"], headers, body),
        "another user's secret must not verify"
    );
    assert_eq!(
        headers.get("webhook-id").and_then(|v| v.to_str().ok()),
        sent.value["correlationid"].as_str()
    );
    let payload: Value = serde_json::from_slice(body).expect("json");
    assert_eq!(payload["data"]["title"], "cat's");
    let late = at(&sent.value["data"]["sent_at"]) - at(&sent.value["data"]["remind_at"]);
    assert!(
        late < TimeDelta::milliseconds(1500),
        "cat's webhook waited {late} behind bob's"
    );

    // ann's: 500, 500, 200: one delivery, three attempts with one id.
    let sent = outcome(&events, &flaky, "webhook").expect("ann's");
    assert_eq!(sent.event_type(), "reminder.sent", "{}", sent.value);
    assert_eq!(sent.value["data"]["attempts"], 3);
    let seen = receiver.seen("/flaky");
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen
        .iter()
        .map(|(h, _)| h.get("webhook-id").cloned())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert!(seen
        .iter()
        .all(|(h, b)| signature_valid(&secrets["ann"], h, b)));

    // bob's: each attempt cut off at the timeout, then failed for good.
    let failed = outcome(&events, &hanging, "webhook").expect("bob's");
    assert_eq!(failed.event_type(), "reminder.failed", "{}", failed.value);
    assert_eq!(failed.value["data"]["attempts"], 3);
    assert!(failed.value["data"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("no answer within")));

    // dan's: 410 is final, one attempt.
    let failed = outcome(&events, &gone, "webhook").expect("dan's");
    assert_eq!(failed.event_type(), "reminder.failed", "{}", failed.value);
    assert_eq!(failed.value["data"]["attempts"], 1);
    assert_eq!(receiver.seen("/gone").len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_turned_off_stops_its_deliveries() {
    let (receiver, base) = webhooks().await;
    let t = Fixture::start(&[]).await;
    let ann = t.stack.token("ann");
    let url = format!("{base}/ok");
    t.webhook(&ann, &url, true).await;
    let first = t.remind(&ann, "first", 3).await;
    t.outcomes(&[&first], "webhook").await;
    assert_eq!(receiver.seen("/ok").len(), 1);

    let answer = t.webhook(&ann, &url, false).await;
    assert!(
        answer["webhook"].get("secret").is_none(),
        "same URL, same secret: not shown again"
    );
    let second = t.remind(&ann, "second", 3).await;
    // The platform's own delivery (log line, open pages) still happens...
    let events = read_until(&t.reader, |got| {
        got.iter().any(|e| {
            e.event_type() == "reminder.sent"
                && e.value["data"]["task_id"] == second["id"]
                && e.value["data"].get("channel").is_none()
        })
    })
    .await;
    assert!(outcome(&events, &second, "webhook").is_none());
    // ...and the firing made no webhook delivery (deliveries are written
    // in the firing's own transaction, so none can come later).
    let deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reminder_deliveries d JOIN reminders r USING (reminder_id)
          WHERE r.task_id = $1",
    )
    .bind(uuid::Uuid::parse_str(second["id"].as_str().expect("id")).expect("uuid"))
    .fetch_one(&t.stack.db.pool)
    .await
    .expect("count");
    assert_eq!(deliveries, 0);
    assert_eq!(receiver.seen("/ok").len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_a_crash_is_made_again_with_the_same_id() {
    let (receiver, base) = webhooks().await;
    let mut t = Fixture::start(&[]).await;
    let ann = t.stack.token("ann");
    let answer = t.webhook(&ann, &format!("{base}/first-hangs"), true).await;
    let secret = answer["webhook"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let task = t.remind(&ann, "ann's", 3).await;
    // The first attempt is under way (the receiver holds it)...
    wait_for("an attempt is made", || async {
        !receiver.seen("/first-hangs").is_empty()
    })
    .await;
    // ...when the notifier dies. Its successor makes it again once the
    // lease is over, with the same webhook-id, and records it once.
    t.notifier.crash().await;
    t.notifier = Notifier::with_channels(&t.stack, &[]).await;
    let events = t.outcomes(&[&task], "webhook").await;
    let sent = outcome(&events, &task, "webhook").expect("outcome");
    assert_eq!(sent.event_type(), "reminder.sent", "{}", sent.value);
    assert_eq!(sent.value["data"]["attempts"], 2);
    let seen = receiver.seen("/first-hangs");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0.get("webhook-id"), seen[1].0.get("webhook-id"));
    assert!(signature_valid(&secret, &seen[1].0, &seen[1].1));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_an_internal_address_is_refused_without_a_request() {
    let (receiver, base) = webhooks().await;
    let t = Fixture::start(&[("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "false".into())]).await;
    let port = base.rsplit(':').next().expect("port");
    let (ann, bob) = (t.stack.token("ann"), t.stack.token("bob"));
    // A name that resolves to loopback, and the cloud metadata address.
    t.webhook(&ann, &format!("https://localhost:{port}/ok"), true)
        .await;
    t.webhook(&bob, "https://169.254.169.254/latest/meta-data", true)
        .await;
    let (a, b) = (t.remind(&ann, "a", 3).await, t.remind(&bob, "b", 3).await);
    let events = t.outcomes(&[&a, &b], "webhook").await;
    for task in [&a, &b] {
        let failed = outcome(&events, task, "webhook").expect("outcome");
        assert_eq!(failed.event_type(), "reminder.failed", "{}", failed.value);
        assert_eq!(failed.value["data"]["attempts"], 1, "not worth a retry");
        assert!(
            failed.value["data"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("internal address")),
            "{}",
            failed.value
        );
    }
    assert!(receiver.seen("/ok").is_empty());
    t.stop().await;
}

// -------------------------------------------------------------- Web Push

/// A browser's side of a push subscription: its key pair and auth secret.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        use p256::elliptic_curve::rand_core::{OsRng, RngCore};
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        Self {
            secret: p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
            auth,
        }
    }

    fn subscription(&self, endpoint: &str) -> Value {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "endpoint": endpoint,
            "keys": {
                "p256dh": b64.encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": b64.encode(self.auth),
            },
            "expirationTime": null,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_message_decrypts_to_the_reminder_and_is_signed_with_the_servers_vapid_key() {
    let receiver = Receiver::default();
    let push_service = Router::new()
        .route(
            "/push/{device}",
            recording("/push", |_| async { StatusCode::CREATED }),
        )
        .with_state(receiver.clone());
    let base = serve(push_service).await;
    let vapid = ES256KeyPair::generate();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let t = Fixture::start(&[
        ("VAPID_PRIVATE_KEY", b64.encode(vapid.to_bytes())),
        ("VAPID_SUBJECT", "mailto:ops@todo.test".into()),
    ])
    .await;
    let ann = t.stack.token("ann");
    let browser = Browser::new();
    t.set_channels(
        &ann,
        json!({"webpush": {"subscriptions": [browser.subscription(&format!("{base}/push/phone"))]}}),
    )
    .await;
    let task = t.remind(&ann, "Call the dentist", 3).await;
    let events = t.outcomes(&[&task], "webpush").await;
    let sent = outcome(&events, &task, "webpush").expect("outcome");
    assert_eq!(sent.event_type(), "reminder.sent", "{}", sent.value);

    let seen = receiver.seen("/push");
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(
        headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("aes128gcm")
    );
    assert!(headers.get("ttl").is_some());
    // RFC 8291: only the browser's private key and auth secret open it.
    let auth = web_push_native::Auth::from(browser.auth);
    let plain = web_push_native::decrypt(body.to_vec(), &browser.secret, &auth).expect("decrypts");
    let message: Value = serde_json::from_slice(&plain).expect("json");
    assert_eq!(message["title"], "Call the dentist");
    assert_eq!(message["task_id"], task["id"]);
    assert_eq!(message["delivery_id"], sent.value["correlationid"]);
    // RFC 8292: `vapid t=<JWT>, k=<public key>`; the key is the server's
    // and the token verifies with it, for this push service's origin.
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .expect("Authorization");
    let rest = authorization.strip_prefix("vapid ").expect("vapid scheme");
    let mut parts = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').expect("k=v");
        parts.insert(k.to_owned(), v.to_owned());
    }
    let k = b64.decode(&parts["k"]).expect("k");
    assert_eq!(k, vapid.public_key().public_key().to_bytes_uncompressed());
    let public = ES256PublicKey::from_bytes(&k).expect("public key");
    let claims = public
        .verify_token::<NoCustomClaims>(&parts["t"], None)
        .expect("the VAPID token verifies");
    let audience = format!("{:?}", claims.audiences);
    assert!(audience.contains("http://127.0.0.1"), "{audience}");
    assert_eq!(claims.subject.as_deref(), Some("mailto:ops@todo.test"));
    t.stop().await;
}
