//! Dead-letter topics: an event that cannot be processed is published to
//! `<its topic>.dlq`, unchanged, with why and where from in its headers, so
//! that the consumer can go on and a person can look at it (and replay it).

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use todo_platform::config::KafkaSettings;

/// Header names set on every dead letter.
pub mod header {
    pub const ERROR: &str = "dlq.error";
    pub const TOPIC: &str = "dlq.topic";
    pub const PARTITION: &str = "dlq.partition";
    pub const OFFSET: &str = "dlq.offset";
    pub const CONSUMER: &str = "dlq.consumer";
    pub const ATTEMPTS: &str = "dlq.attempts";
    pub const FAILED_AT: &str = "dlq.failed-at";
}

/// The dead-letter topic of `topic` (prefix included, as `topic` has it).
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

pub struct DeadLetters {
    producer: FutureProducer,
    consumer: String,
}

pub struct DeadLetter<'a> {
    pub message: &'a OwnedMessage,
    pub error: &'a str,
    pub attempts: u32,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaSettings, consumer: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: todo_platform::kafka::producer(kafka)?,
            consumer: consumer.to_owned(),
        })
    }

    /// Publishes the letter and waits for the broker's acknowledgement.
    pub async fn send(&self, letter: &DeadLetter<'_>) -> Result<(), KafkaError> {
        let msg = letter.message;
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let attempts = letter.attempts.to_string();
        let failed_at = chrono::Utc::now().to_rfc3339();
        // Header values are bytes; keep the error readable and bounded.
        let error: String = letter.error.chars().take(2000).collect();
        for (key, value) in [
            (header::ERROR, error.as_str()),
            (header::TOPIC, msg.topic()),
            (header::PARTITION, partition.as_str()),
            (header::OFFSET, offset.as_str()),
            (header::CONSUMER, self.consumer.as_str()),
            (header::ATTEMPTS, attempts.as_str()),
            (header::FAILED_AT, failed_at.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let topic = dlq_topic(msg.topic());
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
