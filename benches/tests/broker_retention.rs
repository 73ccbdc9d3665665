//! `todo-broker-retention` against a real broker: it deletes what is older
//! than `--keep`, keeps what is younger, and never deletes past what a named
//! consumer group has committed.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::process::Command;
use std::time::Duration;
use todo_contract::envelope::{Topic, TopicNames};
use todo_platform::config::KafkaSettings;
use todo_testing::{kafka_settings, Broker};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One round of the tool, against `kafka`'s broker and prefix; what it
/// printed.
fn one_round(kafka: &KafkaSettings, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_todo-broker-retention"))
        .args(["--rounds", "1"])
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("KAFKA_TOPIC_PREFIX", &kafka.topic_prefix)
        .output()
        .expect("todo-broker-retention runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "todo-broker-retention failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn low_watermark(probe: &BaseConsumer, topic: &str) -> i64 {
    probe
        .fetch_watermarks(topic, 0, TIMEOUT)
        .expect("watermarks")
        .0
}

fn commit(kafka: &KafkaSettings, group: &str, topic: &str, offset: i64) {
    let client: BaseConsumer = todo_platform::kafka::consumer_config(kafka, group)
        .create()
        .expect("a client of the group");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .expect("an offset");
    client.commit(&tpl, CommitMode::Sync).expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_what_is_old_and_never_what_a_group_has_not_committed() {
    let broker = Broker::start();
    let kafka = kafka_settings(&broker);
    todo_platform::kafka::ensure_topics(&kafka)
        .await
        .expect("the platform's topics");
    let topic = TopicNames::new(kafka.topic_prefix.clone()).name(Topic::TaskEvents);

    // Offsets 0-5 written a minute ago, 6-9 now; one batch each (awaited
    // one by one), as the relay's are at low rates.
    let producer: FutureProducer = todo_platform::kafka::producer_config(&kafka)
        .create()
        .expect("producer");
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..10i64 {
        let at = if i < 6 { now - 60_000 } else { now };
        let payload = format!("event {i}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("user-1")
                    .payload(&payload)
                    .partition(0)
                    .timestamp(at),
                TIMEOUT,
            )
            .await
            .expect("acknowledged");
    }
    let probe: BaseConsumer = todo_platform::kafka::consumer_config(&kafka, "probe")
        .create()
        .expect("probe");
    assert_eq!(probe.fetch_watermarks(&topic, 0, TIMEOUT).unwrap(), (0, 10));

    // A group that has read up to offset 3 holds the cut there.
    commit(&kafka, "slow", &topic, 3);
    let said = one_round(&kafka, &["--keep", "30", "--group", "slow"]);
    assert!(said.contains(" 3 records deleted"), "{said}");
    assert_eq!(
        low_watermark(&probe, &topic),
        3,
        "a group's unread records were deleted, or nothing was"
    );

    // A group with no commit for the partition keeps all of it.
    let said = one_round(
        &kafka,
        &["--keep", "30", "--group", "slow", "--group", "new"],
    );
    assert!(said.contains(" 0 records deleted"), "{said}");
    assert_eq!(low_watermark(&probe, &topic), 3);

    // Once the group has read everything, time is the bound: the records
    // younger than 30 s stay.
    commit(&kafka, "slow", &topic, 10);
    let said = one_round(&kafka, &["--keep", "30", "--group", "slow"]);
    assert!(said.contains(" 3 records deleted"), "{said}");
    assert_eq!(
        low_watermark(&probe, &topic),
        6,
        "records younger than --keep were deleted"
    );

    // What is left is still there to read.
    let reader: BaseConsumer = todo_platform::kafka::consumer_config(&kafka, "reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).expect("assign");
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while read.len() < 4 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            read.push(m.offset());
        }
    }
    assert_eq!(read, vec![6, 7, 8, 9]);
}
