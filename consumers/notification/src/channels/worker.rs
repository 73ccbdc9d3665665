//! One channel's deliveries: leased from `reminder_deliveries` after their
//! firing committed, sent on a pool of at most `concurrency` attempts, each
//! cut off after `timeout`, and recorded (`reminder.sent`, a retry with
//! backoff, or `reminder.failed`) in a transaction of their user's.
//!
//! A channel's pool is its own: a receiver that hangs holds the slots of
//! its own attempts for at most `timeout`, and nobody else's.

use super::{Attempt, Channel, Failure, Message};
use crate::schedule::{publish, Cause};
use chrono::{DateTime, TimeDelta, Utc};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use todo_shared::envelope::{EventType, ReminderEventData};
use todo_shared::outbox::{self, OutboxSignal};
use todo_shared::retry::{backoff, run_rounds};
use todo_shared::shutdown::Shutdown;
use todo_shared::telemetry::{self, TraceParent};
use tokio::sync::{Notify, Semaphore};
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
}

#[derive(Clone)]
pub struct ChannelMetrics {
    queue: IntGaugeVec,
    in_flight: IntGaugeVec,
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    latency: HistogramVec,
}

impl ChannelMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let queue = IntGaugeVec::new(
            Opts::new(
                "todo_reminder_channel_queue_depth",
                "Deliveries waiting for an attempt (due now or retrying later), by channel",
            ),
            &["channel"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "todo_reminder_channel_in_flight",
                "Attempts running now, by channel",
            ),
            &["channel"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "todo_reminder_channel_attempts_total",
                "Delivery attempts by channel and outcome (sent, retry, failed)",
            ),
            &["channel", "outcome"],
        )?;
        let attempt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "todo_reminder_channel_attempt_duration_seconds",
                "How long one delivery attempt took, by channel",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["channel"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "todo_reminder_channel_latency_seconds",
                "From the reminder's time to its delivery, by channel",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.0, 16)?),
            &["channel"],
        )?;
        registry.register(Box::new(queue.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            queue,
            in_flight,
            attempts,
            attempt_seconds,
            latency,
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
    /// Starts as many due attempts as there are free slots; returns how
    /// long until the next delivery is due.
    async fn round(self: Arc<Self>) -> anyhow::Result<Duration> {
        let kind = self.channel.kind().as_str();
        let free = self.slots.available_permits();
        if free > 0 {
            // The lease outlasts the attempt: another replica takes the row
            // only after this one has had its chance to record it.
            let lease = self.config.timeout.as_secs_f64() * 2.0 + 5.0;
            let leased: Vec<Leased> = sqlx::query_as(
                "UPDATE reminder_deliveries
                    SET attempts = attempts + 1, attempt_at = now() + make_interval(secs => $3),
                        first_attempt_at = coalesce(first_attempt_at, now())
                  WHERE (delivery_id, channel, target) IN (
                        SELECT delivery_id, channel, target FROM reminder_deliveries
                         WHERE channel = $1 AND state = 'pending' AND attempt_at <= now()
                         ORDER BY attempt_at LIMIT $2
                           FOR UPDATE SKIP LOCKED)
              RETURNING delivery_id, channel, target, user_id, settings, reminder, attempts,
                        traceparent",
            )
            .bind(kind)
            .bind(i64::try_from(free).unwrap_or(i64::MAX))
            .bind(lease)
            .fetch_all(&self.pool)
            .await?;
            for row in leased {
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let inner = self.clone();
                let span = attempt_span(kind, &row);
                self.tracker.spawn(
                    async move {
                        inner.attempt(row).await;
                        drop(slot);
                        inner.wake.notify_one();
                    }
                    .instrument(span),
                );
            }
        }
        let (waiting, next): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), min(GREATEST(EXTRACT(EPOCH FROM attempt_at - clock_timestamp()), 0))::float8
               FROM reminder_deliveries WHERE channel = $1 AND state = 'pending'",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?;
        self.metrics.queue.with_label_values(&[kind]).set(waiting);
        if self.slots.available_permits() == 0 {
            // A finished attempt wakes the worker.
            return Ok(MAX_SLEEP);
        }
        Ok(next
            .map(|secs| Duration::try_from_secs_f64(secs).unwrap_or(MAX_SLEEP))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP))
    }

    async fn attempt(&self, row: Leased) {
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
        // A failed record leaves the lease to expire: the delivery is tried
        // again (at least once), never dropped.
        let mut tries = 0;
        loop {
            match self.record(&row, &outcome).await {
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

    async fn record(&self, row: &Leased, outcome: &Result<(), Failure>) -> anyhow::Result<()> {
        let kind = self.channel.kind().as_str();
        let mut tx = todo_shared::db::begin(&self.pool).await?;
        outbox::lock_sequence(&mut tx, &row.user_id).await?;
        let key = (row.delivery_id, &row.channel, &row.target);
        let (state, retry_at, error) = match outcome {
            Ok(()) => ("sent", None, None),
            Err(Failure::Transient(reason)) if row.attempts < self.config.max_attempts => {
                let wait = backoff(u32::try_from(row.attempts).unwrap_or(u32::MAX));
                let at = Utc::now() + TimeDelta::from_std(wait).unwrap_or_default();
                ("pending", Some(at), Some(reason.as_str()))
            }
            Err(Failure::Transient(reason) | Failure::Permanent(reason)) => {
                ("failed", None, Some(reason.as_str()))
            }
        };
        // Only the attempt that still holds the row records it: a second
        // replica's attempt after an expired lease reports nothing twice.
        let updated: Option<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE reminder_deliveries
                SET state = $4, attempt_at = coalesce($5, attempt_at), last_error = $6,
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
        .fetch_optional(&mut *tx)
        .await?;
        let Some(remind_at) = updated else {
            tx.rollback().await?;
            return Ok(());
        };
        let outcome_label = if state == "pending" { "retry" } else { state };
        let m = &row.reminder.0;
        let data = ReminderEventData {
            task_id: m.task_id,
            reminder_id: m.reminder_id,
            remind_at: m.remind_at,
            due_at: m.due_at,
            title: m.title.clone(),
            reason: error.map(str::to_owned),
            fired_at: None,
            late_ms: None,
            sent_at: None,
            channel: Some(kind.to_owned()),
            attempts: Some(row.attempts),
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
