//! What the tests of this binary start with, and what several of them ask
//! of a stack the same way.

use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::num::NonZeroU32;
use std::time::Duration;
use todo_api::limits::WriteQuota;
use todo_api::testing::{Api, Stack};

/// A stack of its own with one todo-api on it.
pub async fn started() -> (Stack, Api) {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    (stack, api)
}

/// As [`started`], but a user may write `burst` times at once and then
/// once a second.
pub async fn started_with_write_burst(burst: u32) -> (Stack, Api) {
    let stack = Stack::new().await;
    let mut options = stack.api_options();
    options.writes = WriteQuota {
        per_second: NonZeroU32::MIN,
        burst: NonZeroU32::new(burst).expect("nonzero"),
    };
    let api = stack.spawn_api_with(stack.settings(), options).await;
    (stack, api)
}

/// "Water the plants", with every field a task has set: weekly on
/// Tuesdays in Berlin, due 2026-12-01 09:00 UTC, two reminders.
pub fn task_with_every_field() -> Value {
    json!({
        "title": "Water the plants",
        "description": "the ferns too",
        "priority": "high",
        "tags": ["home", "garden"],
        "due_at": "2026-12-01T09:00:00Z",
        "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=TU", "timezone": "Europe/Berlin", "mode": "on_completion"},
        "reminders": [{"before": "PT1H"}, {"at": "2026-11-30T18:00:00Z"}]
    })
}

/// Sends `method path` as the token's user with one header more (and a
/// JSON body when given), for a test that looks at the whole response.
pub async fn send_with_header(
    stack: &Stack,
    api: &Api,
    method: Method,
    path: &str,
    token: &str,
    (header, value): (&str, &str),
    body: Option<Value>,
) -> Response {
    let mut request = stack
        .request(api, method, path, token)
        .header(header, value);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// A GET without a token.
pub async fn get_anonymously(stack: &Stack, api: &Api, path: &str) -> Response {
    stack
        .http
        .get(format!("{}{path}", api.base))
        .send()
        .await
        .expect("GET")
}

/// Tasks, and events ever appended (the relay empties the outbox meanwhile,
/// but a user's sequence only grows).
pub async fn writes(stack: &Stack) -> (i64, i64) {
    (stack.count("tasks").await, stack.events_written().await)
}

/// Events on the task topic so far.
pub async fn published_count(stack: &Stack) -> usize {
    stack
        .task_events()
        .await
        .drain(Duration::from_secs(2))
        .await
        .len()
}
