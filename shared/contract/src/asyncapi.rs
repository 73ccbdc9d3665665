//! The AsyncAPI 3.0 document of the platform's topics and of todo-realtime's
//! WebSocket (`shared/contract/asyncapi.json`), and the JSON Schemas of the
//! events it references, both compiled in: todo-realtime serves them at
//! `/asyncapi.json` and `/schemas/events/{file}`, where the document's
//! relative `$ref`s lead.

pub const DOCUMENT: &str = include_str!("../asyncapi.json");

/// Every event schema file (`shared/contract/schemas/events/`), by file name.
pub const EVENT_SCHEMAS: [(&str, &str); 19] = [
    (
        "envelope.json",
        include_str!("../schemas/events/envelope.json"),
    ),
    ("task.json", include_str!("../schemas/events/task.json")),
    (
        "task.created.json",
        include_str!("../schemas/events/task.created.json"),
    ),
    (
        "task.updated.json",
        include_str!("../schemas/events/task.updated.json"),
    ),
    (
        "task.completed.json",
        include_str!("../schemas/events/task.completed.json"),
    ),
    (
        "task.reopened.json",
        include_str!("../schemas/events/task.reopened.json"),
    ),
    (
        "task.deleted.json",
        include_str!("../schemas/events/task.deleted.json"),
    ),
    (
        "reminder.scheduled.json",
        include_str!("../schemas/events/reminder.scheduled.json"),
    ),
    (
        "reminder.cancelled.json",
        include_str!("../schemas/events/reminder.cancelled.json"),
    ),
    (
        "reminder.triggered.json",
        include_str!("../schemas/events/reminder.triggered.json"),
    ),
    (
        "reminder.sent.json",
        include_str!("../schemas/events/reminder.sent.json"),
    ),
    (
        "reminder.failed.json",
        include_str!("../schemas/events/reminder.failed.json"),
    ),
    (
        "user.notifications.updated.json",
        include_str!("../schemas/events/user.notifications.updated.json"),
    ),
    (
        "user.erased.json",
        include_str!("../schemas/events/user.erased.json"),
    ),
    (
        "recurring.json",
        include_str!("../schemas/events/recurring.json"),
    ),
    (
        "recurring.created.json",
        include_str!("../schemas/events/recurring.created.json"),
    ),
    (
        "recurring.instance.created.json",
        include_str!("../schemas/events/recurring.instance.created.json"),
    ),
    (
        "recurring.rule.changed.json",
        include_str!("../schemas/events/recurring.rule.changed.json"),
    ),
    (
        "recurring.cancelled.json",
        include_str!("../schemas/events/recurring.cancelled.json"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EventType;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("asyncapi.json is JSON")
    }

    #[test]
    fn every_event_type_is_a_message_with_its_schema_on_its_topic() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().expect("messages");
        for t in EventType::ALL {
            let name = t.as_str();
            let (key, message) = messages
                .iter()
                .find(|(_, m)| m["name"] == name)
                .unwrap_or_else(|| panic!("{name} has no message in asyncapi.json"));
            let file = format!("{name}.json");
            assert_eq!(
                message["payload"]["$ref"],
                format!("schemas/events/{file}"),
                "{name}'s payload"
            );
            assert!(
                EVENT_SCHEMAS.iter().any(|(f, _)| *f == file),
                "{file} is served"
            );
            let channel = match t.topic() {
                crate::envelope::Topic::TaskEvents => "taskEvents",
                crate::envelope::Topic::Reminders => "reminders",
            };
            assert_eq!(
                doc["channels"][channel]["messages"][key]["$ref"],
                format!("#/components/messages/{key}"),
                "{name} is on {channel}"
            );
        }
    }

    #[test]
    fn every_message_of_a_topic_is_an_event_type_the_code_knows() {
        let doc = document();
        for channel in ["taskEvents", "reminders"] {
            for (key, _) in doc["channels"][channel]["messages"]
                .as_object()
                .expect("messages")
            {
                let name = doc["components"]["messages"][key]["name"]
                    .as_str()
                    .expect("name");
                assert!(
                    EventType::ALL.iter().any(|t| t.as_str() == name),
                    "{channel} documents {name}, which the code does not know"
                );
            }
        }
    }
}
