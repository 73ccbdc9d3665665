//! Per-user erasure, todo-api's part: `DELETE /me` and `todo-api
//! erase-user`. One transaction removes what todo-api keeps of the user
//! (tasks, idempotency keys, notification preferences, their events not yet
//! published), turns their sequence row into a tombstone and appends
//! `user.erased`, on which every other service removes its own copy.
//!
//! The tombstone is what makes it final: every writer of a user's events
//! takes that row first, and once erased it refuses them all (SQLSTATE
//! TD001), so a request, a consumer or a clock that raced with the erasure
//! cannot write the user back; consumers skip the user's late events.

use crate::error::ApiError;
use crate::extract::CorrelationId;
use crate::state::AppState;
use aide::axum::routing::delete_with;
use aide::axum::ApiRouter;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use todo_contract::domain::UserId;
use todo_contract::envelope::{EventDraft, EventType, Origin};
use todo_platform::http::AuthUser;
use todo_store::writes::{self, OutboxError};
use uuid::Uuid;

pub const SOURCE: &str = "todo-api";

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/me",
        delete_with(erase_me, |op| {
            op.id("eraseMe")
                .summary("Erase the caller's data in every service")
                .description(
                    "Deletes the caller's tasks, notification channels and idempotency keys \
                     at once and publishes user.erased, on which todo-recurring, \
                     todo-notifier, todo-audit and todo-realtime delete theirs. Final: later \
                     writes for this user answer 403, and events of theirs still in flight \
                     are skipped. Repeating it answers 202 again.",
                )
                .tag("account")
                .response_with::<202, Json<Erasure>, _>(|r| {
                    r.description("Erased here; the other services follow the event")
                })
        }),
    )
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Erasure {
    /// The `user.erased` event, or none if the user had been erased before.
    pub event_id: Option<Uuid>,
    /// Tasks deleted by this request.
    pub tasks: u64,
}

async fn erase_me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    correlation: CorrelationId,
) -> Result<(StatusCode, Json<Erasure>), ApiError> {
    let erasure = erase(&state.pool, &user, &correlation.0).await?;
    if erasure.event_id.is_some() {
        state.signal.committed();
    }
    Ok((StatusCode::ACCEPTED, Json(erasure)))
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<EraseError> for ApiError {
    fn from(e: EraseError) -> Self {
        match e {
            EraseError::Db(db) | EraseError::Outbox(OutboxError::Db(db)) => db.into(),
            EraseError::Outbox(other) => ApiError::Internal(other.to_string()),
        }
    }
}

/// Erases `user`: idempotent (a second call finds the tombstone and does
/// nothing). The relay publishes `user.erased` once this commits; a caller
/// in the serving process signals it, the CLI leaves it to the relay's poll.
pub async fn erase(pool: &PgPool, user: &UserId, correlation: &str) -> Result<Erasure, EraseError> {
    let mut tx = todo_platform::db::begin(pool).await?;
    // The user's tasks first, then their sequence row: the order in which a
    // change of a task takes them, so an erasure and a PATCH wait for each
    // other instead of deadlocking.
    sqlx::query("SELECT 1 FROM tasks WHERE user_id = $1 FOR UPDATE")
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    // The user.erased event takes the sequence row, which waits for every
    // transaction writing events of theirs, so each delete below sees what
    // those committed.
    let event = writes::append(
        &mut tx,
        EventDraft {
            event_type: EventType::UserErased,
            source: SOURCE,
            subject: user.as_str().to_owned(),
            userid: user.as_str().to_owned(),
            correlationid: correlation.to_owned(),
            causationid: None,
            // Nothing about the client: the event outlives the erasure in
            // the topic.
            origin: Origin::default(),
            data: serde_json::json!({}),
        },
    )
    .await;
    let event = match event {
        Ok(event) => event,
        Err(OutboxError::Db(e)) if todo_platform::db::is_user_erased(&e) => {
            return Ok(Erasure {
                event_id: None,
                tasks: 0,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let tasks = delete_owned(&mut tx, user.as_str(), event.id).await?;
    sqlx::query("UPDATE event_sequences SET erased_at = now() WHERE user_id = $1")
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(user = %user, event_id = %event.id, tasks, "user erased");
    Ok(Erasure {
        event_id: Some(event.id),
        tasks,
    })
}

/// What todo-api keeps of `user`, less the erasure's own event. Their
/// unpublished events go too: consumers would skip them, and the topics
/// need not hold another copy. Returns the tasks deleted.
async fn delete_owned(
    conn: &mut PgConnection,
    user: &str,
    erasure_event: Uuid,
) -> Result<u64, sqlx::Error> {
    let tasks = sqlx::query("DELETE FROM tasks WHERE user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    for statement in [
        "DELETE FROM idempotency_keys WHERE user_id = $1",
        "DELETE FROM notification_preferences WHERE user_id = $1",
        "DELETE FROM outbox_dead_letters WHERE key = $1",
    ] {
        sqlx::query(statement)
            .bind(user)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM outbox WHERE key = $1 AND event_id <> $2")
        .bind(user)
        .bind(erasure_event)
        .execute(&mut *conn)
        .await?;
    Ok(tasks)
}
