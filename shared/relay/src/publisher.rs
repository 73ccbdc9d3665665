//! The relay's own producer, replaced when it wedges, and what a failed
//! delivery means.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use todo_platform::config::KafkaSettings;

pub(super) struct Publisher {
    kafka: KafkaSettings,
    producer: Option<FutureProducer>,
}

impl Publisher {
    pub(super) fn new(kafka: KafkaSettings) -> Self {
        Self {
            kafka,
            producer: None,
        }
    }

    pub(super) fn get(&mut self) -> Result<&FutureProducer, KafkaError> {
        match &mut self.producer {
            Some(p) => Ok(p),
            slot @ None => Ok(slot.insert(todo_platform::kafka::relay_producer(&self.kafka)?)),
        }
    }

    /// The fatal error the producer is stuck in, if any. An idempotent
    /// producer that loses track of its sequence numbers (the broker forgot
    /// or rejected them) fails every message from then on.
    pub(super) fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.producer.as_ref()?.client().fatal_error()?;
        Some(format!("{code}: {reason}"))
    }

    /// Drops the producer (purging what it holds: its deliveries fail) off
    /// the async runtime; the next [`Publisher::get`] makes a new one, with
    /// fresh metadata and a new producer id.
    pub(super) async fn reset(&mut self) {
        if let Some(old) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
    }
}

/// What a failed delivery says about its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The broker will never take this message (too large, invalid): it is
    /// set aside, and the relay goes on.
    Permanent,
    /// The topic or partition is gone (a broker restarted without its
    /// data): create the topics again, then send again.
    TopicMissing,
    /// Anything else (a purge, a fatal producer, authorization): send again.
    Transient,
}

impl Failure {
    pub(super) fn of(error: &KafkaError) -> Failure {
        let code = match error {
            KafkaError::MessageProduction(code) => *code,
            _ => return Failure::Transient,
        };
        match code {
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::PolicyViolation => Failure::Permanent,
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition => Failure::TopicMissing,
            _ => Failure::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_delivery_error_means_for_its_row() {
        let production = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            Failure::of(&production(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Permanent
        );
        assert_eq!(
            Failure::of(&production(RDKafkaErrorCode::UnknownPartition)),
            Failure::TopicMissing
        );
        assert_eq!(
            Failure::of(&production(RDKafkaErrorCode::PurgeQueue)),
            Failure::Transient
        );
        assert_eq!(Failure::of(&KafkaError::Canceled), Failure::Transient);
    }
}
