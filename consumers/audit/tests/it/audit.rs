//! todo-audit end to end: a random workload through the API, stored once,
//! served as history and as an incremental log, replayed against `tasks`.

use crate::common;

use common::{
    all_stored, audit_command, by_task, each, sorted_ids, stored_ids, wait_stored, Audit, WAIT,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use todo_api::origin::OriginPolicy;
use todo_api::testing::{Api, Stack};
use todo_testing::Received;

/// `n` random changes by `user`: creates, edits, completions, reopenings and
/// deletions of their own tasks.
async fn random_changes(stack: &Stack, api: &Api, user: &str, n: usize, seed: u64) {
    let token = stack.token(user);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: Vec<String> = Vec::new();
    for i in 0..n {
        let roll = rng.random_range(0..100);
        if live.is_empty() || roll < 30 {
            let task = stack
                .create(
                    api,
                    &token,
                    json!({"title": format!("{user} task {i}"), "tags": ["audit"]}),
                )
                .await;
            live.push(task["id"].as_str().expect("id").to_owned());
            continue;
        }
        let pick = rng.random_range(0..live.len());
        let path = format!("/tasks/{}", live[pick]);
        let (method, path, body, expect) = match roll {
            30..=54 => (
                Method::PATCH,
                path,
                Some(json!({"title": format!("{user} edit {i}"), "priority": "high"})),
                StatusCode::OK,
            ),
            55..=69 => (
                Method::POST,
                format!("{path}/complete"),
                None,
                StatusCode::OK,
            ),
            70..=79 => (Method::POST, format!("{path}/reopen"), None, StatusCode::OK),
            _ => {
                live.swap_remove(pick);
                (Method::DELETE, path, None, StatusCode::NO_CONTENT)
            }
        };
        let (status, body) = stack.call(api, method, &path, &token, body).await;
        assert_eq!(status, expect, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_workload_is_stored_once_served_in_order_and_replays_clean() {
    let (stack, api, audit) = common::start().await;
    let users = ["ann", "ben", "cat", "dan"];
    let seed: u64 = rand::random();
    eprintln!("workload seed {seed}");
    let work = users
        .iter()
        .enumerate()
        .map(|(i, u)| random_changes(&stack, &api, u, 40, seed + i as u64));
    futures::future::join_all(work).await;

    let events = all_stored(&stack).await;

    // Every published event is stored once, with its envelope as published.
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    let envelopes: HashMap<String, Value> =
        sqlx::query_as::<_, (String, Value)>("SELECT event_id::text, envelope FROM audit_events")
            .fetch_all(&stack.db.pool)
            .await
            .expect("envelopes")
            .into_iter()
            .collect();
    for e in &events {
        assert_eq!(envelopes[e.id()], e.value, "stored envelope of {}", e.id());
    }

    // Each task's history: its events in the order they happened.
    for (task, expected) in by_task(&events) {
        let owner = stack.token(&expected[0].key);
        let (status, body) = audit
            .get(&stack, &format!("/tasks/{task}/history"), &owner)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want: Vec<&str> = expected.iter().map(|e| e.id()).collect();
        assert_eq!(each(&body, "id"), want, "history of {task}");
        for e in body["events"].as_array().expect("events") {
            if e["type"] == "task.updated" {
                assert!(e["data"]["previous"].is_object(), "{e}");
                assert!(e["data"]["changed"].is_array(), "{e}");
            }
        }
    }

    // Incremental sync in small pages: everything after `since`, once.
    for user in users {
        let token = stack.token(user);
        let mut since = 0;
        let mut got: Vec<String> = Vec::new();
        loop {
            let (status, page) = audit
                .get(&stack, &format!("/events?since={since}&limit=7"), &token)
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for e in page["events"].as_array().expect("events") {
                assert_eq!(e["userid"], user);
                got.push(e["id"].as_str().unwrap_or_default().to_owned());
            }
            since = page["next_since"].as_i64().expect("next_since");
            if page["has_more"] != true {
                break;
            }
        }
        let mut want: Vec<&Received> = events.iter().filter(|e| e.key == user).collect();
        want.sort_by_key(|e| e.sequence());
        let want: Vec<String> = want.iter().map(|e| e.id().to_owned()).collect();
        assert_eq!(got, want, "log of {user}");
        assert_eq!(since, want.len() as i64);
        // Nothing new: an empty page that keeps the cursor.
        let (_, page) = audit
            .get(&stack, &format!("/events?since={since}"), &token)
            .await;
        assert_eq!(page["events"], json!([]));
        assert_eq!(page["next_since"], since);
    }

    let report = todo_audit::replay::replay(&stack.db.pool, None)
        .await
        .expect("replay");
    assert!(report.is_clean(), "{:#?}", report.differences);
    assert_eq!(report.events, events.len() as u64);
    assert_eq!(report.tasks_in_table as i64, stack.count("tasks").await);

    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_a_table_that_drifted_from_the_log_and_the_log_is_append_only() {
    let (stack, api, audit) = common::start().await;
    let token = stack.token("ann");
    let kept = stack.create(&api, &token, json!({"title": "kept"})).await;
    let gone = stack.create(&api, &token, json!({"title": "gone"})).await;
    all_stored(&stack).await;

    let clean = audit_command(&stack, &["replay"]);
    assert!(clean.status.success(), "{clean:?}");
    assert!(
        String::from_utf8_lossy(&clean.stdout).contains("0 difference(s)"),
        "{clean:?}"
    );

    // Changes behind the log's back.
    sqlx::query("UPDATE tasks SET title = 'tampered' WHERE id = $1::uuid")
        .bind(kept["id"].as_str())
        .execute(&stack.db.pool)
        .await
        .expect("tamper");
    sqlx::query("DELETE FROM tasks WHERE id = $1::uuid")
        .bind(gone["id"].as_str())
        .execute(&stack.db.pool)
        .await
        .expect("delete");
    // And rows the log never heard of, on either side of the others in id
    // order (the replay merges the two in that order).
    for id in [
        "00000000-0000-0000-0000-000000000001",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ] {
        sqlx::query(
            "INSERT INTO tasks (id, user_id, title, priority, created_at, updated_at)
             VALUES ($1::uuid, 'ann', 'smuggled', 'low', now(), now())",
        )
        .bind(id)
        .execute(&stack.db.pool)
        .await
        .expect("smuggle");
    }
    let drifted = audit_command(&stack, &["replay"]);
    let out = String::from_utf8_lossy(&drifted.stdout);
    assert_eq!(drifted.status.code(), Some(1), "{out}");
    assert_eq!(
        out.matches("in the table but the log has no event of it")
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.contains(&format!("task {}", kept["id"].as_str().unwrap_or_default()))
            && out.contains("differs from the table in title"),
        "{out}"
    );
    assert!(out.contains("in the log but not in the table"), "{out}");
    assert!(out.contains("4 difference(s)"), "{out}");

    // The log itself cannot be rewritten.
    for statement in [
        "DELETE FROM audit_events",
        "UPDATE audit_events SET user_id = 'eve'",
        "TRUNCATE audit_events",
    ] {
        let refused = sqlx::query(statement).execute(&stack.db.pool).await;
        assert!(refused.is_err(), "{statement} was allowed");
    }
    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_sees_another_users_history_or_events() {
    let (stack, api, audit) = common::start().await;
    let (ann, bob) = (stack.token("ann"), stack.token("bob"));
    let task = stack.create(&api, &ann, json!({"title": "ann's"})).await;
    stack.create(&api, &bob, json!({"title": "bob's"})).await;
    all_stored(&stack).await;
    let history = format!("/tasks/{}/history", task["id"].as_str().unwrap_or_default());

    let (status, body) = audit.get(&stack, &history, &ann).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = audit.get(&stack, &history, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["type"], "/problems/not-found");

    let (_, log) = audit.get(&stack, "/events?since=0", &bob).await;
    assert_eq!(each(&log, "userid"), ["bob"]);

    // No token, a forged token, nonsense queries.
    let (status, _) = audit.get(&stack, "/events", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = audit.get(&stack, "/events?since=-1", &ann).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "since");
    let (status, body) = audit.get(&stack, "/events?limit=100000", &ann).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "limit");
    let (status, _) = audit.get(&stack, "/events?since=abc", &ann).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = audit.get(&stack, "/tasks/not-a-uuid/history", &ann).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_in_pages_and_early_tokens_are_refused() {
    let (stack, api, audit) = common::start().await;
    let ann = stack.token("ann");
    let task = stack.create(&api, &ann, json!({"title": "v1"})).await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    for i in 2..=7 {
        let (status, body) = stack
            .call(
                &api,
                Method::PATCH,
                &format!("/tasks/{id}"),
                &ann,
                Some(json!({"title": format!("v{i}")})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    all_stored(&stack).await;

    // Seven events, three to a page.
    let mut titles = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (status, page) = audit
            .get(
                &stack,
                &format!("/tasks/{id}/history?after={after}&limit=3"),
                &ann,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let got = page["events"].as_array().expect("events");
        assert!(got.len() <= 3, "{page}");
        titles.extend(got.iter().map(|e| {
            e["data"]["task"]["title"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }));
        if !page["has_more"].as_bool().expect("has_more") {
            break;
        }
        after = page["next_after"].as_i64().expect("next_after");
    }
    assert_eq!(pages, 3);
    assert_eq!(titles, (1..=7).map(|i| format!("v{i}")).collect::<Vec<_>>());
    for query in [
        "limit=5000",
        "limit=0",
        "after=%00",
        "limit=%00",
        "after=1e400",
    ] {
        let (status, body) = audit
            .get(&stack, &format!("/tasks/{id}/history?{query}"), &ann)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    for query in ["since=%00", "limit=%00", "since=99999999999999999999"] {
        let (status, body) = audit.get(&stack, &format!("/events?{query}"), &ann).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, _) = audit.get(&stack, "/tasks/%00/history", &ann).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A token whose nbf lies ahead.
    let now = chrono::Utc::now().timestamp();
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ann", "iat": now, "nbf": now + 3600, "exp": now + 7200}),
        &jsonwebtoken::EncodingKey::from_secret(todo_testing::JWT_SECRET.as_bytes()),
    )
    .expect("token");
    let (status, _) = audit.get(&stack, "/events?since=0", &early).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = audit
        .get(&stack, &format!("/tasks/{id}/history"), &early)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_each_changes_user_agent_and_its_address_only_where_recorded() {
    let stack = Stack::new().await;
    // One todo-api records addresses, behind a proxy on 127.0.0.1 it trusts;
    // the other does not record them (the default).
    let recording = stack
        .spawn_api_with(
            stack.settings(),
            todo_api::app::ApiOptions {
                origin: OriginPolicy {
                    record_ip: true,
                    trusted_proxies: vec!["127.0.0.1/32".parse().expect("network")],
                },
                ..stack.api_options()
            },
        )
        .await;
    let plain = stack.spawn_api().await;
    let audit = Audit::spawn(&stack).await;
    let ann = stack.token("ann");
    let created = stack
        .request(&recording, Method::POST, "/tasks", &ann)
        .header("user-agent", "todo-test/1.0 (audit)")
        .header("x-forwarded-for", "192.0.2.66, 203.0.113.7")
        .json(&json!({"title": "from behind a proxy"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(created.status(), StatusCode::CREATED);
    let task: Value = created.json().await.expect("task");
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let patched = stack
        .request(&plain, Method::PATCH, &format!("/tasks/{id}"), &ann)
        .header("user-agent", "other-client/2")
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"title": "edited elsewhere"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(patched.status(), StatusCode::OK);
    all_stored(&stack).await;

    let (status, page) = audit
        .get(&stack, &format!("/tasks/{id}/history"), &ann)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let history = page["events"].as_array().expect("events");
    assert_eq!(history.len(), 2, "{page}");
    assert_eq!(history[0]["useragent"], "todo-test/1.0 (audit)");
    assert_eq!(
        history[0]["clientip"], "203.0.113.7",
        "the hop the trusted proxy added, not what the client wrote before it"
    );
    assert_eq!(history[1]["useragent"], "other-client/2");
    assert!(
        history[1].get("clientip").is_none(),
        "not recorded without AUDIT_CLIENT_IP: {}",
        history[1]
    );
    audit.stop().await;
    plain.stop().await;
    recording.stop().await;
}

/// todo-recurring's series events belong to the tasks they are about: the
/// history of a recurring task shows its series starting, and the history
/// of the instance its completion made shows how it came to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_tasks_history_shows_its_series_events() {
    let (stack, api, audit) = common::start().await;
    let mut config = todo_consumer::ConsumerConfig::new(
        todo_recurring::NAME,
        &[todo_contract::envelope::Topic::TaskEvents],
    );
    config.session_timeout = std::time::Duration::from_secs(6);
    let recurring = todo_recurring::app::App::build(&stack.settings(), config)
        .await
        .expect("todo-recurring starts");
    let (stop_recurring, shutdown) = todo_platform::shutdown::channel();
    let recurring = tokio::spawn(recurring.run(shutdown));
    let ann = stack.token("ann");
    let task = stack
        .create(
            &api,
            &ann,
            json!({"title": "weekly", "due_at": "2030-01-07T08:00:00Z",
                   "recurrence": {"rule": "FREQ=WEEKLY", "timezone": "Europe/Berlin", "mode": "on_completion"}}),
        )
        .await;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let reader = stack.task_events().await;
    let mut seen: Vec<Received> = Vec::new();
    // The series has started before the task is completed.
    while !seen.iter().any(|e| e.event_type() == "recurring.created") {
        seen.push(reader.next(WAIT).await.expect("an event"));
    }
    let (status, _) = stack
        .call(
            &api,
            Method::POST,
            &format!("/tasks/{id}/complete"),
            &ann,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Then the completion, and the instance's two events.
    while seen.len() < 5 {
        seen.push(reader.next(WAIT).await.expect("an event"));
    }
    wait_stored(&stack, seen.len() as i64).await;
    let instance = seen
        .iter()
        .find(|e| e.event_type() == "recurring.instance.created")
        .expect("the instance's series event")
        .value["subject"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let (_, history) = audit
        .get(&stack, &format!("/tasks/{id}/history"), &ann)
        .await;
    assert_eq!(
        each(&history, "type"),
        ["task.created", "recurring.created", "task.completed"]
    );
    let (_, history) = audit
        .get(&stack, &format!("/tasks/{instance}/history"), &ann)
        .await;
    assert_eq!(
        each(&history, "type"),
        ["task.created", "recurring.instance.created"]
    );
    stop_recurring.trigger();
    recurring
        .await
        .expect("task")
        .expect("todo-recurring ran cleanly");
    audit.stop().await;
    api.stop().await;
}

/// `todo-audit snapshot` stores the state the log leads to; `replay
/// --from-snapshot` folds only the events after it and agrees with the
/// whole-log replay, drift included. A second snapshot builds on the first
/// and replaces it; a gap in a user's sequences ends what a snapshot covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_snapshot_folds_only_what_came_after_it() {
    let (stack, api, audit) = common::start().await;
    let run = |args: &[&str]| {
        let out = audit_command(&stack, args);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    random_changes(&stack, &api, "ann", 40, 7).await;
    random_changes(&stack, &api, "bob", 20, 8).await;
    let before = all_stored(&stack).await.len() as i64;

    let (code, out) = run(&["snapshot"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{before} events folded on top of nothing")),
        "{out}"
    );

    // After it: a change of a task in the snapshot, a deletion, a new task.
    let ann = stack.token("ann");
    let (_, page) = stack.call(&api, Method::GET, "/tasks", &ann, None).await;
    let ids: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.len() >= 2, "{page}");
    let changed = stack
        .call(
            &api,
            Method::PATCH,
            &format!("/tasks/{}", ids[0]),
            &ann,
            Some(json!({"title": "after"})),
        )
        .await;
    assert_eq!(changed.0, StatusCode::OK);
    let deleted = stack
        .call(
            &api,
            Method::DELETE,
            &format!("/tasks/{}", ids[1]),
            &ann,
            None,
        )
        .await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT);
    stack.create(&api, &ann, json!({"title": "new"})).await;
    wait_stored(&stack, before + 3).await;

    let (code, out) = run(&["replay", "--from-snapshot"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("replayed 3 events after snapshot 1"), "{out}");
    assert!(out.contains("0 difference(s)"), "{out}");
    let (code, whole) = run(&["replay"]);
    assert_eq!(code, Some(0), "{whole}");
    assert!(
        whole.contains(&format!("replayed {} events", before + 3)),
        "{whole}"
    );

    // Drift shows from a snapshot as from the whole log.
    sqlx::query("UPDATE tasks SET title = 'tampered' WHERE id = $1::uuid")
        .bind(&ids[0])
        .execute(&stack.db.pool)
        .await
        .expect("tamper");
    let (code, out) = run(&["replay", "--from-snapshot"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("differs from the table in title"), "{out}");

    // The next snapshot folds the three and replaces the first.
    let (code, out) = run(&["snapshot"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("3 events folded on top of snapshot 1"),
        "{out}"
    );
    let snapshots: Vec<i64> = sqlx::query_scalar("SELECT snapshot_id FROM audit_snapshots")
        .fetch_all(&stack.db.pool)
        .await
        .expect("snapshots");
    assert_eq!(snapshots, [2]);
    let (code, out) = run(&["replay", "--from-snapshot"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("replayed 0 events after snapshot 2"), "{out}");
    assert!(out.contains("1 difference(s)"), "{out}");

    // An event still missing (here: one that never comes) ends ann's run.
    let last: i64 =
        sqlx::query_scalar("SELECT max(sequence) FROM audit_events WHERE user_id = 'ann'")
            .fetch_one(&stack.db.pool)
            .await
            .expect("ann's last");
    sqlx::query(
        "INSERT INTO audit_events (event_id, user_id, sequence, event_type, time, envelope, topic,
                                   partition, kafka_offset)
         VALUES (gen_random_uuid(), 'ann', $1, 'x.later', now(), '{}', 'reminders', 0, 0)",
    )
    .bind(last + 2)
    .execute(&stack.db.pool)
    .await
    .expect("an event after a gap");
    let (code, out) = run(&["snapshot"]);
    assert_eq!(code, Some(0), "{out}");
    let covered: i64 = sqlx::query_scalar(
        "SELECT sequence FROM audit_snapshot_users WHERE snapshot_id = 3 AND user_id = 'ann'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .expect("ann's coverage");
    assert_eq!(covered, last);
    audit.stop().await;
    api.stop().await;
}
