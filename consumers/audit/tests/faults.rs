//! The consumer runtime under faults, through todo-audit: duplicate
//! deliveries, poison messages, an event that keeps failing, the database
//! going away, and kill -9 mid-stream.

mod common;

use common::{spawn_binary, stored_ids, wait_stored, Audit, WAIT};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::process::Child;
use std::time::Duration;
use todo_api::testing::{Api, Stack};
use todo_shared::consumer::dead_letters::header;
use todo_shared::consumer::dlq_topic;
use todo_shared::envelope::Topic;
use todo_shared::testing::{EventReader, Received, TcpProxy};

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (delivery.partition, delivery.offset)
}

/// Every event the relay has published, read back.
async fn published(stack: &Stack) -> Vec<Received> {
    stack.outbox_drained(WAIT).await;
    let total: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(last_sequence), 0)::bigint FROM event_sequences")
            .fetch_one(&stack.db.pool)
            .await
            .expect("sequences");
    stack.task_events().await.take(total as usize, WAIT).await
}

fn sorted_ids(events: &[Received]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    ids.sort();
    ids
}

/// Changes by several users, spread over roughly `spread`.
async fn steady_changes(stack: &Stack, api: &Api, per_user: usize, spread: Duration) {
    let pause = spread / per_user as u32;
    let work = ["ann", "ben", "cat"].map(|user| async move {
        let token = stack.token(user);
        for i in 0..per_user {
            let task = stack
                .create(api, &token, json!({"title": format!("{user} {i}")}))
                .await;
            if i % 2 == 0 {
                let path = format!(
                    "/tasks/{}/complete",
                    task["id"].as_str().unwrap_or_default()
                );
                let (status, body) = stack.call(api, Method::POST, &path, &token, None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            tokio::time::sleep(pause).await;
        }
    });
    futures::future::join_all(work).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_twice_is_stored_once() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let audit = Audit::spawn(&stack).await;
    let ann = stack.token("ann");
    stack.create(&api, &ann, json!({"title": "once"})).await;
    let first = published(&stack).await;
    wait_stored(&stack, 1).await;

    // The same event produced again, twice (as a producer retry or a
    // replayed topic would).
    let producer = todo_shared::kafka::producer(&stack.kafka).expect("producer");
    let topic = stack.topic(Topic::TaskEvents);
    let raw = serde_json::to_vec(&first[0].value).expect("json");
    produce(&producer, &topic, "ann", &raw).await;
    produce(&producer, &topic, "ann", &raw).await;
    // A later event of the same user: once it is stored, the copies before
    // it on the partition have been consumed.
    stack.create(&api, &ann, json!({"title": "after"})).await;
    stack.outbox_drained(WAIT).await;
    wait_stored(&stack, 2).await;

    let copies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE event_id = $1::uuid")
            .bind(first[0].id())
            .fetch_one(&stack.db.pool)
            .await
            .expect("count");
    assert_eq!(copies, 1);
    assert_eq!(stack.count("processed_events").await, 2);
    let duplicates = audit
        .metric(
            &stack,
            "todo_events_duplicate_total{consumer=\"todo-audit\"}",
        )
        .await;
    assert_eq!(duplicates, 2.0);
    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_persistently_failing_events_are_dead_lettered_and_the_rest_go_on() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let audit = Audit::spawn(&stack).await;
    let ann = stack.token("ann");
    stack.create(&api, &ann, json!({"title": "first"})).await;
    let first = published(&stack).await;
    wait_stored(&stack, 1).await;

    let producer = todo_shared::kafka::producer(&stack.kafka).expect("producer");
    let topic = stack.topic(Topic::TaskEvents);
    let not_json = b"this is not JSON".to_vec();
    let not_envelope = br#"{"specversion":"1.0","hello":"world"}"#.to_vec();
    // A well-formed event that claims ann's sequence 1 under a new id: the
    // store refuses it every time (two events cannot share a sequence).
    let mut forged = first[0].value.clone();
    forged["id"] = json!(uuid::Uuid::new_v4().to_string());
    let forged = serde_json::to_vec(&forged).expect("json");
    let mut origins = Vec::new();
    for payload in [&not_json, &not_envelope, &forged] {
        origins.push(produce(&producer, &topic, "ann", payload).await);
    }
    // Events after the bad ones, on the same partition (same key).
    stack.create(&api, &ann, json!({"title": "after"})).await;
    stack
        .create(&api, &ann, json!({"title": "after, too"}))
        .await;
    stack.outbox_drained(WAIT).await;
    wait_stored(&stack, 3).await;

    let dlq = EventReader::new(stack.broker.bootstrap(), &dlq_topic(&topic)).await;
    let letters = dlq.take(3, WAIT).await;
    let mut by_offset: Vec<&Received> = letters.iter().collect();
    by_offset.sort_by_key(|l| l.header(header::OFFSET).and_then(|o| o.parse::<i64>().ok()));
    for ((letter, (partition, offset)), payload) in
        by_offset
            .iter()
            .zip(&origins)
            .zip([&not_json, &not_envelope, &forged])
    {
        assert_eq!(letter.header(header::TOPIC), Some(topic.as_str()));
        assert_eq!(
            letter.header(header::PARTITION),
            Some(partition.to_string().as_str())
        );
        assert_eq!(
            letter.header(header::OFFSET),
            Some(offset.to_string().as_str())
        );
        assert_eq!(letter.header(header::CONSUMER), Some("todo-audit"));
        assert_eq!(letter.key, "ann");
        assert!(!letter.header(header::ERROR).unwrap_or_default().is_empty());
        if let Ok(original) = serde_json::from_slice::<serde_json::Value>(payload) {
            assert_eq!(
                letter.value, original,
                "the letter carries the message unchanged"
            );
        }
    }
    let errors: Vec<&str> = by_offset
        .iter()
        .map(|l| l.header(header::ERROR).unwrap_or_default())
        .collect();
    assert!(
        errors[0].contains("not a CloudEvents envelope"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("not a CloudEvents envelope"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("audit_events_user_sequence_idx"),
        "{errors:?}"
    );
    assert_eq!(by_offset[2].header(header::ATTEMPTS), Some("3"));

    let dead = audit
        .metric(
            &stack,
            "todo_events_dead_lettered_total{consumer=\"todo-audit\"",
        )
        .await;
    assert_eq!(dead, 3.0);
    audit.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_delays_events_and_loses_none() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let proxy = TcpProxy::start(stack.db.server_addr()).await;
    let audit = Audit::spawn_with(&stack, stack.db.settings_via(proxy.port())).await;

    let outage = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ready = stack
            .http
            .get(format!("{}/ready", audit.base))
            .send()
            .await
            .expect("ready");
        assert_eq!(
            ready.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "the cut reached the audit"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        proxy.restore();
    };
    tokio::join!(
        steady_changes(&stack, &api, 20, Duration::from_secs(6)),
        outage
    );
    let events = published(&stack).await;
    wait_stored(&stack, events.len() as i64).await;
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    audit.stop().await;
    api.stop().await;
}

/// Kills the child when the test ends, however it ends.
struct Killed(Option<Child>);

impl Killed {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let mut audit = Killed(Some(spawn_binary(&stack)));

    // Each instance is killed once it has made progress, mid-stream.
    let crashes = async {
        for _ in 0..3 {
            let before = common::stored(&stack).await;
            let deadline = tokio::time::Instant::now() + WAIT;
            while common::stored(&stack).await < before + 3 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "todo-audit made no progress"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            audit.kill();
            audit = Killed(Some(spawn_binary(&stack)));
        }
    };
    tokio::join!(
        steady_changes(&stack, &api, 60, Duration::from_secs(20)),
        crashes
    );
    let events = published(&stack).await;
    wait_stored(&stack, events.len() as i64).await;
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    // The dedup record and the store agree: every event applied exactly once.
    assert_eq!(stack.count("processed_events").await, events.len() as i64);
    audit.kill();
    api.stop().await;
}
