//! The outbox relay: publishes committed outbox rows to Kafka, in id order,
//! and deletes them once the broker has acknowledged them.
//!
//! Correctness with several replicas: one relay leads at a time, elected by a
//! PostgreSQL session-level advisory lock held on the very connection it
//! reads and deletes with. If that connection dies the lock is released and a
//! standby takes over; rows whose acknowledgement was not yet recorded are
//! published again (a redelivery, which consumers deduplicate by event id),
//! never lost and never overtaken, since one batch is in flight at a time and
//! the idempotent producer keeps a partition's order across its retries.
//!
//! Latency: the leader is woken in-process on a local commit, by `NOTIFY`
//! for commits made in other processes, and polls as a fallback.

use crate::config::KafkaSettings;
use crate::envelope::{TopicNames, CONTENT_TYPE};
use crate::outbox::{OutboxSignal, CHANNEL};
use crate::retry::backoff;
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};

/// The advisory lock key that elects the leading relay ("todo_rel").
pub const LEADER_LOCK_KEY: i64 = 0x746f_646f_5f72_656c;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read and published per round.
    pub batch_size: i64,
    /// The fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby tries to become the leader.
    pub standby_interval: Duration,
    /// On shutdown, how long to wait for the batch in flight to be acknowledged.
    pub shutdown_grace: Duration,
    /// A batch not acknowledged within this time gets a new producer (and a
    /// new producer id): a broker that lost its state (restarted without its
    /// data) refuses the old id forever. The rows are sent again from the
    /// outbox, so this is at worst a redelivery.
    pub stall_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            poll_interval: Duration::from_millis(500),
            standby_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct RelayMetrics {
    published: IntCounterVec,
    failed: IntCounterVec,
    latency: Histogram,
    batch_duration: Histogram,
    backlog: IntGauge,
    leader: IntGauge,
}

impl RelayMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let published = IntCounterVec::new(
            Opts::new(
                "todo_events_published_total",
                "Events acknowledged by the broker",
            ),
            &["type"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "todo_events_publish_failed_total",
                "Events the broker refused (retried)",
            ),
            &["type"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "todo_outbox_publish_latency_seconds",
                "From the outbox row's commit to the broker's acknowledgement",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ]),
        )?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "todo_outbox_batch_duration_seconds",
                "Time to publish one batch and record it",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
        )?;
        let backlog = IntGauge::new("todo_outbox_backlog", "Outbox rows not yet acknowledged")?;
        let leader = IntGauge::new(
            "todo_outbox_relay_leader",
            "1 while this process's relay leads",
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            published,
            failed,
            latency,
            batch_duration,
            backlog,
            leader,
        })
    }
}

pub struct Relay {
    pub pool: PgPool,
    pub connect: PgConnectOptions,
    pub kafka: KafkaSettings,
    pub signal: OutboxSignal,
    pub config: RelayConfig,
    pub metrics: RelayMetrics,
}

/// The relay's own producer, replaced when it wedges.
struct Publisher {
    kafka: KafkaSettings,
    producer: Option<FutureProducer>,
}

impl Publisher {
    fn get(&mut self) -> Result<&FutureProducer, KafkaError> {
        if self.producer.is_none() {
            self.producer = Some(crate::kafka::producer(&self.kafka)?);
        }
        Ok(self.producer.as_ref().expect("just created"))
    }

    /// The fatal error the producer is stuck in, if any. An idempotent
    /// producer that loses track of its sequence numbers (the broker forgot
    /// or rejected them) fails every message from then on.
    fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.producer.as_ref()?.client().fatal_error()?;
        Some(format!("{code}: {reason}"))
    }

    /// Replaces a producer stuck in a fatal error; true if it did. The rows
    /// it failed to publish are still in the outbox and go out again.
    async fn recover(&mut self) -> bool {
        let Some(error) = self.fatal_error() else {
            return false;
        };
        tracing::warn!(%error, "the producer hit a fatal error; starting a new one");
        self.reset().await;
        true
    }

    /// Drops the producer (purging what it holds) off the async runtime;
    /// the next [`Publisher::get`] makes a new one.
    async fn reset(&mut self) {
        if let Some(old) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
    }
}

enum Outcome {
    Standby,
    Shutdown,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    key: String,
    event_type: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
}

impl Relay {
    /// Runs until `shutdown`: stands by, leads when it can, recovers from
    /// database and broker failures on its own.
    pub async fn run(self, mut shutdown: Shutdown) {
        let topics = TopicNames::new(self.kafka.topic_prefix.clone());
        let mut publisher = Publisher {
            kafka: self.kafka.clone(),
            producer: None,
        };
        let mut failures = 0u32;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let wait = match self.lead(&topics, &mut publisher, &mut shutdown).await {
                Ok(Outcome::Shutdown) => break,
                Ok(Outcome::Standby) => {
                    failures = 0;
                    self.config.standby_interval
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay lost its footing; retrying");
                    backoff(failures)
                }
            };
            self.signal.set_leader_here(false);
            self.metrics.leader.set(0);
            tokio::select! {
                _ = shutdown.recv() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.signal.set_leader_here(false);
        self.metrics.leader.set(0);
        publisher.reset().await;
    }

    async fn lead(
        &self,
        topics: &TopicNames,
        publisher: &mut Publisher,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<Outcome> {
        let mut conn = PgConnection::connect_with(&self.connect).await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !leader {
            return Ok(Outcome::Standby);
        }
        tracing::info!("outbox relay is the leader");
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        self.signal.set_leader_here(true);
        self.metrics.leader.set(1);
        let topics_ready = tokio::spawn(crate::kafka::ensure_topics_until_done(
            self.kafka.clone(),
            shutdown.clone(),
        ));

        let mut last_backlog_check = Instant::now() - Duration::from_secs(60);
        let mut vacuum = Vacuum::new();
        let mut failures = 0u32;
        let outcome = loop {
            let round = self
                .publish_batch(&mut conn, topics, publisher, shutdown)
                .await?;
            if shutdown.is_triggered() {
                break Outcome::Shutdown;
            }
            vacuum.after(round.published, &mut conn).await;
            if last_backlog_check.elapsed() > Duration::from_secs(1) {
                let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&mut conn)
                    .await?;
                self.metrics.backlog.set(backlog);
                last_backlog_check = Instant::now();
            }
            if round.failed > 0 {
                failures += 1;
                tokio::select! {
                    _ = shutdown.recv() => break Outcome::Shutdown,
                    _ = tokio::time::sleep(backoff(failures)) => continue,
                }
            }
            failures = 0;
            if round.published as i64 >= self.config.batch_size {
                continue;
            }
            tokio::select! {
                _ = shutdown.recv() => break Outcome::Shutdown,
                _ = self.signal.local_commit() => {}
                n = listener.recv() => { n?; }
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        };
        topics_ready.abort();
        // Closing the connection releases the advisory lock.
        let _ = conn.close().await;
        Ok(outcome)
    }

    async fn publish_batch(
        &self,
        conn: &mut PgConnection,
        topics: &TopicNames,
        publisher: &mut Publisher,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<Round> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, topic, key, event_type, payload, created_at FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            self.metrics.backlog.set(0);
            return Ok(Round::default());
        }
        let started = Instant::now();
        let producer = publisher.get()?.clone();
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let topic = format!("{}{}", topics.prefix(), row.topic);
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(CONTENT_TYPE),
            });
            let mut record = FutureRecord::to(&topic)
                .key(&row.key)
                .payload(&row.payload)
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        drop(deliveries);
                        drop(producer);
                        publisher.recover().await;
                        return Err(e.into());
                    }
                }
            }
        }

        // The deliveries do not need it; dropping it here keeps the last
        // reference in `publisher`, whose reset drops it off the runtime.
        drop(producer);
        let mut all = std::pin::pin!(join_all(deliveries));
        let results = tokio::select! {
            results = &mut all => results,
            _ = tokio::time::sleep(self.config.stall_timeout) => {
                tracing::warn!(
                    rows = rows.len(),
                    stalled_for = ?self.config.stall_timeout,
                    "the broker has not acknowledged the batch; starting a new producer"
                );
                publisher.reset().await;
                return Ok(Round { published: 0, failed: rows.len() });
            }
            _ = shutdown.recv() => {
                match tokio::time::timeout(self.config.shutdown_grace, &mut all).await {
                    Ok(results) => results,
                    // Unacknowledged rows stay in the outbox for the next leader.
                    Err(_) => return Ok(Round::default()),
                }
            }
        };

        let now = Utc::now();
        let mut acked = Vec::with_capacity(rows.len());
        let mut round = Round::default();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(Ok(_)) => {
                    acked.push(row.id);
                    self.metrics
                        .published
                        .with_label_values(&[&row.event_type])
                        .inc();
                    let age = (now - row.created_at).to_std().unwrap_or_default();
                    self.metrics.latency.observe(age.as_secs_f64());
                }
                Ok(Err((e, _))) => {
                    round.failed += 1;
                    self.metrics
                        .failed
                        .with_label_values(&[&row.event_type])
                        .inc();
                    tracing::warn!(outbox_id = row.id, error = %e, "broker refused an event; it stays in the outbox");
                }
                Err(_) => {
                    round.failed += 1;
                    self.metrics
                        .failed
                        .with_label_values(&[&row.event_type])
                        .inc();
                }
            }
        }
        if !acked.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&acked)
                .execute(&mut *conn)
                .await?;
        }
        round.published = acked.len();
        if round.failed > 0 {
            publisher.recover().await;
        }
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(round)
    }
}

/// Keeps the outbox small on disk. Every published row is deleted, so the
/// table is all dead tuples unless vacuumed, and the relay's read slows
/// down as they pile up (seen with autovacuum off: commit-to-ack latency went
/// from 5 ms to 50 ms after 150,000 events). The relay vacuums it itself,
/// cheaply, since the live table is tiny; with autovacuum on, the migration's
/// per-table settings do the same.
struct Vacuum {
    deleted: usize,
    last: Instant,
    enabled: bool,
}

impl Vacuum {
    const EVERY_ROWS: usize = 20_000;
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            deleted: 0,
            last: Instant::now(),
            enabled: true,
        }
    }

    async fn after(&mut self, deleted: usize, conn: &mut PgConnection) {
        self.deleted += deleted;
        let due = self.deleted >= Self::EVERY_ROWS
            || (self.deleted > 0 && self.last.elapsed() >= Self::EVERY);
        if !self.enabled || !due {
            return;
        }
        if let Err(e) = sqlx::query("VACUUM (SKIP_LOCKED) outbox")
            .execute(&mut *conn)
            .await
        {
            // E.g. not the table's owner: autovacuum has to do it.
            tracing::warn!(error = %e, "cannot vacuum the outbox; leaving it to autovacuum");
            self.enabled = false;
        }
        self.deleted = 0;
        self.last = Instant::now();
    }
}

#[derive(Default)]
struct Round {
    published: usize,
    failed: usize,
}
