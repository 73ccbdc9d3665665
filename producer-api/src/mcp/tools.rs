//! The tools' names, descriptions, annotations and JSON Schemas. Each input
//! schema is generated (schemars) from the types that parse the arguments:
//! the REST body and patch types plus the few arguments REST carries in its
//! path and headers ([`Target`], [`Expected`], [`Retry`]).

use crate::input::{ListParams, TaskBody, TaskPatch};
use crate::operations::Page;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use todo_contract::domain::Task;

/// The task a call is about (REST: the path's `{id}`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The task's id (a UUID), as add_task and list_tasks return it.
    pub task_id: String,
}

/// REST's `If-Match`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The task's version as you last saw it: the call changes nothing and
    /// fails if the task has changed since. Leave it out to change the task
    /// whatever its version.
    #[serde(default)]
    pub expected_version: Option<i64>,
}

/// REST's `Idempotency-Key`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Any 1-255 visible ASCII characters, new for each intended change:
    /// retrying the same call with the same key returns the first result
    /// instead of changing anything twice.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Arguments that a tool takes beside those of a REST body.
pub trait Arguments {
    /// The property names of the type's schema (a test holds them equal).
    const NAMES: &'static [&'static str];
}

impl Arguments for Target {
    const NAMES: &'static [&'static str] = &["task_id"];
}

impl Arguments for Expected {
    const NAMES: &'static [&'static str] = &["expected_version"];
}

impl Arguments for Retry {
    const NAMES: &'static [&'static str] = &["idempotency_key"];
}

#[derive(Debug, thiserror::Error)]
#[error("the schema of {0} is not a JSON object with properties")]
pub struct SchemaError(&'static str);

fn generate<T: JsonSchema>(serialize: bool) -> Result<JsonObject, SchemaError> {
    let mut settings = SchemaSettings::draft2020_12();
    // Some assistants resolve no `$ref`: every subschema is written in place.
    settings.inline_subschemas = true;
    if serialize {
        settings = settings.for_serialize();
    }
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let Value::Object(mut object) = schema.to_value() else {
        return Err(SchemaError(std::any::type_name::<T>()));
    };
    // The type's own name and doc speak to Rust readers, not to a model.
    object.remove("$schema");
    object.remove("title");
    object.remove("description");
    if object.get("type") != Some(&Value::String("object".into())) {
        return Err(SchemaError(std::any::type_name::<T>()));
    }
    Ok(object)
}

/// The input schema of arguments parsed by several types: their
/// properties side by side, each keeping its own required ones.
fn input(parts: &[&JsonObject]) -> Arc<JsonObject> {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for part in parts {
        if let Some(Value::Object(p)) = part.get("properties") {
            properties.extend(p.clone());
        }
        if let Some(Value::Array(r)) = part.get("required") {
            required.extend(r.iter().cloned());
        }
    }
    let mut object = JsonObject::new();
    object.insert("type".into(), "object".into());
    object.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        object.insert("required".into(), Value::Array(required));
    }
    object.insert("additionalProperties".into(), false.into());
    Arc::new(object)
}

fn tool(
    name: &'static str,
    title: &str,
    description: &'static str,
    input: Arc<JsonObject>,
    output: Arc<JsonObject>,
    annotations: ToolAnnotations,
) -> Tool {
    Tool::new(name, description, input)
        .with_title(title)
        .with_raw_output_schema(output)
        .with_annotations(annotations.open_world(false))
}

/// Every tool, as `tools/list` answers.
pub fn all() -> Result<Vec<Tool>, SchemaError> {
    let task = Arc::new(generate::<Task>(true)?);
    let page = Arc::new(generate::<Page>(true)?);
    let body = generate::<TaskBody>(false)?;
    let patch = generate::<TaskPatch>(false)?;
    let target = generate::<Target>(false)?;
    let expected = generate::<Expected>(false)?;
    let retry = generate::<Retry>(false)?;
    let read = || ToolAnnotations::new().read_only(true);
    let change = |idempotent| {
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(idempotent)
    };
    Ok(vec![
        tool(
            "add_task",
            "Add a task",
            "Create a task in the user's todo list; returns the task with its id. \
             Only title is required. A recurring task needs due_at (its first occurrence).",
            input(&[&body, &retry]),
            task.clone(),
            change(false),
        ),
        tool(
            "list_tasks",
            "List tasks",
            "List the user's tasks, newest first unless sort says otherwise, filtered by \
             status, priority, tag, text (q) and due range; one page at a time \
             (next_offset gives the next page).",
            Arc::new(generate::<ListParams>(false)?),
            page,
            read(),
        ),
        tool(
            "get_task",
            "Get a task",
            "Get one of the user's tasks by its id.",
            input(&[&target]),
            task.clone(),
            read(),
        ),
        tool(
            "update_task",
            "Update a task",
            "Change some fields of a task: only the fields given change; null clears a field \
             (title and priority cannot be cleared). Returns the task as it now is.",
            input(&[&target, &expected, &patch]),
            task.clone(),
            change(true),
        ),
        tool(
            "complete_task",
            "Complete a task",
            "Mark a task done. Completing a recurring task creates its next occurrence \
             (shortly after, as a new task). Completing a done task changes nothing.",
            input(&[&target, &expected, &retry]),
            task.clone(),
            change(true),
        ),
        tool(
            "reopen_task",
            "Reopen a task",
            "Mark a done task as not done again. Reopening an open task changes nothing.",
            input(&[&target, &expected, &retry]),
            task.clone(),
            change(true),
        ),
        tool(
            "delete_task",
            "Delete a task",
            "Delete a task for good; returns the task as it was.",
            input(&[&target, &expected]),
            task,
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool_named(name: &str) -> Tool {
        all().unwrap().into_iter().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn schemas_describe_the_formats_a_model_must_write() {
        let add = Value::Object(tool_named("add_task").input_schema.as_ref().clone());
        let p = &add["properties"];
        assert_eq!(add["required"], serde_json::json!(["title"]));
        assert!(p["due_at"]["description"]
            .as_str()
            .unwrap()
            .contains("RFC 3339"));
        let text = add.to_string();
        for format in [
            "FREQ=WEEKLY;BYDAY=MO",
            "IANA time zone",
            "ISO 8601 duration before due_at",
        ] {
            assert!(text.contains(format), "{format}: {text}");
        }
        assert!(!text.contains("$ref"), "{text}");
        for hidden in ["\"version\"", "\"_id\"", "\"completed_at\""] {
            assert!(!text.contains(hidden), "{hidden}: {text}");
        }
        let priority = p["priority"].to_string();
        for level in ["low", "medium", "high", "urgent"] {
            assert!(priority.contains(level), "{priority}");
        }
        assert!(p["idempotency_key"].is_object());
    }

    fn names_of<T: JsonSchema + Arguments>() {
        let schema = Value::Object(generate::<T>(false).unwrap());
        let names: Vec<_> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(names, T::NAMES);
    }

    #[test]
    fn the_arguments_taken_are_those_the_schemas_name() {
        names_of::<Target>();
        names_of::<Expected>();
        names_of::<Retry>();
    }

    #[test]
    fn update_takes_the_task_id_and_a_version_besides_the_patch() {
        let update = Value::Object(tool_named("update_task").input_schema.as_ref().clone());
        assert_eq!(update["required"], serde_json::json!(["task_id"]));
        for name in ["task_id", "expected_version", "title", "reminders"] {
            assert!(update["properties"][name].is_object(), "{name}");
        }
    }

    #[test]
    fn only_the_reads_are_read_only_and_only_delete_is_destructive() {
        for t in all().unwrap() {
            let a = t.annotations.clone().unwrap();
            let reads = ["list_tasks", "get_task"].contains(&t.name.as_ref());
            assert_eq!(a.read_only_hint, Some(reads), "{}", t.name);
            if !reads {
                assert_eq!(
                    a.destructive_hint,
                    Some(t.name == "delete_task"),
                    "{}",
                    t.name
                );
            }
            assert!(t.output_schema.is_some(), "{}", t.name);
        }
    }
}
