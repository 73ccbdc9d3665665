//! Reads what was published, as a separate consumer would: every partition
//! of a topic from the beginning, without a consumer group.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub partition: i32,
    pub offset: i64,
    pub value: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn event_type(&self) -> &str {
        self.value["type"].as_str().unwrap_or_default()
    }

    pub fn sequence(&self) -> i64 {
        self.value["sequence"].as_i64().unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        self.value["id"].as_str().unwrap_or_default()
    }
}

pub struct EventReader {
    consumer: StreamConsumer,
    topic: String,
}

impl EventReader {
    /// Waits (up to 30 s) for `topic` to exist, then reads all its partitions
    /// from the beginning.
    pub async fn new(bootstrap: &str, topic: &str) -> EventReader {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .unwrap_or_else(|e| panic!("could not create a reader: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let partitions = loop {
            let found = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .filter(|n| *n > 0);
            if let Some(n) = found {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "topic {topic} did not appear within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        consumer
            .assign(&tpl)
            .unwrap_or_else(|e| panic!("could not assign {topic}: {e}"));
        EventReader {
            consumer,
            topic: topic.to_owned(),
        }
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<Received> {
        let msg = tokio::time::timeout(timeout, self.consumer.recv())
            .await
            .ok()?;
        let msg = msg.unwrap_or_else(|e| panic!("reading {}: {e}", self.topic));
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = msg.payload().unwrap_or_default();
        let value = serde_json::from_slice(payload).unwrap_or_else(|e| {
            Value::String(format!(
                "<not JSON: {e}: {}>",
                String::from_utf8_lossy(payload)
            ))
        });
        Some(Received {
            key: msg
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            headers,
            partition: msg.partition(),
            offset: msg.offset(),
            value,
        })
    }

    /// Exactly `n` messages, waiting at most `timeout` in all; panics naming
    /// how many arrived otherwise.
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(m) => out.push(m),
                None => panic!(
                    "expected {n} events on {} within {timeout:?}, got {}: {:?}",
                    self.topic,
                    out.len(),
                    out.iter()
                        .map(|m| m.event_type().to_owned())
                        .collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Whatever arrives within `window` (to show that nothing more does).
    pub async fn drain(&self, window: Duration) -> Vec<Received> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next(left).await {
                Some(m) => out.push(m),
                None => return out,
            }
        }
    }
}
