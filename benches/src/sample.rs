//! Realistic events, built the way the platform builds them: a task as
//! todo-api stores it, wrapped by [`EventDraft::into_envelope`] as the outbox
//! does, serialized with `serde_json::to_vec`.

use chrono::{DateTime, TimeDelta, Utc};
use todo_contract::domain::Task;
use todo_contract::envelope::{Envelope, EventDraft, EventType, TaskEventData};
use uuid::Uuid;

/// A task with a description, tags, a weekly recurrence and two reminders:
/// the fuller end of what users create (its `task.created` is ~1 KB).
pub fn task(id: Uuid, now: DateTime<Utc>) -> Task {
    let due = now + TimeDelta::days(1);
    let json = serde_json::json!({
        "id": id,
        "title": "Prepare the quarterly report for the board meeting",
        "description": "Collect the figures from finance and sales, update the charts, \
                        and send a draft to Alice and Bob for review before Thursday noon.",
        "priority": "high",
        "tags": ["work", "reports", "q4"],
        "completed": false,
        "completed_at": null,
        "due_at": due,
        "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "on_completion"},
        "reminders": [{"before": "PT1H"}, {"at": due - TimeDelta::days(1) + TimeDelta::hours(2)}],
        "series_id": Uuid::now_v7(),
        "version": 1,
        "created_at": now,
        "updated_at": now,
    });
    serde_json::from_value(json).expect("the sample task is valid")
}

/// The draft todo-api hands to the outbox for a change of `task`.
pub fn draft(
    event_type: EventType,
    user: &str,
    task: Task,
    previous: Option<Task>,
) -> EventDraft<TaskEventData> {
    let changed = previous.as_ref().map(|p| {
        p.changed_fields(&task)
            .into_iter()
            .map(str::to_owned)
            .collect()
    });
    EventDraft {
        event_type,
        source: "todo-api",
        subject: task.id.to_string(),
        userid: user.to_owned(),
        correlationid: Uuid::new_v4().to_string(),
        causationid: None,
        origin: Default::default(),
        data: TaskEventData {
            task,
            previous,
            changed,
        },
    }
}

/// A `task.created` envelope of `user`'s, as the outbox writes it.
pub fn created(user: &str, sequence: i64) -> Envelope<TaskEventData> {
    let now = todo_contract::domain::now();
    draft(
        EventType::TaskCreated,
        user,
        task(Uuid::now_v7(), now),
        None,
    )
    .into_envelope(Uuid::now_v7(), now, sequence)
}

/// A `task.updated` envelope (title and priority changed): it carries the
/// task twice, before and after.
pub fn updated(user: &str, sequence: i64) -> Envelope<TaskEventData> {
    let now = todo_contract::domain::now();
    let before = task(Uuid::now_v7(), now - TimeDelta::hours(1));
    let mut after = before.clone();
    after.title = "Prepare the quarterly report for the board (final)".into();
    after.priority = todo_contract::domain::Priority::Urgent;
    after.version += 1;
    after.updated_at = now;
    draft(EventType::TaskUpdated, user, after, Some(before)).into_envelope(
        Uuid::now_v7(),
        now,
        sequence,
    )
}

/// The message value of [`created`]: what travels on the topic.
pub fn created_payload(user: &str, sequence: i64) -> Vec<u8> {
    serde_json::to_vec(&created(user, sequence)).expect("envelopes serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn sample_events_are_about_a_kilobyte_and_parse_like_a_consumer_parses_them() {
        let bytes = created_payload("load-user-17", 42);
        assert!((800..1400).contains(&bytes.len()), "{} bytes", bytes.len());
        let env = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(env.sequence, 42);
        assert_eq!(env.event_type, EventType::TaskCreated);
        let data = TaskEventData::deserialize(&env.data).unwrap();
        assert_eq!(data.task.tags.len(), 3);

        let updated = serde_json::to_vec(&updated("u", 2)).unwrap();
        let env = Envelope::from_slice(&updated).unwrap();
        let data = TaskEventData::deserialize(&env.data).unwrap();
        assert_eq!(
            data.changed.as_deref(),
            Some(&["title".to_owned(), "priority".to_owned()][..])
        );
    }
}
