//! The librdkafka consumer context: rebalances (commit what is done before
//! partitions leave), commit results, and lag from librdkafka's statistics.

use super::horizon::ReadHorizon;
use super::metrics::ConsumerMetrics;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub struct RuntimeContext {
    pub(crate) name: String,
    pub(crate) metrics: ConsumerMetrics,
    pub(crate) progress: Arc<Progress>,
    /// A tail's: told each partition's end as the broker reports it.
    pub(crate) horizon: Option<Arc<ReadHorizon>>,
}

impl RuntimeContext {
    /// A consumer of `config` (group already set) with this context:
    /// statistics every second (the lag metrics) and fetches answered
    /// within `fetch_wait_max`.
    pub(crate) fn consumer(
        self,
        mut config: ClientConfig,
        fetch_wait_max: Duration,
    ) -> KafkaResult<Arc<StreamConsumer<RuntimeContext>>> {
        config
            .set("statistics.interval.ms", "1000")
            .set("fetch.wait.max.ms", fetch_wait_max.as_millis().to_string());
        Ok(Arc::new(config.create_with_context(self)?))
    }
}

/// Whether the consumer has read everything that was there when it started
/// (all its partitions at their end once). A service that acts on time, not
/// only on events, waits for it after a start: a reminder that came due
/// while it was down must not fire before the completion that cancelled it
/// has been read.
///
/// Per partition too: which partitions this member owns now, and whether it
/// has read each to its end since it was assigned. A service acting on time
/// for the users of a partition (the reminder clock) acts only for those:
/// after a rebalance, the new owner first reads what the old one left.
#[derive(Debug, Default)]
pub struct Progress {
    caught_up: AtomicBool,
    notify: Notify,
    /// (topic, partition) of this member → caught up since assigned.
    owned: std::sync::Mutex<HashMap<(String, i32), bool>>,
    ownership: Notify,
}

impl Progress {
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The partitions of `topic` this member owns and has read to their end
    /// since they were assigned.
    pub fn caught_up_partitions(&self, topic: &str) -> Vec<i32> {
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<i32> = owned
            .iter()
            .filter(|((t, _), caught_up)| t == topic && **caught_up)
            .map(|((_, p), _)| *p)
            .collect();
        out.sort_unstable();
        out
    }

    /// Resolves when the caught-up partitions change (one was assigned,
    /// revoked, or read to its end).
    pub async fn ownership_changed(&self) {
        self.ownership.notified().await
    }

    fn assigned(&self, tpl: &TopicPartitionList) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for p in tpl.elements() {
            owned.insert((p.topic().to_owned(), p.partition()), false);
        }
        self.ownership.notify_waiters();
    }

    fn revoked(&self, tpl: &TopicPartitionList) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for p in tpl.elements() {
            owned.remove(&(p.topic().to_owned(), p.partition()));
        }
        self.ownership.notify_waiters();
    }

    /// A statistics snapshot said `(topic, partition)` has nothing left to
    /// read.
    fn reached_end(&self, topic: &str, partition: i32) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(caught_up) = owned.get_mut(&(topic.to_owned(), partition)) {
            if !*caught_up {
                *caught_up = true;
                self.ownership.notify_waiters();
            }
        }
    }

    /// Resolves once the consumer has caught up (at once if it has).
    pub async fn caught_up(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_caught_up() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn mark(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }
}

impl ClientContext for RuntimeContext {
    fn stats(&self, statistics: Statistics) {
        let (mut assigned, mut behind) = (0, 0);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *partition < 0 || p.fetch_state == "none" {
                    continue;
                }
                assigned += 1;
                if let Some(horizon) = &self.horizon {
                    if p.hi_offset >= 0 {
                        horizon.reported_end(topic, *partition, p.hi_offset);
                    }
                }
                // A lag of -1 means not known yet; known only to be nothing
                // when the partition is empty.
                if p.consumer_lag > 0 || (p.consumer_lag < 0 && p.hi_offset > 0) {
                    behind += 1;
                } else {
                    self.progress.reached_end(topic, *partition);
                }
                if p.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .with_label_values(&[&self.name, topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
        if assigned > 0 && behind == 0 {
            self.progress.mark();
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
                self.progress.revoked(tpl);
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
            self.progress.assigned(tpl);
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
