//! The JSON text frames a client receives.
//!
//! An event: `{"type":"task.created","id":…,"sequence":42,"correlationid":…,
//! "causationid":…,"time":…,"subject":<task id>,"data":{…}}` (the envelope
//! without its transport fields). Control frames have types without a dot:
//! `ready` once the backlog of a resume has been sent, `resync` when the
//! client must fetch the state over REST; both carry the latest sequence
//! this replica knows for the user (or null).

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use todo_contract::envelope::Envelope;

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: uuid::Uuid,
    sequence: i64,
    correlationid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a str>,
    time: chrono::DateTime<chrono::Utc>,
    subject: &'a str,
    data: &'a serde_json::Value,
}

#[derive(Serialize)]
struct ControlFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence: Option<u64>,
}

pub fn event(envelope: &Envelope) -> Utf8Bytes {
    to_text(&EventFrame {
        kind: envelope.event_type.as_str(),
        id: envelope.id,
        sequence: envelope.sequence,
        correlationid: &envelope.correlationid,
        causationid: envelope.causationid.as_deref(),
        time: envelope.time,
        subject: &envelope.subject,
        data: &envelope.data,
    })
}

pub fn ready(latest: Option<u64>) -> Utf8Bytes {
    to_text(&ControlFrame {
        kind: "ready",
        sequence: latest,
    })
}

pub fn resync(latest: Option<u64>) -> Utf8Bytes {
    to_text(&ControlFrame {
        kind: "resync",
        sequence: latest,
    })
}

fn to_text<T: Serialize>(frame: &T) -> Utf8Bytes {
    // Serializing these types (strings, numbers, a parsed JSON value) to a
    // string cannot fail.
    serde_json::to_string(frame)
        .unwrap_or_else(|e| unreachable!("frame serialization failed: {e}"))
        .into()
}
