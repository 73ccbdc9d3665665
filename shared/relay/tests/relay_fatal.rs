//! The relay against librdkafka's mock cluster, which can inject errors
//! nisshi cannot: an idempotent producer pushed into a fatal error is
//! replaced and every row still published; a produce request the broker
//! refuses in part, and a row too large for it, are set aside without
//! breaking any user's order.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use todo_contract::envelope::{EventDraft, EventType};
use todo_platform::config::KafkaSettings;
use todo_platform::shutdown::{self, ShutdownTrigger};
use todo_relay::{Relay, RelayConfig, RelayMetrics};
use todo_store::outbox::OutboxSignal;
use todo_store::writes;
use todo_testing::{self as testing, TestDatabase};
use tokio::task::JoinHandle;

struct Setup {
    db: TestDatabase,
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    kafka: KafkaSettings,
    topic: String,
}

async fn setup() -> Setup {
    testing::init_logging();
    let db = TestDatabase::create().await;
    let mock = MockCluster::new(1).expect("mock cluster");
    let prefix = testing::unique_prefix();
    let topic = format!("{prefix}task-events");
    mock.create_topic(&topic, 1, 1).expect("topic");
    let kafka = KafkaSettings::plaintext(mock.bootstrap_servers(), prefix);
    Setup {
        db,
        mock,
        kafka,
        topic,
    }
}

/// Appends an event of `user` carrying `data`; returns its id.
async fn append(db: &TestDatabase, user: &str, data: serde_json::Value) -> String {
    let mut conn = db.pool.acquire().await.expect("connection");
    writes::append(
        &mut conn,
        EventDraft {
            event_type: EventType::TaskCreated,
            source: "test",
            subject: "task".into(),
            userid: user.into(),
            correlationid: "c".into(),
            causationid: None,
            origin: Default::default(),
            data,
        },
    )
    .await
    .expect("append")
    .id
    .to_string()
}

fn start_relay(s: &Setup) -> (ShutdownTrigger, JoinHandle<()>) {
    let (trigger, stop) = shutdown::channel();
    let relay = Relay {
        pool: s.db.pool.clone(),
        connect: s.db.url.parse::<PgConnectOptions>().expect("url"),
        kafka: s.kafka.clone(),
        signal: OutboxSignal::new(),
        config: RelayConfig {
            poll_interval: Duration::from_millis(100),
            stall_timeout: Duration::from_secs(5),
            ..RelayConfig::default()
        },
        metrics: RelayMetrics::register(&prometheus::Registry::new()).expect("metrics"),
    };
    (trigger, tokio::spawn(relay.run(stop)))
}

async fn outbox_empty(db: &TestDatabase) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} rows never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What reached the topic: (user, sequence, event id), in partition order,
/// until `expected` distinct events have arrived (or 30 s).
fn read_topic(s: &Setup, expected: usize) -> Vec<(String, i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", s.mock.bootstrap_servers())
        .set("group.id", "reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&s.topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while distinct.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            distinct.insert(id.clone());
            out.push((
                v["userid"].as_str().unwrap_or_default().to_owned(),
                v["sequence"].as_i64().unwrap_or_default(),
                id,
            ));
        }
    }
    out
}

async fn set_aside(db: &TestDatabase) -> HashSet<String> {
    sqlx::query_scalar::<_, String>("SELECT event_id::text FROM outbox_dead_letters")
        .fetch_all(&db.pool)
        .await
        .expect("dead letters")
        .into_iter()
        .collect()
}

/// Every user's events on the topic, first deliveries only, have growing
/// sequences: nobody's event came after a later one of theirs.
fn assert_each_users_order(delivered: &[(String, i64, String)]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (user, sequence, id) in delivered {
        if !seen.insert(id) {
            continue;
        }
        let prev = last.entry(user).or_insert(0);
        assert!(
            *sequence > *prev,
            "{user}: {sequence} after {prev}: {delivered:?}"
        );
        *prev = *sequence;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_in_a_fatal_error_is_replaced_and_nothing_is_lost() {
    let s = setup().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        ids.insert(append(&s.db, "ann", serde_json::json!({ "i": i })).await);
    }
    // The first produce requests are answered with an error that an
    // idempotent producer cannot recover from.
    s.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 3],
    );
    let (trigger, running) = start_relay(&s);
    outbox_empty(&s.db).await;
    trigger.trigger();
    running.await.expect("relay stops");
    let seen: HashSet<String> = read_topic(&s, ids.len())
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    assert_eq!(seen, ids, "every outbox row reached the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_request_refused_in_part_breaks_no_users_order() {
    let s = setup().await;
    let mut ids = HashSet::new();
    for i in 0..90 {
        let user = ["ann", "ben", "cat"][i % 3];
        ids.insert(append(&s.db, user, serde_json::json!({ "i": i })).await);
    }
    // The broker refuses the records of the first produce request (as it
    // does a record it finds invalid); the requests after it go through.
    s.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );
    let (trigger, running) = start_relay(&s);
    outbox_empty(&s.db).await;
    trigger.trigger();
    running.await.expect("relay stops");
    let aside = set_aside(&s.db).await;
    assert!(!aside.is_empty(), "the refused records were set aside");
    let delivered = read_topic(&s, ids.len() - aside.len());
    assert_each_users_order(&delivered);
    let published: HashSet<String> = delivered.into_iter().map(|(_, _, id)| id).collect();
    assert!(
        published.is_disjoint(&aside),
        "a set-aside event is not sent later"
    );
    assert_eq!(
        published.union(&aside).cloned().collect::<HashSet<_>>(),
        ids,
        "every row published or set aside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_the_broker_is_set_aside_and_the_rest_go_on() {
    let s = setup().await;
    let before = append(&s.db, "ann", serde_json::json!({"small": true})).await;
    // Over librdkafka's message.max.bytes (1 MB).
    let huge = append(
        &s.db,
        "ann",
        serde_json::json!({"blob": "x".repeat(2_000_000)}),
    )
    .await;
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(append(&s.db, "ann", serde_json::json!({ "i": i })).await);
    }
    let (trigger, running) = start_relay(&s);
    outbox_empty(&s.db).await;
    trigger.trigger();
    running.await.expect("relay stops");
    assert_eq!(set_aside(&s.db).await, HashSet::from([huge.clone()]));
    let error: String = sqlx::query_scalar("SELECT error FROM outbox_dead_letters")
        .fetch_one(&s.db.pool)
        .await
        .expect("error");
    assert!(error.contains("too large"), "{error}");
    let delivered = read_topic(&s, 1 + after.len());
    assert_each_users_order(&delivered);
    let ids: Vec<&str> = delivered.iter().map(|(_, _, id)| id.as_str()).collect();
    let mut expected = vec![before.as_str()];
    expected.extend(after.iter().map(String::as_str));
    assert_eq!(ids, expected, "the events after it went on, in order");
}
