//! The JSON Schemas of every event type (`shared/contract/schemas/events/`), loaded
//! into one validator set. Used by the tests of every service.

use jsonschema::{Registry, Validator};
use serde_json::Value;
use std::collections::HashMap;
use todo_contract::envelope::EventType;

const BASE: &str = "https://schemas.todo.invalid/events/";

pub use todo_contract::asyncapi::EVENT_SCHEMAS as FILES;

pub struct EventSchemas {
    validators: HashMap<EventType, Validator>,
}

impl EventSchemas {
    pub fn load() -> Result<Self, String> {
        let mut docs = HashMap::new();
        for (name, text) in FILES {
            let doc: Value = serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
            docs.insert(name, doc);
        }
        let mut registry = Registry::new();
        for (name, doc) in &docs {
            registry = registry
                .add(format!("{BASE}{name}"), doc.clone())
                .map_err(|e| format!("{name}: {e}"))?;
        }
        let registry = registry.prepare().map_err(|e| e.to_string())?;
        let mut validators = HashMap::new();
        for t in EventType::ALL {
            let name = format!("{}.json", t.as_str());
            let doc = docs
                .get(name.as_str())
                .ok_or(format!("no schema file {name}"))?;
            let validator = jsonschema::options()
                .with_registry(&registry)
                .should_validate_formats(true)
                .build(doc)
                .map_err(|e| format!("{name}: {e}"))?;
            validators.insert(t, validator);
        }
        Ok(Self { validators })
    }

    /// Checks an event against the schema of its `type`; the error lists
    /// every violation with its JSON pointer.
    pub fn validate(&self, event: &Value) -> Result<EventType, String> {
        let t = event
            .get("type")
            .and_then(Value::as_str)
            .and_then(EventType::parse)
            .ok_or_else(|| format!("no known event type in {event}"))?;
        let validator = &self.validators[&t];
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(format!("{t} violates its schema: {}", errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use todo_contract::domain::{Priority, Task};
    use todo_contract::envelope::{EventDraft, TaskEventData};
    use uuid::Uuid;

    fn task() -> Task {
        let now = todo_contract::domain::now();
        Task {
            id: Uuid::now_v7(),
            title: "Water the plants".into(),
            description: None,
            priority: Priority::High,
            tags: vec!["home".into()],
            completed: false,
            completed_at: None,
            due_at: Some(now),
            recurrence: serde_json::from_value(serde_json::json!(
                {"rule": "FREQ=WEEKLY;BYDAY=MO", "timezone": "Europe/Berlin", "mode": "schedule"}
            ))
            .unwrap(),
            reminders: serde_json::from_value(serde_json::json!([{"before": "PT1H"}])).unwrap(),
            series_id: None,
            series_start: None,
            next_occurrence: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    fn event(t: EventType, data: TaskEventData) -> Value {
        let draft = EventDraft {
            event_type: t,
            source: "todo-api",
            subject: data.task.id.to_string(),
            userid: "alice".into(),
            correlationid: Uuid::new_v4().to_string(),
            causationid: None,
            origin: Default::default(),
            data,
        };
        serde_json::to_value(draft.into_envelope(Uuid::now_v7(), Utc::now(), 7)).unwrap()
    }

    #[test]
    fn the_events_we_produce_satisfy_their_schemas() {
        let schemas = EventSchemas::load().unwrap();
        let before = task();
        let mut after = before.clone();
        after.completed = true;
        after.completed_at = Some(Utc::now());
        after.version = 2;
        let created = event(
            EventType::TaskCreated,
            TaskEventData {
                task: before.clone(),
                previous: None,
                changed: None,
            },
        );
        assert_eq!(schemas.validate(&created), Ok(EventType::TaskCreated));
        let completed = event(
            EventType::TaskCompleted,
            TaskEventData {
                task: after.clone(),
                previous: Some(before.clone()),
                changed: Some(vec!["completed".into(), "completed_at".into()]),
            },
        );
        assert_eq!(schemas.validate(&completed), Ok(EventType::TaskCompleted));
    }

    #[test]
    fn schemas_catch_what_a_consumer_would_trip_over() {
        let schemas = EventSchemas::load().unwrap();
        let mut bad = event(
            EventType::TaskCreated,
            TaskEventData {
                task: task(),
                previous: None,
                changed: None,
            },
        );
        bad["data"]["task"]["priority"] = "critical".into();
        bad["sequence"] = 0.into();
        let err = schemas.validate(&bad).unwrap_err();
        assert!(err.contains("/data/task/priority"), "{err}");
        assert!(err.contains("/sequence"), "{err}");

        // A completion whose task is not completed is not a completion.
        let reopened_as_completed = event(
            EventType::TaskCompleted,
            TaskEventData {
                task: task(),
                previous: Some(task()),
                changed: Some(vec!["completed".into()]),
            },
        );
        assert!(schemas.validate(&reopened_as_completed).is_err());
    }
}
