//! The runtime's other mode: every partition of the topics, read from a
//! point in time, with no consumer group and no commits.
//!
//! For a service whose state is a window of the log kept in memory
//! (todo-realtime): every replica must see every event, because a user's
//! connections can land on any replica, and a restarted replica rebuilds its
//! window by reading the log again. There is nothing to commit and nothing
//! to deduplicate in a database. An unparsable message is counted and
//! skipped: the group consumers already dead-letter it, and N replicas
//! dead-lettering it N times would only add noise.

use super::context::RuntimeContext;
use super::{parse, ConsumerMetrics, Event, Progress, ReadHorizon};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use todo_contract::envelope::{Topic, TopicNames};
use todo_platform::config::KafkaSettings;
use todo_platform::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Names the client in logs and metrics.
    pub name: String,
    pub topics: Vec<Topic>,
    /// How far back to start reading (0: only what arrives from now on).
    pub window: Duration,
    pub fetch_wait_max: Duration,
}

pub struct Tail {
    pub config: TailConfig,
    pub kafka: KafkaSettings,
    pub metrics: ConsumerMetrics,
    /// Marked once every partition has been read up to where it ended
    /// when it was assigned.
    pub progress: Arc<Progress>,
    /// How far each partition has been read, against where it ends.
    pub horizon: Arc<ReadHorizon>,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl Tail {
    /// Hands every event, in partition order, to `deliver` until `shutdown`.
    pub async fn run<F>(self, mut deliver: F, mut shutdown: Shutdown) -> anyhow::Result<()>
    where
        F: FnMut(Event) + Send,
    {
        if !todo_platform::kafka::ensure_topics_until_done(self.kafka.clone(), shutdown.clone())
            .await
        {
            return Ok(());
        }
        let names = TopicNames::new(self.kafka.topic_prefix.clone());
        let topics: Vec<String> = self.config.topics.iter().map(|t| names.name(*t)).collect();
        // A group id is required by the client, but it is never joined (the
        // partitions are assigned by hand) and nothing is committed to it.
        let group = format!("{}-{}", self.config.name, uuid::Uuid::new_v4());
        let consumer = RuntimeContext {
            name: self.config.name.clone(),
            metrics: self.metrics.clone(),
            progress: self.progress.clone(),
            horizon: Some(self.horizon.clone()),
        }
        .consumer(
            todo_platform::kafka::consumer_config(&self.kafka, &group),
            self.config.fetch_wait_max,
        )?;

        let mut assigned = HashSet::new();
        let start = chrono::Utc::now() - self.config.window;
        if let Err(e) = self
            .assign_new(&consumer, &topics, &mut assigned, Some(start))
            .await
        {
            anyhow::bail!("cannot assign the partitions of {topics:?}: {e}");
        }
        // Where every partition ended when it was assigned: once read that
        // far, the window is rebuilt and the service is ready. (The
        // consumer commits nothing, so librdkafka's lag cannot tell this.)
        let assigned_ends = self.horizon.mark();
        let mut caught_up = false;
        if self.horizon.reached(&assigned_ends) {
            caught_up = true;
            self.progress.mark();
        }
        tracing::info!(consumer = %self.config.name, topics = ?topics, partitions = assigned.len(),
            since = %start, "reading every partition");

        // Partitions added to a topic later are read from their beginning.
        let mut rescan = tokio::time::interval(Duration::from_secs(60));
        rescan.tick().await;
        let name = self.config.name.as_str();
        loop {
            let received = tokio::select! {
                _ = shutdown.recv() => break,
                _ = rescan.tick() => {
                    if let Err(e) = self.assign_new(&consumer, &topics, &mut assigned, None).await {
                        tracing::warn!(consumer = name, error = %e, "partition rescan failed");
                    }
                    // (A partition added later does not make the service
                    // unready again.)
                    continue;
                }
                m = consumer.recv() => m,
            };
            let msg = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match parse(name, &msg.detach()) {
                Ok(event) => {
                    let event_type = event.envelope.event_type.to_string();
                    self.metrics
                        .consumed
                        .with_label_values(&[name, &event_type])
                        .inc();
                    let age = (chrono::Utc::now() - event.envelope.time)
                        .to_std()
                        .unwrap_or_default();
                    self.metrics
                        .end_to_end
                        .with_label_values(&[name])
                        .observe(age.as_secs_f64());
                    let id = event.envelope.id;
                    let span = event.span.clone();
                    // One event that trips the service up is skipped, not
                    // fatal: every replica would trip on it at every start.
                    if let Err(panic) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            span.in_scope(|| deliver(event))
                        }))
                    {
                        self.metrics
                            .failed
                            .with_label_values(&[name, &event_type])
                            .inc();
                        tracing::error!(consumer = name, event_id = %id,
                            error = %todo_contract::panics::message(&*panic), "event could not be delivered; skipped");
                    }
                }
                Err(reason) => {
                    self.metrics
                        .failed
                        .with_label_values(&[name, "unknown"])
                        .inc();
                    tracing::warn!(consumer = name, topic = msg.topic(), partition = msg.partition(),
                        offset = msg.offset(), error = %reason, "unparsable message skipped");
                }
            }
            // Only now, with the event in the service's hands: whoever waits
            // on the horizon for it must find it there.
            self.horizon
                .read(msg.topic(), msg.partition(), msg.offset());
            if !caught_up && self.horizon.reached(&assigned_ends) {
                caught_up = true;
                tracing::info!(consumer = name, "caught up with the log");
                self.progress.mark();
            }
        }
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        Ok(())
    }

    /// Adds the partitions of `topics` not read yet, starting at the first
    /// message at or after `since` (or the beginning), and opens each in
    /// the horizon with where it starts and ends.
    async fn assign_new(
        &self,
        consumer: &Arc<StreamConsumer<RuntimeContext>>,
        topics: &[String],
        assigned: &mut HashSet<(String, i32)>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<()> {
        let (consumer2, topics2) = (consumer.clone(), topics.to_vec());
        let known = assigned.clone();
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, i32)>> {
            let mut fresh = Vec::new();
            for topic in &topics2 {
                let metadata = consumer2.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        let key = (t.name().to_owned(), p.id());
                        if !known.contains(&key) {
                            fresh.push(key);
                        }
                    }
                }
            }
            Ok(fresh)
        })
        .await??;
        if found.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &found {
            let start = match since {
                Some(t) => Offset::Offset(t.timestamp_millis()),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, *partition, start)?;
        }
        if since.is_some() {
            let consumer2 = consumer.clone();
            let by_time = tpl.clone();
            tpl = match tokio::task::spawn_blocking(move || {
                consumer2.offsets_for_times(by_time, METADATA_TIMEOUT)
            })
            .await?
            {
                Ok(offsets) => offsets,
                Err(e) => {
                    // A broker without timestamp lookups: read everything;
                    // the service drops what is older than its window.
                    tracing::warn!(consumer = %self.config.name, error = %e,
                        "offsets by time unavailable; reading from the beginning");
                    let mut all = TopicPartitionList::new();
                    for (topic, partition) in &found {
                        all.add_partition_offset(topic, *partition, Offset::Beginning)?;
                    }
                    all
                }
            };
        }
        let (consumer2, horizon) = (consumer.clone(), self.horizon.clone());
        let starts = tpl.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for p in starts.elements() {
                let (low, high) =
                    consumer2.fetch_watermarks(p.topic(), p.partition(), METADATA_TIMEOUT)?;
                let from = match p.offset() {
                    Offset::Offset(o) => o,
                    Offset::End => high,
                    _ => low,
                };
                horizon.opened(p.topic(), p.partition(), from, high);
            }
            Ok(())
        })
        .await??;
        consumer.incremental_assign(&tpl)?;
        assigned.extend(found);
        Ok(())
    }
}
