//! The consumer runtime every consumer service plugs a [`Handler`] into: the
//! one place where consumer semantics live.
//!
//! - Joins the service's consumer group; rebalances commit finished work
//!   before partitions move ([`context`]).
//! - Reads a batch (what librdkafka has ready, up to `batch_size`), applies it
//!   in **one database transaction** together with the record
//!   "(consumer, event id) processed" ([`dedup`]), and only then stores and
//!   commits the offsets: at-least-once delivery, effectively-once effects.
//!   The next batch is read and parsed while the database works on this one.
//! - A dependency that is down ([`HandlerError::Unavailable`]) is waited out
//!   with exponential backoff and jitter; the batch is retried as a whole, so
//!   a partition's order is kept.
//! - If a batch fails otherwise, its events are applied one by one: an event
//!   that cannot be parsed, is rejected, or keeps failing past `max_attempts`
//!   goes to `<topic>.dlq` with the error and its origin in headers
//!   ([`dead_letters`]), and the consumer goes on.
//! - On shutdown it finishes the batch in hand, commits, and leaves the group.

mod context;
pub mod dead_letters;
pub mod dedup;
mod error;
mod health;
mod horizon;
mod metrics;
pub mod service;
mod tail;

pub use context::Progress;
pub use dead_letters::dlq_topic;
pub use error::HandlerError;
pub use health::Health;
pub use horizon::{Mark, ReadHorizon};
pub use metrics::ConsumerMetrics;
pub use tail::{Tail, TailConfig};

use context::RuntimeContext;
use dead_letters::{DeadLetter, DeadLetters};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_contract::envelope::{Envelope, EventKind, EventType, TaskEventData, Topic, TopicNames};
use todo_platform::config::{ConfigError, Env, KafkaSettings};
use todo_platform::retry::backoff;
use todo_platform::shutdown::Shutdown;
use todo_platform::telemetry::{self, TraceParent, TRACEPARENT};
use tracing::Instrument;
use uuid::Uuid;

/// An event as a handler sees it: the envelope, and where it was read.
#[derive(Debug, Clone)]
pub struct Event {
    pub envelope: Envelope,
    /// The message value as published.
    pub payload: Vec<u8>,
    pub origin: Origin,
    /// The span of this event's handling: its log lines carry the event's
    /// ids, and the work it causes (events written, reminders fired)
    /// continues its trace.
    pub span: tracing::Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Event {
    /// Its type, if this code knows it (handlers only see unknown types if
    /// they ask for them).
    pub fn known_type(&self) -> Option<EventType> {
        self.envelope.event_type.known()
    }

    /// The payload of a `task.*` event; one that does not fit is rejected
    /// (dead-lettered), since retrying cannot fix it.
    pub fn task_data(&self) -> Result<TaskEventData, HandlerError> {
        TaskEventData::deserialize(&self.envelope.data)
            .map_err(|e| HandlerError::rejected(format!("task event payload: {e}")))
    }
}

/// What a service does with its events.
///
/// `handle` runs inside the transaction that also records the event as
/// processed: whatever it writes through `conn` commits with that record, or
/// not at all. It is called once per event id, however often the event is
/// delivered.
pub trait Handler: Send + Sync + 'static {
    /// Whether this handler wants events of this type at all; others are
    /// acknowledged without a transaction. By default every type this code
    /// knows; a type it does not know (a newer producer's) is skipped and
    /// counted, never dead-lettered.
    fn wants(&self, kind: &EventKind) -> bool {
        kind.known().is_some()
    }

    fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Event,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The events of one batch, in order, none seen before. Override to
    /// write them in bulk; the default calls [`Handler::handle`] for each.
    fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.handle(conn, event)
                    .instrument(event.span.clone())
                    .await?;
            }
            Ok(())
        }
    }

    /// One transaction per user instead of one per batch. For handlers that
    /// append to the outbox: that locks the user's sequence row until the
    /// transaction ends, so a batch of many users' events would make each
    /// of those users' API writes wait for the whole batch, and a
    /// transaction holding several users' rows can deadlock with a clock
    /// that works user by user.
    fn per_user_transactions(&self) -> bool {
        false
    }

    /// Called after the transaction that applied `events` has committed
    /// (e.g. to wake a scheduler). Must not block.
    fn committed(&self, events: &[&Event]) {
        let _ = events;
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group, and the name its processed events are kept under.
    pub name: String,
    pub topics: Vec<Topic>,
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// Attempts at an event that keeps failing before it is dead-lettered
    /// (waiting for an unavailable database does not count).
    pub max_attempts: u32,
    /// How long processed event ids are remembered; longer than the topics'
    /// retention.
    pub dedup_retention: Duration,
    /// How long the group waits for a silent member (a crashed process)
    /// before giving its partitions to the others.
    pub session_timeout: Duration,
    /// Longest a fetch waits at the broker for new messages. Kafka and
    /// Redpanda answer as soon as data arrives; brokers that hold the fetch
    /// for the whole time (nisshi) add up to this much delay per event.
    pub fetch_wait_max: Duration,
}

impl ConsumerConfig {
    pub fn new(name: impl Into<String>, topics: &[Topic]) -> Self {
        Self {
            name: name.into(),
            topics: topics.to_vec(),
            batch_size: 2000,
            max_attempts: 5,
            dedup_retention: Duration::from_secs(14 * 24 * 3600),
            session_timeout: Duration::from_secs(10),
            fetch_wait_max: Duration::from_millis(10),
        }
    }

    /// `CONSUMER_BATCH_SIZE`, `CONSUMER_MAX_ATTEMPTS`,
    /// `CONSUMER_DEDUP_RETENTION_HOURS`, `CONSUMER_SESSION_TIMEOUT_MS` and
    /// `CONSUMER_FETCH_WAIT_MAX_MS` over the defaults.
    pub fn with_env<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        self.batch_size = env.parse_or("CONSUMER_BATCH_SIZE", self.batch_size)?;
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::Invalid {
                var: "CONSUMER_BATCH_SIZE",
                reason: "must be between 1 and 10000".into(),
            });
        }
        self.max_attempts = env.parse_or("CONSUMER_MAX_ATTEMPTS", self.max_attempts)?;
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                var: "CONSUMER_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        self.dedup_retention = env.retention_or(
            "CONSUMER_DEDUP_RETENTION_HOURS",
            Duration::from_secs(3600),
            self.dedup_retention,
            Duration::from_secs(10 * 365 * 24 * 3600),
        )?;
        self.session_timeout =
            env.millis_or("CONSUMER_SESSION_TIMEOUT_MS", self.session_timeout)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.session_timeout) {
            return Err(ConfigError::Invalid {
                var: "CONSUMER_SESSION_TIMEOUT_MS",
                reason: "must be between 1000 and 300000".into(),
            });
        }
        self.fetch_wait_max = env.millis_or("CONSUMER_FETCH_WAIT_MAX_MS", self.fetch_wait_max)?;
        if self.fetch_wait_max > Duration::from_secs(10) {
            return Err(ConfigError::Invalid {
                var: "CONSUMER_FETCH_WAIT_MAX_MS",
                reason: "must be at most 10000".into(),
            });
        }
        Ok(self)
    }
}

pub struct Runtime<H> {
    pub config: ConsumerConfig,
    pub kafka: KafkaSettings,
    pub pool: PgPool,
    pub handler: Arc<H>,
    pub metrics: ConsumerMetrics,
    pub progress: Arc<Progress>,
    pub health: Arc<Health>,
    /// Event types skipped because this code does not know them, logged
    /// once each (bounded: a type name comes from a producer).
    pub unknown_types: std::sync::Mutex<HashSet<String>>,
}

/// Shutdown arrived while waiting; the batch in hand is left uncommitted
/// (it is redelivered and recognised).
struct Interrupted;

type Flow = Result<(), Interrupted>;

/// What applying events in one transaction came to, once an unavailable
/// database has been waited out: the caller decides what a failure means
/// (the batch falls back to one by one; one event is retried, then
/// dead-lettered).
enum Applied {
    Committed,
    Failed(HandlerError),
}

/// A batch as it was read: its messages (whose offsets are stored once it
/// is applied) and what parsing made of them, by index.
#[derive(Default)]
struct Batch {
    messages: Vec<OwnedMessage>,
    /// The events to apply, in the order read, each once.
    events: Vec<(Event, usize)>,
    seen: HashSet<Uuid>,
    /// Messages that are not events, and why.
    poison: Vec<(usize, String)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.messages.len()
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

impl<H: Handler> Runtime<H> {
    /// Consumes until `shutdown`; returns an error only if the consumer
    /// cannot be set up.
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let names = TopicNames::new(self.kafka.topic_prefix.clone());
        let topics: Vec<String> = self.config.topics.iter().map(|t| names.name(*t)).collect();
        if !todo_platform::kafka::ensure_topics_until_done(self.kafka.clone(), shutdown.clone())
            .await
        {
            return Ok(());
        }
        let mut cfg = todo_platform::kafka::consumer_config(&self.kafka, &self.config.name);
        let session_ms = self.config.session_timeout.as_millis();
        cfg.set("session.timeout.ms", session_ms.to_string()).set(
            "heartbeat.interval.ms",
            (session_ms / 10).max(100).to_string(),
        );
        let consumer = RuntimeContext {
            name: self.config.name.clone(),
            metrics: self.metrics.clone(),
            progress: self.progress.clone(),
            horizon: None,
        }
        .consumer(cfg, self.config.fetch_wait_max)?;
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topic_refs)?;
        let dead_letters = DeadLetters::new(&self.kafka, &self.config.name)?;
        tracing::info!(consumer = %self.config.name, topics = ?topics, "consuming");
        self.health.set_consuming(true);

        let pruner = tokio::spawn(prune_forever(
            self.pool.clone(),
            self.config.name.clone(),
            self.config.dedup_retention,
            self.metrics.clone(),
            shutdown.clone(),
        ));
        self.consume(&consumer, &dead_letters, &mut shutdown).await;
        self.health.set_consuming(false);
        pruner.abort();

        // Commit what is done and leave the group (both block on the broker).
        let name = self.config.name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(consumer = %name, error = %e, "final commit");
            }
            consumer.unsubscribe();
            drop(consumer);
            tracing::info!(consumer = %name, "left the consumer group");
        })
        .await;
        Ok(())
    }

    async fn consume(
        &self,
        consumer: &StreamConsumer<RuntimeContext>,
        dead_letters: &DeadLetters,
        shutdown: &mut Shutdown,
    ) {
        let mut ahead = Batch::default();
        loop {
            // Read ahead is never a reason to go on: a backlog would keep
            // the consumer from ever seeing its shutdown.
            if shutdown.is_triggered() {
                return;
            }
            let mut batch = std::mem::take(&mut ahead);
            if batch.is_empty() {
                let first = tokio::select! {
                    _ = shutdown.recv() => return,
                    m = consumer.recv() => m,
                };
                match first {
                    Ok(m) => self.read(&mut batch, m.detach()),
                    Err(e) => {
                        tracing::warn!(consumer = %self.config.name, error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            // Whatever else librdkafka already holds, without waiting.
            while batch.len() < self.config.batch_size {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => self.read(&mut batch, m.detach()),
                    Some(Err(_)) | None => break,
                }
            }
            // While this batch's transaction is in the database, the next
            // one is read and parsed: the consumer's own work overlaps
            // PostgreSQL's instead of following it. Its offsets are stored
            // only once it has been applied in turn.
            let work = self.process(&batch, dead_letters, shutdown);
            tokio::pin!(work);
            let mut reading = true;
            let flow = loop {
                tokio::select! {
                    biased;
                    flow = &mut work => break flow,
                    m = consumer.recv(), if reading && ahead.len() < self.config.batch_size => match m {
                        Ok(m) => self.read(&mut ahead, m.detach()),
                        // Reading resumes once this batch is done.
                        Err(e) => {
                            tracing::warn!(consumer = %self.config.name, error = %e, "consumer error");
                            reading = false;
                        }
                    },
                }
            };
            if flow.is_err() {
                return;
            }
            self.store_offsets(consumer, &batch.messages);
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(consumer = %self.config.name, error = %e, "commit");
            }
        }
    }

    /// Parses `msg` into `batch`: an event the handler wants (once per id),
    /// or a message that cannot be an event (dead-lettered when the batch
    /// is applied); types the handler does not want are only kept for
    /// their offset.
    fn read(&self, batch: &mut Batch, msg: OwnedMessage) {
        let at = batch.messages.len();
        match parse(&self.config.name, &msg) {
            Ok(event) if !self.handler.wants(&event.envelope.event_type) => {
                if let EventKind::Unknown(name) = &event.envelope.event_type {
                    self.skip_unknown(name, &event);
                }
            }
            Ok(event) => {
                if batch.seen.insert(event.envelope.id) {
                    batch.events.push((event, at));
                } else {
                    self.metrics
                        .duplicates
                        .with_label_values(&[&self.config.name])
                        .inc();
                }
            }
            Err(reason) => {
                self.metrics
                    .failed
                    .with_label_values(&[&self.config.name, "unknown"])
                    .inc();
                batch.poison.push((at, reason));
            }
        }
        batch.messages.push(msg);
    }

    fn store_offsets(&self, consumer: &StreamConsumer<RuntimeContext>, batch: &[OwnedMessage]) {
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let slot = last.entry((m.topic(), m.partition())).or_insert(m.offset());
            *slot = (*slot).max(m.offset());
        }
        for ((topic, partition), offset) in last {
            // librdkafka stores offset + 1, the next one to read. It fails
            // for a partition revoked meanwhile: its new owner redelivers.
            if let Err(e) = consumer.store_offset(topic, partition, offset) {
                tracing::debug!(consumer = %self.config.name, topic, partition, error = %e, "offset not stored");
            }
        }
    }

    async fn process(
        &self,
        batch: &Batch,
        dead_letters: &DeadLetters,
        shutdown: &mut Shutdown,
    ) -> Flow {
        let started = Instant::now();
        let events: Vec<(&Event, &OwnedMessage)> = batch
            .events
            .iter()
            .map(|(event, at)| (event, &batch.messages[*at]))
            .collect();
        for group in self.transactions(&events) {
            let all: Vec<&Event> = group.iter().map(|(e, _)| *e).collect();
            if let Applied::Failed(e) = self.apply_waiting(&all, shutdown).await? {
                tracing::debug!(consumer = %self.config.name, error = %e, "batch failed; applying its events one by one");
                for (event, msg) in group {
                    self.apply_one(event, msg, dead_letters, shutdown).await?;
                }
            }
        }
        for (at, reason) in &batch.poison {
            let msg = &batch.messages[*at];
            let id = letter_id(msg, None);
            if dedup::is_processed(&self.pool, &self.config.name, id)
                .await
                .unwrap_or(false)
            {
                // Set aside already, before a redelivery.
                continue;
            }
            tracing::warn!(
                consumer = %self.config.name, topic = msg.topic(), partition = msg.partition(),
                offset = msg.offset(), error = %reason, "unparsable message; dead-lettering it"
            );
            let letter = DeadLetter {
                message: msg,
                error: reason,
                attempts: 1,
            };
            self.dead_letter(&letter, id, dead_letters, shutdown)
                .await?;
        }
        self.metrics
            .processing
            .with_label_values(&[&self.config.name])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// How a batch's events are split into transactions: all in one, or
    /// one per user (in the order each user first appears; a user's events
    /// keep their order).
    fn transactions<'e>(
        &self,
        events: &[(&'e Event, &'e OwnedMessage)],
    ) -> Vec<Vec<(&'e Event, &'e OwnedMessage)>> {
        if events.is_empty() {
            return Vec::new();
        }
        if !self.handler.per_user_transactions() {
            return vec![events.to_vec()];
        }
        let mut groups: Vec<Vec<(&Event, &OwnedMessage)>> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        for (event, msg) in events {
            let user = event.envelope.userid.as_str();
            let at = *index.entry(user).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[at].push((*event, *msg));
        }
        groups
    }

    /// One event on its own, retried up to `max_attempts`, then dead-lettered.
    async fn apply_one(
        &self,
        event: &Event,
        msg: &OwnedMessage,
        dead_letters: &DeadLetters,
        shutdown: &mut Shutdown,
    ) -> Flow {
        let mut attempts = 0;
        loop {
            let Applied::Failed(e) = self.apply_waiting(&[event], shutdown).await? else {
                return Ok(());
            };
            attempts += 1;
            let event_type = event.envelope.event_type.as_str();
            self.metrics
                .failed
                .with_label_values(&[&self.config.name, event_type])
                .inc();
            let give_up =
                matches!(e, HandlerError::Rejected(_)) || attempts >= self.config.max_attempts;
            if give_up {
                event.span.record("otel.status_code", "ERROR");
                // The event's span names it (ids, correlation, trace).
                event.span.in_scope(
                    || tracing::error!(attempts, error = %e, "event failed; dead-lettering it"),
                );
                let reason = e.to_string();
                let letter = DeadLetter {
                    message: msg,
                    error: &reason,
                    attempts,
                };
                return self
                    .dead_letter(&letter, letter_id(msg, Some(event)), dead_letters, shutdown)
                    .await;
            }
            event
                .span
                .in_scope(|| tracing::warn!(attempts, error = %e, "event failed; retrying"));
            wait(backoff(attempts), shutdown).await?;
        }
    }

    /// Applies `events` in one transaction, waiting out an unavailable
    /// database; any other failure is returned for the caller to decide.
    async fn apply_waiting(
        &self,
        events: &[&Event],
        shutdown: &mut Shutdown,
    ) -> Result<Applied, Interrupted> {
        let mut outage = 0u32;
        loop {
            match self.apply(events).await {
                Err(e) if e.is_unavailable() => {
                    outage += 1;
                    if outage == 1 || outage.is_multiple_of(10) {
                        tracing::warn!(consumer = %self.config.name, error = %e, attempt = outage, "database unavailable; waiting");
                    }
                    wait(backoff(outage), shutdown).await?;
                }
                other => {
                    if outage > 0 {
                        tracing::info!(consumer = %self.config.name, "database is back");
                    }
                    return Ok(match other {
                        Ok(()) => Applied::Committed,
                        Err(e) => Applied::Failed(e),
                    });
                }
            }
        }
    }

    async fn apply(&self, events: &[&Event]) -> Result<(), HandlerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        // One transaction for several events: a child of the first event's
        // span, linked to the others'.
        let span = tracing::info_span!(
            parent: &first.span,
            "transaction",
            otel.name = "apply events",
            db.system.name = "postgresql",
            events = events.len(),
        );
        for e in &events[1..] {
            telemetry::link(&span, &e.span);
        }
        self.apply_in_transaction(events).instrument(span).await
    }

    async fn apply_in_transaction(&self, events: &[&Event]) -> Result<(), HandlerError> {
        let mut tx = todo_platform::db::begin(&self.pool).await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.envelope.id).collect();
        let fresh: HashSet<Uuid> = dedup::claim(&mut tx, &self.config.name, &ids)
            .await?
            .into_iter()
            .collect();
        let fresh: Vec<&Event> = events
            .iter()
            .copied()
            .filter(|e| fresh.contains(&e.envelope.id))
            .collect();
        let fresh_count = fresh.len();
        let todo = self.without_erased_users(&mut tx, fresh).await?;
        let skipped = fresh_count - todo.len();
        if !todo.is_empty() {
            // A handler that panics on one event fails that event (retried,
            // then dead-lettered) instead of the process: restarted, it would
            // read the same event and die again, for every user.
            std::panic::AssertUnwindSafe(self.handler.handle_batch(&mut tx, &todo))
                .catch_unwind()
                .await
                .map_err(|panic| {
                    HandlerError::Failed(anyhow::anyhow!(
                        "handler panicked: {}",
                        todo_contract::panics::message(&*panic)
                    ))
                })??;
        }
        tx.commit().await?;

        let name = self.config.name.as_str();
        let duplicates = events.len() - todo.len() - skipped;
        if duplicates > 0 {
            self.metrics
                .duplicates
                .with_label_values(&[name])
                .inc_by(duplicates as u64);
        }
        let now = chrono::Utc::now();
        for e in &todo {
            self.metrics
                .consumed
                .with_label_values(&[name, e.envelope.event_type.as_str()])
                .inc();
            let age = (now - e.envelope.time).to_std().unwrap_or_default();
            self.metrics
                .end_to_end
                .with_label_values(&[name])
                .observe(age.as_secs_f64());
        }
        self.handler.committed(&todo);
        Ok(())
    }

    /// `events` less those of users who have been erased (the specs'
    /// "events for deleted users are logged and skipped"): a repeated
    /// delivery of an event from before the erasure, or one on another topic
    /// that arrives after it, must not bring back what the erasure removed.
    /// They stay recorded as processed. `user.erased` itself is handled.
    /// The tombstone commits with the erasure's event, before any consumer
    /// can read it, and nothing of the user is written after it.
    async fn without_erased_users<'e>(
        &self,
        conn: &mut PgConnection,
        events: Vec<&'e Event>,
    ) -> Result<Vec<&'e Event>, HandlerError> {
        if events.is_empty() {
            return Ok(events);
        }
        let mut users: Vec<&str> = events.iter().map(|e| e.envelope.userid.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let erased: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM event_sequences WHERE erased_at IS NOT NULL AND user_id = ANY($1)",
        )
        .bind(&users)
        .fetch_all(&mut *conn)
        .await?;
        if erased.is_empty() {
            return Ok(events);
        }
        let (skip, keep): (Vec<&Event>, Vec<&Event>) = events.into_iter().partition(|e| {
            erased.contains(&e.envelope.userid) && e.envelope.event_type != EventType::UserErased
        });
        for e in &skip {
            e.span
                .in_scope(|| tracing::info!("skipping an event of a user who has been erased"));
        }
        self.metrics
            .erased
            .with_label_values(&[self.config.name.as_str()])
            .inc_by(skip.len() as u64);
        Ok(keep)
    }

    /// Publishes a dead letter and waits for the broker's acknowledgement,
    /// for as long as it takes: the consumer cannot go past an event it has
    /// neither processed nor set aside. Meanwhile the failures are counted
    /// and the service reports itself unready. Once set aside, the event is
    /// recorded as processed, so a redelivery does not set it aside again.
    async fn dead_letter(
        &self,
        letter: &DeadLetter<'_>,
        id: Uuid,
        dead_letters: &DeadLetters,
        shutdown: &mut Shutdown,
    ) -> Flow {
        let name = self.config.name.as_str();
        let mut attempt = 0;
        loop {
            let sent = tokio::select! {
                _ = shutdown.recv() => return Err(Interrupted),
                r = dead_letters.send(letter) => r,
            };
            match sent {
                Ok(()) => {
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[name, letter.message.topic()])
                        .inc();
                    self.health.set_dead_letters_ok(true);
                    if let Err(e) = dedup::claim_one(&self.pool, name, id).await {
                        // A redelivery would set it aside once more.
                        tracing::warn!(consumer = name, error = %e, "dead letter not recorded as processed");
                    }
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    self.metrics
                        .dead_letter_failures
                        .with_label_values(&[name])
                        .inc();
                    self.health.set_dead_letters_ok(false);
                    tracing::warn!(consumer = name, error = %e, attempt, "dead-letter topic refused the event; retrying");
                    wait(backoff(attempt), shutdown).await?;
                }
            }
        }
    }

    /// An event whose type this code does not know: skipped and counted;
    /// logged the first time its type is seen.
    fn skip_unknown(&self, type_name: &str, event: &Event) {
        let name = self.config.name.as_str();
        let mut seen = self.unknown_types.lock().unwrap_or_else(|p| p.into_inner());
        let first = seen.len() < 100 && seen.insert(type_name.to_owned());
        let label = if first || seen.contains(type_name) {
            type_name
        } else {
            "other"
        };
        self.metrics
            .unknown_types
            .with_label_values(&[name, label])
            .inc();
        if first {
            tracing::warn!(consumer = name, event_type = type_name, event_id = %event.envelope.id,
                "skipping events of a type this version does not know (a newer producer's?)");
        }
    }
}

/// The id a dead letter is recorded under: the event's, or for a message
/// that is not an event at all, one derived from where it was read.
fn letter_id(msg: &OwnedMessage, event: Option<&Event>) -> Uuid {
    match event {
        Some(e) => e.envelope.id,
        None => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset()).as_bytes(),
        ),
    }
}

fn parse(consumer: &str, msg: &OwnedMessage) -> Result<Event, String> {
    let payload = msg.payload().ok_or("empty message (no payload)")?;
    let envelope = Envelope::from_slice(payload).map_err(|e| e.to_string())?;
    let trace = msg
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT))
        .and_then(|h| h.value)
        .and_then(TraceParent::from_bytes)
        .or_else(|| envelope.traceparent.as_deref().and_then(TraceParent::parse));
    let origin = Origin {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    let span = event_span(consumer, &envelope, &origin, trace.as_ref());
    Ok(Event {
        envelope,
        payload: payload.to_vec(),
        origin,
        span,
    })
}

/// The span of one event's handling by `consumer`, continuing `trace`
/// (public for the benchmark of what it costs). Exported, it carries the
/// messaging attributes of OpenTelemetry's conventions; otherwise only what
/// log lines need, since the JSON log layer formats every field of every
/// span when it is created (17 fields cost ~6 µs per event, these ~2.7).
pub fn event_span(
    consumer: &str,
    envelope: &Envelope,
    origin: &Origin,
    trace: Option<&TraceParent>,
) -> tracing::Span {
    if !telemetry::tracing_on() {
        let span = tracing::info_span!(
            parent: None,
            "process",
            consumer,
            event_id = %envelope.id,
            event_type = %envelope.event_type,
            correlation_id = %envelope.correlationid,
            // At creation: recording it later would format the span again.
            trace_id = trace.map(TraceParent::trace_id),
        );
        return span;
    }
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("{} process", envelope.event_type),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.consumer.group.name = consumer,
        messaging.destination.name = origin.topic.as_str(),
        messaging.destination.partition.id = origin.partition,
        messaging.kafka.offset = origin.offset,
        consumer,
        event_id = %envelope.id,
        event_type = %envelope.event_type,
        user_id = %envelope.userid,
        correlation_id = %envelope.correlationid,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, trace);
    span
}

async fn wait(delay: Duration, shutdown: &mut Shutdown) -> Flow {
    tokio::select! {
        _ = shutdown.recv() => Err(Interrupted),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

async fn prune_forever(
    pool: PgPool,
    consumer: String,
    retention: Duration,
    metrics: ConsumerMetrics,
    shutdown: Shutdown,
) {
    let pruned = metrics.pruned.with_label_values(&[consumer.as_str()]);
    shutdown
        .every(todo_platform::db::prune_every(retention), || async {
            match dedup::prune(&pool, &consumer, retention, dedup::PRUNE_BATCH).await {
                Ok(0) => {}
                Ok(n) => {
                    pruned.inc_by(n);
                    tracing::info!(consumer, pruned = n, "forgot old processed-event ids");
                }
                Err(e) => tracing::warn!(consumer, error = %e, "pruning processed events failed"),
            }
        })
        .await
}
