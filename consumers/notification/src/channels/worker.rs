//! One channel's deliveries: leased from `reminder_deliveries` after their
//! firing committed, sent on a pool of at most `concurrency` attempts, each
//! cut off after `timeout`, and recorded (`reminder.sent`, a retry with
//! backoff, or `reminder.failed`) in a transaction of their user's.
//!
//! A channel's pool is its own: a receiver that hangs holds the slots of
//! its own attempts for at most `timeout`, and nobody else's. A channel
//! that is down for most users pauses behind its [`Breaker`].

use super::breaker::{self, Admit, Breaker, BreakerConfig, State, Verdict};
use super::{Attempt, Channel, Failure, Message};
use crate::schedule::{publish, Cause};
use chrono::{DateTime, TimeDelta, Utc};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use sqlx::PgPool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use todo_contract::envelope::{EventType, ReminderEventData};
use todo_platform::metrics::{counter_vec, gauge_vec, histogram_vec};
use todo_platform::retry::{backoff, run_rounds};
use todo_platform::shutdown::Shutdown;
use todo_platform::telemetry::{self, TraceParent};
use todo_store::outbox::OutboxSignal;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// The longest sleep: a safety net for a wake-up another replica missed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How every channel's worker runs.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// `REMINDER_CHANNEL_CONCURRENCY`: attempts in flight per channel.
    pub concurrency: usize,
    /// `REMINDER_CHANNEL_TIMEOUT_MS`: one attempt's limit.
    pub timeout: Duration,
    /// Attempts before `reminder.failed` (`REMINDER_MAX_ATTEMPTS`).
    pub max_attempts: i32,
    pub breaker: BreakerConfig,
}

#[derive(Clone)]
pub struct ChannelMetrics {
    queue: IntGaugeVec,
    in_flight: IntGaugeVec,
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    latency: HistogramVec,
    breaker_state: IntGaugeVec,
    breaker_opened: IntCounterVec,
}

impl ChannelMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let queue = gauge_vec(
            registry,
            "todo_reminder_channel_queue_depth",
            "Deliveries waiting for an attempt (due now or retrying later), by channel",
            &["channel"],
        )?;
        let in_flight = gauge_vec(
            registry,
            "todo_reminder_channel_in_flight",
            "Attempts running now, by channel",
            &["channel"],
        )?;
        let attempts = counter_vec(
            registry,
            "todo_reminder_channel_attempts_total",
            "Delivery attempts by channel and outcome (sent, retry, failed; held: failed while the channel's breaker was open, not counted against the reminder)",
            &["channel", "outcome"],
        )?;
        let attempt_seconds = histogram_vec(
            registry,
            "todo_reminder_channel_attempt_duration_seconds",
            "How long one delivery attempt took, by channel",
            prometheus::exponential_buckets(0.001, 2.0, 16)?,
            &["channel"],
        )?;
        let latency = histogram_vec(
            registry,
            "todo_reminder_channel_latency_seconds",
            "From the reminder's time to its delivery, by channel",
            prometheus::exponential_buckets(0.01, 2.0, 16)?,
            &["channel"],
        )?;
        let breaker_state = gauge_vec(
            registry,
            "todo_reminder_channel_breaker_state",
            "The channel's circuit breaker in this process: 0 closed, 1 open (attempts paused), 2 half-open (one probe in flight)",
            &["channel"],
        )?;
        let breaker_opened = counter_vec(
            registry,
            "todo_reminder_channel_breaker_opened_total",
            "Times the channel's breaker opened (from closed, or after a failed probe)",
            &["channel"],
        )?;
        Ok(Self {
            queue,
            in_flight,
            attempts,
            attempt_seconds,
            latency,
            breaker_state,
            breaker_opened,
        })
    }
}

/// One attempt's span, a child of the firing's: the user's id and the
/// delivery's, never the target (an address or URL is personal data).
fn attempt_span(channel: &'static str, row: &Leased) -> tracing::Span {
    let span = tracing::info_span!(
        "deliver",
        otel.name = %format!("reminder deliver {channel}"),
        otel.kind = "client",
        channel,
        delivery_id = %row.delivery_id,
        user_id = %row.user_id,
        attempt = row.attempts,
        trace_id = tracing::field::Empty,
    );
    let parent = row.traceparent.as_deref().and_then(TraceParent::parse);
    telemetry::continue_trace(&span, parent.as_ref());
    span
}

#[derive(sqlx::FromRow)]
struct Leased {
    delivery_id: Uuid,
    channel: String,
    target: String,
    user_id: String,
    settings: serde_json::Value,
    reminder: sqlx::types::Json<Message>,
    attempts: i32,
    /// The trace of the firing that added this delivery.
    traceparent: Option<String>,
}

pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    channel: Arc<dyn Channel>,
    config: WorkerConfig,
    slots: Arc<Semaphore>,
    /// Woken by a firing's commit and by each finished attempt.
    wake: Arc<Notify>,
    signal: OutboxSignal,
    metrics: ChannelMetrics,
    tracker: TaskTracker,
    breaker: Mutex<Breaker>,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        channel: Arc<dyn Channel>,
        config: WorkerConfig,
        wake: Arc<Notify>,
        signal: OutboxSignal,
        metrics: ChannelMetrics,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency));
        // Present from the start, so that a dashboard and an alert see a
        // closed breaker rather than no series.
        metrics
            .breaker_state
            .with_label_values(&[channel.kind().as_str()])
            .set(State::Closed.gauge());
        Self {
            inner: Arc::new(Inner {
                pool,
                channel,
                config,
                slots,
                wake,
                signal,
                metrics,
                tracker: TaskTracker::new(),
                breaker: Mutex::new(Breaker::new(config.breaker)),
            }),
        }
    }

    /// What wakes this worker (a firing that committed deliveries).
    pub fn wake(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// Delivers until `shutdown`, then lets the attempts in flight finish
    /// (each within its timeout) so they are recorded.
    pub async fn run(self, shutdown: Shutdown) {
        let name = self.inner.channel.kind().as_str();
        let inner = self.inner.clone();
        run_rounds(name, &self.inner.wake, shutdown, || inner.clone().round()).await;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker's state is a few fields, consistent after any panic.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts as many due attempts as there are free slots (one, a probe,
    /// when the breaker allows only that); returns how long until the next
    /// delivery is due.
    async fn round(self: Arc<Self>) -> anyhow::Result<Duration> {
        let kind = self.channel.kind().as_str();
        let admit = self
            .breaker()
            .admit(Instant::now(), self.slots.available_permits());
        let (free, probe, paused) = match admit {
            Admit::Attempts(n) => (n, false, None),
            Admit::Probe => (1, true, None),
            Admit::Wait(pause) => (0, false, Some(pause)),
        };
        self.show_breaker();
        if free > 0 {
            // The lease outlasts the attempt: another replica takes the row
            // only after this one has had its chance to record it.
            let lease = self.config.timeout.as_secs_f64() * 2.0 + 5.0;
            let leased: Result<Vec<Leased>, sqlx::Error> = sqlx::query_as(
                "UPDATE reminder_deliveries
                    SET attempts = attempts + 1, attempt_at = now() + make_interval(secs => $3),
                        first_attempt_at = coalesce(first_attempt_at, now())
                  WHERE (delivery_id, channel, target) IN (
                        SELECT d.delivery_id, d.channel, d.target FROM reminder_deliveries d
                         WHERE d.channel = $1 AND d.state = 'pending' AND d.attempt_at <= now()
                           -- Nothing goes out to an erased user, even before
                           -- user.erased has reached this service.
                           AND NOT EXISTS (SELECT 1 FROM event_sequences e
                                            WHERE e.user_id = d.user_id AND e.erased_at IS NOT NULL)
                         ORDER BY d.attempt_at LIMIT $2
                           FOR UPDATE SKIP LOCKED)
              RETURNING delivery_id, channel, target, user_id, settings, reminder, attempts,
                        traceparent",
            )
            .bind(kind)
            .bind(i64::try_from(free).unwrap_or(i64::MAX))
            .bind(lease)
            .fetch_all(&self.pool)
            .await;
            let leased = match leased {
                Ok(rows) => rows,
                Err(e) => {
                    if probe {
                        self.breaker().probe_not_started(Instant::now());
                    }
                    return Err(e.into());
                }
            };
            if probe && leased.is_empty() {
                // Nothing to probe with yet: the next delivery due probes.
                self.breaker().probe_not_started(Instant::now());
                self.show_breaker();
            }
            for row in leased {
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let inner = self.clone();
                let span = attempt_span(kind, &row);
                self.tracker.spawn(
                    async move {
                        inner.attempt(row, probe).await;
                        drop(slot);
                        inner.wake.notify_one();
                    }
                    .instrument(span),
                );
            }
        }
        let (waiting, next): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), min(GREATEST(EXTRACT(EPOCH FROM d.attempt_at - clock_timestamp()), 0))::float8
               FROM reminder_deliveries d
              WHERE d.channel = $1 AND d.state = 'pending'
                AND NOT EXISTS (SELECT 1 FROM event_sequences e
                                 WHERE e.user_id = d.user_id AND e.erased_at IS NOT NULL)",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?;
        self.metrics.queue.with_label_values(&[kind]).set(waiting);
        if let Some(pause) = paused {
            // Nothing may start before the pause ends (a probe's end wakes
            // the worker sooner).
            return Ok(pause.min(MAX_SLEEP));
        }
        if self.slots.available_permits() == 0 {
            // A finished attempt wakes the worker.
            return Ok(MAX_SLEEP);
        }
        Ok(todo_platform::wake::after(next, MAX_SLEEP))
    }

    fn show_breaker(&self) {
        let state = self.breaker().state();
        self.metrics
            .breaker_state
            .with_label_values(&[self.channel.kind().as_str()])
            .set(state.gauge());
    }

    /// Counts the outcome in the breaker, and says what it means for this
    /// delivery.
    fn judge(&self, row: &Leased, outcome: &Result<(), Failure>, probe: bool) -> Verdict {
        let kind = self.channel.kind().as_str();
        let counted = match outcome {
            Ok(()) => breaker::Outcome::Delivered,
            Err(Failure::Transient(_)) => breaker::Outcome::Transient,
            Err(Failure::Permanent(_)) => breaker::Outcome::Permanent,
        };
        let (before, verdict, after) = {
            let mut breaker = self.breaker();
            let before = breaker.state();
            let verdict = breaker.record(Instant::now(), &row.user_id, counted, probe);
            (before, verdict, breaker.state())
        };
        self.show_breaker();
        match (before, after) {
            (State::Closed | State::HalfOpen, State::Open) => {
                self.metrics.breaker_opened.with_label_values(&[kind]).inc();
                if let Verdict::Hold { retry_in } = verdict {
                    tracing::warn!(channel = kind, pause_ms = retry_in.as_millis() as u64,
                        "most recent attempts of this channel failed: its breaker is open, deliveries wait for a probe");
                }
            }
            (State::HalfOpen, State::Closed) => {
                tracing::info!(
                    channel = kind,
                    "the probe went through: the channel's breaker is closed"
                );
            }
            _ => {}
        }
        verdict
    }

    async fn attempt(&self, row: Leased, probe: bool) {
        let kind = self.channel.kind().as_str();
        let started = Instant::now();
        self.metrics.in_flight.with_label_values(&[kind]).inc();
        let attempt = Attempt {
            delivery_id: row.delivery_id,
            user_id: &row.user_id,
            message: &row.reminder.0,
            settings: &row.settings,
            attempt: row.attempts,
        };
        let outcome =
            match tokio::time::timeout(self.config.timeout, self.channel.send(&attempt)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure::Transient(format!(
                    "no answer within {} ms",
                    self.config.timeout.as_millis()
                ))),
            };
        self.metrics.in_flight.with_label_values(&[kind]).dec();
        self.metrics
            .attempt_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let verdict = self.judge(&row, &outcome, probe);
        // A failed record leaves the lease to expire: the delivery is tried
        // again (at least once), never dropped.
        let mut tries = 0;
        loop {
            match self.record(&row, &outcome, verdict).await {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %format!("{e:#}"), delivery_id = %row.delivery_id,
                        channel = kind, "could not record a delivery; retrying");
                    tokio::time::sleep(backoff(tries)).await;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), delivery_id = %row.delivery_id,
                        channel = kind, "could not record a delivery; it will be attempted again");
                    break;
                }
            }
        }
    }

    async fn record(
        &self,
        row: &Leased,
        outcome: &Result<(), Failure>,
        verdict: Verdict,
    ) -> anyhow::Result<()> {
        let kind = self.channel.kind().as_str();
        let mut tx = todo_platform::db::begin(&self.pool).await?;
        if !crate::erasure::lock_user(&mut tx, &self.pool, &row.user_id).await? {
            return Ok(());
        }
        let key = (row.delivery_id, &row.channel, &row.target);
        // A held attempt gives its reminder its attempt back.
        let mut uncounted = 0;
        let (state, retry_at, error) = match (outcome, verdict) {
            (Ok(()), _) => ("sent", None, None),
            (Err(Failure::Transient(reason)), Verdict::Hold { retry_in }) => {
                uncounted = 1;
                let at = Utc::now() + TimeDelta::from_std(retry_in).unwrap_or_default();
                ("pending", Some(at), Some(reason.as_str()))
            }
            (Err(Failure::Transient(reason)), _) if row.attempts < self.config.max_attempts => {
                let wait = backoff(u32::try_from(row.attempts).unwrap_or(u32::MAX));
                let at = Utc::now() + TimeDelta::from_std(wait).unwrap_or_default();
                ("pending", Some(at), Some(reason.as_str()))
            }
            (Err(Failure::Transient(reason) | Failure::Permanent(reason)), _) => {
                ("failed", None, Some(reason.as_str()))
            }
        };
        // Only the attempt that still holds the row records it: a second
        // replica's attempt after an expired lease reports nothing twice.
        let updated: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE reminder_deliveries
                SET state = $4, attempt_at = coalesce($5, attempt_at), last_error = $6,
                    attempts = attempts - $7,
                    done_at = CASE WHEN $4 = 'pending' THEN NULL ELSE now() END
              WHERE delivery_id = $1 AND channel = $2 AND target = $3 AND state = 'pending'
          RETURNING (reminder->>'remind_at')::timestamptz",
        )
        .bind(key.0)
        .bind(key.1)
        .bind(key.2)
        .bind(state)
        .bind(retry_at)
        .bind(error)
        .bind(uncounted)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(remind_at) = updated else {
            tx.rollback().await?;
            return Ok(());
        };
        let outcome_label = match state {
            "pending" if uncounted == 1 => "held",
            "pending" => "retry",
            other => other,
        };
        let m = &row.reminder.0;
        let data = ReminderEventData {
            task_id: m.task_id,
            reminder_id: m.reminder_id,
            remind_at: m.remind_at,
            due_at: m.due_at,
            title: m.title.clone(),
            reason: error.map(str::to_owned),
            channel: Some(kind.to_owned()),
            attempts: Some(row.attempts),
            ..Default::default()
        };
        let cause = Cause {
            user: &row.user_id,
            correlation_id: std::borrow::Cow::Owned(row.delivery_id.to_string()),
            causation_id: Some(m.reminder_id.to_string()),
        };
        match state {
            "sent" => {
                let now = Utc::now();
                let sent = ReminderEventData {
                    sent_at: Some(now),
                    ..data
                };
                publish(&mut tx, &cause, EventType::ReminderSent, sent)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let late = (now - remind_at).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics
                    .latency
                    .with_label_values(&[kind])
                    .observe(late);
            }
            "failed" => {
                tracing::warn!(delivery_id = %row.delivery_id, user_id = %row.user_id, channel = kind,
                    attempts = row.attempts, reason = error.unwrap_or_default(),
                    "reminder delivery failed for good");
                publish(&mut tx, &cause, EventType::ReminderFailed, data)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            _ if uncounted == 1 => {
                tracing::info!(delivery_id = %row.delivery_id, channel = kind,
                    reason = error.unwrap_or_default(), "reminder delivery held while the channel's breaker is open");
            }
            _ => {
                tracing::info!(delivery_id = %row.delivery_id, channel = kind, attempts = row.attempts,
                    reason = error.unwrap_or_default(), "reminder delivery failed; retrying");
            }
        }
        tx.commit().await?;
        if state != "pending" {
            self.signal.committed();
        }
        self.metrics
            .attempts
            .with_label_values(&[kind, outcome_label])
            .inc();
        Ok(())
    }
}
