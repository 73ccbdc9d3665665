//! `GET/PUT /me/notifications`: a user's own channels only, bad bodies
//! refused with nothing written, the webhook secret shown once and never
//! carried in the event.

use crate::common::{get_anonymously, started};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use todo_api::testing::{Api, Stack};

fn subscription(p256dh: &str) -> Value {
    json!({
        "endpoint": "https://push.example/send/abc",
        "keys": {
            // An uncompressed P-256 point (65 bytes) and a 16-byte secret.
            "p256dh": p256dh,
            "auth": "_ordMnz7uTCmrpBTeUV4Bw",
        }
    })
}

const P256DH: &str =
    "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";

const PREFERENCES: &str = "/me/notifications";

async fn get_preferences(stack: &Stack, api: &Api, token: &str) -> (StatusCode, Value) {
    stack.call(api, Method::GET, PREFERENCES, token, None).await
}

async fn put_preferences(
    stack: &Stack,
    api: &Api,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    stack
        .call(api, Method::PUT, PREFERENCES, token, Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_are_the_callers_own_and_their_secret_is_shown_once() {
    let (stack, api) = started().await;
    let (ann, bob) = (stack.token("ann"), stack.token("bob"));
    let body = json!({
        "email": {"address": "ann@example.com", "enabled": true},
        "webhook": {"url": "https://hooks.example/ann", "enabled": true},
        "webpush": {"subscriptions": [subscription(P256DH)]},
    });
    let (status, put) = put_preferences(&stack, &api, &ann, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let secret = put["webhook"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(put["email"]["address"], "ann@example.com");
    assert_eq!(
        put["webpush"]["subscriptions"][0]["endpoint"],
        "https://push.example/send/abc"
    );

    // Read back: the same channels, and no secret.
    let (status, got) = get_preferences(&stack, &api, &ann).await;
    assert_eq!(status, StatusCode::OK);
    assert!(got["webhook"].get("secret").is_none(), "{got}");
    assert_eq!(got["webhook"]["url"], "https://hooks.example/ann");
    // The same body again: the secret is kept, so not shown again.
    let (_, again) = put_preferences(&stack, &api, &ann, body.clone()).await;
    assert!(again["webhook"].get("secret").is_none(), "{again}");
    // A rotation makes a new one.
    let mut rotate = body.clone();
    rotate["webhook"]["rotate_secret"] = json!(true);
    let (_, rotated) = put_preferences(&stack, &api, &ann, rotate).await;
    let new_secret = rotated["webhook"]["secret"].as_str().expect("a new secret");
    assert_ne!(new_secret, secret);

    // bob sees his own (none), not ann's.
    let (status, bobs) = get_preferences(&stack, &api, &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bobs["email"], Value::Null, "{bobs}");
    assert_eq!(bobs["webhook"], Value::Null);
    assert_eq!(bobs["webpush"]["subscriptions"], json!([]));
    // Without a token: 401.
    let r = get_anonymously(&stack, &api, PREFERENCES).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Two changes (the first PUT and the rotation), each an event on ann's
    // stream; no secret in either.
    let reader = stack.task_events().await;
    let mut events = Vec::new();
    while events.len() < 2 {
        let e = reader
            .next(Duration::from_secs(30))
            .await
            .expect("user.notifications.updated events");
        events.push(e);
    }
    todo_api::testing::assert_schema_valid(&events);
    for e in &events {
        assert_eq!(e.event_type(), "user.notifications.updated");
        assert_eq!(e.key, "ann");
        let text = e.value.to_string();
        assert!(
            !text.contains("whsec_") && !text.contains(&secret[6..]),
            "{text}"
        );
        assert!(e.value["data"]["webhook"]["secret_id"].is_string());
    }
    assert!(
        reader.next(Duration::from_secs(2)).await.is_none(),
        "an unchanged PUT publishes nothing"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_preferences_are_refused_naming_the_field_and_change_nothing() {
    let (stack, api) = started().await;
    let ann = stack.token("ann");
    let eleven: Vec<Value> = (0..11).map(|_| subscription(P256DH)).collect();
    for (body, field) in [
        (
            json!({"email": {"address": "not an address"}}),
            "email.address",
        ),
        (
            json!({"email": {"address": "a\u{0}@example.com"}}),
            "email.address",
        ),
        (
            json!({"webhook": {"url": "ftp://hooks.example/x"}}),
            "webhook.url",
        ),
        (
            json!({"webhook": {"url": "https://user:pw@hooks.example/x"}}),
            "webhook.url",
        ),
        (
            json!({"webhook": {"url": format!("https://h.example/{}", "x".repeat(3000))}}),
            "webhook.url",
        ),
        (
            json!({"webpush": {"subscriptions": [subscription("AAAA")]}}),
            "webpush.subscriptions[0].keys",
        ),
        (
            json!({"webpush": {"subscriptions": eleven}}),
            "webpush.subscriptions",
        ),
        (json!({"sms": {"number": "123"}}), ""),
        (
            json!({"email": {"address": "a@example.com", "enabled": "yes"}}),
            "email.enabled",
        ),
    ] {
        let (status, problem) = put_preferences(&stack, &api, &ann, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {problem}"
        );
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{body}: {problem}"
        );
    }
    assert_eq!(stack.count("notification_preferences").await, 0);
    assert_eq!(stack.count("outbox").await, 0);
    let reader = stack.task_events().await;
    assert!(reader.next(Duration::from_secs(2)).await.is_none());
    api.stop().await;
}
