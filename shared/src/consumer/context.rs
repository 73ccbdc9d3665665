//! The librdkafka consumer context: rebalances (commit what is done before
//! partitions leave), commit results, and lag from librdkafka's statistics.

use super::metrics::ConsumerMetrics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

pub struct RuntimeContext {
    pub(crate) name: String,
    pub(crate) metrics: ConsumerMetrics,
}

impl ClientContext for RuntimeContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag
                // of -1 means not known (not assigned, no position yet).
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .lag
                    .with_label_values(&[&self.name, topic, &partition.to_string()])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // Offsets of finished work are stored as soon as it commits;
                // commit them now, before another member takes the partitions.
                // Work still in hand will fail to store its offset and be
                // redelivered to the new owner, which recognises what it has
                // already seen.
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => {}
                    // Nothing stored since the last commit.
                    Err(rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::NoOffset,
                    )) => {}
                    Err(e) => {
                        tracing::warn!(consumer = %self.name, error = %e, "commit before revoke failed")
                    }
                }
                for p in tpl.elements() {
                    let _ = self.metrics.lag.remove_label_values(&[
                        &self.name,
                        p.topic(),
                        &p.partition().to_string(),
                    ]);
                }
                tracing::info!(consumer = %self.name, partitions = %describe(tpl), "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(consumer = %self.name, partitions = %describe(tpl), "partitions assigned");
        }
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.metrics
            .assigned
            .with_label_values(&[&self.name])
            .set(assigned as i64);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::debug!(consumer = %self.name, offsets = %describe(offsets), "offsets committed")
            }
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "offset commit failed; it is retried with the next one")
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|p| format!("{}[{}]", p.topic(), p.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
