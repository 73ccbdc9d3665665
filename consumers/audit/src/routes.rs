//! The audit's read API, with the JWT rule of todo-api: a user sees only
//! their own events; another user's task answers 404.

use aide::axum::routing::get_with;
use aide::axum::ApiRouter;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json as DbJson;
use sqlx::PgPool;
use std::sync::Arc;
use todo_contract::domain::FieldError;
use todo_platform::auth::JwtKeys;
use todo_platform::http::{AuthUser, Problem};
use todo_platform::openapi::{problem, Docs};
use uuid::Uuid;

/// Most events one page (`/events`, history) returns.
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Clone)]
pub struct AuditState {
    pub pool: PgPool,
    pub jwt: Arc<JwtKeys>,
    /// How long `/events` waits for a missing sequence before passing over
    /// it (`AUDIT_GAP_WAIT_MS`).
    pub gap_wait: std::time::Duration,
}

impl FromRef<AuditState> for Arc<JwtKeys> {
    fn from_ref(state: &AuditState) -> Self {
        state.jwt.clone()
    }
}

pub const DOCS: Docs = Docs {
    title: "todo-audit",
    description:
        "Every event of a user, kept in order: a task's history and the incremental \
                  sync of everything since a sequence number. Each event is a CloudEvents \
                  envelope as published on the topics (schemas in shared/contract/schemas/events/).",
};

pub fn router(state: AuditState) -> ApiRouter {
    ApiRouter::new()
        .api_route(
            "/tasks/{id}/history",
            get_with(history, |op| {
                let op = op
                    .id("taskHistory")
                    .summary("A task's history")
                    .description(
                        "The task's events (task.* and reminder.*) in order, a page at a time; \
                         a deleted task's history stays.",
                    )
                    .tag("history")
                    .response_with::<200, Json<History>, _>(|r| r.description("A page of events"));
                let op = problem::<400>(op, "A bad `after` or `limit`");
                problem::<404>(op, "No events of such a task for this user")
            }),
        )
        .api_route(
            "/events",
            get_with(events, |op| {
                let op = op
                    .id("events")
                    .summary("The caller's events since a sequence")
                    .description(
                        "Incremental sync: events with sequence since+1, since+2, ... each once, \
                         in order; a number missing for longer than AUDIT_GAP_WAIT_MS is passed \
                         over and reported in `gaps`.",
                    )
                    .tag("history")
                    .response_with::<200, Json<Log>, _>(|r| r.description("A page of the log"));
                problem::<400>(op, "A bad `since` or `limit`")
            }),
        )
        .api_route(
            "/stats",
            get_with(crate::stats::stats, |op| {
                let op = op
                    .id("stats")
                    .summary("The caller's activity")
                    .description(
                        "From the event store: tasks created and completed per day of a range \
                         (at most 366 days, default the last 30) in a time zone, the share of \
                         the range's tasks completed now, tasks overdue now, reminders sent.",
                    )
                    .tag("stats")
                    .response_with::<200, Json<crate::stats::Stats>, _>(|r| {
                        r.description("The caller's figures")
                    });
                problem::<400>(op, "A bad date, range or time zone")
            }),
        )
        .with_state(state)
}

/// The one error type of this HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid query: {}: {}", .0.field, .0.message)]
    BadQuery(FieldError),
    #[error("no such task")]
    NotFound,
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] sqlx::Error),
}

/// Routes list the problems they answer themselves.
impl aide::OperationOutput for AuditError {
    type Inner = Problem;
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        if todo_platform::db::is_unavailable(&e) || todo_platform::db::is_statement_timeout(&e) {
            AuditError::Unavailable(e)
        } else {
            AuditError::Internal(e)
        }
    }
}

impl IntoResponse for AuditError {
    fn into_response(self) -> Response {
        match self {
            AuditError::BadQuery(field) => Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/malformed-request",
                "Malformed request",
            )
            .detail(format!("{}: {}", field.field, field.message))
            .errors(vec![field])
            .into_response(),
            AuditError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "/problems/not-found", "Not found")
                    .detail("no such task")
                    .into_response()
            }
            AuditError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                let response = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "/problems/unavailable",
                    "Service unavailable",
                )
                .detail("the database is unavailable; retry later")
                .into_response();
                let mut response = response;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            AuditError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "/problems/internal",
                    "Internal error",
                )
                .detail("the request could not be completed")
                .into_response()
            }
        }
    }
}

#[derive(Serialize, JsonSchema)]
struct History {
    task_id: Uuid,
    /// The task's events (task.* and reminder.*) in order, each the whole
    /// CloudEvents envelope: `data.task`, `data.previous`, `data.changed`.
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    events: Vec<Box<RawValue>>,
    /// Pass as `after` for the next page (the last sequence returned).
    next_after: Option<i64>,
    /// More events follow this page.
    has_more: bool,
}

#[derive(Deserialize, JsonSchema)]
struct TaskPath {
    /// The task's id.
    id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Events after this sequence (default: from the start); a page's
    /// `next_after`.
    after: Option<i64>,
    /// Most events in the page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

/// A page's query string, or a 400 naming `position`, the parameter a
/// client most likely got wrong (the other is the limit).
fn parsed<T>(
    query: Result<Query<T>, QueryRejection>,
    position: &'static str,
) -> Result<T, AuditError> {
    let Query(q) = query.map_err(|e| {
        AuditError::BadQuery(FieldError::new(
            position,
            format!("{e}; expected ?{position}=<sequence>&limit=<1..{MAX_LIMIT}>"),
        ))
    })?;
    Ok(q)
}

/// A page of the task's history: events after sequence `after` (default:
/// from the start), at most `limit` ([`DEFAULT_LIMIT`], up to
/// [`MAX_LIMIT`]).
async fn history(
    State(state): State<AuditState>,
    AuthUser(user): AuthUser,
    Path(TaskPath { id }): Path<TaskPath>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, AuditError> {
    let q = parsed(query, "after")?;
    // A string that is not a UUID names no task.
    let task_id = Uuid::parse_str(&id).map_err(|_| AuditError::NotFound)?;
    let after = q.after.unwrap_or(0);
    let limit = page_limit(q.limit)?;
    let rows: Vec<(i64, DbJson<Box<RawValue>>)> = todo_platform::db::read(&state.pool, || {
        sqlx::query_as(
            "SELECT sequence, envelope FROM audit_events
              WHERE task_id = $1 AND user_id = $2 AND sequence > $3
              ORDER BY sequence LIMIT $4",
        )
        .bind(task_id)
        .bind(user.as_str())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&state.pool)
    })
    .await?;
    if rows.is_empty() && after == 0 {
        return Err(AuditError::NotFound);
    }
    let has_more = rows.len() as i64 > limit;
    let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
    Ok(Json(History {
        task_id,
        next_after: page.last().map(|(sequence, _)| *sequence),
        has_more,
        events: page.into_iter().map(|(_, j)| j.0).collect(),
    }))
}

fn page_limit(limit: Option<i64>) -> Result<i64, AuditError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(AuditError::BadQuery(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )))
    }
}

#[derive(Deserialize, JsonSchema)]
struct Since {
    /// Events after this sequence (default 0: from the start); the last
    /// page's `next_since`.
    #[schemars(range(min = 0))]
    since: Option<i64>,
    /// Most events and passed-over numbers in the page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

#[derive(Serialize, JsonSchema)]
struct Log {
    /// Events with sequence `since + 1, since + 2, …`, each once, in order.
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    events: Vec<Box<RawValue>>,
    /// Sequences passed over: missing for longer than the audit waits for a
    /// late event (`AUDIT_GAP_WAIT_MS`). Such an event was never stored (a
    /// dead-lettered event, say); an incremental sync fetches the state
    /// over REST if it cares.
    gaps: Vec<i64>,
    /// Pass as `since` next time: the last sequence returned or passed over.
    next_since: i64,
    /// More events follow at once (the page was full). When it is false the
    /// client is up to date, or the next event is still on its way.
    has_more: bool,
}

/// The user's log after `since`, in sequence order. Events reach the audit
/// from two topics, so a later sequence can be stored before an earlier
/// one: the page stops before a missing number, and a client that keeps
/// `next_since` gets every event exactly once. A number missing for longer
/// than `gap_wait` is reported in `gaps` and passed over, so that one lost
/// event never stops a user's sync for good.
async fn events(
    State(state): State<AuditState>,
    AuthUser(user): AuthUser,
    query: Result<Query<Since>, QueryRejection>,
) -> Result<Json<Log>, AuditError> {
    let q = parsed(query, "since")?;
    let since = q.since.unwrap_or(0);
    if since < 0 {
        return Err(AuditError::BadQuery(FieldError::new(
            "since",
            "must be 0 or more",
        )));
    }
    let limit = page_limit(q.limit)?;
    let rows: Vec<(i64, DbJson<Box<RawValue>>, bool)> =
        todo_platform::db::read(&state.pool, || {
            sqlx::query_as(
                "SELECT sequence, envelope,
                    clock_timestamp() - recorded_at > make_interval(secs => $4) AS overdue
               FROM audit_events
              WHERE user_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
            )
            .bind(user.as_str())
            .bind(since)
            .bind(limit + 1)
            .bind(state.gap_wait.as_secs_f64())
            .fetch_all(&state.pool)
        })
        .await?;
    let mut page = Log {
        events: Vec::with_capacity(rows.len()),
        gaps: Vec::new(),
        next_since: since,
        has_more: false,
    };
    // Events and passed-over numbers both count toward the page's limit.
    let room = |page: &Log| limit - (page.events.len() + page.gaps.len()) as i64;
    for (sequence, envelope, overdue) in rows {
        if sequence > page.next_since + 1 {
            // The numbers before this event are missing. Wait for them
            // while this one is fresh; past that, they are not coming.
            if !overdue {
                break;
            }
            while page.next_since + 1 < sequence && room(&page) > 0 {
                page.next_since += 1;
                page.gaps.push(page.next_since);
            }
        }
        if room(&page) <= 0 {
            page.has_more = true;
            break;
        }
        page.events.push(envelope.0);
        page.next_since = sequence;
    }
    Ok(Json(page))
}
