//! The MCP server at /mcp against a real PostgreSQL and a real broker,
//! driven by rmcp's own client as an assistant would: every tool, the event
//! each change publishes, what a user may not touch, every refusal, and the
//! protocol's edges (token, revisions, unknown tool, no sessions).

use crate::common::{started, started_with_write_burst, task_with_every_field, writes};
use reqwest::{Method, StatusCode};
use rmcp::model::ProtocolVersion;
use rmcp::service::ServiceError;
use serde_json::{json, Value};
use std::time::Duration;
use todo_api::testing::mcp::ToolReply;
use todo_api::testing::{assert_per_user_order, assert_schema_valid, Api, Stack};
use todo_contract::domain::UserId;

const WAIT: Duration = Duration::from_secs(30);

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("id").to_owned()
}

async fn rest_get(stack: &Stack, api: &Api, token: &str, id: &str) -> (StatusCode, Value) {
    stack
        .call(api, Method::GET, &format!("/tasks/{id}"), token, None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_answers_as_rest_and_publishes_its_event() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    // One client per step, so that each step's events carry its own
    // correlation id (an assistant's host sets X-Correlation-Id per request).
    let client = |corr: &'static str| {
        let (stack, api, alice) = (&stack, &api, alice.clone());
        async move {
            stack
                .mcp_with(api, &alice, ProtocolVersion::V_2025_11_25, Some(corr))
                .await
                .expect("connects")
        }
    };

    let tools = client("corr-list-tools").await;
    let names: Vec<String> = tools
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "add_task",
            "list_tasks",
            "get_task",
            "update_task",
            "complete_task",
            "reopen_task",
            "delete_task"
        ]
    );

    let added = client("corr-add")
        .await
        .call("add_task", task_with_every_field())
        .await;
    let created = added.ok().clone();
    let id = id_of(&created);
    assert_eq!(created["version"], 1);
    assert_eq!(created["series_id"], created["id"]);
    let summary = &added.text[0];
    assert!(
        summary.starts_with("Added task")
            && summary.contains("Water the plants")
            && !summary.contains('\n'),
        "a one-line summary: {summary}"
    );
    let (status, rest) = rest_get(&stack, &api, &alice, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(created, rest, "the task exactly as REST returns it");

    let reader = client("corr-read").await;
    let got = reader.call("get_task", json!({"task_id": id})).await;
    assert_eq!(got.ok(), &rest);
    let page = reader
        .call("list_tasks", json!({"status": "open", "limit": 10}))
        .await;
    let (_, rest_page) = stack
        .call(
            &api,
            Method::GET,
            "/tasks?status=open&limit=10",
            &alice,
            None,
        )
        .await;
    assert_eq!(page.ok(), &rest_page, "the page exactly as REST returns it");
    assert_eq!(page.ok()["items"], json!([created]));
    let filtered = reader
        .call("list_tasks", json!({"tag": "garden", "q": "FERN", "sort": "-due_at", "due_after": "2026-11-01T00:00:00Z", "due_before": "2026-12-02T00:00:00Z", "priority": "high", "offset": 0}))
        .await;
    assert_eq!(filtered.ok()["items"].as_array().unwrap().len(), 1);
    let none = reader.call("list_tasks", json!({"priority": "low"})).await;
    assert_eq!(none.ok()["items"], json!([]));

    let updated = client("corr-update")
        .await
        .call(
            "update_task",
            json!({"task_id": id, "expected_version": 1, "title": "Water all plants", "description": null}),
        )
        .await;
    let updated = updated.ok().clone();
    assert_eq!(updated["title"], "Water all plants");
    assert_eq!(updated["description"], Value::Null);
    assert_eq!(
        updated["priority"], "high",
        "a partial update keeps the rest"
    );
    assert_eq!(updated["tags"], json!(["home", "garden"]));
    assert_eq!(updated["version"], 2);

    let done = client("corr-complete")
        .await
        .call("complete_task", json!({"task_id": id}))
        .await;
    assert_eq!(done.ok()["completed"], true);
    assert!(done.text[0].starts_with("Completed"), "{:?}", done.text);
    let reopened = client("corr-reopen")
        .await
        .call("reopen_task", json!({"task_id": id, "expected_version": 3}))
        .await;
    assert_eq!(reopened.ok()["completed"], false);
    assert_eq!(reopened.ok()["version"], 4);
    let deleted = client("corr-delete")
        .await
        .call("delete_task", json!({"task_id": id}))
        .await;
    assert_eq!(
        deleted.ok()["title"],
        "Water all plants",
        "the task as it was"
    );
    let (status, _) = rest_get(&stack, &api, &alice, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A separate consumer sees each change, in order, with its correlation id.
    let events = stack.task_events().await.take(5, WAIT).await;
    assert_schema_valid(&events);
    assert_per_user_order(&events);
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.event_type(),
                e.value["correlationid"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("task.created", "corr-add"),
            ("task.updated", "corr-update"),
            ("task.completed", "corr-complete"),
            ("task.reopened", "corr-reopen"),
            ("task.deleted", "corr-delete"),
        ]
    );
    for e in &events {
        assert_eq!(e.key, "alice");
        assert_eq!(e.value["subject"], id.as_str());
        assert_eq!(e.value["source"], "todo-api");
    }
    assert_eq!(events[0].value["data"]["task"], created);
    assert_eq!(
        events[1].value["data"]["changed"],
        json!(["title", "description"])
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_revisions_of_the_assistants_are_negotiated() {
    let (stack, api) = started().await;
    let alice = stack.token("alice");
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let client = stack
            .mcp_with(&api, &alice, version.clone(), None)
            .await
            .expect("connects");
        assert_eq!(client.protocol_version().as_deref(), Some(version.as_str()));
        let tools = client.peer().list_all_tools().await.unwrap();
        for t in &tools {
            let a = t.annotations.as_ref().expect("annotations");
            let read_only = matches!(t.name.as_ref(), "list_tasks" | "get_task");
            assert_eq!(a.read_only_hint, Some(read_only), "{}", t.name);
            assert_eq!(
                a.destructive_hint,
                Some(t.name == "delete_task").filter(|_| !read_only),
                "{}",
                t.name
            );
        }
        let added = client
            .call("add_task", json!({"title": format!("on {version}")}))
            .await;
        assert_eq!(added.ok()["title"], format!("on {version}"));
        client.close().await;
    }
    // A revision the server does not know: it answers one it does (the
    // client then decides whether to go on), as the spec's negotiation says.
    let r = stack
        .http
        .post(format!("{}/mcp", api.base))
        .bearer_auth(&alice)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-01-01", "capabilities": {},
            "clientInfo": {"name": "old", "version": "0"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let agreed = body["result"]["protocolVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .any(|v| v.as_str() == agreed),
        "{body}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_every_request_is_refused_with_401() {
    let (stack, api) = started().await;
    let alice = UserId::try_from("alice".to_string()).unwrap();
    let forged = todo_platform::auth::JwtKeys::new(
        &todo_platform::config::JwtSettings::with_secret("ffffffffffffffffffffffffffffffff"),
    )
    .mint(&alice, Duration::from_secs(60));
    let expired = stack.jwt.mint_expired(&alice, Duration::from_secs(3600));
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "add_task", "arguments": {"title": "sneaky"}}});
    for (what, token) in [
        ("none", None),
        ("forged", Some(&forged)),
        ("expired", Some(&expired)),
    ] {
        let mut req = stack
            .http
            .post(format!("{}/mcp", api.base))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&call);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    }
    assert!(
        stack
            .mcp_with(&api, "", ProtocolVersion::V_2025_11_25, None)
            .await
            .is_err(),
        "rmcp's client cannot even initialize without a token"
    );
    assert_eq!(writes(&stack).await, (0, 0), "no tool ran");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_task_is_not_found_and_stays_as_it_was() {
    let (stack, api) = started().await;
    let bob = stack.token("bob");
    let theirs = stack.create(&api, &bob, json!({"title": "bob's"})).await;
    let id = id_of(&theirs);
    let alice = stack.mcp(&api, &stack.token("alice")).await;
    for (tool, args) in [
        ("get_task", json!({"task_id": id})),
        ("update_task", json!({"task_id": id, "title": "mine now"})),
        ("complete_task", json!({"task_id": id})),
        ("reopen_task", json!({"task_id": id})),
        ("delete_task", json!({"task_id": id})),
    ] {
        let reply = alice.call(tool, args).await;
        assert_eq!(
            reply.refusal(),
            "Not found: task_id: no such task",
            "{tool}"
        );
    }
    let listed = alice.call("list_tasks", json!({})).await;
    assert_eq!(listed.ok()["items"], json!([]));
    let (status, now) = rest_get(&stack, &api, &bob, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(now, theirs, "bob's task is unchanged");
    api.stop().await;
}

/// REST's problem for the same body, to hold the tool to its words.
async fn rest_detail(stack: &Stack, api: &Api, token: &str, body: &Value) -> String {
    let (status, problem) = stack
        .call(api, Method::POST, "/tasks", token, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    problem["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_tool_error_naming_the_field_and_writes_nothing() {
    let (stack, api) = started().await;
    let token = stack.token("alice");
    let alice = stack.mcp(&api, &token).await;

    let bodies: Vec<(&str, Value, &str)> = vec![
        (
            "missing title",
            json!({"priority": "low"}),
            "arguments: missing field `title`",
        ),
        (
            "unknown priority",
            json!({"title": "t", "priority": "critical"}),
            "priority: unknown variant `critical`",
        ),
        (
            "bad RRULE",
            json!({"title": "t", "due_at": "2026-12-01T09:00:00Z",
                   "recurrence": {"rule": "FREQ=FORTNIGHTLY", "timezone": "UTC", "mode": "schedule"}}),
            "recurrence.rule: ",
        ),
        (
            "recurrence without due_at",
            json!({"title": "t", "recurrence": {"rule": "FREQ=DAILY", "timezone": "UTC", "mode": "schedule"}}),
            "due_at: a recurring task needs due_at",
        ),
        (
            "bad due_at",
            json!({"title": "t", "due_at": "tomorrow"}),
            "due_at: ",
        ),
        (
            "unknown field",
            json!({"title": "t", "priorty": "low"}),
            "priorty: unknown field `priorty`",
        ),
        (
            "bad lead time",
            json!({"title": "t", "due_at": "2026-12-01T09:00:00Z", "reminders": [{"before": "soon"}]}),
            "reminders[0].before: ",
        ),
    ];
    for (what, body, words) in &bodies {
        let reply = alice.call("add_task", body.clone()).await;
        let message = reply.refusal();
        assert!(
            message.starts_with("Invalid request: "),
            "{what}: {message}"
        );
        assert!(message.contains(words), "{what}: {message}");
        let rest = rest_detail(&stack, &api, &token, body).await;
        assert_eq!(
            message.replace("arguments:", "body:"),
            format!("Invalid request: {rest}"),
            "{what}: the words of REST's problem+json"
        );
        assert!(reply.structured.is_none(), "{what}");
    }
    let bad_key = alice
        .call(
            "add_task",
            json!({"title": "t", "idempotency_key": "with space"}),
        )
        .await;
    assert!(
        bad_key
            .refusal()
            .contains("idempotency_key: must be 1-255 visible ASCII"),
        "{:?}",
        bad_key.text
    );
    let list = alice
        .call(
            "list_tasks",
            json!({"limit": 0, "status": "maybe", "colour": "red"}),
        )
        .await;
    assert_eq!(
        list.refusal(),
        "Invalid request: colour: unknown query parameter; limit: expected a number from 1 to 200; status: expected open, completed or all"
    );
    let unknown = "0190f1e0-0000-7000-8000-000000000000";
    for tool in [
        "get_task",
        "update_task",
        "complete_task",
        "reopen_task",
        "delete_task",
    ] {
        for task_id in [json!(unknown), json!("not-a-uuid")] {
            let reply = alice.call(tool, json!({"task_id": task_id})).await;
            assert_eq!(
                reply.refusal(),
                "Not found: task_id: no such task",
                "{tool}"
            );
        }
        let reply = alice.call(tool, json!({})).await;
        assert!(
            reply.refusal().contains("missing field `task_id`"),
            "{tool}: {:?}",
            reply.text
        );
    }
    assert_eq!(writes(&stack).await, (0, 0), "nothing written");

    // Refused changes to a task leave it as it was.
    let task = alice
        .call("add_task", json!({"title": "keep me"}))
        .await
        .ok()
        .clone();
    let id = id_of(&task);
    for (what, args, words) in [
        (
            "null title",
            json!({"task_id": id, "title": null}),
            "title: must not be null",
        ),
        (
            "bad priority",
            json!({"task_id": id, "priority": "critical"}),
            "priority: unknown variant",
        ),
        (
            "unknown field",
            json!({"task_id": id, "colour": "red"}),
            "colour: unknown field",
        ),
        (
            "stale version",
            json!({"task_id": id, "expected_version": 7, "title": "x"}),
            "The task has changed: expected_version: version mismatch: the task is at version 1",
        ),
    ] {
        let reply = alice.call("update_task", args).await;
        assert!(reply.refusal().contains(words), "{what}: {:?}", reply.text);
    }
    for tool in ["complete_task", "delete_task"] {
        let reply = alice
            .call(tool, json!({"task_id": id, "expected_version": 0}))
            .await;
        assert!(
            reply
                .refusal()
                .contains("expected_version: version mismatch"),
            "{tool}"
        );
    }
    let (_, now) = rest_get(&stack, &api, &token, &id).await;
    assert_eq!(now, task, "the task is as it was");
    assert_eq!(
        writes(&stack).await,
        (1, 1),
        "only the valid add was written"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tool_is_a_json_rpc_error() {
    let (stack, api) = started().await;
    let alice = stack.mcp(&api, &stack.token("alice")).await;
    match alice.try_call("drop_database", json!({})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code.0, -32602, "{e:?}");
            assert!(e.message.contains("drop_database"), "{e:?}");
        }
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_with_its_idempotency_key_returns_the_first_result() {
    let (stack, api) = started().await;
    let alice = stack.mcp(&api, &stack.token("alice")).await;
    let args = json!({"title": "once", "idempotency_key": "add-1"});
    let first = alice.call("add_task", args.clone()).await.ok().clone();
    let again: ToolReply = alice.call("add_task", args).await;
    assert_eq!(again.ok(), &first);
    assert!(again.text[0].contains("first result"), "{:?}", again.text);
    assert_eq!(stack.count("tasks").await, 1);
    let reused = alice
        .call(
            "add_task",
            json!({"title": "other", "idempotency_key": "add-1"}),
        )
        .await;
    assert!(
        reused.refusal().contains("Idempotency-Key reused"),
        "{:?}",
        reused.text
    );

    let id = id_of(&first);
    let complete = json!({"task_id": id, "idempotency_key": "done-1"});
    let done = alice
        .call("complete_task", complete.clone())
        .await
        .ok()
        .clone();
    alice.call("reopen_task", json!({"task_id": id})).await.ok();
    let replayed = alice.call("complete_task", complete).await;
    assert_eq!(
        replayed.ok(),
        &done,
        "the first completion's answer, not a second one"
    );
    let (_, now) = stack
        .call(
            &api,
            Method::GET,
            &format!("/tasks/{id}"),
            &stack.token("alice"),
            None,
        )
        .await;
    assert_eq!(now["completed"], false, "the retry completed nothing");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_mcp_share_one_write_allowance() {
    let (stack, api) = started_with_write_burst(2).await;
    let token = stack.token("alice");
    stack.create(&api, &token, json!({"title": "one"})).await;
    stack.create(&api, &token, json!({"title": "two"})).await;
    let alice = stack.mcp(&api, &token).await;
    let refused = alice.call("add_task", json!({"title": "three"})).await;
    assert!(
        refused.refusal().starts_with("Too many requests: "),
        "{:?}",
        refused.text
    );
    assert_eq!(stack.count("tasks").await, 2);
    api.stop().await;
}

/// Stateless: a request needs nothing a previous one left on a replica, so
/// a round-robin balancer may send each to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_any_request_of_a_conversation() {
    let stack = Stack::new().await;
    let replicas = [stack.spawn_api().await, stack.spawn_api().await];
    let token = stack.token("alice");
    let post = |n: usize, body: Value| {
        let req = stack
            .http
            .post(format!("{}/mcp", replicas[n % 2].base))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let init = post(
        0,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "balanced", "version": "0"}}}),
    )
    .await;
    assert_eq!(init.status(), StatusCode::OK);
    assert!(
        init.headers().get("mcp-session-id").is_none(),
        "no session to stick to"
    );
    let initialized = post(
        1,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(
        initialized.status().is_success(),
        "{}",
        initialized.status()
    );
    let added: Value = post(
        2,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "add_task", "arguments": {"title": "balanced"}}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = added["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got: Value = post(
        3,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "get_task", "arguments": {"task_id": id}}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        got["result"]["structuredContent"]["title"], "balanced",
        "{got}"
    );
    assert_eq!(got["result"]["isError"], false);
    for r in replicas {
        r.stop().await;
    }
}
