//! What a client may send to change or list tasks, parsed into domain types.
//! REST bodies and query strings and the MCP tools' arguments are parsed by
//! these same types, and the tools' input schemas are generated from them,
//! so both edges accept, refuse and describe exactly the same things.

use crate::error::ApiError;
use schemars::JsonSchema;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use todo_contract::domain::{
    self, Description, FieldError, Priority, Recurrence, Reminders, Tags, TaskSpec, Timestamp,
    Title,
};
use todo_store::tasks::{ListQuery, SortField, StatusFilter};

/// Declares a body of writable task fields that also accepts, and ignores,
/// a task's read-only fields: a task fetched, edited and sent back must not
/// be refused. One list for every such body, since serde's
/// `deny_unknown_fields` does not combine with a flattened struct.
macro_rules! accepting_read_only_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($fields)*
            #[serde(default, rename = "id")]
            #[schemars(skip)]
            _id: Option<IgnoredAny>,
            #[serde(default, rename = "completed")]
            #[schemars(skip)]
            _completed: Option<IgnoredAny>,
            #[serde(default, rename = "completed_at")]
            #[schemars(skip)]
            _completed_at: Option<IgnoredAny>,
            #[serde(default, rename = "series_id")]
            #[schemars(skip)]
            _series_id: Option<IgnoredAny>,
            #[serde(default, rename = "series_start")]
            #[schemars(skip)]
            _series_start: Option<IgnoredAny>,
            #[serde(default, rename = "next_occurrence")]
            #[schemars(skip)]
            _next_occurrence: Option<IgnoredAny>,
            #[serde(default, rename = "version")]
            #[schemars(skip)]
            _version: Option<IgnoredAny>,
            #[serde(default, rename = "created_at")]
            #[schemars(skip)]
            _created_at: Option<IgnoredAny>,
            #[serde(default, rename = "updated_at")]
            #[schemars(skip)]
            _updated_at: Option<IgnoredAny>,
        }
    };
}

accepting_read_only_fields! {
/// The writable fields of a task, for `POST /tasks`, `PUT /tasks/{id}` and
/// `add_task`. Read-only fields (a task fetched, edited and sent back) are
/// accepted and ignored; any other unknown field is refused.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// What to do: 1 to 500 characters, not blank.
    title: Title,
    /// Free text up to 10,000 characters.
    #[serde(default)]
    description: Option<Description>,
    /// One of low, medium (the default), high, urgent.
    #[serde(default)]
    priority: Option<Priority>,
    /// Up to 20 tags of 1 to 50 characters each, such as ["home", "garden"].
    #[serde(default)]
    tags: Option<Tags>,
    /// When the task is due: an RFC 3339 time such as 2026-12-01T09:00:00Z.
    /// A recurring task needs it (its first occurrence).
    #[serde(default)]
    due_at: Option<Timestamp>,
    /// How the task repeats: {"rule": an RFC 5545 RRULE such as
    /// FREQ=WEEKLY;BYDAY=MO, "timezone": an IANA time zone such as
    /// Europe/Berlin, "mode": "on_completion" or "schedule"}. Needs due_at.
    #[serde(default)]
    recurrence: Option<Recurrence>,
    /// Up to 10 reminders, each {"before": an ISO 8601 duration before due_at
    /// such as PT1H} or {"at": an RFC 3339 time}.
    #[serde(default)]
    reminders: Option<Reminders>,
}
}

impl TaskBody {
    /// The task these fields describe, with the rules that span fields
    /// checked (a recurrence and lead-time reminders need `due_at`).
    pub fn into_spec(self) -> Result<TaskSpec, ApiError> {
        let spec = TaskSpec {
            title: self.title,
            description: self.description,
            priority: self.priority.unwrap_or_default(),
            tags: self.tags.unwrap_or_default(),
            due_at: self.due_at,
            recurrence: self.recurrence,
            reminders: self.reminders.unwrap_or_default(),
        };
        spec.check().map_err(ApiError::Validation)?;
        Ok(spec)
    }
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

accepting_read_only_fields! {
/// A JSON merge patch (RFC 7396) of the writable fields, for
/// `PATCH /tasks/{id}` and `update_task`: absent leaves a field alone,
/// `null` clears it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    /// A new title: 1 to 500 characters, not blank (cannot be null).
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<Title>")]
    title: Option<Option<Title>>,
    /// A new description (null clears it).
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<Description>>,
    /// A new priority: low, medium, high or urgent (cannot be null).
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<Priority>")]
    priority: Option<Option<Priority>>,
    /// The new tags, replacing the old ones (null or [] clears them).
    #[serde(default, deserialize_with = "present")]
    tags: Option<Option<Tags>>,
    /// A new due time: an RFC 3339 time such as 2026-12-01T09:00:00Z (null
    /// clears it).
    #[serde(default, deserialize_with = "present")]
    due_at: Option<Option<Timestamp>>,
    /// A new recurrence: {"rule": an RFC 5545 RRULE such as
    /// FREQ=WEEKLY;BYDAY=MO, "timezone": an IANA time zone, "mode":
    /// "on_completion" or "schedule"} (null stops the repetition).
    #[serde(default, deserialize_with = "present")]
    recurrence: Option<Option<Recurrence>>,
    /// The new reminders, replacing the old ones: each {"before": an ISO 8601
    /// duration before due_at such as PT1H} or {"at": an RFC 3339 time}
    /// (null or [] clears them).
    #[serde(default, deserialize_with = "present")]
    reminders: Option<Option<Reminders>>,
}
}

impl TaskPatch {
    /// `spec` with this patch applied and the whole checked again.
    pub fn apply(self, mut spec: TaskSpec) -> Result<TaskSpec, ApiError> {
        let mut errors = Vec::new();
        match self.title {
            Some(Some(t)) => spec.title = t,
            Some(None) => errors.push(FieldError::new("title", "must not be null")),
            None => {}
        }
        if let Some(d) = self.description {
            spec.description = d;
        }
        match self.priority {
            Some(Some(p)) => spec.priority = p,
            Some(None) => errors.push(FieldError::new("priority", "must not be null")),
            None => {}
        }
        if let Some(t) = self.tags {
            spec.tags = t.unwrap_or_default();
        }
        if let Some(d) = self.due_at {
            spec.due_at = d;
        }
        if let Some(r) = self.recurrence {
            spec.recurrence = r;
        }
        if let Some(r) = self.reminders {
            spec.reminders = r.unwrap_or_default();
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        spec.check().map_err(ApiError::Validation)?;
        Ok(spec)
    }
}

pub const MAX_PAGE: i64 = 200;
/// Deepest page: PostgreSQL reads and drops every row before the offset, so
/// a deep offset with a text search costs a scan of the user's tasks.
pub const MAX_OFFSET: i64 = 10_000;

/// The list filters of `GET /tasks` and `list_tasks`. The query string (and
/// the tool's arguments, as text) are parsed by [`parse_list_query`], which
/// names every bad parameter at once; this type describes them, and a test
/// holds the two to the same names.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// open, completed or all (the default).
    pub status: Option<StatusParam>,
    /// Only tasks of this priority: low, medium, high or urgent.
    pub priority: Option<Priority>,
    /// Only tasks that carry this tag.
    pub tag: Option<String>,
    /// Only tasks whose title or description contains this text (case
    /// insensitive, at most 200 characters).
    pub q: Option<String>,
    /// Only tasks due at or after this RFC 3339 time.
    pub due_after: Option<Timestamp>,
    /// Only tasks due before this RFC 3339 time.
    pub due_before: Option<Timestamp>,
    /// Order: created_at (the default), updated_at, due_at, priority or
    /// title; prefix with - for descending (default -created_at).
    pub sort: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[schemars(range(min = 1, max = 200))]
    pub limit: Option<i64>,
    /// Tasks to skip, 0 to 10000 (default 0); the page's next_offset says
    /// where the next page starts.
    #[schemars(range(min = 0, max = 10000))]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusParam {
    Open,
    Completed,
    All,
}

/// The `q` parameter: text PostgreSQL can hold, of a bounded length; empty
/// means no search.
fn search_text(value: &str) -> Result<Option<String>, String> {
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    let n = value.chars().count();
    if n > domain::MAX_SEARCH_CHARS {
        return Err(format!(
            "must be at most {} characters (got {n})",
            domain::MAX_SEARCH_CHARS
        ));
    }
    Ok(Some(value.to_owned()).filter(|t| !t.is_empty()))
}

/// Parses the list parameters, naming every bad one. Unknown parameters are
/// refused too, so a misspelt filter does not silently return everything.
pub fn parse_list_query<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    let mut errors = Vec::new();
    for (name, value) in params {
        let mut bad = |msg: String| errors.push(FieldError::new(name.clone(), msg));
        match name.as_str() {
                "status" => match value.as_str() {
                    "all" => q.status = StatusFilter::All,
                    "open" => q.status = StatusFilter::Open,
                    "completed" => q.status = StatusFilter::Completed,
                    _ => bad("expected open, completed or all".into()),
                },
                "priority" => match value.parse() {
                    Ok(p) => q.priority = Some(p),
                    Err(e) => bad(e),
                },
                "tag" => match Tags::try_from(vec![value.clone()]) {
                    Ok(_) => q.tag = Some(value.clone()),
                    Err(e) => bad(e.replace("tag 0", "a tag")),
                },
                "q" => match search_text(value) {
                    Ok(text) => q.text = text,
                    Err(e) => bad(e),
                },
                "due_after" | "due_before" => match value.parse::<Timestamp>() {
                    Ok(t) if name == "due_after" => q.due_after = Some(t.get()),
                    Ok(t) => q.due_before = Some(t.get()),
                    Err(e) => bad(e),
                },
                "sort" => {
                    let (desc, field) = match value.strip_prefix('-') {
                        Some(f) => (true, f),
                        None => (false, value.as_str()),
                    };
                    q.descending = desc;
                    q.sort = match field {
                        "created_at" => SortField::CreatedAt,
                        "updated_at" => SortField::UpdatedAt,
                        "due_at" => SortField::DueAt,
                        "priority" => SortField::Priority,
                        "title" => SortField::Title,
                        _ => {
                            bad("expected created_at, updated_at, due_at, priority or title, with - for descending".into());
                            q.sort
                        }
                    };
                }
                "limit" => match value.parse::<i64>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => q.limit = n,
                    _ => bad(format!("expected a number from 1 to {MAX_PAGE}")),
                },
                "offset" => match value.parse::<i64>() {
                    Ok(n) if (0..=MAX_OFFSET).contains(&n) => q.offset = n,
                    _ => bad(format!(
                        "expected a number from 0 to {MAX_OFFSET} (narrow the list with filters to reach further)"
                    )),
                },
                _ => bad("unknown query parameter".into()),
            }
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field));
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_parameters_parse_and_bad_ones_are_named() {
        let q = parse_list_query(&params(&[
            ("status", "open"),
            ("sort", "-priority"),
            ("limit", "10"),
        ]))
        .unwrap();
        assert_eq!(q.status, StatusFilter::Open);
        assert_eq!(q.sort, SortField::Priority);
        assert!(q.descending);
        assert_eq!(q.limit, 10);
        let err = parse_list_query(&params(&[("limit", "0"), ("priorty", "high")])).unwrap_err();
        match err {
            ApiError::Validation(e) => {
                let fields: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["limit", "priorty"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_list_schema_names_exactly_the_parameters_the_parser_accepts() {
        let schema = serde_json::to_value(schemars::schema_for!(ListParams)).unwrap();
        let names: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let good = |name: &str| match name {
            "status" => "open",
            "priority" => "high",
            "due_after" | "due_before" => "2026-12-01T09:00:00Z",
            "sort" => "-due_at",
            "limit" | "offset" => "10",
            _ => "x",
        };
        for name in &names {
            let p = params(&[(name, good(name))]);
            assert!(parse_list_query(&p).is_ok(), "{name} is accepted");
        }
        let expected = [
            "due_after",
            "due_before",
            "limit",
            "offset",
            "priority",
            "q",
            "sort",
            "status",
            "tag",
        ];
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, expected);
    }

    #[test]
    fn a_patch_can_clear_but_not_null_the_title() {
        let patch: TaskPatch = serde_json::from_str(r#"{"title": null}"#).unwrap();
        let spec = TaskSpec {
            title: Title::try_from("t".to_string()).unwrap(),
            description: None,
            priority: Priority::Low,
            tags: Tags::default(),
            due_at: None,
            recurrence: None,
            reminders: Reminders::default(),
        };
        assert!(matches!(
            patch.apply(spec.clone()),
            Err(ApiError::Validation(_))
        ));
        let patch: TaskPatch =
            serde_json::from_str(r#"{"description": "d", "priority": "high"}"#).unwrap();
        let after = patch.apply(spec.clone()).unwrap();
        assert_eq!(after.description.unwrap().as_str(), "d");
        assert_eq!(after.priority, Priority::High);
        let patch: TaskPatch = serde_json::from_str(r#"{"description": null}"#).unwrap();
        assert_eq!(patch.apply(spec).unwrap().description, None);
    }
}
