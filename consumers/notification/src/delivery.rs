//! How a reminder reaches its user. Here: a structured log line; the
//! `reminder.triggered` and `reminder.sent` events are what todo-realtime
//! pushes to the user's connected clients.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A reminder being delivered.
#[derive(Debug, Clone)]
pub struct Due {
    pub reminder_id: Uuid,
    /// The same on every attempt of one firing (and different for the next
    /// firing of a reminder whose time moved): what a channel gives its
    /// receiver to recognise a repeated delivery.
    pub delivery_id: Uuid,
    pub task_id: Uuid,
    pub user_id: String,
    pub title: String,
    pub due_at: Option<DateTime<Utc>>,
    pub remind_at: DateTime<Utc>,
    /// How late it is delivered (after downtime: the whole downtime).
    pub late_ms: i64,
    /// 1 for the first attempt.
    pub attempt: i32,
}

impl Due {
    /// The delivery id of the firing of `reminder_id` meant for `remind_at`.
    pub fn delivery_id(reminder_id: Uuid, remind_at: DateTime<Utc>) -> Uuid {
        Uuid::new_v5(&reminder_id, &remind_at.timestamp_micros().to_be_bytes())
    }
}

/// A channel to the user. It runs after the reminder's firing has
/// committed, outside any transaction, and may be attempted more than once
/// for one firing (a crash between the delivery and its record): at least
/// once, with the same `delivery_id`. An `Err` is retried with backoff and
/// ends in `reminder.failed` with its reason.
#[async_trait::async_trait]
pub trait Delivery: Send + Sync + 'static {
    async fn deliver(&self, due: &Due) -> Result<(), String>;
}

pub struct LogDelivery;

#[async_trait::async_trait]
impl Delivery for LogDelivery {
    async fn deliver(&self, due: &Due) -> Result<(), String> {
        // Ids and times only: the title is the user's text.
        tracing::info!(
            target: "reminder",
            user_id = %due.user_id,
            task_id = %due.task_id,
            reminder_id = %due.reminder_id,
            delivery_id = %due.delivery_id,
            due_at = ?due.due_at,
            remind_at = %due.remind_at,
            late_ms = due.late_ms,
            "reminder"
        );
        Ok(())
    }
}
