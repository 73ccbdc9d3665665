//! Hostile input against a real todo-api: values PostgreSQL refuses, times
//! no calendar code can handle, rules that expand without end, oversize
//! values, every write route and every list parameter. Each is refused with
//! a 4xx naming what is wrong, and nothing is written or published.

use crate::common::{published_count, started, started_with_write_burst, writes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use todo_api::testing::Stack;

const WAIT: Duration = Duration::from_secs(30);

/// 24 × 60 × 60 occurrences a day, every day of the year: 31.6 M
/// candidates per yearly step.
fn worst_yearly_rule() -> String {
    let all = |n: u32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    format!(
        "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR={};BYMINUTE={};BYSECOND={}",
        all(24),
        all(60),
        all(60)
    )
}

/// An occurrence every second, although SECONDLY itself is refused.
fn every_second_daily_rule() -> String {
    let all = |n: u32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    format!(
        "FREQ=DAILY;BYHOUR={};BYMINUTE={};BYSECOND={}",
        all(24),
        all(60),
        all(60)
    )
}

/// (what, body, the field the problem must name)
fn hostile_bodies() -> Vec<(&'static str, Value, &'static str)> {
    const DUE: &str = "2030-01-01T09:00:00Z";
    const YEAR_262142: &str = "+262142-12-31T23:59:59Z";
    let berlin =
        |rule: &str| json!({"rule": rule, "timezone": "Europe/Berlin", "mode": "schedule"});
    let due = |at: &str| titled(json!({ "due_at": at }));
    let recurring =
        |at: &str, recurrence: Value| titled(json!({"due_at": at, "recurrence": recurrence}));
    vec![
        ("NUL in the title", json!({"title": "a\u{0}b"}), "title"),
        (
            "NUL in the description",
            titled(json!({"description": "a\u{0}b"})),
            "description",
        ),
        ("NUL in a tag", titled(json!({"tags": ["a\u{0}"]})), "tags"),
        (
            "NUL after a lead time",
            titled(json!({"due_at": DUE, "reminders": [{"before": "PT1H\u{0}"}]})),
            "reminders[0].before",
        ),
        (
            "NUL in the rule",
            recurring(DUE, berlin("FREQ=DAILY\u{0}")),
            "recurrence.rule",
        ),
        (
            "NUL in the time zone",
            recurring(
                DUE,
                json!({"rule": "FREQ=DAILY", "timezone": "Europe/Berlin\u{0}", "mode": "schedule"}),
            ),
            "recurrence.timezone",
        ),
        (
            "due in year 262142, recurring in Berlin",
            recurring(YEAR_262142, berlin("FREQ=DAILY")),
            "due_at",
        ),
        (
            "due in year 262142, recurring at UTC+14",
            recurring(
                YEAR_262142,
                json!({"rule": "FREQ=DAILY", "timezone": "Etc/GMT-14", "mode": "on_completion"}),
            ),
            "due_at",
        ),
        ("due before 4713 BC", due("-4714-01-01T00:00:00Z"), "due_at"),
        ("due before 1970", due("1969-12-31T23:59:59Z"), "due_at"),
        ("due after 9999", due("+10000-01-01T00:00:00Z"), "due_at"),
        (
            "a reminder in year 262142",
            titled(json!({"due_at": DUE,
                   "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "UTC", "mode": "on_completion"},
                   "reminders": [{"at": YEAR_262142}]})),
            "reminders[0].at",
        ),
        (
            "a reminder before 4713 BC",
            titled(json!({"reminders": [{"at": "-4714-06-01T00:00:00Z"}]})),
            "reminders[0].at",
        ),
        (
            "a lead time that lands before 1970",
            titled(json!({"due_at": "1970-01-02T00:00:00Z", "reminders": [{"before": "P7D"}]})),
            "reminders[0].before",
        ),
        (
            "a yearly rule with every day, hour, minute and second",
            recurring(DUE, berlin(&worst_yearly_rule())),
            "recurrence.rule",
        ),
        (
            "a daily rule firing every second",
            recurring(DUE, berlin(&every_second_daily_rule())),
            "recurrence.rule",
        ),
        (
            "a 10 kB rule",
            recurring(
                DUE,
                berlin(&format!("FREQ=DAILY;BYHOUR={}", "1,".repeat(5000))),
            ),
            "recurrence.rule",
        ),
        (
            "a 20 kB description",
            titled(json!({"description": "d".repeat(20_000)})),
            "description",
        ),
        (
            "a 60-character tag",
            titled(json!({"tags": ["x".repeat(60)]})),
            "tags",
        ),
        (
            "eleven reminders",
            titled(
                json!({"reminders": (0..11).map(|i| json!({"at": format!("2030-01-01T09:{i:02}:00Z")})).collect::<Vec<_>>()}),
            ),
            "reminders",
        ),
    ]
}

/// `fields`, and the title "t": a body whose only fault is in `fields`.
fn titled(mut fields: Value) -> Value {
    fields["title"] = json!("t");
    fields
}

/// Asserts that nothing was written: no task, no event, no sequence.
async fn nothing_written(stack: &Stack, what: &str) {
    for table in ["tasks", "outbox", "event_sequences", "idempotency_keys"] {
        assert_eq!(stack.count(table).await, 0, "{what}: a row in {table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgresql_or_the_calendar_refuse_answer_422_naming_the_field() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    for (what, body, field) in hostile_bodies() {
        let (status, problem) = stack
            .call(&api, Method::POST, "/tasks", &alice, Some(body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {problem}"
        );
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field), "{what}: {problem}");
    }
    nothing_written(&stack, "POST").await;

    // The same values on a replace and a merge patch change nothing.
    let task = stack
        .create(
            &api,
            &alice,
            json!({"title": "keep me", "due_at": "2030-01-01T09:00:00Z"}),
        )
        .await;
    let path = format!("/tasks/{}", task["id"].as_str().unwrap_or_default());
    for (what, body, field) in hostile_bodies() {
        for method in [Method::PUT, Method::PATCH] {
            let (status, problem) = stack
                .call(&api, method.clone(), &path, &alice, Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {what}: {problem}"
            );
            assert!(
                problem.to_string().contains(field),
                "{method} {what}: {problem}"
            );
        }
    }
    let (status, now) = stack.call(&api, Method::GET, &path, &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(now, task, "the task is as it was");
    stack.outbox_drained(WAIT).await;
    assert_eq!(
        published_count(&stack).await,
        1,
        "only the valid create was published"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_parameters_postgresql_would_refuse_answer_422() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    stack.create(&api, &alice, json!({"title": "one"})).await;
    let long_q = "q".repeat(300);
    for (query, field) in [
        ("q=%00", "q"),
        ("q=a%00b", "q"),
        ("tag=%00", "tag"),
        ("tag=x%00", "tag"),
        (&format!("q={long_q}") as &str, "q"),
        ("due_after=-4714-01-01T00:00:00Z", "due_after"),
        ("due_before=%2B262142-12-31T23:59:59Z", "due_before"),
        ("offset=1000000&q=a", "offset"),
        ("limit=1000000", "limit"),
        ("status=%00", "status"),
        ("sort=%00", "sort"),
    ] {
        let (status, problem) = stack
            .call(&api, Method::GET, &format!("/tasks?{query}"), &alice, None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    // The deepest page allowed still answers.
    let (status, page) = stack
        .call(&api, Method::GET, "/tasks?offset=10000&q=o", &alice, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");

    // Paths and headers of the other routes: a NUL or oversize id names no
    // task; a bad If-Match or Idempotency-Key is a 400 naming the header.
    let huge_id = "a".repeat(10_000);
    for (method, path) in [
        (Method::GET, "/tasks/%00".to_owned()),
        (Method::DELETE, "/tasks/%00".to_owned()),
        (Method::POST, "/tasks/%00/complete".to_owned()),
        (Method::POST, format!("/tasks/{huge_id}/reopen")),
    ] {
        let (status, _) = stack.call(&api, method.clone(), &path, &alice, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let task = stack.create(&api, &alice, json!({"title": "two"})).await;
    let complete = format!(
        "/tasks/{}/complete",
        task["id"].as_str().unwrap_or_default()
    );
    for (header, value) in [
        ("if-match", "\"abc\"".to_owned()),
        ("if-match", "99999999999999999999999".to_owned()),
        ("idempotency-key", "k".repeat(300)),
        ("idempotency-key", "a b".to_owned()),
    ] {
        let r = stack
            .request(&api, Method::POST, &complete, &alice)
            .header(header, &value)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{header}: {value}");
        let problem: Value = r.json().await.expect("problem");
        assert!(
            problem["errors"][0]["field"]
                .as_str()
                .is_some_and(|f| f.eq_ignore_ascii_case(header)),
            "{problem}"
        );
    }
    let (_, unchanged) = stack
        .call(
            &api,
            Method::GET,
            &format!("/tasks/{}", task["id"].as_str().unwrap_or_default()),
            &alice,
            None,
        )
        .await;
    assert_eq!(unchanged["completed"], false);
    api.stop().await;
}

/// Random bodies built from valid and hostile pieces: whatever the mix, the
/// API never answers 5xx, and a refused body writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_bodies_never_get_a_server_error_and_refusals_write_nothing() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let target = stack
        .create(
            &api,
            &alice,
            json!({"title": "target", "due_at": "2030-01-01T09:00:00Z"}),
        )
        .await;
    let path = format!("/tasks/{}", target["id"].as_str().unwrap_or_default());
    // Each field is usually valid and sometimes hostile, so that a hostile
    // value is often the only thing wrong with a body and reaches every
    // check behind the first.
    let hostile_text = [
        json!(""),
        json!("\u{0}"),
        json!("a\u{0}"),
        json!("\u{1b}[31m"),
        json!("x".repeat(600)),
        json!("é".repeat(10_001)),
        json!(null),
        json!(42),
        json!(-1e308),
        json!([]),
        json!({}),
    ];
    let times = [
        json!("2030-06-01T09:00:00Z"),
        json!("2030-06-01T09:00:00+14:00"),
        json!("1970-01-01T00:00:00Z"),
        json!("9999-12-31T23:59:59Z"),
    ];
    let hostile_times = [
        json!("+262142-12-31T23:59:59Z"),
        json!("-4714-01-01T00:00:00Z"),
        json!("1969-12-31T23:59:59Z"),
        json!("+10000-01-01T00:00:00Z"),
        json!("2030-13-01T00:00:00Z"),
        json!("tomorrow"),
    ];
    let rules = [
        json!("FREQ=DAILY"),
        json!("FREQ=WEEKLY;BYDAY=MO"),
        json!("FREQ=MONTHLY;BYMONTHDAY=-1"),
    ];
    let hostile_rules = [
        json!(worst_yearly_rule()),
        json!(every_second_daily_rule()),
        json!("FREQ=SECONDLY"),
        json!("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"),
        json!("FREQ=DAILY;COUNT=4294967295"),
        json!("FREQ=MONTHLY;INTERVAL=65535"),
        json!("FREQ=WEEKLY;UNTIL=99991231T235959Z"),
        json!("FREQ=DAILY;UNTIL=19700101T000000Z"),
        json!("FREQ=DAILY\u{0}"),
    ];
    let zones = [
        json!("UTC"),
        json!("Europe/Berlin"),
        json!("Etc/GMT-14"),
        json!("Pacific/Kiritimati"),
    ];
    let hostile_zones = [json!("\u{0}"), json!("Mars/Base"), json!("")];
    let leads = [json!("PT1H"), json!("P366D"), json!("P1W")];
    let hostile_leads = [
        json!("P367D"),
        json!("PT0S"),
        json!("P1Y"),
        json!("PT1H\u{0}"),
        json!("P99999999W"),
    ];
    let mut rng = StdRng::seed_from_u64(0x7d0);
    let mut pick = |valid: &[Value], hostile: &[Value]| {
        if rng.random_range(0..3) == 0 {
            hostile[rng.random_range(0..hostile.len())].clone()
        } else {
            valid[rng.random_range(0..valid.len())].clone()
        }
    };
    let mut refused = 0;
    for i in 0..300 {
        let body = json!({
            "title": pick(&[json!("ok"), json!("é".repeat(500))], &hostile_text),
            "description": pick(&[json!("some text\nover lines"), json!(null)], &hostile_text),
            "priority": pick(&[json!("low"), json!("urgent")], &hostile_text),
            "tags": [pick(&[json!("home")], &hostile_text), pick(&[json!("work")], &hostile_text)],
            "due_at": pick(&times, &hostile_times),
            "recurrence": if i % 2 == 0 {
                json!({"rule": pick(&rules, &hostile_rules), "timezone": pick(&zones, &hostile_zones), "mode": "schedule"})
            } else {
                json!(null)
            },
            "reminders": [{"before": pick(&leads, &hostile_leads)}, {"at": pick(&times, &hostile_times)}],
        });
        let (method, route) = match i % 3 {
            0 => (Method::POST, "/tasks".to_owned()),
            1 => (Method::PUT, path.clone()),
            _ => (Method::PATCH, path.clone()),
        };
        let before = writes(&stack).await;
        let (status, answer) = stack
            .call(&api, method.clone(), &route, &alice, Some(body.clone()))
            .await;
        assert!(
            !status.is_server_error(),
            "{method} {route} {body}: {status} {answer}"
        );
        if status.is_client_error() {
            refused += 1;
            assert_eq!(
                before,
                writes(&stack).await,
                "{method} {body} was refused but wrote"
            );
        }
    }
    assert!(
        refused > 150,
        "the fuzz mostly sends hostile bodies ({refused})"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_writing_without_end_gets_429_and_others_are_unaffected() {
    let (stack, api) = started_with_write_burst(5).await;
    let (alice, bob) = (stack.token("alice"), stack.token("bob"));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..8 {
        let r = stack
            .request(&api, Method::POST, "/tasks", &alice)
            .json(&json!({"title": format!("flood {i}")}))
            .send()
            .await
            .expect("POST");
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let problem: Value = r.json().await.expect("problem");
            assert_eq!(problem["status"], 429, "{problem}");
        }
    }
    assert_eq!(&statuses[..5], [201; 5], "the burst passes: {statuses:?}");
    assert!(statuses[5..].contains(&429), "then 429: {statuses:?}");
    assert!(
        matches!(retry_after, Some(1..=2)),
        "Retry-After: {retry_after:?}"
    );
    // Another user writes as usual, and reads are not limited.
    stack.create(&api, &bob, json!({"title": "bob's"})).await;
    let (status, _) = stack.call(&api, Method::GET, "/tasks", &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    // After waiting as told, alice writes again.
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
    stack.create(&api, &alice, json!({"title": "later"})).await;
    api.stop().await;
}

/// A token whose `nbf` lies in the future, signed with the stack's secret.
fn token_not_valid_yet(user: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = chrono::Utc::now().timestamp();
    encode(
        &Header::default(),
        &json!({"sub": user, "iat": now, "nbf": now + 3600, "exp": now + 7200}),
        &EncodingKey::from_secret(todo_testing::JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_valid_yet_is_refused() {
    let (stack, api) = started().await;
    let early = token_not_valid_yet("alice");
    let (status, problem) = stack
        .call(
            &api,
            Method::POST,
            "/tasks",
            &early,
            Some(json!({"title": "t"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    let (status, _) = stack.call(&api, Method::GET, "/tasks", &early, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    nothing_written(&stack, "nbf").await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_on_a_newer_schema_and_waits_for_a_missing_one() {
    let stack = Stack::new().await;
    // A later release migrated this database further (a rollback, or an
    // old pod during a rolling deploy): this one starts anyway.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000000, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&stack.db.pool)
    .await
    .expect("a newer migration");
    let api = stack.spawn_api().await;
    let alice = stack.token("alice");
    stack.create(&api, &alice, json!({"title": "runs"})).await;
    // The migrator of this release, run again, leaves the newer one alone.
    todo_platform::db::migrate(&stack.db.pool)
        .await
        .expect("migrate tolerates the newer migration");
    api.stop().await;

    // A database without the schema: the service waits for the migrator
    // instead of migrating itself.
    let fresh = todo_testing::TestDatabase::create_empty().await;
    let settings = todo_platform::config::Settings {
        database: fresh.settings(),
        ..stack.settings()
    };
    let started = tokio::spawn({
        let jwt = stack.jwt_settings();
        let options = stack.api_options();
        async move {
            todo_api::app::Application::build(&settings, &jwt, options)
                .await
                .map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!started.is_finished(), "it waits for the schema");
    assert_eq!(
        todo_platform::db::schema_version(&fresh.pool)
            .await
            .expect("version"),
        0,
        "and does not migrate"
    );
    todo_platform::db::migrate(&fresh.pool)
        .await
        .expect("the migrator runs");
    tokio::time::timeout(WAIT, started)
        .await
        .expect("starts once migrated")
        .expect("task")
        .expect("builds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::new().await;
    let mut settings = stack.settings();
    settings.http.header_read_timeout = Duration::from_secs(1);
    settings.http.request_timeout = Duration::from_secs(2);
    let api = stack.spawn_api_with(settings, stack.api_options()).await;
    let addr = api.base.trim_start_matches("http://").to_owned();

    /// Reads until the server closes; how long that took.
    async fn closed_after(stream: &mut tokio::net::TcpStream) -> (Duration, Vec<u8>) {
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), seen),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => panic!("the server kept the connection open for 30 s"),
            }
        }
    }

    // Says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (after, _) = closed_after(&mut silent).await;
    assert!(
        after < Duration::from_secs(10),
        "silent: closed after {after:?}"
    );

    // Dribbles a header, a byte every 300 ms.
    let mut dribbler = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let dribble = tokio::spawn(async move {
        let _ = dribbler
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await;
        for b in
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
        {
            if dribbler.write_all(&[*b]).await.is_err() {
                return Some(dribbler);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        None
    });
    let cut = tokio::time::timeout(Duration::from_secs(30), dribble)
        .await
        .expect("the dribbler was cut off")
        .expect("task");
    assert!(
        cut.is_some(),
        "the server stopped reading the dribbled header"
    );

    // Sends its headers, then its body a byte at a time: the handler waits
    // for the body, and the request times out with 503.
    let alice = stack.token("alice");
    let mut slow_body = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow_body
        .write_all(
            format!(
                "POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let (_, answer) = closed_after(&mut slow_body).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // As the OpenAPI document says of every 503: a problem, and when to
    // come back.
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(lower.contains("retry-after: "), "{answer}");
    assert!(answer.contains("\"status\":503"), "{answer}");
    assert_eq!(stack.count("tasks").await, 0);

    // A client that keeps to the limits is served as ever.
    let (status, _) = stack.call(&api, Method::GET, "/health", &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_runs_too_long_is_cancelled() {
    let stack = Stack::new().await;
    let mut settings = stack.settings();
    settings.database.statement_timeout = Duration::from_millis(200);
    let pool = todo_platform::db::pool(&settings.database).expect("pool");
    let err = sqlx::query("SELECT pg_sleep(2)")
        .execute(&pool)
        .await
        .expect_err("cancelled");
    assert!(todo_platform::db::is_statement_timeout(&err), "{err}");
    // The API answers 503 rather than 500 when that happens to a request.
    let api = stack.spawn_api_with(settings, stack.api_options()).await;
    let alice = stack.token("alice");
    stack
        .create(&api, &alice, json!({"title": "quick statements pass"}))
        .await;
    api.stop().await;
}
