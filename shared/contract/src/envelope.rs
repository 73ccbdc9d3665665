//! The CloudEvents 1.0 envelope (structured mode) every message carries, the
//! event types, and the topics they travel on.

use crate::domain::{Recurrence, Task};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The logical topics (without `KAFKA_TOPIC_PREFIX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    TaskEvents,
    Reminders,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::TaskEvents, Topic::Reminders];

    pub fn base_name(self) -> &'static str {
        match self {
            Topic::TaskEvents => "task-events",
            Topic::Reminders => "reminders",
        }
    }
}

/// Topic names with the deployment's prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    pub fn dlq(&self, topic: Topic) -> String {
        format!("{}{}.dlq", self.prefix, topic.base_name())
    }

    /// Every topic the platform uses, dead-letter topics included.
    pub fn all(&self) -> Vec<String> {
        Topic::ALL
            .into_iter()
            .flat_map(|t| [self.name(t), self.dlq(t)])
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "task.created")]
    TaskCreated,
    #[serde(rename = "task.updated")]
    TaskUpdated,
    #[serde(rename = "task.completed")]
    TaskCompleted,
    #[serde(rename = "task.reopened")]
    TaskReopened,
    #[serde(rename = "task.deleted")]
    TaskDeleted,
    #[serde(rename = "reminder.scheduled")]
    ReminderScheduled,
    #[serde(rename = "reminder.cancelled")]
    ReminderCancelled,
    #[serde(rename = "reminder.triggered")]
    ReminderTriggered,
    #[serde(rename = "reminder.sent")]
    ReminderSent,
    #[serde(rename = "reminder.failed")]
    ReminderFailed,
    #[serde(rename = "user.notifications.updated")]
    UserNotificationsUpdated,
    #[serde(rename = "user.erased")]
    UserErased,
    #[serde(rename = "recurring.created")]
    RecurringCreated,
    #[serde(rename = "recurring.instance.created")]
    RecurringInstanceCreated,
    #[serde(rename = "recurring.rule.changed")]
    RecurringRuleChanged,
    #[serde(rename = "recurring.cancelled")]
    RecurringCancelled,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::TaskCreated,
        EventType::TaskUpdated,
        EventType::TaskCompleted,
        EventType::TaskReopened,
        EventType::TaskDeleted,
        EventType::ReminderScheduled,
        EventType::ReminderCancelled,
        EventType::ReminderTriggered,
        EventType::ReminderSent,
        EventType::ReminderFailed,
        EventType::UserNotificationsUpdated,
        EventType::UserErased,
        EventType::RecurringCreated,
        EventType::RecurringInstanceCreated,
        EventType::RecurringRuleChanged,
        EventType::RecurringCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskCreated => "task.created",
            EventType::TaskUpdated => "task.updated",
            EventType::TaskCompleted => "task.completed",
            EventType::TaskReopened => "task.reopened",
            EventType::TaskDeleted => "task.deleted",
            EventType::ReminderScheduled => "reminder.scheduled",
            EventType::ReminderCancelled => "reminder.cancelled",
            EventType::ReminderTriggered => "reminder.triggered",
            EventType::ReminderSent => "reminder.sent",
            EventType::ReminderFailed => "reminder.failed",
            EventType::UserNotificationsUpdated => "user.notifications.updated",
            EventType::UserErased => "user.erased",
            EventType::RecurringCreated => "recurring.created",
            EventType::RecurringInstanceCreated => "recurring.instance.created",
            EventType::RecurringRuleChanged => "recurring.rule.changed",
            EventType::RecurringCancelled => "recurring.cancelled",
        }
    }

    /// A change of a task (`task.*`: its data is a [`TaskEventData`]).
    pub fn is_task_change(self) -> bool {
        matches!(
            self,
            EventType::TaskCreated
                | EventType::TaskUpdated
                | EventType::TaskCompleted
                | EventType::TaskReopened
                | EventType::TaskDeleted
        )
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// A user's own events travel with their task events: one stream per
    /// user, applied in order by every consumer that reads it.
    pub fn topic(self) -> Topic {
        match self {
            EventType::TaskCreated
            | EventType::TaskUpdated
            | EventType::TaskCompleted
            | EventType::TaskReopened
            | EventType::TaskDeleted
            | EventType::UserNotificationsUpdated
            | EventType::UserErased
            | EventType::RecurringCreated
            | EventType::RecurringInstanceCreated
            | EventType::RecurringRuleChanged
            | EventType::RecurringCancelled => Topic::TaskEvents,
            EventType::ReminderScheduled
            | EventType::ReminderCancelled
            | EventType::ReminderTriggered
            | EventType::ReminderSent
            | EventType::ReminderFailed => Topic::Reminders,
        }
    }

    /// The `dataschema` attribute: the payload's schema and its version.
    pub fn data_schema(self) -> &'static str {
        match self {
            EventType::UserNotificationsUpdated | EventType::UserErased => "user-event/v1",
            EventType::RecurringCreated
            | EventType::RecurringInstanceCreated
            | EventType::RecurringRuleChanged
            | EventType::RecurringCancelled => "recurring-event/v1",
            _ => match self.topic() {
                Topic::TaskEvents => "task-event/v1",
                Topic::Reminders => "reminder-event/v1",
            },
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `type` of an event as read: one this code knows, or one that a newer
/// producer added during a rolling deploy. DESIGN promises
/// backward-compatible evolution, so an unknown type is data, not an error:
/// consumers skip what they do not handle, the audit stores it and
/// todo-realtime forwards it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    Known(EventType),
    Unknown(String),
}

impl EventKind {
    pub fn known(&self) -> Option<EventType> {
        match self {
            EventKind::Known(t) => Some(*t),
            EventKind::Unknown(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Known(t) => t.as_str(),
            EventKind::Unknown(name) => name,
        }
    }
}

impl From<EventType> for EventKind {
    fn from(t: EventType) -> Self {
        EventKind::Known(t)
    }
}

impl PartialEq<EventType> for EventKind {
    fn eq(&self, other: &EventType) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(match EventType::parse(&name) {
            Some(t) => EventKind::Known(t),
            None => EventKind::Unknown(name),
        })
    }
}

/// A CloudEvents 1.0 document in structured mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<D = serde_json::Value> {
    pub specversion: String,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventKind,
    pub source: String,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub time: DateTime<Utc>,
    pub subject: String,
    pub datacontenttype: String,
    pub dataschema: String,
    pub userid: String,
    pub correlationid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// The W3C trace context of the change (the CloudEvents
    /// distributed-tracing extension), when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Extension attribute: the User-Agent of the HTTP client that made
    /// the change (changes made through todo-api only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
    /// Extension attribute: the client's address, only where the operator
    /// chose to record it (`AUDIT_CLIENT_IP`): it is personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientip: Option<String>,
    pub sequence: i64,
    pub data: D,
}

impl Envelope<serde_json::Value> {
    /// Parses a message value, refusing anything that is not a 1.0 envelope.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(EnvelopeError::Json)?;
        if env.specversion != SPEC_VERSION {
            return Err(EnvelopeError::SpecVersion(env.specversion));
        }
        Ok(env)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a CloudEvents envelope: {0}")]
    Json(serde_json::Error),
    #[error("unsupported specversion {0:?}, expected \"1.0\"")]
    SpecVersion(String),
}

/// The payload of every `task.*` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEventData {
    /// The task after the change (for `task.deleted`, as it was when deleted).
    pub task: Task,
    /// The task before the change (absent for `task.created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Task>,
    /// The fields that changed (absent for `task.created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
}

/// The payload of every `reminder.*` event. Which optional fields are set
/// depends on the type: `reason` (cancelled, failed), `fired_at` and
/// `late_ms` (triggered), `sent_at` (sent). `Default` is there for struct
/// update syntax (`..Default::default()` after the reminder's own fields),
/// not as a reminder of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReminderEventData {
    pub task_id: Uuid,
    pub reminder_id: Uuid,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub remind_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::optional")]
    pub due_at: Option<DateTime<Utc>>,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::rfc3339::optional"
    )]
    pub fired_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_ms: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::rfc3339::optional"
    )]
    pub sent_at: Option<DateTime<Utc>>,
    /// The channel a `reminder.sent` / `reminder.failed` is about (`email`,
    /// `webhook`, `webpush`); absent for the platform's own delivery (the
    /// log line and the user's open pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Attempts the channel's delivery took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
}

/// The data of todo-recurring's events about a series
/// (`recurring-event/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecurringEventData {
    pub series_id: Uuid,
    /// The task the event is about (also the subject): the one that started
    /// or changed the series, the new instance, or the one whose change
    /// ended it.
    pub task_id: Uuid,
    /// The series' rule (for `recurring.cancelled`, its last).
    pub recurrence: Recurrence,
    /// The series' DTSTART.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub series_start: DateTime<Utc>,
    /// The due time the series produces next; null when nothing follows.
    #[serde(serialize_with = "crate::rfc3339::optional")]
    pub next_occurrence: Option<DateTime<Utc>>,
    /// `recurring.instance.created`: the instance's occurrence (its due time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::rfc3339::optional"
    )]
    pub occurrence: Option<DateTime<Utc>>,
    /// `recurring.instance.created`: what made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<InstanceCause>,
    /// `recurring.rule.changed`: the rule before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Recurrence>,
    /// `recurring.cancelled`: why the series ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SeriesEnd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceCause {
    /// The previous instance was completed (`on_completion`).
    Completion,
    /// Its occurrence came (`schedule`).
    Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesEnd {
    /// The task's `recurrence` was removed.
    RuleRemoved,
    /// `COUNT` or `UNTIL` was reached.
    Ended,
    /// The latest instance of an `on_completion` series was deleted: no
    /// completion can continue it.
    TaskDeleted,
    /// The rule, or an instance, could not be evaluated.
    Failed,
}

/// Where a change came from, for the audit: the HTTP client's User-Agent
/// and (when recorded) its address. Changes a service makes on its own
/// (an instance, a fired reminder) have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub user_agent: Option<String>,
    pub client_ip: Option<std::net::IpAddr>,
}

impl Origin {
    /// No client: a service's own change.
    pub fn none() -> &'static Origin {
        static NONE: Origin = Origin {
            user_agent: None,
            client_ip: None,
        };
        &NONE
    }
}

/// What a service knows when it records an event; the outbox adds the id,
/// time and per-user sequence.
#[derive(Debug, Clone)]
pub struct EventDraft<D> {
    pub event_type: EventType,
    pub source: &'static str,
    pub subject: String,
    pub userid: String,
    pub correlationid: String,
    pub causationid: Option<String>,
    pub origin: Origin,
    pub data: D,
}

impl<D> EventDraft<D> {
    pub fn into_envelope(self, id: Uuid, time: DateTime<Utc>, sequence: i64) -> Envelope<D> {
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id,
            event_type: self.event_type.into(),
            source: self.source.to_owned(),
            time,
            subject: self.subject,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            dataschema: self.event_type.data_schema().to_owned(),
            userid: self.userid,
            correlationid: self.correlationid,
            causationid: self.causationid,
            traceparent: None,
            useragent: self.origin.user_agent,
            clientip: self.origin.client_ip.map(|ip| ip.to_string()),
            sequence,
            data: self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_take_the_prefix_and_have_dead_letter_twins() {
        let names = TopicNames::new("t1.");
        assert_eq!(names.name(Topic::TaskEvents), "t1.task-events");
        assert_eq!(
            names.all(),
            [
                "t1.task-events",
                "t1.task-events.dlq",
                "t1.reminders",
                "t1.reminders.dlq"
            ]
        );
    }

    #[test]
    fn event_types_round_trip_and_route_to_their_topic() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::TaskDeleted.topic(), Topic::TaskEvents);
        assert_eq!(EventType::ReminderSent.topic(), Topic::Reminders);
    }

    #[test]
    fn an_event_of_a_type_this_code_does_not_know_is_read_as_such() {
        let draft = EventDraft {
            event_type: EventType::TaskCreated,
            source: "todo-api",
            subject: "s".into(),
            userid: "alice".into(),
            correlationid: "c".into(),
            causationid: None,
            origin: Default::default(),
            data: serde_json::json!({}),
        };
        let mut json =
            serde_json::to_value(draft.into_envelope(Uuid::nil(), Utc::now(), 1)).unwrap();
        json["type"] = serde_json::json!("task.archived");
        let env = Envelope::from_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(env.event_type, EventKind::Unknown("task.archived".into()));
        assert_eq!(env.event_type.known(), None);
        assert_eq!(serde_json::to_value(&env).unwrap()["type"], "task.archived");
    }

    #[test]
    fn envelopes_refuse_other_spec_versions_and_garbage() {
        assert!(Envelope::from_slice(b"not json").is_err());
        let draft = EventDraft {
            event_type: EventType::TaskCreated,
            source: "todo-api",
            subject: "s".into(),
            userid: "alice".into(),
            correlationid: "c".into(),
            causationid: None,
            origin: Default::default(),
            data: serde_json::json!({}),
        };
        let mut env = draft.into_envelope(Uuid::nil(), Utc::now(), 1);
        let ok = serde_json::to_vec(&env).unwrap();
        assert_eq!(Envelope::from_slice(&ok).unwrap().sequence, 1);
        env.specversion = "0.3".into();
        let old = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            Envelope::from_slice(&old),
            Err(EnvelopeError::SpecVersion(_))
        ));
    }
}
