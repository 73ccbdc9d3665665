//! Fires reminders at their time, then delivers them. No polling: the clock
//! sleeps until the nearest reminder (on the database's clock) and is woken
//! when one is scheduled or moved, or when this replica's partitions change.
//!
//! A reminder goes `scheduled` → `delivering` → `sent` (or `failed`):
//!
//! 1. Firing: in one transaction per user, its due reminders become
//!    `delivering` and their `reminder.triggered` events are appended.
//!    Nothing has reached anyone yet: a rollback here repeats nothing.
//! 2. Delivering, after that commit: each reminder is leased (its
//!    `attempt_at` moves `lease` ahead, so no other replica takes it), then
//!    delivered outside any transaction, with a delivery id that is the same
//!    on every attempt of that firing.
//! 3. Recording: `sent` with `reminder.sent`, or a retry later, or `failed`
//!    with `reminder.failed` after `max_attempts`. A crash between 2 and 3
//!    leaves the lease to expire and the reminder to be delivered again with
//!    the same delivery id: at least once, never silently dropped.
//!
//! Which reminders: only those whose task events come from a partition this
//! replica owns and has read to its end since it was assigned. After a
//! crash or a rebalance, the completion that cancels a reminder may still
//! sit unread in a partition; its new owner reads it before it fires
//! anything of that partition.
//!
//! Locks: a user's sequence row, then their reminder rows, as the consumer
//! does (one lock order everywhere), and never two users' in one
//! transaction.

use crate::channels::{targets, Message};
use crate::delivery::{Delivery, Due};
use crate::schedule::{publish, Cause};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use prometheus::{Histogram, IntCounter, Registry};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use todo_consumer::{HandlerError, Progress};
use todo_contract::envelope::{EventType, ReminderEventData};
use todo_platform::metrics::{counter, histogram};
use todo_platform::preferences::Preferences;
use todo_platform::retry::{backoff, run_rounds};
use todo_platform::shutdown::Shutdown;
use todo_platform::telemetry::{self, TraceParent};
use todo_store::outbox::OutboxSignal;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

/// The longest sleep: a safety net for a wake-up another replica missed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Users whose reminders are fired per round, and reminders delivered.
const BATCH: i64 = 500;
/// Users fired at once.
const FIRE_CONCURRENCY: usize = 8;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 32;

pub struct Clock {
    pub pool: PgPool,
    pub changed: Arc<Notify>,
    pub signal: OutboxSignal,
    pub delivery: Arc<dyn Delivery>,
    /// Delivery attempts before `reminder.failed`.
    pub max_attempts: i32,
    /// Which partitions of `topic` this replica owns and has caught up on.
    pub progress: Arc<Progress>,
    /// The task-events topic (prefix included) the reminders' partitions
    /// are of.
    pub topic: String,
    /// How long a delivery in progress keeps other replicas away.
    pub lease: Duration,
    pub metrics: ClockMetrics,
    /// The channel workers, woken when a firing has committed deliveries.
    pub channel_workers: Vec<Arc<Notify>>,
}

#[derive(Clone)]
pub struct ClockMetrics {
    rounds: IntCounter,
    lateness: Histogram,
}

impl ClockMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let rounds = counter(
            registry,
            "todo_reminder_clock_rounds_total",
            "Rounds of the reminder clock (each fires, delivers and computes its next sleep)",
        )?;
        let lateness = histogram(
            registry,
            "todo_reminder_lateness_seconds",
            "From a reminder's time to the commit of its firing (reminder.triggered)",
            prometheus::exponential_buckets(0.01, 2.0, 16)?,
        )?;
        Ok(Self { rounds, lateness })
    }
}

#[derive(sqlx::FromRow)]
struct Delivering {
    reminder_id: Uuid,
    task_id: Uuid,
    user_id: String,
    title: String,
    due_at: Option<DateTime<Utc>>,
    remind_at: DateTime<Utc>,
    attempts: i32,
    time_zone: String,
    /// The trace of the change that scheduled it.
    traceparent: Option<String>,
}

impl Delivering {
    fn data(&self) -> ReminderEventData {
        ReminderEventData {
            task_id: self.task_id,
            reminder_id: self.reminder_id,
            remind_at: self.remind_at,
            due_at: self.due_at,
            title: self.title.clone(),
            ..Default::default()
        }
    }
}

impl Clock {
    pub async fn run(self, shutdown: Shutdown) {
        // A partition caught up or taken away changes what is ours to fire.
        let (progress, changed) = (self.progress.clone(), self.changed.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.recv() => return,
                    _ = progress.ownership_changed() => changed.notify_one(),
                }
            }
        });
        run_rounds("reminder", &self.changed, shutdown, || self.round()).await
    }

    /// Fires and delivers what is due; returns how long until the next
    /// reminder of this replica's partitions.
    async fn round(&self) -> anyhow::Result<Duration> {
        self.metrics.rounds.inc();
        let partitions = self.progress.caught_up_partitions(&self.topic);
        loop {
            let users: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT r.user_id FROM reminders r
                  WHERE r.state = 'scheduled' AND r.attempt_at <= now()
                    AND (r.kafka_partition IS NULL OR r.kafka_partition = ANY($1))
                    -- An erased user's reminders never fire, even before
                    -- user.erased has reached this service.
                    AND NOT EXISTS (SELECT 1 FROM event_sequences e
                                     WHERE e.user_id = r.user_id AND e.erased_at IS NOT NULL)
                  LIMIT $2",
            )
            .bind(&partitions)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            // Users' firings touch disjoint rows (each its own sequence row
            // first), so several run at once: one after the other, each a
            // few round trips, they fell seconds behind 170 reminders/s.
            // The futures are made first: a stream that maps over borrowed
            // users does not prove itself Send to `tokio::spawn`.
            let partitions = &partitions;
            let firings: Vec<_> = users
                .iter()
                .map(|user| self.fire(user, partitions))
                .collect();
            let fired: Vec<anyhow::Result<()>> = futures::stream::iter(firings)
                .buffer_unordered(FIRE_CONCURRENCY)
                .collect()
                .await;
            fired.into_iter().collect::<anyhow::Result<()>>()?;
            if (users.len() as i64) < BATCH {
                break;
            }
        }
        loop {
            let leased = self.lease_due(&partitions).await?;
            let n = leased.len();
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(leased)
                .map(|r| self.deliver(r))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<()>>()?;
            if (n as i64) < BATCH {
                break;
            }
        }
        let next: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(EXTRACT(EPOCH FROM r.attempt_at - clock_timestamp()), 0)::float8
               FROM reminders r
              WHERE r.state IN ('scheduled', 'delivering')
                AND (r.kafka_partition IS NULL OR r.kafka_partition = ANY($1))
                AND NOT EXISTS (SELECT 1 FROM event_sequences e
                                 WHERE e.user_id = r.user_id AND e.erased_at IS NOT NULL)
              ORDER BY r.attempt_at LIMIT 1
                FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(&partitions)
        .fetch_optional(&self.pool)
        .await?;
        Ok(todo_platform::wake::after(next, MAX_SLEEP))
    }

    /// Fires `user`'s due reminders: `delivering`, with their
    /// `reminder.triggered`, in one transaction.
    async fn fire(&self, user: &str, partitions: &[i32]) -> anyhow::Result<()> {
        let mut tx = todo_platform::db::begin(&self.pool).await?;
        if !crate::erasure::lock_user(&mut tx, &self.pool, user).await? {
            return Ok(());
        }
        let due: Vec<Delivering> = sqlx::query_as(
            "UPDATE reminders SET state = 'delivering', attempts = 0, attempt_at = now(),
                    updated_at = now()
              WHERE reminder_id IN (
                    SELECT reminder_id FROM reminders
                     WHERE user_id = $1 AND state = 'scheduled' AND attempt_at <= now()
                       AND (kafka_partition IS NULL OR kafka_partition = ANY($2))
                       FOR UPDATE SKIP LOCKED)
              RETURNING reminder_id, task_id, user_id, title, due_at, remind_at, attempts, time_zone,
                        traceparent",
        )
        .bind(user)
        .bind(partitions)
        .fetch_all(&mut *tx)
        .await?;
        let now = Utc::now();
        // Each firing continues the trace that scheduled its reminder; its
        // deliveries continue the firing's.
        let mut spans = Vec::with_capacity(due.len());
        let mut traces = Vec::with_capacity(due.len());
        for r in &due {
            let span = fire_span(r);
            let data = ReminderEventData {
                fired_at: Some(now),
                late_ms: Some((now - r.remind_at).num_milliseconds().max(0)),
                ..r.data()
            };
            publish(&mut tx, &cause(r), EventType::ReminderTriggered, data)
                .instrument(span.clone())
                .await
                .map_err(anyhow_of)?;
            traces.push(TraceParent::of(&span).map(|t| t.to_string()));
            spans.push(span);
        }
        let deliveries = if due.is_empty() {
            0
        } else {
            add_deliveries(&mut tx, user, &due, &traces).await?
        };
        tx.commit().await?;
        for r in &due {
            let late = (now - r.remind_at).to_std().unwrap_or_default();
            self.metrics.lateness.observe(late.as_secs_f64());
        }
        drop(spans);
        if !due.is_empty() {
            self.signal.committed();
        }
        if deliveries > 0 {
            for worker in &self.channel_workers {
                worker.notify_one();
            }
        }
        Ok(())
    }

    /// Takes the reminders due for (another) delivery attempt, moving their
    /// `attempt_at` past the lease.
    async fn lease_due(&self, partitions: &[i32]) -> anyhow::Result<Vec<Delivering>> {
        Ok(sqlx::query_as(
            "UPDATE reminders SET attempt_at = now() + make_interval(secs => $3), updated_at = now()
              WHERE reminder_id IN (
                    SELECT r.reminder_id FROM reminders r
                     WHERE r.state = 'delivering' AND r.attempt_at <= now()
                       AND (r.kafka_partition IS NULL OR r.kafka_partition = ANY($1))
                       AND NOT EXISTS (SELECT 1 FROM event_sequences e
                                        WHERE e.user_id = r.user_id AND e.erased_at IS NOT NULL)
                     ORDER BY r.attempt_at LIMIT $2
                       FOR UPDATE SKIP LOCKED)
              RETURNING reminder_id, task_id, user_id, title, due_at, remind_at, attempts, time_zone,
                        traceparent",
        )
        .bind(partitions)
        .bind(BATCH)
        .bind(self.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// One delivery attempt, then its record.
    async fn deliver(&self, r: Delivering) -> anyhow::Result<()> {
        let now = Utc::now();
        let due = Due {
            reminder_id: r.reminder_id,
            delivery_id: Due::delivery_id(r.reminder_id, r.remind_at),
            task_id: r.task_id,
            user_id: r.user_id.clone(),
            title: r.title.clone(),
            due_at: r.due_at,
            remind_at: r.remind_at,
            late_ms: (now - r.remind_at).num_milliseconds().max(0),
            attempt: r.attempts + 1,
        };
        let span = tracing::info_span!(
            "deliver",
            otel.name = "reminder deliver",
            channel = "log",
            reminder_id = %r.reminder_id,
            delivery_id = %due.delivery_id,
            trace_id = tracing::field::Empty,
        );
        let parent = r.traceparent.as_deref().and_then(TraceParent::parse);
        telemetry::continue_trace(&span, parent.as_ref());
        async {
            let outcome = self.delivery.deliver(&due).await;
            self.record(&r, due.attempt, outcome).await
        }
        .instrument(span)
        .await
    }

    async fn record(
        &self,
        r: &Delivering,
        attempts: i32,
        outcome: Result<(), String>,
    ) -> anyhow::Result<()> {
        let mut tx = todo_platform::db::begin(&self.pool).await?;
        if !crate::erasure::lock_user(&mut tx, &self.pool, &r.user_id).await? {
            return Ok(());
        }
        // The row may have moved on meanwhile (the reminder was moved to a
        // new time and scheduled again): then this firing's outcome is
        // reported, and the row left to its new schedule.
        let current: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT state, remind_at FROM reminders WHERE reminder_id = $1 FOR UPDATE",
        )
        .bind(r.reminder_id)
        .fetch_optional(&mut *tx)
        .await?;
        let ours = current.is_some_and(|(state, at)| state == "delivering" && at == r.remind_at);
        let now = Utc::now();
        match outcome {
            Ok(()) => {
                if ours {
                    set_state(&mut tx, r.reminder_id, "sent", attempts, None).await?;
                }
                let sent = ReminderEventData {
                    sent_at: Some(now),
                    ..r.data()
                };
                publish(&mut tx, &cause(r), EventType::ReminderSent, sent)
                    .await
                    .map_err(anyhow_of)?;
            }
            Err(reason) if attempts >= self.max_attempts || !ours => {
                tracing::error!(reminder_id = %r.reminder_id, user_id = %r.user_id, attempts, %reason,
                    "reminder delivery failed for good");
                if ours {
                    set_state(&mut tx, r.reminder_id, "failed", attempts, None).await?;
                }
                let failed = ReminderEventData {
                    reason: Some(reason),
                    ..r.data()
                };
                publish(&mut tx, &cause(r), EventType::ReminderFailed, failed)
                    .await
                    .map_err(anyhow_of)?;
            }
            Err(reason) => {
                let retry = backoff(u32::try_from(attempts).unwrap_or(u32::MAX));
                tracing::warn!(reminder_id = %r.reminder_id, attempts, %reason, retry_in = ?retry,
                    "reminder delivery failed; retrying");
                let at = now + TimeDelta::from_std(retry).unwrap_or_default();
                set_state(&mut tx, r.reminder_id, "delivering", attempts, Some(at)).await?;
            }
        }
        tx.commit().await?;
        self.signal.committed();
        Ok(())
    }
}

/// One delivery per due reminder and target of the user's channels, in
/// the firing's transaction: what has fired is delivered, whatever happens
/// to this process after the commit.
async fn add_deliveries(
    conn: &mut sqlx::PgConnection,
    user: &str,
    due: &[Delivering],
    traces: &[Option<String>],
) -> anyhow::Result<u64> {
    let preferences: Option<sqlx::types::Json<Preferences>> =
        sqlx::query_scalar("SELECT preferences FROM notifier_channels WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(preferences) = preferences else {
        return Ok(0);
    };
    let targets = targets(&preferences.0);
    if targets.is_empty() {
        return Ok(0);
    }
    let (mut ids, mut channels, mut keys, mut reminders, mut settings, mut messages) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut traceparents: Vec<Option<&str>> = vec![];
    for (i, r) in due.iter().enumerate() {
        let trace = traces.get(i).and_then(|t| t.as_deref());
        let message = serde_json::to_value(Message {
            reminder_id: r.reminder_id,
            task_id: r.task_id,
            title: r.title.clone(),
            due_at: r.due_at,
            remind_at: r.remind_at,
            time_zone: r.time_zone.clone(),
        })?;
        for (kind, target, config) in &targets {
            ids.push(Due::delivery_id(r.reminder_id, r.remind_at));
            channels.push(kind.as_str());
            keys.push(target.clone());
            reminders.push(r.reminder_id);
            settings.push(config.clone());
            messages.push(message.clone());
            traceparents.push(trace);
        }
    }
    let added = sqlx::query(
        "INSERT INTO reminder_deliveries
                (delivery_id, channel, target, reminder_id, user_id, settings, reminder, state,
                 attempt_at, traceparent)
         SELECT d, c, t, r, $7, s, m, 'pending', now(), tp
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[], $6::jsonb[],
                       $8::text[])
                AS x(d, c, t, r, s, m, tp)
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&channels)
    .bind(&keys)
    .bind(&reminders)
    .bind(&settings)
    .bind(&messages)
    .bind(user)
    .bind(&traceparents)
    .execute(&mut *conn)
    .await?;
    Ok(added.rows_affected())
}

async fn set_state(
    conn: &mut sqlx::PgConnection,
    reminder_id: Uuid,
    state: &str,
    attempts: i32,
    attempt_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reminders SET state = $2, attempts = $3, attempt_at = coalesce($4, attempt_at),
                updated_at = now()
          WHERE reminder_id = $1",
    )
    .bind(reminder_id)
    .bind(state)
    .bind(attempts)
    .bind(attempt_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every event of one firing has the reminder as its cause and a
/// correlation id of its own, derived from it (the same on a retry).
fn fire_span(r: &Delivering) -> tracing::Span {
    let span = tracing::info_span!(
        "fire reminder",
        otel.name = "reminder fire",
        reminder_id = %r.reminder_id,
        task_id = %r.task_id,
        user_id = %r.user_id,
        trace_id = tracing::field::Empty,
    );
    let parent = r.traceparent.as_deref().and_then(TraceParent::parse);
    telemetry::continue_trace(&span, parent.as_ref());
    span
}

fn cause(r: &Delivering) -> Cause<'_> {
    Cause {
        user: &r.user_id,
        correlation_id: std::borrow::Cow::Owned(
            Due::delivery_id(r.reminder_id, r.remind_at).to_string(),
        ),
        causation_id: Some(r.reminder_id.to_string()),
    }
}

fn anyhow_of(e: HandlerError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
