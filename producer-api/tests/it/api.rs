//! The REST API against a real PostgreSQL and a real broker: each route, its
//! event as a separate consumer reads it, and every refusal.

use crate::common::{
    get_anonymously, published_count, send_with_header, started, task_with_every_field,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use todo_api::testing::{assert_per_user_order, assert_schema_valid};
use todo_contract::domain::UserId;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_and_publishes_its_event() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");

    // Create, with a correlation id the event must carry.
    let task = task_with_every_field();
    let corr = ("X-Correlation-Id", "corr-create");
    let r = send_with_header(
        &stack,
        &api,
        Method::POST,
        "/tasks",
        &alice,
        corr,
        Some(task),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-correlation-id"], "corr-create");
    assert_eq!(r.headers()["etag"], "\"1\"");
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["title"], "Water the plants");
    assert_eq!(created["priority"], "high");
    assert_eq!(created["tags"], json!(["home", "garden"]));
    assert_eq!(created["completed"], false);
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["series_id"], created["id"],
        "a recurring task starts its series"
    );
    assert_eq!(
        created["reminders"],
        json!([{"before": "PT1H"}, {"at": "2026-11-30T18:00:00Z"}])
    );

    // Read it back, alone and in the list.
    let (status, got) = stack
        .call(&api, Method::GET, &format!("/tasks/{id}"), &alice, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);
    let (status, page) = stack.call(&api, Method::GET, "/tasks", &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([created]));

    // PUT replaces, PATCH merges, then complete, reopen, delete.
    let path = format!("/tasks/{id}");
    let changes: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::PUT,
            path.clone(),
            Some(json!({"title": "Water all plants", "priority": "low"})),
            "corr-put",
        ),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"description": "weekly", "tags": ["home"]})),
            "corr-patch",
        ),
        (
            Method::POST,
            format!("{path}/complete"),
            None,
            "corr-complete",
        ),
        (Method::POST, format!("{path}/reopen"), None, "corr-reopen"),
        (Method::DELETE, path.clone(), None, "corr-delete"),
    ];
    let mut last = created.clone();
    for (method, p, body, corr) in &changes {
        let corr = ("X-Correlation-Id", *corr);
        let r = send_with_header(&stack, &api, method.clone(), p, &alice, corr, body.clone()).await;
        assert!(r.status().is_success(), "{method} {p}: {}", r.status());
        if r.status() != StatusCode::NO_CONTENT {
            last = r.json().await.unwrap();
        }
    }
    assert_eq!(last["completed"], false, "reopened");
    assert_eq!(last["version"], 5);
    let (status, _) = stack.call(&api, Method::GET, &path, &alice, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted");

    // A separate consumer sees each change, in order, with what it needs.
    let events = stack.task_events().await.take(6, WAIT).await;
    assert_schema_valid(&events);
    assert_per_user_order(&events);
    let types: Vec<_> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        types,
        [
            "task.created",
            "task.updated",
            "task.updated",
            "task.completed",
            "task.reopened",
            "task.deleted"
        ]
    );
    let correlations: Vec<_> = events
        .iter()
        .map(|e| e.value["correlationid"].as_str().unwrap())
        .collect();
    assert_eq!(
        correlations,
        [
            "corr-create",
            "corr-put",
            "corr-patch",
            "corr-complete",
            "corr-reopen",
            "corr-delete"
        ]
    );

    // The document tells a client generating from it which event each of
    // these publishes: the one a consumer just saw.
    let doc: Value = get_anonymously(&stack, &api, "/openapi.json")
        .await
        .json()
        .await
        .expect("the document is JSON");
    let operations = [
        ("/tasks", "post"),
        ("/tasks/{id}", "put"),
        ("/tasks/{id}", "patch"),
        ("/tasks/{id}/complete", "post"),
        ("/tasks/{id}/reopen", "post"),
        ("/tasks/{id}", "delete"),
    ];
    for ((path, method), published) in operations.iter().zip(&types) {
        let description = doc["paths"][path][method]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains(&format!("Publishes {published}")),
            "{method} {path} publishes {published} but its description says {description:?}"
        );
    }
    for e in &events {
        assert_eq!(e.key, "alice");
        assert_eq!(
            e.header("content-type"),
            Some("application/cloudevents+json")
        );
        assert_eq!(e.value["subject"], id.as_str());
        assert_eq!(e.value["source"], "todo-api");
    }
    assert_eq!(
        events[0].value["data"]["task"], created,
        "the event carries the task as served"
    );
    // PUT replaces every writable field: what it left out is cleared.
    assert_eq!(
        events[1].value["data"]["changed"],
        json!([
            "title",
            "description",
            "priority",
            "tags",
            "due_at",
            "recurrence",
            "reminders"
        ])
    );
    assert_eq!(
        events[1].value["data"]["previous"]["title"],
        "Water the plants"
    );
    assert_eq!(
        events[2].value["data"]["changed"],
        json!(["description", "tags"])
    );
    assert_eq!(
        events[3].value["data"]["changed"],
        json!(["completed", "completed_at"])
    );
    assert_eq!(events[5].value["data"]["task"]["id"], id.as_str());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_only_ever_sees_their_own_tasks() {
    let (stack, api) = started().await;
    let (alice, bob) = (stack.token("alice"), stack.token("bob"));
    let task = stack
        .create(&api, &alice, json!({"title": "alice's secret"}))
        .await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/tasks/{id}");

    for (method, p, body) in [
        (Method::GET, path.clone(), None),
        (
            Method::PUT,
            path.clone(),
            Some(json!({"title": "mine now"})),
        ),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"title": "mine now"})),
        ),
        (Method::POST, format!("{path}/complete"), None),
        (Method::POST, format!("{path}/reopen"), None),
        (Method::DELETE, path.clone(), None),
    ] {
        let (status, problem) = stack.call(&api, method.clone(), &p, &bob, body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {p} by bob: {problem}"
        );
        assert_eq!(problem["status"], 404);
    }
    let (_, page) = stack.call(&api, Method::GET, "/tasks", &bob, None).await;
    assert_eq!(page["items"], json!([]));
    let (_, still) = stack.call(&api, Method::GET, &path, &alice, None).await;
    assert_eq!(still, task, "bob changed nothing");

    // Only alice's creation was published.
    stack.outbox_drained(WAIT).await;
    let reader = stack.task_events().await;
    let events = reader.drain(Duration::from_secs(2)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let url = format!("{}/tasks", api.base);

    let cases: Vec<(&str, Value, StatusCode, Option<&str>)> = vec![
        (
            "unknown priority",
            json!({"title": "t", "priority": "critical"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("priority"),
        ),
        (
            "10 kB title",
            json!({"title": "x".repeat(10_000)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("title"),
        ),
        (
            "empty title",
            json!({"title": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("title"),
        ),
        (
            "missing title",
            json!({"priority": "low"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("body"),
        ),
        (
            "unknown field",
            json!({"title": "t", "priorty": "low"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("priorty"),
        ),
        (
            "bad RRULE",
            json!({"title": "t", "due_at": "2026-12-01T09:00:00Z",
                   "recurrence": {"rule": "FREQ=FORTNIGHTLY", "timezone": "UTC", "mode": "schedule"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("recurrence.rule"),
        ),
        (
            "unknown time zone",
            json!({"title": "t", "due_at": "2026-12-01T09:00:00Z",
                   "recurrence": {"rule": "FREQ=DAILY", "timezone": "Europe/Atlantis", "mode": "schedule"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("recurrence.timezone"),
        ),
        (
            "recurrence without due_at",
            json!({"title": "t", "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("due_at"),
        ),
        (
            "bad lead time",
            json!({"title": "t", "due_at": "2026-12-01T09:00:00Z", "reminders": [{"before": "soon"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reminders[0].before"),
        ),
        (
            "bad due_at",
            json!({"title": "t", "due_at": "tomorrow"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("due_at"),
        ),
        (
            "tags not a list",
            json!({"title": "t", "tags": "home"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tags"),
        ),
    ];
    for (name, body, expected, field) in cases {
        let r = stack
            .http
            .post(&url)
            .bearer_auth(&alice)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{name}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["status"], expected.as_u16(), "{name}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{name}: {problem}");
        }
    }

    // Malformed JSON, the wrong media type, a body over the limit.
    let raw = |content_type: &'static str, body: Vec<u8>| {
        stack
            .http
            .post(&url)
            .bearer_auth(&alice)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (name, content_type, body, expected) in [
        (
            "malformed JSON",
            "application/json",
            b"{\"title\": ".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            "text/plain",
            b"{\"title\": \"t\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "100 kB body",
            "application/json",
            vec![b' '; 100 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let r = raw(content_type, body).await.unwrap();
        assert_eq!(r.status(), expected, "{name}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
    }

    // Tokens: missing, forged, expired, unsigned (alg=none).
    let forged = todo_platform::auth::JwtKeys::new(
        &todo_platform::config::JwtSettings::with_secret("another-secret-another-secret-1234"),
    )
    .mint(
        &UserId::try_from("alice".to_string()).unwrap(),
        Duration::from_secs(3600),
    );
    let expired = stack.jwt.mint_expired(
        &UserId::try_from("alice".to_string()).unwrap(),
        Duration::from_secs(600),
    );
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let body = json!({"title": "t"});
    let r = stack.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no token");
    assert!(r.headers().contains_key("www-authenticate"));
    for (name, token) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("alg=none", none),
    ] {
        let r = stack
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{name} token");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["status"], 401, "{name}");
    }
    let (status, _) = stack
        .call(&api, Method::GET, "/tasks", "garbage", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Nothing was written...
    assert_eq!(stack.count("tasks").await, 0);
    assert_eq!(stack.count("outbox").await, 0);
    assert_eq!(stack.count("event_sequences").await, 0);
    // ...and nothing published: the first event on the topic is the one
    // valid request made now.
    let ok = stack.create(&api, &alice, json!({"title": "valid"})).await;
    let first = stack.task_events().await.take(1, WAIT).await;
    assert_eq!(first[0].value["data"]["task"]["id"], ok["id"]);
    assert_eq!(first[0].sequence(), 1);

    // Bad input on an update changes nothing either.
    let path = format!("/tasks/{}", ok["id"].as_str().unwrap());
    for (body, field) in [
        (json!({"priority": "asap"}), "priority"),
        (json!({"title": null}), "title"),
    ] {
        let (status, problem) = stack
            .call(&api, Method::PATCH, &path, &alice, Some(body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let (_, same) = stack.call(&api, Method::GET, &path, &alice, None).await;
    assert_eq!(same, ok);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_retry_returns_the_first_result() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let send = |key: &'static str, title: &'static str| {
        let body = Some(json!({"title": title}));
        send_with_header(
            &stack,
            &api,
            Method::POST,
            "/tasks",
            &alice,
            ("Idempotency-Key", key),
            body,
        )
    };

    let first = send("k-1", "pay rent").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = send("k-1", "pay rent").await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "the retry returns the first result");

    // The same key with another body is a client bug, not a retry.
    let other = send("k-1", "pay taxes").await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Concurrent retries of one request create one task.
    let racing: Vec<_> = (0..8).map(|_| send("k-2", "buy bread")).collect();
    let results = futures::future::join_all(racing).await;
    let mut ids = std::collections::HashSet::new();
    for r in results {
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.insert(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "one task for eight racing retries");

    // Keys are per user: bob's k-1 is his own.
    let bob = stack.token("bob");
    let key = ("Idempotency-Key", "k-1");
    let body = Some(json!({"title": "pay rent"}));
    let r = send_with_header(&stack, &api, Method::POST, "/tasks", &bob, key, body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_ne!(r.json::<Value>().await.unwrap()["id"], first["id"]);

    // Completing with a key twice: one completion event.
    let path = format!("/tasks/{}/complete", first["id"].as_str().unwrap());
    for _ in 0..2 {
        let key = ("Idempotency-Key", "k-3");
        let r = send_with_header(&stack, &api, Method::POST, &path, &alice, key, None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
    }

    assert_eq!(stack.count("tasks").await, 3);
    let events = stack.task_events().await.take(4, WAIT).await;
    assert_per_user_order(&events);
    assert_eq!(
        published_count(&stack).await,
        4,
        "three creations and one completion, nothing twice"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_answers_412_and_changes_nothing() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let task = stack.create(&api, &alice, json!({"title": "v1"})).await;
    let path = format!("/tasks/{}", task["id"].as_str().unwrap());

    let (fresh, body) = (("If-Match", "\"1\""), Some(json!({"title": "v2"})));
    let r = send_with_header(&stack, &api, Method::PUT, &path, &alice, fresh, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");

    for (method, p, body) in [
        (Method::PUT, path.clone(), Some(json!({"title": "stale"}))),
        (Method::PATCH, path.clone(), Some(json!({"title": "stale"}))),
        (Method::POST, format!("{path}/complete"), None),
        (Method::DELETE, path.clone(), None),
    ] {
        let stale = ("If-Match", "1");
        let r = send_with_header(&stack, &api, method.clone(), &p, &alice, stale, body).await;
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "{method} {p}");
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("version 2"),
            "{problem}"
        );
    }
    let (bad, body) = (("If-Match", "banana"), Some(json!({"title": "x"})));
    let r = send_with_header(&stack, &api, Method::PATCH, &path, &alice, bad, body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let (_, now) = stack.call(&api, Method::GET, &path, &alice, None).await;
    assert_eq!(now["title"], "v2");
    assert_eq!(now["version"], 2);
    let events = stack
        .task_events()
        .await
        .drain(Duration::from_secs(3))
        .await;
    let types: Vec<_> = events.iter().map(|e| e.event_type().to_owned()).collect();
    assert_eq!(types, ["task.created", "task.updated"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_and_paginate() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    let specs = [
        json!({"title": "Buy milk", "priority": "low", "tags": ["shop"], "due_at": "2026-12-03T10:00:00Z"}),
        json!({"title": "File taxes", "priority": "urgent", "tags": ["admin"], "due_at": "2026-12-01T10:00:00Z"}),
        json!({"title": "Buy a 50% discount gift", "priority": "high", "tags": ["shop", "gift"]}),
        json!({"title": "Call mum", "priority": "medium", "description": "about the gift"}),
    ];
    let mut ids = Vec::new();
    for s in specs {
        ids.push(
            stack.create(&api, &alice, s).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    stack
        .call(
            &api,
            Method::POST,
            &format!("/tasks/{}/complete", ids[0]),
            &alice,
            None,
        )
        .await;

    let titles = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, a, t) = (&stack, &api, &alice);
    let get = move |q: &str| {
        let path = format!("/tasks?{q}");
        async move { s.call(a, Method::GET, &path, t, None).await }
    };

    let (_, p) = get("sort=-priority").await;
    assert_eq!(
        titles(&p),
        [
            "File taxes",
            "Buy a 50% discount gift",
            "Call mum",
            "Buy milk"
        ]
    );
    let (_, p) = get("status=completed").await;
    assert_eq!(titles(&p), ["Buy milk"]);
    let (_, p) = get("status=open&tag=shop").await;
    assert_eq!(titles(&p), ["Buy a 50% discount gift"]);
    let (_, p) = get("q=gift&sort=title").await;
    assert_eq!(
        titles(&p),
        ["Buy a 50% discount gift", "Call mum"],
        "title or description"
    );
    let (_, p) = get("q=50%25").await;
    assert_eq!(
        titles(&p),
        ["Buy a 50% discount gift"],
        "% is matched literally"
    );
    let (_, p) = get("due_after=2026-12-02T00:00:00Z").await;
    assert_eq!(titles(&p), ["Buy milk"]);
    let (_, p) = get("sort=due_at").await;
    assert_eq!(titles(&p)[..2], ["File taxes", "Buy milk"], "undated last");
    let (_, p) = get("sort=created_at&limit=3").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 3);
    assert_eq!(p["next_offset"], 3);
    let (_, p2) = get("sort=created_at&limit=3&offset=3").await;
    assert_eq!(titles(&p2), ["Call mum"]);
    assert_eq!(p2["next_offset"], Value::Null);

    let (status, problem) = get("status=later&limit=1000").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "status"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_correlation_ids() {
    let (stack, api) = started().await;
    let health = get_anonymously(&stack, &api, "/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = get_anonymously(&stack, &api, "/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], true);
    assert_eq!(ready["checks"]["broker"], true);

    // A generated correlation id is a UUID, echoed back.
    let alice = stack.token("alice");
    let r = stack
        .request(&api, Method::GET, "/tasks", &alice)
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-correlation-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    stack
        .create(&api, &alice, json!({"title": "count me"}))
        .await;
    stack.outbox_drained(WAIT).await;
    let metrics = stack.metrics(&api.base).await;
    assert!(
        metrics.contains(r#"todo_events_published_total{type="task.created"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("todo_outbox_publish_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"http_requests_total{method="POST",route="/tasks",status="201"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("todo_outbox_backlog"), "{metrics}");
    api.stop().await;
}

/// Keys older than a day go, in batches; a recent one still replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_older_than_a_day_are_pruned_in_batches() {
    let (stack, api) = started().await;
    let ann = stack.token("ann");
    let send_kept = || {
        let body = Some(json!({"title": "recent"}));
        send_with_header(
            &stack,
            &api,
            Method::POST,
            "/tasks",
            &ann,
            ("idempotency-key", "kept"),
            body,
        )
    };
    let first = send_kept().await;
    assert_eq!(first.status(), StatusCode::CREATED);
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, response, created_at)
         SELECT 'ann', 'old-' || n, '\\x00', 201, '{}', now() - interval '25 hours'
           FROM generate_series(1, 23) AS n",
    )
    .execute(&stack.db.pool)
    .await
    .expect("old keys");

    let pruned = todo_api::idempotency::prune(&stack.db.pool, 7)
        .await
        .expect("prune");
    assert_eq!(pruned, 23, "three batches of 7 and one of 2");
    assert_eq!(stack.count("idempotency_keys").await, 1);
    let again = send_kept().await;
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    api.stop().await;
}
