//! The REST routes of DESIGN.md. Every change runs in one transaction that
//! writes the task and its event (outbox); the relay is signalled after the
//! commit.

use crate::error::ApiError;
use crate::extract::{CorrelationId, IdempotencyKey, IfMatch, JsonBody};
use crate::idempotency::{self, Claim};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::HashMap;
use todo_shared::db;
use todo_shared::domain::{
    Description, FieldError, Priority, Recurrence, Reminders, Tags, Task, TaskSpec, Timestamp,
    Title, UserId,
};
use todo_shared::http::AuthUser;
use todo_shared::tasks::{self, Actor, ListQuery, SortField, StatusFilter};
use uuid::Uuid;

const SOURCE: &str = "todo-api";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", post(create_task).get(list_tasks))
        .route(
            "/tasks/{id}",
            get(get_task)
                .put(replace_task)
                .patch(patch_task)
                .delete(delete_task),
        )
        .route("/tasks/{id}/complete", post(complete_task))
        .route("/tasks/{id}/reopen", post(reopen_task))
}

/// The writable fields of a task, for `POST /tasks` and `PUT /tasks/{id}`.
/// Read-only fields (a task fetched, edited and sent back) are accepted and
/// ignored; any other unknown field is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskBody {
    title: Title,
    #[serde(default)]
    description: Option<Description>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    tags: Option<Tags>,
    #[serde(default)]
    due_at: Option<Timestamp>,
    #[serde(default)]
    recurrence: Option<Recurrence>,
    #[serde(default)]
    reminders: Option<Reminders>,
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default, rename = "completed")]
    _completed: Option<IgnoredAny>,
    #[serde(default, rename = "completed_at")]
    _completed_at: Option<IgnoredAny>,
    #[serde(default, rename = "series_id")]
    _series_id: Option<IgnoredAny>,
    #[serde(default, rename = "version")]
    _version: Option<IgnoredAny>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<IgnoredAny>,
}

impl TaskBody {
    fn into_spec(self) -> Result<TaskSpec, ApiError> {
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

/// A JSON merge patch (RFC 7396) of the writable fields: absent leaves a
/// field alone, `null` clears it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskPatch {
    #[serde(default, deserialize_with = "present")]
    title: Option<Option<Title>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<Description>>,
    #[serde(default, deserialize_with = "present")]
    priority: Option<Option<Priority>>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Option<Tags>>,
    #[serde(default, deserialize_with = "present")]
    due_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present")]
    recurrence: Option<Option<Recurrence>>,
    #[serde(default, deserialize_with = "present")]
    reminders: Option<Option<Reminders>>,
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default, rename = "completed")]
    _completed: Option<IgnoredAny>,
    #[serde(default, rename = "completed_at")]
    _completed_at: Option<IgnoredAny>,
    #[serde(default, rename = "series_id")]
    _series_id: Option<IgnoredAny>,
    #[serde(default, rename = "version")]
    _version: Option<IgnoredAny>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<IgnoredAny>,
}

impl TaskPatch {
    fn apply(self, mut spec: TaskSpec) -> Result<TaskSpec, ApiError> {
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

/// A task with its version as the `ETag`.
fn task_response(status: StatusCode, task: &Task) -> Response {
    let mut response = (status, Json(task)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", task.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", task.id)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    response
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // A string that is not a UUID names no task.
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

/// A POST's transaction, with its `Idempotency-Key` bookkeeping.
struct PostTx<'a> {
    tx: Transaction<'static, Postgres>,
    user: &'a UserId,
    key: Option<String>,
}

impl<'a> PostTx<'a> {
    /// Begins the transaction; `Err(response)` replays a stored answer.
    async fn begin(
        state: &AppState,
        user: &'a UserId,
        key: IdempotencyKey,
        uri: &Uri,
        body: &[u8],
    ) -> Result<Result<PostTx<'a>, Response>, ApiError> {
        let mut tx = db::begin(&state.pool).await?;
        if let Some(k) = &key.0 {
            let fp = idempotency::fingerprint("POST", uri.path(), body);
            if let Claim::Replay { status, body } =
                idempotency::claim(&mut tx, user, k, &fp).await?
            {
                tx.rollback().await?;
                let mut response = (status, Json(&body)).into_response();
                if let Some(v) = body.get("version").and_then(|v| v.as_i64()) {
                    if let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\"")) {
                        response.headers_mut().insert(header::ETAG, etag);
                    }
                }
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(Err(response));
            }
        }
        Ok(Ok(PostTx {
            tx,
            user,
            key: key.0,
        }))
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Records the response for the key (if any) and commits.
    async fn commit(
        mut self,
        state: &AppState,
        status: StatusCode,
        task: &Task,
        wrote_event: bool,
    ) -> Result<Response, ApiError> {
        if let Some(k) = &self.key {
            let body = serde_json::to_value(task).map_err(|e| ApiError::Internal(e.to_string()))?;
            idempotency::store(&mut self.tx, self.user, k, status, &body).await?;
        }
        self.tx.commit().await?;
        if wrote_event {
            state.signal.committed();
        }
        Ok(task_response(status, task))
    }
}

async fn create_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    key: IdempotencyKey,
    uri: Uri,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    state.writes.check(&user)?;
    let spec = body.value.into_spec()?;
    let mut post = match PostTx::begin(&state, &user, key, &uri, &body.raw).await? {
        Ok(post) => post,
        Err(replayed) => return Ok(replayed),
    };
    let actor = actor(&user, &correlation);
    let (task, _event) = tasks::create(post.conn(), &actor, spec, None).await?;
    post.commit(&state, StatusCode::CREATED, &task, true).await
}

fn actor<'a>(user: &'a UserId, correlation: &'a str) -> Actor<'a> {
    Actor {
        user,
        correlation_id: correlation,
        causation_id: Some(correlation.to_owned()),
        source: SOURCE,
    }
}

async fn get_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let task = db::read(&state.pool, || tasks::find(&state.pool, &user, id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(task_response(StatusCode::OK, &task))
}

async fn replace_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    if_match: IfMatch,
    Path(id): Path<String>,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    state.writes.check(&user)?;
    let id = parse_id(&id)?;
    let spec = body.value.into_spec()?;
    update_with(&state, &user, &correlation, id, if_match, |_| Ok(spec)).await
}

async fn patch_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    if_match: IfMatch,
    Path(id): Path<String>,
    body: JsonBody<TaskPatch>,
) -> Result<Response, ApiError> {
    state.writes.check(&user)?;
    let id = parse_id(&id)?;
    let patch = body.value;
    update_with(&state, &user, &correlation, id, if_match, move |current| {
        let spec = tasks::spec_of(current).map_err(ApiError::Internal)?;
        patch.apply(spec)
    })
    .await
}

async fn update_with(
    state: &AppState,
    user: &UserId,
    correlation: &str,
    id: Uuid,
    if_match: IfMatch,
    new_spec: impl FnOnce(&Task) -> Result<TaskSpec, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = db::begin(&state.pool).await?;
    let current = tasks::find_for_update(&mut tx, user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if_match.check(current.version)?;
    let spec = new_spec(&current)?;
    let unchanged = current.clone();
    match tasks::update(&mut tx, &actor(user, correlation), current, spec).await? {
        Some((task, _event)) => {
            tx.commit().await?;
            state.signal.committed();
            Ok(task_response(StatusCode::OK, &task))
        }
        None => {
            tx.rollback().await?;
            Ok(task_response(StatusCode::OK, &unchanged))
        }
    }
}

#[derive(Clone, Copy)]
enum StateChange {
    Complete,
    Reopen,
}

async fn complete_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    if_match: IfMatch,
    key: IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    change_state(
        &state,
        &user,
        &correlation,
        if_match,
        key,
        &uri,
        &id,
        StateChange::Complete,
    )
    .await
}

async fn reopen_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    if_match: IfMatch,
    key: IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    change_state(
        &state,
        &user,
        &correlation,
        if_match,
        key,
        &uri,
        &id,
        StateChange::Reopen,
    )
    .await
}

/// Completing a completed task (or reopening an open one) changes nothing
/// and publishes nothing: it answers the task as it is.
#[allow(clippy::too_many_arguments)]
async fn change_state(
    state: &AppState,
    user: &UserId,
    correlation: &str,
    if_match: IfMatch,
    key: IdempotencyKey,
    uri: &Uri,
    id: &str,
    change: StateChange,
) -> Result<Response, ApiError> {
    state.writes.check(user)?;
    let id = parse_id(id)?;
    let mut post = match PostTx::begin(state, user, key, uri, &[]).await? {
        Ok(post) => post,
        Err(replayed) => return Ok(replayed),
    };
    let current = tasks::find_for_update(post.conn(), user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if_match.check(current.version)?;
    let unchanged = current.clone();
    let actor = actor(user, correlation);
    let changed = match change {
        StateChange::Complete => tasks::complete(post.conn(), &actor, current).await?,
        StateChange::Reopen => tasks::reopen(post.conn(), &actor, current).await?,
    };
    match changed {
        Some((task, _event)) => post.commit(state, StatusCode::OK, &task, true).await,
        None => post.commit(state, StatusCode::OK, &unchanged, false).await,
    }
}

async fn delete_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    CorrelationId(correlation): CorrelationId,
    if_match: IfMatch,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.writes.check(&user)?;
    let id = parse_id(&id)?;
    let mut tx = db::begin(&state.pool).await?;
    let current = tasks::find_for_update(&mut tx, &user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if_match.check(current.version)?;
    tasks::delete(&mut tx, &actor(&user, &correlation), current).await?;
    tx.commit().await?;
    state.signal.committed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct Page {
    items: Vec<Task>,
    limit: i64,
    offset: i64,
    next_offset: Option<i64>,
}

pub const MAX_PAGE: i64 = 200;
/// Deepest page: PostgreSQL reads and drops every row before the offset, so
/// a deep offset with a text search costs a scan of the user's tasks.
pub const MAX_OFFSET: i64 = 10_000;

/// The `q` parameter: text PostgreSQL can hold, of a bounded length; empty
/// means no search.
fn search_text(value: &str) -> Result<Option<String>, String> {
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    let n = value.chars().count();
    if n > todo_shared::domain::MAX_SEARCH_CHARS {
        return Err(format!(
            "must be at most {} characters (got {n})",
            todo_shared::domain::MAX_SEARCH_CHARS
        ));
    }
    Ok(Some(value.to_owned()).filter(|t| !t.is_empty()))
}

/// Parses the list parameters, naming every bad one. Unknown parameters are
/// refused too, so a misspelt filter does not silently return everything.
fn parse_list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
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
    if errors.is_empty() {
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        Ok(q)
    } else {
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        Err(ApiError::Validation(errors))
    }
}

async fn list_tasks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<impl Serialize>, ApiError> {
    let q = parse_list_query(&params)?;
    // One more than asked tells whether another page exists.
    let mut probe = q.clone();
    probe.limit = q.limit + 1;
    let mut items = db::read(&state.pool, || tasks::list(&state.pool, &user, &probe)).await?;
    let more = items.len() as i64 > q.limit;
    items.truncate(q.limit as usize);
    Ok(Json(Page {
        next_offset: more.then_some(q.offset + q.limit),
        items,
        limit: q.limit,
        offset: q.offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
