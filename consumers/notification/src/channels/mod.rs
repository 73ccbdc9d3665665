//! The channels a fired reminder reaches its person by, besides the log
//! line and their open pages: e-mail, Web Push and a webhook, as each user
//! chose them (`PUT /me/notifications`, kept here from
//! `user.notifications.updated`).
//!
//! A firing writes one `reminder_deliveries` row per (channel, target) in
//! the transaction that fires it; each channel's [`worker`] delivers its
//! rows after that commit, on its own bounded pool with its own timeout, so
//! a slow channel holds up nobody but itself.

pub mod breaker;
pub mod email;
pub mod net;
pub mod webhook;
pub mod webpush;
pub mod worker;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use todo_platform::preferences::Preferences;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Email,
    Webhook,
    Webpush,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [
        ChannelKind::Email,
        ChannelKind::Webhook,
        ChannelKind::Webpush,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Webpush => "webpush",
        }
    }
}

/// What a reminder says, as the firing saw it (stored with each delivery,
/// so every attempt sends the same thing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub reminder_id: Uuid,
    pub task_id: Uuid,
    pub title: String,
    pub due_at: Option<DateTime<Utc>>,
    pub remind_at: DateTime<Utc>,
    /// IANA zone the due time is shown in.
    pub time_zone: String,
}

impl Message {
    /// The due time as its person reads it, in the task's zone.
    pub fn due_local(&self) -> Option<String> {
        let zone: chrono_tz::Tz = self.time_zone.parse().unwrap_or(chrono_tz::UTC);
        self.due_at.map(|t| {
            t.with_timezone(&zone)
                .format("%a %-d %b %Y, %H:%M %Z")
                .to_string()
        })
    }

    /// Where the person opens the task.
    pub fn link(&self, app_url: &str) -> String {
        format!("{}/?task={}", app_url.trim_end_matches('/'), self.task_id)
    }
}

/// One attempt at one delivery.
pub struct Attempt<'a> {
    /// The same on every attempt of one firing: the receiver's key to
    /// recognise a repeated delivery.
    pub delivery_id: Uuid,
    pub user_id: &'a str,
    pub message: &'a Message,
    /// The channel's settings at firing time (an `EmailChannel`, a
    /// `WebhookChannel`, a `PushSubscription`).
    pub settings: &'a serde_json::Value,
    /// 1 for the first attempt.
    pub attempt: i32,
}

impl Attempt<'_> {
    /// The channel's settings as `T`; unreadable ones fail the delivery for
    /// good (another attempt would read the same).
    pub fn settings<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, Failure> {
        T::deserialize(self.settings).map_err(|e| Failure::Permanent(format!("{what}: {e}")))
    }
}

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Worth another attempt later (a timeout, a 4xx SMTP reply, 5xx or 429).
    #[error("{0}")]
    Transient(String),
    /// Another attempt would fail the same way (a refused address, a 4xx).
    #[error("{0}")]
    Permanent(String),
}

/// A way to a person.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + 'static {
    fn kind(&self) -> ChannelKind;
    async fn send(&self, attempt: &Attempt<'_>) -> Result<(), Failure>;
}

/// A channel this server was not given the settings for: its deliveries
/// fail with a reason that says what is missing.
pub struct Unconfigured(pub ChannelKind, pub &'static str);

#[async_trait::async_trait]
impl Channel for Unconfigured {
    fn kind(&self) -> ChannelKind {
        self.0
    }

    async fn send(&self, _attempt: &Attempt<'_>) -> Result<(), Failure> {
        Err(Failure::Permanent(self.1.to_owned()))
    }
}

/// The deliveries one firing makes for a user: (channel, target, settings)
/// for every enabled channel, each push subscription its own.
pub fn targets(preferences: &Preferences) -> Vec<(ChannelKind, String, serde_json::Value)> {
    let mut out = Vec::new();
    if let Some(email) = preferences.email.as_ref().filter(|e| e.enabled) {
        out.push((
            ChannelKind::Email,
            email.address.as_str().to_owned(),
            json(email),
        ));
    }
    if let Some(hook) = preferences.webhook.as_ref().filter(|w| w.enabled) {
        out.push((
            ChannelKind::Webhook,
            hook.url.as_str().to_owned(),
            json(hook),
        ));
    }
    for sub in &preferences.webpush.subscriptions {
        out.push((
            ChannelKind::Webpush,
            sub.endpoint.as_str().to_owned(),
            json(sub),
        ));
    }
    out
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}
