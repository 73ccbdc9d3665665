//! The outbox relay: publishes committed outbox rows to Kafka and deletes
//! them once the broker has acknowledged them.
//!
//! - One relay leads at a time, among every process that writes outbox rows
//!   (todo-api, todo-recurring, todo-notifier): the holder of a lease it
//!   renews ([`lease`]). The others stand by and take over when it lapses.
//! - Pipelined: the leader keeps sending while earlier acknowledgements are
//!   outstanding (up to `max_in_flight`), records each acknowledgement as it
//!   arrives, and deletes acknowledged rows in bulk.
//! - Per-user order: a user's rows are written one at a time under their
//!   sequence lock, so their ids grow with their sequence; the relay sends
//!   in id order, and the idempotent producer keeps a partition's order
//!   across its retries. When a delivery fails and must be sent again, the
//!   relay stops sending, lets what is in flight finish, keeps that user's
//!   later rows in the outbox even if acknowledged (they are sent again
//!   after it: a redelivery, which consumers recognise), and starts over
//!   from the oldest row.
//! - A row the broker refuses for good (too large, invalid) is moved to
//!   `outbox_dead_letters` with the reason, counted and logged, and the
//!   relay goes on: holding the user's later events behind it would stop
//!   their whole stream for one event that can never be published. Its
//!   sequence stays a gap, which the consumers pass over.
//! - A topic that is gone (a broker restarted without its data) is created
//!   again before sending again; a stuck or fatal producer is replaced.
//! - Latency: the leader is woken in-process on a local commit, by `NOTIFY`
//!   for commits made in other processes, and polls as a fallback.

mod lease;
mod metrics;
mod publisher;
mod vacuum;

pub use metrics::RelayMetrics;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use publisher::{Failure, Publisher};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use todo_contract::envelope::{TopicNames, CONTENT_TYPE};
use todo_platform::config::{ConfigError, Env, KafkaSettings};
use todo_platform::retry::backoff;
use todo_platform::shutdown::Shutdown;
use todo_platform::telemetry::{self, TraceParent, TRACEPARENT};
use todo_store::outbox::{OutboxSignal, CHANNEL};
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use vacuum::Vacuum;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read per round (`OUTBOX_BATCH_SIZE`).
    pub batch_size: i64,
    /// Rows sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// The fallback poll when no notification arrives
    /// (`OUTBOX_POLL_INTERVAL_MS`).
    pub poll_interval: Duration,
    /// How often a standby tries to become the leader.
    pub standby_interval: Duration,
    /// How long the lease lasts unless renewed (`OUTBOX_LEASE_MS`): a leader
    /// that stopped renewing is replaced after this.
    pub lease_ttl: Duration,
    /// On shutdown or when the lease is lost, how long to wait for the rows
    /// in flight to be acknowledged.
    pub shutdown_grace: Duration,
    /// Rows in flight with no acknowledgement for this long get a new
    /// producer (and a new producer id): a broker that lost its state
    /// (restarted without its data) refuses the old id forever. The rows
    /// are sent again from the outbox, so this is at worst a redelivery.
    pub stall_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            max_in_flight: 10_000,
            poll_interval: Duration::from_millis(500),
            standby_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

impl RelayConfig {
    /// `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL_MS` and `OUTBOX_LEASE_MS`
    /// over the defaults.
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let batch_size: i64 = env.parse_or("OUTBOX_BATCH_SIZE", defaults.batch_size)?;
        if !(1..=50_000).contains(&batch_size) {
            return Err(ConfigError::Invalid {
                var: "OUTBOX_BATCH_SIZE",
                reason: "must be between 1 and 50000".into(),
            });
        }
        let lease_ttl = env.millis_or("OUTBOX_LEASE_MS", defaults.lease_ttl)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&lease_ttl) {
            return Err(ConfigError::Invalid {
                var: "OUTBOX_LEASE_MS",
                reason: "must be between 1000 and 600000".into(),
            });
        }
        Ok(Self {
            batch_size,
            poll_interval: env.millis_or("OUTBOX_POLL_INTERVAL_MS", defaults.poll_interval)?,
            lease_ttl,
            ..defaults
        })
    }
}

/// `OUTBOX_RELAY_ENABLED` (default true): whether this process runs a relay
/// (a standby, or the leader).
pub fn enabled_from<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<bool, ConfigError> {
    env.parse_or("OUTBOX_RELAY_ENABLED", true)
}

/// What every process that writes outbox rows runs beside its own work
/// (todo-api, todo-recurring, todo-notifier): its relay, when it runs one,
/// and the forwarder that wakes the relay leading in another process after
/// this one's commits.
pub struct Publishing {
    relay: Option<Relay>,
    signal: OutboxSignal,
    pool: PgPool,
}

impl Publishing {
    /// `relay` must have been built with `signal`: it is woken by the
    /// commits signalled there.
    pub fn new(relay: Option<Relay>, signal: OutboxSignal, pool: PgPool) -> Self {
        Self {
            relay,
            signal,
            pool,
        }
    }

    /// A consumer service's publishing, from `OUTBOX_*`: a standby relay
    /// (none where `OUTBOX_RELAY_ENABLED=false`) and a signal of its own.
    pub fn for_service(
        settings: &todo_platform::config::Settings,
        pool: PgPool,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let signal = OutboxSignal::new();
        let relay = Relay::for_service(settings, pool.clone(), signal.clone(), registry)?;
        Ok(Self::new(relay, signal, pool))
    }

    /// What the service's writers signal after each commit.
    pub fn signal(&self) -> &OutboxSignal {
        &self.signal
    }

    /// Runs the relay and the forwarder on `tasks` until `shutdown`.
    pub fn spawn(self, tasks: &TaskTracker, shutdown: Shutdown) {
        if let Some(relay) = self.relay {
            tasks.spawn(relay.run(shutdown.clone()));
        }
        tasks.spawn(self.signal.forward_to_other_processes(self.pool, shutdown));
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

impl Relay {
    /// The relay of a service that writes outbox rows (todo-api,
    /// todo-recurring, todo-notifier), from `OUTBOX_*`: a standby until it
    /// leads. `None` where `OUTBOX_RELAY_ENABLED=false`.
    pub fn for_service(
        settings: &todo_platform::config::Settings,
        pool: PgPool,
        signal: OutboxSignal,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Option<Relay>> {
        let env = Env::process();
        if !enabled_from(&env)? {
            return Ok(None);
        }
        Ok(Some(Relay {
            pool,
            connect: todo_platform::db::connect_options(&settings.database)?,
            kafka: settings.kafka.clone(),
            signal,
            config: RelayConfig::from_lookup(&env)?,
            metrics: RelayMetrics::register(registry)?,
        }))
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
    traceparent: Option<String>,
}

/// A row sent and not yet acknowledged.
struct Sent {
    key: String,
    event_type: String,
    created_at: DateTime<Utc>,
    /// The publish span (when spans are exported): it ends at the broker's
    /// answer.
    span: Option<tracing::Span>,
}

type Delivery = BoxFuture<'static, (i64, Result<(), KafkaError>)>;

/// Why the leader stopped sending: it sends again once nothing is in flight
/// and the cause is dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// Rows must be sent again (a purge, a fatal producer, a stall).
    Resend,
    /// A topic is gone: create the topics first.
    Topics,
}

impl Relay {
    /// Runs until `shutdown`: stands by, leads when it can, recovers from
    /// database and broker failures on its own.
    pub async fn run(self, mut shutdown: Shutdown) {
        let me = Uuid::new_v4();
        let mut publisher = Publisher::new(self.kafka.clone());
        let mut failures = 0u32;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let wait = match self
                .lead(me, &mut publisher, &mut shutdown, &mut failures)
                .await
            {
                Ok(Outcome::Shutdown) => break,
                Ok(Outcome::Standby) => self.config.standby_interval,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, failures, "outbox relay lost its footing; retrying");
                    backoff(failures)
                }
            };
            self.signal.set_leader_here(false);
            self.metrics.leader.set(0);
            self.metrics.in_flight.set(0);
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
        me: Uuid,
        publisher: &mut Publisher,
        shutdown: &mut Shutdown,
        failures: &mut u32,
    ) -> anyhow::Result<Outcome> {
        let mut conn = PgConnection::connect_with(&self.connect).await?;
        if !lease::acquire(&mut conn, me, self.config.lease_ttl).await? {
            return Ok(Outcome::Standby);
        }
        tracing::info!("outbox relay is the leader");
        // A connection of its own, checked before use: a pooled one may be
        // long dead.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(true)
            .connect_lazy_with(self.connect.clone());
        let mut listener = PgListener::connect_with(&listen_pool).await?;
        listener.listen(CHANNEL).await?;
        self.signal.set_leader_here(true);
        self.metrics.leader.set(1);
        let topics_ready = tokio::spawn(todo_platform::kafka::ensure_topics_until_done(
            self.kafka.clone(),
            shutdown.clone(),
        ));
        let mut leading = Leading {
            relay: self,
            conn,
            me,
            topics: TopicNames::new(self.kafka.topic_prefix.clone()),
            sent: HashMap::new(),
            deliveries: FuturesUnordered::new(),
            acked: Vec::new(),
            first_failed: HashMap::new(),
            halt: None,
            last_progress: Instant::now(),
            renewed: Instant::now(),
            vacuum: Vacuum::new(self.connect.clone()),
            backlog_checked: Instant::now() - Duration::from_secs(60),
        };
        let outcome = leading
            .run(publisher, &mut listener, shutdown, failures)
            .await;
        topics_ready.abort();
        let Leading { mut conn, .. } = leading;
        if matches!(outcome, Ok(Outcome::Shutdown)) {
            let _ = lease::release(&mut conn, me).await;
        }
        let _ = conn.close().await;
        outcome
    }
}

/// The state of one stint as the leader.
struct Leading<'r> {
    relay: &'r Relay,
    conn: PgConnection,
    me: Uuid,
    topics: TopicNames,
    /// Rows in flight, by outbox id.
    sent: HashMap<i64, Sent>,
    deliveries: FuturesUnordered<Delivery>,
    /// Acknowledged rows not deleted yet.
    acked: Vec<i64>,
    /// Users with a row to send again, and that row: their later rows stay
    /// in the outbox, to follow it.
    first_failed: HashMap<String, i64>,
    halt: Option<Halt>,
    /// Last acknowledgement or failure of a row in flight, or when rows
    /// went in flight while none were: how long the broker has been silent
    /// about what it was given (never the idle time before).
    last_progress: Instant,
    renewed: Instant,
    vacuum: Vacuum,
    backlog_checked: Instant,
}

impl Leading<'_> {
    async fn run(
        &mut self,
        publisher: &mut Publisher,
        listener: &mut PgListener,
        shutdown: &mut Shutdown,
        failures: &mut u32,
    ) -> anyhow::Result<Outcome> {
        let config = &self.relay.config;
        let renew_every = config.lease_ttl / 3;
        loop {
            if self.renewed.elapsed() >= renew_every {
                if !lease::renew(&mut self.conn, self.me, config.lease_ttl).await? {
                    tracing::warn!("the outbox relay lost its lease; standing by");
                    self.drain(shutdown).await?;
                    return Ok(Outcome::Standby);
                }
                self.renewed = Instant::now();
            }
            // Acknowledged rows go first: a read would see them again.
            self.flush_acked().await?;
            let more_to_read = self.halt.is_none()
                && self.sent.len() < config.max_in_flight
                && self.send_round(publisher).await?;
            if let Some(halt) = self.halt.filter(|_| self.sent.is_empty()) {
                self.recover(halt, publisher, failures, shutdown).await;
                continue;
            }
            self.check_backlog().await?;
            if !self.sent.is_empty() && self.last_progress.elapsed() > config.stall_timeout {
                tracing::warn!(
                    in_flight = self.sent.len(), stalled_for = ?config.stall_timeout,
                    "the broker has not acknowledged anything; starting a new producer"
                );
                self.halt = Some(Halt::Resend);
                self.relay.metrics.stalls.inc();
                // Purged, every delivery in flight fails now.
                publisher.reset().await;
                self.last_progress = Instant::now();
            }
            if more_to_read && self.halt.is_none() && self.sent.len() < config.max_in_flight {
                continue;
            }
            let until_renewal = renew_every.saturating_sub(self.renewed.elapsed());
            tokio::select! {
                _ = shutdown.recv() => {
                    self.drain(shutdown).await?;
                    return Ok(Outcome::Shutdown);
                }
                Some((id, result)) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.delivered(id, result, failures, publisher).await?;
                    // Whatever else has been acknowledged meanwhile.
                    while let Some(Some((id, result))) = self.deliveries.next().now_or_never() {
                        self.delivered(id, result, failures, publisher).await?;
                    }
                }
                _ = self.relay.signal.local_commit() => {}
                n = listener.recv() => { n?; }
                _ = tokio::time::sleep(config.poll_interval.min(until_renewal)) => {}
            }
        }
    }

    /// Reads the rows not in flight, oldest first, and sends them; whether
    /// the read was full (more may be waiting).
    async fn send_round(&mut self, publisher: &mut Publisher) -> anyhow::Result<bool> {
        let started = Instant::now();
        let limit = self.relay.config.batch_size;
        // Rows in flight stay in the table until acknowledged, and a read
        // starts from the oldest row (a row can commit after a younger one
        // was read): they are left out in the query, not after it, or every
        // round would send their payloads over the connection again
        // (todo-api's instructions per create fell from ~330 k to ~270 k
        // under benches/callgrind.sh).
        let in_flight: Vec<i64> = self.sent.keys().copied().collect();
        // Only while the lease is ours: a leader that wakes up after losing
        // it reads nothing new.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, topic, key, event_type, payload, created_at, traceparent FROM outbox
              WHERE EXISTS (SELECT 1 FROM outbox_relay_lease
                             WHERE id = 1 AND holder = $1 AND expires_at > now())
                AND NOT (id = ANY($3))
              ORDER BY id LIMIT $2",
        )
        .bind(self.me)
        .bind(limit)
        .bind(&in_flight)
        .fetch_all(&mut self.conn)
        .await?;
        let full = rows.len() as i64 == limit;
        if rows.is_empty() {
            return Ok(false);
        }
        let producer = publisher.get()?.clone();
        if self.sent.is_empty() {
            // The broker's silence is counted from now, not from the last
            // acknowledgement before an idle spell.
            self.last_progress = Instant::now();
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(CONTENT_TYPE),
        });
        for row in rows {
            if self.sent.len() >= self.relay.config.max_in_flight {
                break;
            }
            let topic = format!("{}{}", self.topics.prefix(), row.topic);
            let (span, traceparent) = publish_span(&row, &topic);
            let record = FutureRecord::to(&topic)
                .key(&row.key)
                .payload(&row.payload)
                .headers(match &traceparent {
                    Some(t) => headers.clone().insert(Header {
                        key: TRACEPARENT,
                        value: Some(t.as_str()),
                    }),
                    None => headers.clone(),
                });
            match producer.send_result(record) {
                Ok(delivery) => {
                    let id = row.id;
                    self.deliveries.push(
                        delivery
                            .map(move |r| {
                                let result = match r {
                                    Ok(Ok(_)) => Ok(()),
                                    Ok(Err((e, _))) => Err(e),
                                    Err(_) => Err(KafkaError::Canceled),
                                };
                                (id, result)
                            })
                            .boxed(),
                    );
                    self.sent.insert(
                        row.id,
                        Sent {
                            key: row.key,
                            event_type: row.event_type,
                            created_at: row.created_at,
                            span,
                        },
                    );
                }
                // The producer's queue is full: the rest next round.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
                Err((e, _)) => match Failure::of(&e) {
                    Failure::Permanent => self.set_aside(row.id, &row.event_type, &e).await?,
                    failure => {
                        // Nothing after it may go ahead of it.
                        tracing::warn!(outbox_id = row.id, error = %e, "the producer refused an event; sending again later");
                        self.first_failed.entry(row.key).or_insert(row.id);
                        self.halt_for(failure);
                        break;
                    }
                },
            }
        }
        self.relay.metrics.in_flight.set(self.sent.len() as i64);
        self.relay
            .metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(full)
    }

    /// One acknowledgement, or failure, of a row in flight.
    async fn delivered(
        &mut self,
        id: i64,
        result: Result<(), KafkaError>,
        failures: &mut u32,
        publisher: &Publisher,
    ) -> anyhow::Result<()> {
        self.last_progress = Instant::now();
        let Some(sent) = self.sent.remove(&id) else {
            return Ok(());
        };
        self.relay.metrics.in_flight.set(self.sent.len() as i64);
        match result {
            Ok(()) => {
                *failures = 0;
                self.relay
                    .metrics
                    .published
                    .with_label_values(&[&sent.event_type])
                    .inc();
                let age = (Utc::now() - sent.created_at).to_std().unwrap_or_default();
                self.relay.metrics.latency.observe(age.as_secs_f64());
                // A user's row after one of theirs that is to be sent again
                // stays, to follow it (a redelivery).
                let follows_a_failure = self
                    .first_failed
                    .get(&sent.key)
                    .is_some_and(|first| id > *first);
                if !follows_a_failure {
                    self.acked.push(id);
                }
            }
            Err(e) => {
                if let Some(span) = &sent.span {
                    span.record("otel.status_code", "ERROR");
                    span.record("error", tracing::field::display(&e));
                }
                self.relay
                    .metrics
                    .failed
                    .with_label_values(&[&sent.event_type])
                    .inc();
                match Failure::of(&e) {
                    Failure::Permanent => self.set_aside(id, &sent.event_type, &e).await?,
                    failure => {
                        tracing::warn!(outbox_id = id, error = %e, "broker refused an event; sending it again");
                        let first = self.first_failed.entry(sent.key).or_insert(id);
                        *first = (*first).min(id);
                        self.halt_for(failure);
                    }
                }
                if let Some(error) = publisher.fatal_error() {
                    tracing::warn!(%error, "the producer hit a fatal error; a new one will send again");
                    self.halt_for(Failure::Transient);
                }
            }
        }
        Ok(())
    }

    fn halt_for(&mut self, failure: Failure) {
        let halt = match failure {
            Failure::TopicMissing => Halt::Topics,
            _ => Halt::Resend,
        };
        // A missing topic outranks a plain resend.
        if self.halt != Some(Halt::Topics) {
            self.halt = Some(halt);
        }
    }

    /// Moves a row the broker refused for good out of the outbox, so that
    /// the rows after it go on.
    async fn set_aside(
        &mut self,
        id: i64,
        event_type: &str,
        error: &KafkaError,
    ) -> anyhow::Result<()> {
        tracing::error!(outbox_id = id, event_type, %error,
            "the broker refused an event for good; it is set aside in outbox_dead_letters");
        sqlx::query(
            "WITH moved AS (DELETE FROM outbox WHERE id = $1
                             RETURNING id, event_id, topic, key, event_type, payload, created_at)
             INSERT INTO outbox_dead_letters (id, event_id, topic, key, event_type, payload,
                                              created_at, error)
             SELECT id, event_id, topic, key, event_type, payload, created_at, $2 FROM moved
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(error.to_string())
        .execute(&mut self.conn)
        .await?;
        self.relay
            .metrics
            .set_aside
            .with_label_values(&[event_type])
            .inc();
        Ok(())
    }

    async fn flush_acked(&mut self) -> anyhow::Result<()> {
        if self.acked.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&self.acked)
            .execute(&mut self.conn)
            .await?;
        let n = self.acked.len();
        self.acked.clear();
        self.vacuum.after(n);
        Ok(())
    }

    /// Nothing is in flight after a halt: deal with its cause, wait (longer
    /// after each failure in a row), and start over from the oldest row.
    async fn recover(
        &mut self,
        halt: Halt,
        publisher: &mut Publisher,
        failures: &mut u32,
        shutdown: &mut Shutdown,
    ) {
        *failures = failures.saturating_add(1);
        if halt == Halt::Topics {
            tracing::warn!("a topic is gone; creating the topics again");
            let created = tokio::time::timeout(
                Duration::from_secs(15),
                todo_platform::kafka::ensure_topics(&self.relay.kafka),
            )
            .await;
            if !matches!(created, Ok(Ok(()))) {
                tracing::warn!("topics not created yet; trying again");
            }
        }
        publisher.reset().await;
        self.first_failed.clear();
        self.halt = None;
        tokio::select! {
            _ = shutdown.recv() => {}
            _ = tokio::time::sleep(backoff(*failures)) => {}
        }
    }

    /// Lets the rows in flight be acknowledged (up to the grace period) and
    /// records them; what is not acknowledged stays for the next leader.
    async fn drain(&mut self, _shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let grace = tokio::time::sleep(self.relay.config.shutdown_grace);
        tokio::pin!(grace);
        while !self.deliveries.is_empty() {
            tokio::select! {
                _ = &mut grace => break,
                Some((id, result)) = self.deliveries.next() => {
                    if result.is_ok() && self.sent.remove(&id).is_some() {
                        self.acked.push(id);
                    }
                }
            }
        }
        self.flush_acked().await
    }

    async fn check_backlog(&mut self) -> anyhow::Result<()> {
        if self.backlog_checked.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&mut self.conn)
            .await?;
        self.relay.metrics.backlog.set(backlog);
        self.backlog_checked = Instant::now();
        Ok(())
    }
}

/// The span of one row's publish, a child of the change that wrote it, and
/// the trace context the message carries: the publish span's when spans are
/// exported (consumers become its children), else the row's own, passed on.
fn publish_span(row: &Row, topic: &str) -> (Option<tracing::Span>, Option<TraceParent>) {
    let parent = row.traceparent.as_deref().and_then(TraceParent::parse);
    if !telemetry::tracing_on() {
        return (None, parent);
    }
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = %format!("{} publish", row.topic),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        event_type = %row.event_type,
        outbox_id = row.id,
        trace_id = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, parent.as_ref());
    let own = TraceParent::of(&span).or(parent);
    (Some(span), own)
}
