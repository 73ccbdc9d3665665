//! The task operations of todo-api, one function each, called by both edges
//! (the REST routes and the MCP tools): the write limiter, validation, the
//! one transaction that writes the task and its event (outbox), the
//! `Idempotency-Key` bookkeeping and the relay's wake-up live here and
//! nowhere else. An edge only turns its request into these arguments and the
//! answer into its response.

use crate::error::ApiError;
use crate::idempotency::{self, Claim};
use crate::input::{TaskBody, TaskPatch};
use crate::state::AppState;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use todo_contract::domain::{Task, TaskSpec, UserId};
use todo_contract::envelope::Origin;
use todo_platform::db;
use todo_store::tasks::{self, ListQuery};
use todo_store::writes::{self, Actor, NewTask};
use todo_store::StoreError;
use uuid::Uuid;

const SOURCE: &str = "todo-api";

/// Who asks, and what their request's events carry: its correlation id
/// and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub user: &'a UserId,
    pub correlation_id: &'a str,
    pub origin: &'a Origin,
}

impl<'a> Caller<'a> {
    fn actor(self) -> Actor<'a> {
        Actor {
            user: self.user,
            correlation_id: self.correlation_id,
            causation_id: Some(self.correlation_id.to_owned()),
            source: SOURCE,
            origin: self.origin,
        }
    }
}

/// A retry-safe request: its key, and what identifies the request the key
/// was first used for (a key reused for another request is refused).
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// What a retry-safe operation answers.
#[derive(Debug)]
pub enum Answer {
    /// Done now (or nothing to do): the task as it is.
    Done { status: StatusCode, task: Box<Task> },
    /// The key was used before for this request: its first answer.
    Replayed {
        status: StatusCode,
        body: serde_json::Value,
    },
}

/// One page of a user's tasks, as `GET /tasks` and `list_tasks` answer it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page {
    /// The tasks of this page.
    pub items: Vec<Task>,
    pub limit: i64,
    pub offset: i64,
    /// Where the next page starts (null: this is the last page).
    pub next_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    Complete,
    Reopen,
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // A string that is not a UUID names no task.
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

/// `expected` is the version the caller last saw (`If-Match`,
/// `expected_version`); `None` means last write wins.
fn check_version(expected: Option<i64>, current: i64) -> Result<(), ApiError> {
    match expected {
        Some(v) if v != current => Err(ApiError::PreconditionFailed { current }),
        _ => Ok(()),
    }
}

/// A retry-safe operation's transaction, with its key's bookkeeping.
struct KeyedTx<'a> {
    tx: Transaction<'static, Postgres>,
    user: &'a UserId,
    key: Option<String>,
}

/// What beginning a retry-safe operation found: work to do, or the first
/// answer of a request already done under the same key.
enum Begun<'a> {
    Fresh(KeyedTx<'a>),
    Replay(Answer),
}

impl<'a> KeyedTx<'a> {
    async fn begin(
        state: &AppState,
        user: &'a UserId,
        idempotency: Option<Idempotency>,
    ) -> Result<Begun<'a>, ApiError> {
        let mut tx = db::begin(&state.pool).await?;
        if let Some(i) = &idempotency {
            if let Claim::Replay { status, body } =
                idempotency::claim(&mut tx, user, &i.key, &i.fingerprint).await?
            {
                tx.rollback().await?;
                return Ok(Begun::Replay(Answer::Replayed { status, body }));
            }
        }
        Ok(Begun::Fresh(KeyedTx {
            tx,
            user,
            key: idempotency.map(|i| i.key),
        }))
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Records the answer for the key (if any) and commits.
    async fn commit(
        mut self,
        state: &AppState,
        status: StatusCode,
        task: Task,
        wrote_event: bool,
    ) -> Result<Answer, ApiError> {
        if let Some(k) = &self.key {
            let body =
                serde_json::to_value(&task).map_err(|e| ApiError::Internal(e.to_string()))?;
            idempotency::store(&mut self.tx, self.user, k, status, &body).await?;
        }
        self.tx.commit().await?;
        if wrote_event {
            state.signal.committed();
        }
        Ok(Answer::Done {
            status,
            task: Box::new(task),
        })
    }
}

/// Creates a task (`task.created`).
pub async fn create(
    state: &AppState,
    caller: Caller<'_>,
    body: TaskBody,
    idempotency: Option<Idempotency>,
) -> Result<Answer, ApiError> {
    state.writes.check(caller.user)?;
    let spec = body.into_spec()?;
    if idempotency.is_none() {
        return create_alone(state, caller, spec).await;
    }
    let mut keyed = match KeyedTx::begin(state, caller.user, idempotency).await? {
        Begun::Fresh(keyed) => keyed,
        Begun::Replay(answer) => return Ok(answer),
    };
    let (task, _event) = writes::create(keyed.conn(), &caller.actor(), spec, None).await?;
    keyed.commit(state, StatusCode::CREATED, task, true).await
}

/// A create with no key to record beside it: its one statement, atomic on
/// its own, without `BEGIN` and `COMMIT` (two of its three round trips:
/// 220 k -> 191 k of todo-api's instructions per create under callgrind).
/// `BEGIN` was also what found a pooled connection the server had
/// terminated, so [`db::read`] sends the statement itself again on the next
/// connection while they turn out dead. It may have committed before its
/// connection broke: then the repeat fails on the task's id, which
/// [`NewTask::written_by`] recognises as this create's own.
async fn create_alone(
    state: &AppState,
    caller: Caller<'_>,
    spec: TaskSpec,
) -> Result<Answer, ApiError> {
    let new = NewTask::new(&caller.actor(), spec, None)?;
    let mut tries = 0u32;
    let written = db::read(&state.pool, || {
        tries = tries.saturating_add(1);
        async {
            let mut conn = state.pool.acquire().await.map_err(StoreError::from)?;
            new.write(&mut conn).await
        }
    })
    .await;
    if let Err(e) = written {
        if !(tries > 1 && new.written_by(&e, &state.pool).await?) {
            return Err(e.into());
        }
    }
    state.signal.committed();
    Ok(Answer::Done {
        status: StatusCode::CREATED,
        task: Box::new(new.into_task()),
    })
}

/// One of the user's tasks (another user's is not found).
pub async fn get(state: &AppState, user: &UserId, id: &str) -> Result<Task, ApiError> {
    let id = parse_id(id)?;
    db::read(&state.pool, || tasks::find(&state.pool, user, id))
        .await?
        .ok_or(ApiError::NotFound)
}

/// One page of the user's tasks.
pub async fn list(state: &AppState, user: &UserId, q: &ListQuery) -> Result<Page, ApiError> {
    // One more than asked tells whether another page exists.
    let mut probe = q.clone();
    probe.limit = q.limit + 1;
    let mut items = db::read(&state.pool, || tasks::list(&state.pool, user, &probe)).await?;
    let more = items.len() as i64 > q.limit;
    items.truncate(q.limit as usize);
    Ok(Page {
        next_offset: more.then_some(q.offset + q.limit),
        items,
        limit: q.limit,
        offset: q.offset,
    })
}

/// What an update of a task writes.
pub enum Update {
    /// Every writable field (`PUT`).
    Replace(TaskBody),
    /// The fields the patch names (`PATCH`, MCP's `update_task`).
    Patch(TaskPatch),
}

/// Changes a task (`task.updated`). A replacement that cannot be a task
/// is refused before the task is looked up; a patch can only be checked
/// against the task it changes.
pub async fn update(
    state: &AppState,
    caller: Caller<'_>,
    id: &str,
    expected_version: Option<i64>,
    update: Update,
) -> Result<Task, ApiError> {
    state.writes.check(caller.user)?;
    let id = parse_id(id)?;
    match update {
        Update::Replace(body) => {
            let spec = body.into_spec()?;
            update_with(state, caller, id, expected_version, |_| Ok(spec)).await
        }
        Update::Patch(patch) => {
            update_with(state, caller, id, expected_version, move |current| {
                let spec = writes::spec_of(current).map_err(ApiError::Internal)?;
                patch.apply(spec)
            })
            .await
        }
    }
}

/// A change that leaves every field as it was writes and publishes nothing.
async fn update_with(
    state: &AppState,
    caller: Caller<'_>,
    id: Uuid,
    expected_version: Option<i64>,
    new_spec: impl FnOnce(&Task) -> Result<TaskSpec, ApiError>,
) -> Result<Task, ApiError> {
    let mut tx = db::begin(&state.pool).await?;
    let current = tasks::find_for_update(&mut tx, caller.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    check_version(expected_version, current.version)?;
    let spec = new_spec(&current)?;
    let unchanged = current.clone();
    match writes::update(&mut tx, &caller.actor(), current, spec).await? {
        Some((task, _event)) => {
            tx.commit().await?;
            state.signal.committed();
            Ok(task)
        }
        None => {
            tx.rollback().await?;
            Ok(unchanged)
        }
    }
}

/// Completes (`task.completed`) or reopens (`task.reopened`) a task.
/// Completing a completed task (or reopening an open one) changes nothing
/// and publishes nothing: it answers the task as it is.
pub async fn change_state(
    state: &AppState,
    caller: Caller<'_>,
    id: &str,
    expected_version: Option<i64>,
    idempotency: Option<Idempotency>,
    change: StateChange,
) -> Result<Answer, ApiError> {
    state.writes.check(caller.user)?;
    let id = parse_id(id)?;
    let mut keyed = match KeyedTx::begin(state, caller.user, idempotency).await? {
        Begun::Fresh(keyed) => keyed,
        Begun::Replay(answer) => return Ok(answer),
    };
    let current = tasks::find_for_update(keyed.conn(), caller.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    check_version(expected_version, current.version)?;
    let unchanged = current.clone();
    let actor = caller.actor();
    let changed = match change {
        StateChange::Complete => writes::complete(keyed.conn(), &actor, current).await?,
        StateChange::Reopen => writes::reopen(keyed.conn(), &actor, current).await?,
    };
    match changed {
        Some((task, _event)) => keyed.commit(state, StatusCode::OK, task, true).await,
        None => keyed.commit(state, StatusCode::OK, unchanged, false).await,
    }
}

/// Deletes a task (`task.deleted`); answers the task as it was.
pub async fn delete(
    state: &AppState,
    caller: Caller<'_>,
    id: &str,
    expected_version: Option<i64>,
) -> Result<Task, ApiError> {
    state.writes.check(caller.user)?;
    let id = parse_id(id)?;
    let mut tx = db::begin(&state.pool).await?;
    let current = tasks::find_for_update(&mut tx, caller.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    check_version(expected_version, current.version)?;
    let event = writes::delete(&mut tx, &caller.actor(), current).await?;
    tx.commit().await?;
    state.signal.committed();
    Ok(event.data.task)
}
