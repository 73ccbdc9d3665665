//! The consumer runtime under faults, through todo-audit: duplicate
//! deliveries, poison messages, an event that keeps failing, the database
//! going away, and kill -9 mid-stream.

use crate::common;

use common::{
    all_stored, eventually, is_stored, produce, published, sorted_ids, spawn_binary, stored_ids,
    wait_stored, Audit, WAIT,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::process::Child;
use std::time::Duration;
use todo_api::testing::{sum_of, Api, Stack};
use todo_consumer::dead_letters::header;
use todo_consumer::dlq_topic;
use todo_contract::envelope::Topic;
use todo_testing::{EventReader, Received, TcpProxy};

/// The dead letters of todo-audit's `task-events`.
async fn dead_letters(stack: &Stack) -> EventReader {
    let topic = dlq_topic(&stack.topic(Topic::TaskEvents));
    EventReader::new(stack.broker.bootstrap(), &topic).await
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
            if i.is_multiple_of(2) {
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
    let (stack, api, audit) = common::start().await;
    let ann = stack.token("ann");
    stack.create(&api, &ann, json!({"title": "once"})).await;
    let first = all_stored(&stack).await;

    // The same event produced again, twice (as a producer retry or a
    // replayed topic would).
    stack.inject("ann", &first[0].value).await;
    stack.inject("ann", &first[0].value).await;
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
    let (stack, api, audit) = common::start().await;
    let ann = stack.token("ann");
    stack.create(&api, &ann, json!({"title": "first"})).await;
    let first = all_stored(&stack).await;

    let producer = common::producer(&stack);
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

    let letters = dead_letters(&stack).await.take(3, WAIT).await;
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
    assert!(errors[2].contains("_user_sequence_idx"), "{errors:?}");
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
    let events = all_stored(&stack).await;
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    audit.stop().await;
    api.stop().await;
}

/// The runtime reads the next batch while the database applies this one:
/// a backlog must not keep it from ever seeing its shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_mid_backlog_it_stops_soon_and_the_next_start_takes_the_rest() {
    let stack = Stack::new().await;
    let api = stack.spawn_api().await;
    let writers = ["ann", "ben", "cat", "dan"].map(|user| {
        let (stack, api) = (&stack, &api);
        async move {
            let token = stack.token(user);
            for i in 0..100 {
                let body = json!({"title": format!("{user} {i}")});
                stack.create(api, &token, body).await;
            }
        }
    });
    futures::future::join_all(writers).await;
    let events = published(&stack).await;

    let mut options = common::options();
    options.consumer.batch_size = 5;
    let audit = Audit::spawn_with_options(&stack, options.clone()).await;
    eventually(WAIT, Duration::from_millis(5), async || {
        if common::stored(&stack).await > 0 {
            Ok(())
        } else {
            Err("todo-audit stored nothing".to_owned())
        }
    })
    .await;
    audit.stop().await;
    let at_stop = common::stored(&stack).await;
    assert!(
        at_stop < events.len() as i64,
        "todo-audit went on through the whole backlog of {} events after its shutdown",
        events.len()
    );

    let audit = Audit::spawn_with_options(&stack, options).await;
    wait_stored(&stack, events.len() as i64).await;
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    assert_eq!(stack.count("processed_events").await, events.len() as i64);
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
            eventually(WAIT, Duration::from_millis(20), async || {
                if common::stored(&stack).await >= before + 3 {
                    Ok(())
                } else {
                    Err("todo-audit made no progress".to_owned())
                }
            })
            .await;
            audit.kill();
            audit = Killed(Some(spawn_binary(&stack)));
        }
    };
    tokio::join!(
        steady_changes(&stack, &api, 60, Duration::from_secs(20)),
        crashes
    );
    let events = all_stored(&stack).await;
    assert_eq!(stored_ids(&stack).await, sorted_ids(&events));
    // The dedup record and the store agree: every event applied exactly once.
    assert_eq!(stack.count("processed_events").await, events.len() as i64);
    audit.kill();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_that_never_comes_is_passed_over_and_unknown_types_are_kept() {
    let (stack, api, audit) = common::start().await;
    // A real event as the model for a user whose log the test writes by
    // hand: 1, 3 and 4 (of a type no version of this code knows), never 2.
    stack
        .create(&api, &stack.token("ann"), json!({"title": "model"}))
        .await;
    let model = published(&stack).await.remove(0).value;
    let forged = |sequence: i64, kind: &str| {
        let mut v = model.clone();
        v["id"] = json!(uuid::Uuid::new_v4());
        v["userid"] = json!("gappy");
        v["sequence"] = json!(sequence);
        v["type"] = json!(kind);
        v
    };
    stack.inject("gappy", &forged(1, "task.created")).await;
    stack.inject("gappy", &forged(3, "task.updated")).await;
    stack.inject("gappy", &forged(4, "task.archived")).await;
    wait_stored(&stack, 4).await;
    let archived: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE user_id = 'gappy' AND event_type = 'task.archived'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .expect("count");
    assert_eq!(archived, 1, "an event of an unknown type is stored");

    let gappy = stack.token("gappy");
    // At first the page waits at the hole: 2 may still be on its way.
    let (status, page) = audit.get(&stack, "/events?since=0", &gappy).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // Then, once 3 has waited longer than the audit waits, 2 is passed over.
    let page = eventually(WAIT, Duration::from_millis(200), async || {
        let (_, page) = audit.get(&stack, "/events?since=0", &gappy).await;
        if page["next_since"] == 4 {
            return Ok(page);
        }
        assert!(
            page["next_since"].as_i64().unwrap_or_default() <= 1,
            "never past the hole without reporting it: {page}"
        );
        Err(format!("stuck at the gap: {page}"))
    })
    .await;
    assert_eq!(page["gaps"], json!([2]), "{page}");
    let sequences: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["sequence"].as_i64())
        .collect();
    assert_eq!(sequences, [1, 3, 4]);
    assert_eq!(page["events"][2]["type"], "task.archived");
    // Nothing of it was dead-lettered.
    let dlq = dead_letters(&stack).await;
    assert!(dlq.drain(Duration::from_secs(2)).await.is_empty());
    audit.stop().await;
    api.stop().await;
}

/// The consumer behind a broker that refuses to create topics (librdkafka's
/// mock cluster has no CreateTopics, like managed Kafka whose service
/// account lacks CREATE) and whose produce requests fail for a while: the
/// dead letter waits, counted, the service says it is not ready, and once
/// it is through, the event is recorded so a redelivery is not set aside
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_out_a_refusing_broker_and_are_set_aside_once() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let stack = Stack::new().await;
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut kafka = todo_platform::config::KafkaSettings::plaintext(mock.bootstrap_servers(), "m.");
    kafka.topic_partitions = 2;
    for name in todo_contract::envelope::TopicNames::new("m.").all() {
        mock.create_topic(&name, 2, 1).expect("topic");
    }
    let settings = todo_platform::config::Settings {
        kafka: kafka.clone(),
        ..stack.settings()
    };
    let audit = todo_audit::app::build(&settings, &stack.jwt_settings(), common::options())
        .await
        .expect("todo-audit builds");
    let base = format!("http://127.0.0.1:{}", audit.port());
    let (trigger, shutdown) = todo_platform::shutdown::channel();
    let handle = tokio::spawn(audit.run(shutdown));

    let ready = |stack: &Stack| {
        let url = format!("{base}/ready");
        let http = stack.http.clone();
        async move {
            let r = http.get(&url).send().await.expect("ready");
            let status = r.status();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // It consumes although it could create no topic.
    eventually(WAIT, Duration::from_millis(200), async || {
        match ready(&stack).await {
            (StatusCode::OK, _) => Ok(()),
            unready => Err(format!("never ready: {unready:?}")),
        }
    })
    .await;

    let producer: FutureProducer = todo_platform::kafka::producer(&kafka).expect("producer");
    let send = |payload: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to("m.task-events").key("x").payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    };
    // Not an event at all; the broker then refuses the next produce
    // requests, the dead letter's among them.
    send(b"not json".to_vec()).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 4],
    );
    async fn metric(stack: &Stack, base: &str) -> (f64, f64) {
        let text = stack.metrics(base).await;
        (
            sum_of(&text, "todo_dead_letter_failures_total"),
            sum_of(&text, "todo_events_dead_lettered_total"),
        )
    }
    let mut saw_unready = false;
    eventually(WAIT, Duration::from_millis(100), async || {
        let (failures, lettered) = metric(&stack, &base).await;
        let (status, body) = ready(&stack).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["dead_letters"] == false {
            saw_unready = true;
        }
        if lettered >= 1.0 {
            assert!(failures >= 1.0, "the refusals were counted");
            return Ok(());
        }
        Err("the dead letter never went through".to_owned())
    })
    .await;
    assert!(saw_unready, "unready while its dead letters were refused");
    eventually(WAIT, Duration::from_millis(100), async || {
        match ready(&stack).await.0 {
            StatusCode::OK => Ok(()),
            _ => Err("ready again once through".to_owned()),
        }
    })
    .await;

    // An event that fails for good (it claims a sequence another event of
    // its user holds), then a redelivery of it: set aside once.
    let model = json!({"specversion": "1.0", "id": uuid::Uuid::new_v4(), "type": "task.created",
        "source": "test", "time": "2026-12-01T09:00:00Z", "subject": uuid::Uuid::new_v4(),
        "datacontenttype": "application/json", "dataschema": "task-event/v1",
        "userid": "x", "correlationid": "c", "sequence": 1, "data": {}});
    let mut clash = model.clone();
    clash["id"] = json!(uuid::Uuid::new_v4());
    send(serde_json::to_vec(&model).expect("json")).await;
    send(serde_json::to_vec(&clash).expect("json")).await;
    send(serde_json::to_vec(&clash).expect("json")).await;
    let mut marker = model.clone();
    marker["id"] = json!(uuid::Uuid::new_v4());
    marker["userid"] = json!("y");
    send(serde_json::to_vec(&marker).expect("json")).await;
    let marker_id = uuid::Uuid::parse_str(marker["id"].as_str().unwrap_or_default()).expect("uuid");
    eventually(WAIT, Duration::from_millis(100), async || {
        if is_stored(&stack, marker_id).await {
            Ok(())
        } else {
            Err("the marker was never stored".to_owned())
        }
    })
    .await;
    let (_, lettered) = metric(&stack, &base).await;
    assert_eq!(
        lettered, 2.0,
        "the unparsable message and the clash, each once"
    );
    trigger.trigger();
    handle.await.expect("task").expect("ran cleanly");
}
