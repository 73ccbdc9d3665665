//! `DELETE /me` while the user is still writing: every request gets a clear
//! answer (never a 5xx from a deadlock or a half-erased user), nothing of
//! theirs is left in todo-api's tables, and `user.erased` is the last event
//! the user ever has.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use todo_api::testing::{assert_schema_valid, Stack};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_who_is_writing_leaves_nothing_and_answers_every_request_clearly() {
    let stack = Arc::new(Stack::new().await);
    let api = Arc::new(stack.spawn_api().await);
    let token = stack.token("eve");
    let other = stack.token("olga");
    stack.create(&api, &other, json!({"title": "olga's"})).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let task = stack
            .create(&api, &token, json!({"title": format!("eve {i}")}))
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let ids = Arc::new(ids);

    // Four writers: updates, completions and creates (some with an
    // Idempotency-Key), until a write of theirs is refused as erased.
    let written = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stack, api, token, ids, written) = (
                stack.clone(),
                api.clone(),
                token.clone(),
                ids.clone(),
                written.clone(),
            );
            tokio::spawn(async move {
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                let deadline = tokio::time::Instant::now() + WAIT;
                for i in 0usize.. {
                    assert!(tokio::time::Instant::now() < deadline, "never refused");
                    let id = &ids[(w + i) % ids.len()];
                    let request = match i % 3 {
                        0 => stack
                            .request(&api, Method::PATCH, &format!("/tasks/{id}"), &token)
                            .json(&json!({"title": format!("eve {w} {i}")})),
                        1 => stack.request(
                            &api,
                            Method::POST,
                            &format!("/tasks/{id}/{}", ["complete", "reopen"][i % 2]),
                            &token,
                        ),
                        _ => stack
                            .request(&api, Method::POST, "/tasks", &token)
                            .header("Idempotency-Key", format!("k-{w}-{i}"))
                            .json(&json!({"title": format!("new {w} {i}")})),
                    };
                    let status = request.send().await.expect("request").status();
                    *statuses.entry(status.as_u16()).or_default() += 1;
                    if status.is_success() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    if status == StatusCode::FORBIDDEN {
                        return statuses;
                    }
                }
                statuses
            })
        })
        .collect();
    while written.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, erasure) = stack.call(&api, Method::DELETE, "/me", &token, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{erasure}");

    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    for w in writers {
        for (status, n) in w.await.expect("writer") {
            *answers.entry(status).or_default() += n;
        }
    }
    // 404: a task the erasure deleted under a writer's feet.
    assert!(
        answers.keys().all(|s| [200, 201, 403, 404].contains(s)),
        "{answers:?}"
    );
    assert_eq!(answers.get(&403), Some(&4), "{answers:?}");

    for table in ["tasks", "idempotency_keys", "notification_preferences"] {
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE user_id = 'eve'"
        ))
        .fetch_one(&stack.db.pool)
        .await
        .expect("count");
        assert_eq!(left, 0, "{table} still holds eve's rows");
    }
    stack.outbox_drained(WAIT).await;
    let last: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM event_sequences WHERE user_id = 'eve'")
            .fetch_one(&stack.db.pool)
            .await
            .expect("eve's sequence");
    let reader = stack.task_events().await;
    let mut eves = Vec::new();
    let erased = loop {
        let event = reader.next(WAIT).await.expect("user.erased on task-events");
        if event.key != "eve" {
            continue;
        }
        if event.event_type() == "user.erased" {
            break event;
        }
        eves.push(event);
    };
    assert_schema_valid(std::slice::from_ref(&erased));
    assert_eq!(erased.value["data"], json!({}), "no content in it");
    assert_eq!(erased.value["id"], erasure["event_id"]);
    assert_eq!(
        erased.sequence(),
        last,
        "nothing took a sequence of eve's after the erasure"
    );
    assert!(eves.iter().all(|e| e.sequence() < last));

    // Olga is untouched.
    let (status, page): (StatusCode, Value) =
        stack.call(&api, Method::GET, "/tasks", &other, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    if let Some(api) = Arc::into_inner(api) {
        api.stop().await;
    }
}
