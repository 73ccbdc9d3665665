//! Task persistence: every change writes the task and its event (via the
//! outbox) in one statement, inside the caller's transaction. `todo-api`
//! and `todo-recurring` (the only services that write tasks) both go
//! through here.

use crate::outbox::{self, OutboxError};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use std::sync::LazyLock;
use todo_contract::domain::{
    self, Priority, Recurrence, Reminder, Task, TaskSpec, Timestamp, UserId,
};
use todo_contract::envelope::{Envelope, EventDraft, EventType, Origin, TaskEventData};
use todo_contract::recurrence;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("stored task {id} is unreadable: {reason}")]
    Corrupt { id: Uuid, reason: String },
}

impl todo_platform::db::ConnectionError for StoreError {
    fn connection_gone(&self) -> bool {
        match self {
            StoreError::Db(e) | StoreError::Outbox(OutboxError::Db(e)) => {
                todo_platform::db::is_connection_gone(e)
            }
            _ => false,
        }
    }
}

/// Who causes a change, carried into its event.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub user: &'a UserId,
    pub correlation_id: &'a str,
    pub causation_id: Option<String>,
    pub source: &'static str,
    /// The client the change came through (nothing for a service's own).
    pub origin: &'a Origin,
}

pub type TaskEvent = Envelope<TaskEventData>;

const COLUMNS: &str = "id, title, description, priority, tags, completed, completed_at, due_at, \
                       recurrence, reminders, series_id, series_start, next_occurrence, version, \
                       created_at, updated_at";

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    title: String,
    description: Option<String>,
    priority: String,
    tags: Vec<String>,
    completed: bool,
    completed_at: Option<DateTime<Utc>>,
    due_at: Option<DateTime<Utc>>,
    recurrence: Option<Json<Recurrence>>,
    reminders: Json<Vec<Reminder>>,
    series_id: Option<Uuid>,
    series_start: Option<DateTime<Utc>>,
    next_occurrence: Option<DateTime<Utc>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        let priority = r
            .priority
            .parse::<Priority>()
            .map_err(|reason| StoreError::Corrupt { id: r.id, reason })?;
        Ok(Task {
            id: r.id,
            title: r.title,
            description: r.description,
            priority,
            tags: r.tags,
            completed: r.completed,
            completed_at: r.completed_at,
            due_at: r.due_at,
            recurrence: r.recurrence.map(|j| j.0),
            reminders: r.reminders.0,
            series_id: r.series_id,
            series_start: r.series_start,
            next_occurrence: r.next_occurrence,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn apply_spec(task: &mut Task, spec: TaskSpec) {
    task.title = spec.title.into();
    task.description = spec.description.map(String::from);
    task.priority = spec.priority;
    task.tags = spec.tags.into();
    task.due_at = spec.due_at.map(Timestamp::get);
    task.recurrence = spec.recurrence;
    task.reminders = spec.reminders.into();
}

/// The writable fields of a stored task, for a partial update to start from.
pub fn spec_of(task: &Task) -> Result<TaskSpec, String> {
    Ok(TaskSpec {
        title: task.title.clone().try_into()?,
        description: task
            .description
            .clone()
            .map(TryInto::try_into)
            .transpose()?,
        priority: task.priority,
        tags: task.tags.clone().try_into()?,
        due_at: task.due_at.map(Timestamp::try_from).transpose()?,
        recurrence: task.recurrence.clone(),
        reminders: task.reminders.clone().try_into()?,
    })
}

fn draft(
    actor: &Actor<'_>,
    event_type: EventType,
    data: TaskEventData,
) -> EventDraft<TaskEventData> {
    EventDraft {
        event_type,
        source: actor.source,
        subject: data.task.id.to_string(),
        userid: actor.user.as_str().to_owned(),
        correlationid: actor.correlation_id.to_owned(),
        causationid: actor.causation_id.clone(),
        origin: actor.origin.clone(),
        data,
    }
}

/// The columns a change of a task writes besides its id, each with the
/// value it binds: one list for the statements' text and their binds, so
/// the two cannot drift apart.
#[derive(Debug, Clone, Copy)]
enum Written {
    Title,
    Description,
    Priority,
    Tags,
    Completed,
    CompletedAt,
    DueAt,
    Recurrence,
    Reminders,
    SeriesId,
    SeriesStart,
    NextOccurrence,
    Version,
    UpdatedAt,
}

impl Written {
    const ALL: [Written; 14] = [
        Written::Title,
        Written::Description,
        Written::Priority,
        Written::Tags,
        Written::Completed,
        Written::CompletedAt,
        Written::DueAt,
        Written::Recurrence,
        Written::Reminders,
        Written::SeriesId,
        Written::SeriesStart,
        Written::NextOccurrence,
        Written::Version,
        Written::UpdatedAt,
    ];

    fn column(self) -> &'static str {
        match self {
            Written::Title => "title",
            Written::Description => "description",
            Written::Priority => "priority",
            Written::Tags => "tags",
            Written::Completed => "completed",
            Written::CompletedAt => "completed_at",
            Written::DueAt => "due_at",
            Written::Recurrence => "recurrence",
            Written::Reminders => "reminders",
            Written::SeriesId => "series_id",
            Written::SeriesStart => "series_start",
            Written::NextOccurrence => "next_occurrence",
            Written::Version => "version",
            Written::UpdatedAt => "updated_at",
        }
    }

    fn bind<'q>(self, query: TaskWrite<'q>, task: &'q Task) -> TaskWrite<'q> {
        match self {
            Written::Title => query.bind(&task.title),
            Written::Description => query.bind(&task.description),
            Written::Priority => query.bind(task.priority.as_str()),
            Written::Tags => query.bind(&task.tags),
            Written::Completed => query.bind(task.completed),
            Written::CompletedAt => query.bind(task.completed_at),
            Written::DueAt => query.bind(task.due_at),
            Written::Recurrence => query.bind(task.recurrence.as_ref().map(Json)),
            Written::Reminders => query.bind(Json(&task.reminders)),
            Written::SeriesId => query.bind(task.series_id),
            Written::SeriesStart => query.bind(task.series_start),
            Written::NextOccurrence => query.bind(task.next_occurrence),
            Written::Version => query.bind(task.version),
            Written::UpdatedAt => query.bind(task.updated_at),
        }
    }
}

type TaskWrite<'q> = QueryScalar<'q, Postgres, i64, PgArguments>;

/// `INSERT` of a new task (its id, owner, [`Written`] columns, creation
/// time) as the change of [`outbox::statement_after`]; bind with
/// [`bind_written`], then `created_at`.
fn insert_change() -> String {
    let mut p = outbox::Placeholders::after_outbox();
    let id = p.next();
    let columns: Vec<&str> = Written::ALL.iter().map(|w| w.column()).collect();
    let values: Vec<String> = Written::ALL.iter().map(|_| p.next()).collect();
    let created_at = p.next();
    format!(
        "task AS (INSERT INTO tasks (id, user_id, {}, created_at) VALUES ({id}, {}, {}, {created_at}))",
        columns.join(", "),
        outbox::USER_PARAM,
        values.join(", "),
    )
}

/// `UPDATE` of every [`Written`] column of one task; bind with
/// [`bind_written`].
fn update_change() -> String {
    let mut p = outbox::Placeholders::after_outbox();
    let id = p.next();
    let sets: Vec<String> = Written::ALL
        .iter()
        .map(|w| format!("{} = {}", w.column(), p.next()))
        .collect();
    format!(
        "task AS (UPDATE tasks SET {} WHERE id = {id})",
        sets.join(", ")
    )
}

/// Binds what [`insert_change`] and [`update_change`] take: the id, then
/// the [`Written`] columns in their order.
fn bind_written<'q>(query: TaskWrite<'q>, task: &'q Task) -> TaskWrite<'q> {
    Written::ALL
        .iter()
        .fold(query.bind(task.id), |q, w| w.bind(q, task))
}

/// The series an instance belongs to, as todo-recurring knows it.
#[derive(Debug, Clone, Copy)]
pub struct SeriesLink {
    pub id: Uuid,
    /// The series' DTSTART.
    pub start: DateTime<Utc>,
}

/// Creates a task and its `task.created` event: a new task (a recurring
/// one starts its series at its due time), or an instance of `series`.
pub async fn create(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    spec: TaskSpec,
    series: Option<SeriesLink>,
) -> Result<(Task, TaskEvent), StoreError> {
    let now = domain::now();
    let mut task = Task {
        id: Uuid::now_v7(),
        title: String::new(),
        description: None,
        priority: Priority::Medium,
        tags: Vec::new(),
        completed: false,
        completed_at: None,
        due_at: None,
        recurrence: None,
        reminders: Vec::new(),
        series_id: series.map(|s| s.id),
        series_start: series.map(|s| s.start),
        next_occurrence: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    apply_spec(&mut task, spec);
    if task.recurrence.is_some() && task.series_id.is_none() {
        // The first task of a series names it and starts it.
        task.series_id = Some(task.id);
        task.series_start = task.due_at;
    }
    task.next_occurrence = recurrence::next_occurrence(&task);
    static STATEMENT: LazyLock<String> =
        LazyLock::new(|| outbox::statement_after(Some(&insert_change())));
    let pending = outbox::Pending::new(draft(
        actor,
        EventType::TaskCreated,
        TaskEventData {
            task: task.clone(),
            previous: None,
            changed: None,
        },
    ))?;
    let sequence = bind_written(pending.bind(sqlx::query_scalar(STATEMENT.as_str())), &task)
        .bind(task.created_at)
        .fetch_one(&mut *conn)
        .await?;
    let event = pending.into_envelope(sequence);
    Ok((task, event))
}

/// One of `user`'s tasks (another user's id is simply not found).
pub async fn find<'e, E>(exec: E, user: &UserId, id: Uuid) -> Result<Option<Task>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user.as_str())
    .fetch_optional(exec)
    .await?;
    row.map(Task::try_from).transpose()
}

/// Every user's tasks with their owners, in id order, as a stream (for
/// audits and replays, not for requests): one row in memory at a time.
pub fn every(
    pool: &sqlx::PgPool,
) -> futures::stream::BoxStream<'_, Result<(String, Task), StoreError>> {
    use futures::StreamExt;
    #[derive(sqlx::FromRow)]
    struct Owned {
        user_id: String,
        #[sqlx(flatten)]
        row: TaskRow,
    }
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT user_id, {COLUMNS} FROM tasks ORDER BY id"));
    sqlx::query_as::<_, Owned>(SQL.as_str())
        .fetch(pool)
        .map(|row| {
            let o = row?;
            Ok((o.user_id, Task::try_from(o.row)?))
        })
        .boxed()
}

/// Like [`find`], locking the row until the transaction ends.
pub async fn find_for_update(
    conn: &mut PgConnection,
    user: &UserId,
    id: Uuid,
) -> Result<Option<Task>, StoreError> {
    let row: Option<TaskRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(user.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(Task::try_from).transpose()
}

/// Writes `after` over `before` (version + 1) and records the event. Returns
/// `None`, writing nothing, when nothing changed.
async fn save_change(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    before: Task,
    mut after: Task,
    event_type: EventType,
) -> Result<Option<(Task, TaskEvent)>, StoreError> {
    let changed = before.changed_fields(&after);
    if changed.is_empty() {
        return Ok(None);
    }
    after.version = before.version + 1;
    after.updated_at = domain::now().max(before.updated_at);
    // Evaluating a rule costs up to milliseconds: only when what it depends
    // on changed (not for a title edit).
    if rule_inputs(&after) != rule_inputs(&before) {
        after.next_occurrence = recurrence::next_occurrence(&after);
    }
    static STATEMENT: LazyLock<String> =
        LazyLock::new(|| outbox::statement_after(Some(&update_change())));
    let pending = outbox::Pending::new(draft(
        actor,
        event_type,
        TaskEventData {
            task: after.clone(),
            previous: Some(before),
            changed: Some(changed.into_iter().map(str::to_owned).collect()),
        },
    ))?;
    let sequence = bind_written(pending.bind(sqlx::query_scalar(STATEMENT.as_str())), &after)
        .fetch_one(&mut *conn)
        .await?;
    let event = pending.into_envelope(sequence);
    Ok(Some((after, event)))
}

/// What a task's `next_occurrence` is computed from.
type RuleInputs<'a> = (
    Option<&'a Recurrence>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn rule_inputs(t: &Task) -> RuleInputs<'_> {
    (
        t.recurrence.as_ref(),
        t.series_start,
        t.due_at,
        t.completed_at,
    )
}

/// Replaces the writable fields (`task.updated`); `None` when nothing changed.
pub async fn update(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    before: Task,
    spec: TaskSpec,
) -> Result<Option<(Task, TaskEvent)>, StoreError> {
    let mut after = before.clone();
    apply_spec(&mut after, spec);
    if after.recurrence.is_some() && after.series_id.is_none() {
        after.series_id = Some(after.id);
    }
    if after.recurrence != before.recurrence {
        // A changed rule starts its series afresh at this task, as
        // todo-recurring restarts it; no rule, no series start.
        after.series_start = after.recurrence.as_ref().and(after.due_at);
    }
    save_change(conn, actor, before, after, EventType::TaskUpdated).await
}

/// Marks the task done (`task.completed`); `None` if it already was.
pub async fn complete(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    before: Task,
) -> Result<Option<(Task, TaskEvent)>, StoreError> {
    if before.completed {
        return Ok(None);
    }
    let mut after = before.clone();
    after.completed = true;
    after.completed_at = Some(domain::now());
    save_change(conn, actor, before, after, EventType::TaskCompleted).await
}

/// Marks the task open again (`task.reopened`); `None` if it was open.
pub async fn reopen(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    before: Task,
) -> Result<Option<(Task, TaskEvent)>, StoreError> {
    if !before.completed {
        return Ok(None);
    }
    let mut after = before.clone();
    after.completed = false;
    after.completed_at = None;
    save_change(conn, actor, before, after, EventType::TaskReopened).await
}

/// Deletes the task (`task.deleted`, carrying the task as it was).
pub async fn delete(
    conn: &mut PgConnection,
    actor: &Actor<'_>,
    task: Task,
) -> Result<TaskEvent, StoreError> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        let id = outbox::Placeholders::after_outbox().next();
        outbox::statement_after(Some(&format!(
            "task AS (DELETE FROM tasks WHERE id = {id})"
        )))
    });
    let id = task.id;
    let pending = outbox::Pending::new(draft(
        actor,
        EventType::TaskDeleted,
        TaskEventData {
            task,
            previous: None,
            changed: None,
        },
    ))?;
    let sequence = pending
        .bind(sqlx::query_scalar(STATEMENT.as_str()))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(pending.into_envelope(sequence))
}

/// Computes `next_occurrence` for recurring tasks stored without one (they
/// predate the column: `todo-api migrate` runs this after the migrations).
/// A series that ended has none and is looked at again, cheaply. No event:
/// the field is derived, and the task's next change carries it. Returns how
/// many tasks got one.
pub async fn fill_next_occurrences(pool: &sqlx::PgPool) -> Result<u64, StoreError> {
    const BATCH: i64 = 500;
    let mut after = Uuid::nil();
    let mut filled = 0;
    loop {
        let rows: Vec<TaskRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM tasks
              WHERE recurrence IS NOT NULL AND next_occurrence IS NULL AND id > $1
              ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(filled);
        };
        after = last.id;
        let (mut ids, mut versions, mut next) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let task = match Task::try_from(row) {
                Ok(task) => task,
                Err(e) => {
                    tracing::warn!(error = %e, "a task could not be read; its next_occurrence stays empty");
                    continue;
                }
            };
            if let Some(at) = recurrence::next_occurrence(&task) {
                ids.push(task.id);
                versions.push(task.version);
                next.push(at);
            }
        }
        // Only where no change came in between (it wrote its own value).
        let done = sqlx::query(
            "UPDATE tasks SET next_occurrence = x.next
               FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS x(id, version, next)
              WHERE tasks.id = x.id AND tasks.version = x.version
                AND tasks.next_occurrence IS NULL",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&next)
        .execute(pool)
        .await?;
        filled += done.rows_affected();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    #[default]
    All,
    Open,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
    DueAt,
    Priority,
    Title,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: StatusFilter,
    pub priority: Option<Priority>,
    pub tag: Option<String>,
    pub due_after: Option<DateTime<Utc>>,
    pub due_before: Option<DateTime<Utc>>,
    pub text: Option<String>,
    pub sort: SortField,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            status: StatusFilter::All,
            priority: None,
            tag: None,
            due_after: None,
            due_before: None,
            text: None,
            sort: SortField::CreatedAt,
            descending: true,
            limit: 50,
            offset: 0,
        }
    }
}

/// `text` as a LIKE pattern that matches it literally anywhere.
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One page of `user`'s tasks.
pub async fn list<'e, E>(exec: E, user: &UserId, q: &ListQuery) -> Result<Vec<Task>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM tasks WHERE user_id = "));
    qb.push_bind(user.as_str());
    match q.status {
        StatusFilter::All => {}
        StatusFilter::Open => {
            qb.push(" AND NOT completed");
        }
        StatusFilter::Completed => {
            qb.push(" AND completed");
        }
    }
    if let Some(p) = q.priority {
        qb.push(" AND priority = ").push_bind(p.as_str());
    }
    if let Some(tag) = &q.tag {
        qb.push(" AND tags @> ARRAY[")
            .push_bind(tag.clone())
            .push("]::text[]");
    }
    if let Some(t) = q.due_after {
        qb.push(" AND due_at >= ").push_bind(t);
    }
    if let Some(t) = q.due_before {
        qb.push(" AND due_at < ").push_bind(t);
    }
    if let Some(text) = &q.text {
        let pattern = contains_pattern(text);
        qb.push(" AND (title ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR description ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    let column = match q.sort {
        SortField::CreatedAt => "created_at",
        SortField::UpdatedAt => "updated_at",
        SortField::DueAt => "due_at",
        SortField::Priority => "array_position(ARRAY['low','medium','high','urgent'], priority)",
        SortField::Title => "lower(title)",
    };
    let dir = if q.descending { "DESC" } else { "ASC" };
    qb.push(format!(" ORDER BY {column} {dir} NULLS LAST, id {dir}"));
    qb.push(" LIMIT ")
        .push_bind(q.limit)
        .push(" OFFSET ")
        .push_bind(q.offset);
    let rows: Vec<TaskRow> = qb.build_query_as().fetch_all(exec).await?;
    rows.into_iter().map(Task::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::{contains_pattern, insert_change, update_change, Written, COLUMNS};

    #[test]
    fn like_patterns_match_wildcards_literally() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn the_write_statements_number_their_values_after_the_outbox_and_in_bind_order() {
        let columns: Vec<&str> = Written::ALL.iter().map(|w| w.column()).collect();
        let mut unique = columns.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), columns.len(), "a column written twice");
        for c in &columns {
            assert!(COLUMNS.contains(c), "{c} is not read back");
        }
        assert_eq!(
            insert_change(),
            format!(
                "task AS (INSERT INTO tasks (id, user_id, {}, created_at) VALUES ($8, $1, {}, $23))",
                columns.join(", "),
                (9..=22).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
            )
        );
        let sets: Vec<String> = columns
            .iter()
            .zip(9..)
            .map(|(c, n)| format!("{c} = ${n}"))
            .collect();
        assert_eq!(
            update_change(),
            format!(
                "task AS (UPDATE tasks SET {} WHERE id = $8)",
                sets.join(", ")
            )
        );
    }
}
