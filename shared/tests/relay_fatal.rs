//! The relay against librdkafka's mock cluster, which can inject errors
//! nisshi cannot: an idempotent producer pushed into a fatal error must be
//! replaced, and every outbox row still published.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use todo_shared::config::KafkaSettings;
use todo_shared::envelope::{EventDraft, EventType};
use todo_shared::outbox::{self, OutboxSignal};
use todo_shared::relay::{Relay, RelayConfig, RelayMetrics};
use todo_shared::shutdown;
use todo_shared::testing::{self, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_in_a_fatal_error_is_replaced_and_nothing_is_lost() {
    testing::init_logging();
    let db = TestDatabase::create().await;
    let mock = MockCluster::new(1).expect("mock cluster");
    let prefix = testing::unique_prefix();
    let topic = format!("{prefix}task-events");
    mock.create_topic(&topic, 1, 1).expect("topic");
    let kafka = KafkaSettings::plaintext(mock.bootstrap_servers(), prefix);

    let mut ids = HashSet::new();
    let mut conn = db.pool.acquire().await.expect("connection");
    for i in 0..20 {
        let envelope = outbox::append(
            &mut conn,
            EventDraft {
                event_type: EventType::TaskCreated,
                source: "test",
                subject: format!("task-{i}"),
                userid: "ann".into(),
                correlationid: "c".into(),
                causationid: None,
                data: serde_json::json!({ "i": i }),
            },
        )
        .await
        .expect("append");
        ids.insert(envelope.id.to_string());
    }
    drop(conn);

    // The first produce requests are answered with an error that an
    // idempotent producer cannot recover from.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 3],
    );

    let (trigger, stop) = shutdown::channel();
    let relay = Relay {
        pool: db.pool.clone(),
        connect: db.url.parse::<PgConnectOptions>().expect("url"),
        kafka: kafka.clone(),
        signal: OutboxSignal::new(),
        config: RelayConfig {
            poll_interval: Duration::from_millis(100),
            stall_timeout: Duration::from_secs(5),
            ..RelayConfig::default()
        },
        metrics: RelayMetrics::register(&prometheus::Registry::new()).expect("metrics"),
    };
    let running = tokio::spawn(relay.run(stop));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trigger.trigger();
    running.await.expect("relay stops");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < ids.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
            seen.insert(v["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(seen, ids, "every outbox row reached the topic");
}
