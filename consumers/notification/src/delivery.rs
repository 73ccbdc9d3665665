//! How a reminder reaches its user. Here: a structured log line; the
//! `reminder.triggered` and `reminder.sent` events are what todo-realtime
//! pushes to the user's connected clients.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A reminder being delivered.
#[derive(Debug)]
pub struct Due<'a> {
    pub reminder_id: Uuid,
    pub task_id: Uuid,
    pub user_id: &'a str,
    pub title: &'a str,
    pub due_at: Option<DateTime<Utc>>,
    pub remind_at: DateTime<Utc>,
    /// How late it fires (after downtime: the whole downtime).
    pub late_ms: i64,
    /// 1 for the first attempt.
    pub attempt: i32,
}

/// A channel to the user. It runs inside the transaction that records the
/// delivery, so it must be quick; an `Err` is retried with backoff and ends
/// in `reminder.failed` with its reason.
pub trait Delivery: Send + Sync + 'static {
    fn deliver(&self, due: &Due<'_>) -> Result<(), String>;
}

pub struct LogDelivery;

impl Delivery for LogDelivery {
    fn deliver(&self, due: &Due<'_>) -> Result<(), String> {
        tracing::info!(
            target: "reminder",
            user_id = due.user_id,
            task_id = %due.task_id,
            reminder_id = %due.reminder_id,
            title = due.title,
            due_at = ?due.due_at,
            remind_at = %due.remind_at,
            late_ms = due.late_ms,
            "reminder"
        );
        Ok(())
    }
}
