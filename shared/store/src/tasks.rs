//! Reading tasks back: one task, a user's page of them, or every task (for
//! replays). Their writes, each with its event, are [`crate::writes`].

use crate::StoreError;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use std::sync::LazyLock;
use todo_contract::domain::{Priority, Recurrence, Reminder, Task, UserId};
use todo_contract::recurrence;
use uuid::Uuid;

pub(crate) const COLUMNS: &str =
    "id, title, description, priority, tags, completed, completed_at, due_at, \
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
    use super::contains_pattern;

    #[test]
    fn like_patterns_match_wildcards_literally() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
