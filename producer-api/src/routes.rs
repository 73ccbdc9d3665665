//! The REST routes of DESIGN.md: each turns its request into the arguments
//! of an [`operations`] function and its answer into a response (status,
//! `ETag`, `Location`, a replayed `Idempotency-Key`).

use crate::docs::{one_task, task, write};
use crate::error::ApiError;
use crate::extract::{CorrelationId, IdempotencyKey, IfMatch, JsonBody};
use crate::idempotency;
use crate::input::{self, ListParams, TaskBody, TaskPatch};
use crate::operations::{self, Answer, Caller, Idempotency, Page, StateChange, Update};
use crate::origin::ClientOrigin;
use crate::state::AppState;
use aide::axum::routing::{get_with, post_with};
use aide::axum::ApiRouter;
use aide::generate::GenContext;
use aide::openapi::Operation;
use aide::OperationInput;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use todo_contract::domain::Task;
use todo_platform::http::AuthUser;
use todo_platform::openapi::problem;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/tasks",
            post_with(create_task, |op| {
                let op = op
                    .id("createTask")
                    .summary("Create a task")
                    .description("Publishes task.created.")
                    .tag("tasks");
                write(task::<201>(op))
            })
            .get_with(list_tasks, |op| {
                let op = op
                    .id("listTasks")
                    .summary("List tasks")
                    .description("The caller's tasks, filtered, sorted and a page at a time.")
                    .tag("tasks")
                    .input::<Query<ListParams>>()
                    .response_with::<200, Json<Page>, _>(|r| r.description("A page of tasks"));
                problem::<422>(op, "A bad or unknown parameter; `errors` names each")
            }),
        )
        .api_route(
            "/tasks/{id}",
            get_with(get_task, |op| {
                let op = op.id("getTask").summary("Get a task").tag("tasks");
                problem::<404>(task::<200>(op), "No such task of this user")
            })
            .put_with(replace_task, |op| {
                let op = op
                    .id("replaceTask")
                    .summary("Replace a task's writable fields")
                    .description("Publishes task.updated (nothing when nothing changed).")
                    .tag("tasks");
                write(one_task(task::<200>(op)))
            })
            .patch_with(patch_task, |op| {
                let op = op
                    .id("updateTask")
                    .summary("Change some of a task's fields")
                    .description(
                        "A JSON merge patch (RFC 7396): absent leaves a field, null clears it. \
                         Publishes task.updated (nothing when nothing changed).",
                    )
                    .tag("tasks");
                write(one_task(task::<200>(op)))
            })
            .delete_with(delete_task, |op| {
                let op = op
                    .id("deleteTask")
                    .summary("Delete a task")
                    .description("Publishes task.deleted.")
                    .tag("tasks")
                    .response_with::<204, (), _>(|r| r.description("Deleted"));
                write(one_task(op))
            }),
        )
        .api_route(
            "/tasks/{id}/complete",
            post_with(change_task_state::<COMPLETE>, |op| {
                let op = op
                    .id("completeTask")
                    .summary("Complete a task")
                    .description(
                        "Publishes task.completed (nothing when it was completed already); a \
                         recurring task's next instance follows from todo-recurring.",
                    )
                    .tag("tasks");
                let op = problem::<422>(
                    one_task(task::<200>(op)),
                    "This Idempotency-Key was used for a different request",
                );
                write(op)
            }),
        )
        .api_route(
            "/tasks/{id}/reopen",
            post_with(change_task_state::<REOPEN>, |op| {
                let op = op
                    .id("reopenTask")
                    .summary("Reopen a completed task")
                    .description("Publishes task.reopened (nothing when it was open).")
                    .tag("tasks");
                let op = problem::<422>(
                    one_task(task::<200>(op)),
                    "This Idempotency-Key was used for a different request",
                );
                write(op)
            }),
        )
}

/// `{id}` of a task's routes. Any text is accepted: one that is not a
/// task id of the caller's answers 404.
#[derive(Deserialize, JsonSchema)]
pub struct TaskPath {
    /// The task's id (a UUID).
    id: String,
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

fn answer_response(answer: Answer) -> Response {
    match answer {
        Answer::Done { status, task } => task_response(status, &task),
        Answer::Replayed { status, body } => {
            let mut response = (status, Json(&body)).into_response();
            if let Some(v) = body.get("version").and_then(|v| v.as_i64()) {
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\"")) {
                    response.headers_mut().insert(header::ETAG, etag);
                }
            }
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
    }
}

/// A POST's key, bound to its path and body bytes.
fn keyed(key: IdempotencyKey, uri: &Uri, body: &[u8]) -> Option<Idempotency> {
    key.0.map(|key| Idempotency {
        key,
        fingerprint: idempotency::fingerprint("POST", uri.path(), body),
    })
}

/// Who asks for a change, and what its events carry of the request: the
/// token's user, the correlation id, the request's origin.
pub struct Asker {
    user: AuthUser,
    correlation: CorrelationId,
    origin: ClientOrigin,
}

impl Asker {
    fn caller(&self) -> Caller<'_> {
        Caller {
            user: &self.user.0,
            correlation_id: &self.correlation.0,
            origin: &self.origin.0,
        }
    }
}

impl FromRequestParts<AppState> for Asker {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = AuthUser::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let correlation = CorrelationId::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Ok(origin) = ClientOrigin::from_request_parts(parts, state).await;
        Ok(Asker {
            user,
            correlation,
            origin,
        })
    }
}

impl OperationInput for Asker {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        AuthUser::operation_input(ctx, operation);
        CorrelationId::operation_input(ctx, operation);
        ClientOrigin::operation_input(ctx, operation);
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, aide::openapi::Response)> {
        AuthUser::inferred_early_responses(ctx, operation)
    }
}

async fn create_task(
    State(state): State<AppState>,
    asker: Asker,
    key: IdempotencyKey,
    uri: Uri,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    let key = keyed(key, &uri, &body.raw);
    let answer = operations::create(&state, asker.caller(), body.value, key).await?;
    Ok(answer_response(answer))
}

async fn get_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(TaskPath { id }): Path<TaskPath>,
) -> Result<Response, ApiError> {
    let task = operations::get(&state, &user, &id).await?;
    Ok(task_response(StatusCode::OK, &task))
}

async fn list_tasks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let q = input::parse_list_query(&params)?;
    Ok(Json(operations::list(&state, &user, &q).await?))
}

async fn replace_task(
    State(state): State<AppState>,
    asker: Asker,
    IfMatch(expected): IfMatch,
    Path(TaskPath { id }): Path<TaskPath>,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    let caller = asker.caller();
    let task =
        operations::update(&state, caller, &id, expected, Update::Replace(body.value)).await?;
    Ok(task_response(StatusCode::OK, &task))
}

async fn patch_task(
    State(state): State<AppState>,
    asker: Asker,
    IfMatch(expected): IfMatch,
    Path(TaskPath { id }): Path<TaskPath>,
    body: JsonBody<TaskPatch>,
) -> Result<Response, ApiError> {
    let caller = asker.caller();
    let task = operations::update(&state, caller, &id, expected, Update::Patch(body.value)).await?;
    Ok(task_response(StatusCode::OK, &task))
}

/// `POST /tasks/{id}/complete` (`COMPLETE`) and `/reopen` (`REOPEN`): one
/// handler, two routes, each documented on its own.
async fn change_task_state<const TO_COMPLETED: bool>(
    State(state): State<AppState>,
    asker: Asker,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    uri: Uri,
    Path(TaskPath { id }): Path<TaskPath>,
) -> Result<Response, ApiError> {
    let change = if TO_COMPLETED {
        StateChange::Complete
    } else {
        StateChange::Reopen
    };
    let key = keyed(key, &uri, &[]);
    let answer =
        operations::change_state(&state, asker.caller(), &id, expected, key, change).await?;
    Ok(answer_response(answer))
}
const COMPLETE: bool = true;
const REOPEN: bool = false;

async fn delete_task(
    State(state): State<AppState>,
    asker: Asker,
    IfMatch(expected): IfMatch,
    Path(TaskPath { id }): Path<TaskPath>,
) -> Result<Response, ApiError> {
    operations::delete(&state, asker.caller(), &id, expected).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
