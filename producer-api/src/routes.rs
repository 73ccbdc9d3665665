//! The REST routes of DESIGN.md: each turns its request into the arguments
//! of an [`operations`] function and its answer into a response (status,
//! `ETag`, `Location`, a replayed `Idempotency-Key`).

use crate::error::ApiError;
use crate::extract::{CorrelationId, IdempotencyKey, IfMatch, JsonBody};
use crate::idempotency;
use crate::input::{self, TaskBody, TaskPatch};
use crate::operations::{self, Answer, Caller, Idempotency, Page, StateChange};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use todo_shared::domain::Task;
use todo_shared::http::AuthUser;

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

fn caller<'a>(user: &'a AuthUser, correlation: &'a CorrelationId) -> Caller<'a> {
    Caller {
        user: &user.0,
        correlation_id: &correlation.0,
    }
}

async fn create_task(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    key: IdempotencyKey,
    uri: Uri,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    let key = keyed(key, &uri, &body.raw);
    let answer = operations::create(&state, caller(&user, &correlation), body.value, key).await?;
    Ok(answer_response(answer))
}

async fn get_task(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
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
    user: AuthUser,
    correlation: CorrelationId,
    IfMatch(expected): IfMatch,
    Path(id): Path<String>,
    body: JsonBody<TaskBody>,
) -> Result<Response, ApiError> {
    let caller = caller(&user, &correlation);
    let task = operations::replace(&state, caller, &id, expected, body.value).await?;
    Ok(task_response(StatusCode::OK, &task))
}

async fn patch_task(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    IfMatch(expected): IfMatch,
    Path(id): Path<String>,
    body: JsonBody<TaskPatch>,
) -> Result<Response, ApiError> {
    let caller = caller(&user, &correlation);
    let task = operations::patch(&state, caller, &id, expected, body.value).await?;
    Ok(task_response(StatusCode::OK, &task))
}

async fn complete_task(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(&user, &correlation);
    let key = keyed(key, &uri, &[]);
    let answer =
        operations::change_state(&state, caller, &id, expected, key, StateChange::Complete).await?;
    Ok(answer_response(answer))
}

async fn reopen_task(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(&user, &correlation);
    let key = keyed(key, &uri, &[]);
    let answer =
        operations::change_state(&state, caller, &id, expected, key, StateChange::Reopen).await?;
    Ok(answer_response(answer))
}

async fn delete_task(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    IfMatch(expected): IfMatch,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operations::delete(&state, caller(&user, &correlation), &id, expected).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
