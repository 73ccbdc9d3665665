//! Every write that publishes an event: a change to a task and its event,
//! or a service's own event alone, each one SQL statement inside the
//! caller's transaction. The statement takes the user's next `sequence`,
//! inserts the outbox row and (for a task) makes the change; this file owns
//! all of its parameters. `todo-api` and `todo-recurring` (the only
//! services that write tasks) both go through here; todo-notifier and
//! erasure append events of their own.
//!
//! The envelope is serialized before the database hands out the sequence:
//! [`Pending`] splits it around the sequence and the statement splices the
//! number in, so the event costs no second round trip.

use crate::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};
use std::borrow::Cow;
use std::sync::LazyLock;
use todo_contract::domain::{self, Priority, Recurrence, Task, TaskSpec, Timestamp, UserId};
use todo_contract::envelope::{Envelope, EventDraft, EventType, Origin, TaskEventData};
use todo_contract::recurrence;
use uuid::Uuid;

pub type TaskEvent = Envelope<TaskEventData>;

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
    let new = NewTask::new(actor, spec, series)?;
    let sequence = new.write(conn).await?;
    Ok(new.into_written(sequence))
}

/// A task to create and its `task.created` event, ids and payload chosen
/// before anything is sent. [`NewTask::write`] is one statement, atomic on
/// its own: sent again as it is after a connection broke, it either writes
/// the task (the first try never committed) or fails on the task's id (it
/// did; [`NewTask::written_by`] tells which).
pub struct NewTask {
    task: Task,
    pending: Pending<TaskEventData>,
}

impl NewTask {
    pub fn new(
        actor: &Actor<'_>,
        spec: TaskSpec,
        series: Option<SeriesLink>,
    ) -> Result<Self, StoreError> {
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
        let pending = Pending::new(draft(
            actor,
            EventType::TaskCreated,
            TaskEventData {
                task: task.clone(),
                previous: None,
                changed: None,
            },
        ))?;
        Ok(Self { task, pending })
    }

    /// Writes the task and its outbox row; returns the event's sequence.
    pub async fn write(&self, conn: &mut PgConnection) -> Result<i64, StoreError> {
        static STATEMENT: LazyLock<String> =
            LazyLock::new(|| statement_after(Some(&insert_change())));
        let sequence = bind_written(
            self.pending.bind(sqlx::query_scalar(STATEMENT.as_str())),
            &self.task,
        )
        .bind(self.task.created_at)
        .fetch_one(&mut *conn)
        .await?;
        Ok(sequence)
    }

    /// Whether `error`, from a [`NewTask::write`] sent again, says that an
    /// earlier try committed: its task id is taken, by this user's task.
    pub async fn written_by(
        &self,
        error: &StoreError,
        pool: &sqlx::PgPool,
    ) -> Result<bool, StoreError> {
        let StoreError::Db(e) = error else {
            return Ok(false);
        };
        if !todo_platform::db::is_unique_violation(e) {
            return Ok(false);
        }
        let mine: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND user_id = $2)",
        )
        .bind(self.task.id)
        .bind(&self.pending.envelope.userid)
        .fetch_one(pool)
        .await?;
        Ok(mine)
    }

    pub fn into_task(self) -> Task {
        self.task
    }

    fn into_written(self, sequence: i64) -> (Task, TaskEvent) {
        (self.task, self.pending.into_envelope(sequence))
    }
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
    static STATEMENT: LazyLock<String> = LazyLock::new(|| statement_after(Some(&update_change())));
    let pending = Pending::new(draft(
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
        let id = Placeholders::after_outbox().next();
        statement_after(Some(&format!(
            "task AS (DELETE FROM tasks WHERE id = {id})"
        )))
    });
    let id = task.id;
    let pending = Pending::new(draft(
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

/// Appends `draft` to the outbox inside the caller's transaction (or as a
/// statement of its own) and returns the envelope as it will be published.
pub async fn append<D: Serialize>(
    conn: &mut PgConnection,
    draft: EventDraft<D>,
) -> Result<Envelope<D>, OutboxError> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| statement_after(None));
    let pending = Pending::new(draft)?;
    let sequence = pending
        .bind(sqlx::query_scalar(STATEMENT.as_str()))
        .fetch_one(conn)
        .await?;
    Ok(pending.into_envelope(sequence))
}

/// Whose event a service's own change publishes, and what it continues:
/// the event that caused it, or a correlation of the service's own (a
/// clock's, a worker's) with no cause.
#[derive(Debug, Clone)]
pub struct Cause<'a> {
    pub user: &'a str,
    pub correlation_id: Cow<'a, str>,
    pub causation_id: Option<String>,
}

impl Cause<'_> {
    /// [`append`]s an event of `source` about `subject`; a service's own
    /// event came through no client, so it has no origin.
    pub async fn append<D: Serialize>(
        &self,
        conn: &mut PgConnection,
        source: &'static str,
        event_type: EventType,
        subject: String,
        data: D,
    ) -> Result<Envelope<D>, OutboxError> {
        let draft = EventDraft {
            event_type,
            source,
            subject,
            userid: self.user.to_owned(),
            correlationid: self.correlation_id.clone().into_owned(),
            causationid: self.causation_id.clone(),
            origin: Default::default(),
            data,
        };
        append(conn, draft).await
    }
}

/// Locks `user`'s sequence row until the transaction ends (creating it if
/// the user has no event yet). Every transaction that appends a user's
/// events and locks rows of theirs takes this lock first: one lock order
/// everywhere, so a consumer and a clock working on the same user wait for
/// each other instead of deadlocking.
pub async fn lock_sequence(conn: &mut PgConnection, user: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO event_sequences (user_id, last_sequence) VALUES ($1, 0)
         ON CONFLICT (user_id) DO UPDATE SET last_sequence = event_sequences.last_sequence",
    )
    .bind(user)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`lock_sequence`] for work that belongs to a user who may have been
/// erased meanwhile (a clock's, a channel worker's): false, instead of an
/// error, when their row is a tombstone. The transaction is spoiled then.
pub async fn lock_unless_erased(conn: &mut PgConnection, user: &str) -> Result<bool, sqlx::Error> {
    match lock_sequence(conn, user).await {
        Ok(()) => Ok(true),
        Err(e) if todo_platform::db::is_user_erased(&e) => Ok(false),
        Err(e) => Err(e),
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
/// time) as the change of [`statement_after`]; bind with
/// [`bind_written`], then `created_at`.
fn insert_change() -> String {
    let mut p = Placeholders::after_outbox();
    let id = p.next();
    let columns: Vec<&str> = Written::ALL.iter().map(|w| w.column()).collect();
    let values: Vec<String> = Written::ALL.iter().map(|_| p.next()).collect();
    let created_at = p.next();
    format!(
        "task AS (INSERT INTO tasks (id, user_id, {}, created_at) VALUES ({id}, {}, {}, {created_at}))",
        columns.join(", "),
        USER_PARAM,
        values.join(", "),
    )
}

/// `UPDATE` of every [`Written`] column of one task; bind with
/// [`bind_written`].
fn update_change() -> String {
    let mut p = Placeholders::after_outbox();
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

/// How many parameters the outbox statement itself takes ([`Pending::bind`]
/// binds them); a change's own are numbered after them ([`Placeholders`]).
const OWN_PARAMS: usize = 7;

/// The parameter that holds the event's user id, which a change may use too
/// (a task's owner is its event's user).
const USER_PARAM: &str = "$1";

/// Hands out a change's placeholders in the order its values are bound,
/// after the outbox statement's own: whoever binds them in the same order
/// never counts parameters.
struct Placeholders(usize);

impl Placeholders {
    fn after_outbox() -> Self {
        Placeholders(OWN_PARAMS)
    }

    /// The next placeholder (`$8` first).
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

/// The one statement that takes the user's next sequence and inserts the
/// outbox row, after `change` (a data-modifying CTE such as `task AS (INSERT
/// INTO tasks ...)`, its placeholders from [`Placeholders`]): a change and
/// its event cost one round trip and are atomic even outside a transaction.
/// It returns the event's sequence. Bind [`Pending::bind`] first, then the
/// change's values in the order their placeholders were taken.
///
/// The upsert locks the user's `event_sequences` row until the transaction
/// ends, before the outbox row takes its id: one user's events commit in
/// sequence order and their outbox ids grow with their sequence.
fn statement_after(change: Option<&str>) -> String {
    let change = change.map(|c| format!("{c}, ")).unwrap_or_default();
    format!(
        "WITH {change}seq AS (
             INSERT INTO event_sequences (user_id, last_sequence) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_sequence = event_sequences.last_sequence + 1
             RETURNING last_sequence)
         INSERT INTO outbox (event_id, topic, key, event_type, payload, traceparent)
         SELECT $2, $3, $1, $4, $5 || convert_to(seq.last_sequence::text, 'UTF8') || $6, $7
           FROM seq
         RETURNING (SELECT last_sequence FROM seq)"
    )
}

/// An event about to be appended: its envelope serialized around the
/// sequence number, which only the database can give.
struct Pending<D> {
    event_type: EventType,
    envelope: Envelope<D>,
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// The sequence the envelope is serialized with before it is split (no
/// real sequence is negative), as serde writes it.
const PLACEHOLDER: i64 = i64::MIN;
const KEY: &[u8] = b"\"sequence\":";
const MARKER: &[u8] = b"\"sequence\":-9223372036854775808";

impl<D: Serialize> Pending<D> {
    fn new(draft: EventDraft<D>) -> Result<Self, OutboxError> {
        let event_type = draft.event_type;
        let mut envelope =
            draft.into_envelope(Uuid::now_v7(), todo_contract::domain::now(), PLACEHOLDER);
        // The change's trace goes with its event: the relay continues it.
        envelope.traceparent =
            todo_platform::telemetry::TraceParent::current().map(|t| t.to_string());
        let mut head = serde_json::to_vec(&envelope)?;
        // The first `"sequence":` is the envelope's own: it comes before
        // `data`, and a JSON string cannot hold an unescaped `":`.
        // memmem, not a window compared at every byte: that search was
        // ~2.8 k instructions per create under callgrind (self cost).
        let at = memchr::memmem::find(&head, MARKER).ok_or(OutboxError::NoSequence)?;
        let tail = head.split_off(at + MARKER.len());
        head.truncate(at + KEY.len());
        Ok(Self {
            event_type,
            head,
            tail,
            envelope,
        })
    }

    /// Binds the outbox statement's own parameters ([`OWN_PARAMS`]), `$1`
    /// ([`USER_PARAM`]) first.
    fn bind<'q, O>(
        &'q self,
        query: QueryScalar<'q, Postgres, O, PgArguments>,
    ) -> QueryScalar<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.envelope.userid)
            .bind(self.envelope.id)
            .bind(self.event_type.topic().base_name())
            .bind(self.event_type.as_str())
            .bind(&self.head)
            .bind(&self.tail)
            .bind(self.envelope.traceparent.as_deref())
    }

    /// The envelope as published, once the statement gave its sequence.
    fn into_envelope(self, sequence: i64) -> Envelope<D> {
        Envelope {
            sequence,
            ..self.envelope
        }
    }

    #[cfg(test)]
    fn payload(&self, sequence: i64) -> Vec<u8> {
        [
            &self.head[..],
            sequence.to_string().as_bytes(),
            &self.tail[..],
        ]
        .concat()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("event encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("event encoding: no sequence in the serialized envelope")]
    NoSequence,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::COLUMNS;
    use EventType;

    fn draft(correlationid: &str, data: serde_json::Value) -> EventDraft<serde_json::Value> {
        EventDraft {
            event_type: EventType::TaskCreated,
            source: "todo-api",
            subject: "s".into(),
            userid: "alice".into(),
            correlationid: correlationid.into(),
            causationid: None,
            origin: Default::default(),
            data,
        }
    }

    /// A create sent again after its first try committed (the connection
    /// broke before the answer) is recognised by its task id, and the
    /// repeat wrote nothing: one task, one event, one sequence taken.
    #[tokio::test]
    async fn a_create_sent_again_after_it_committed_is_recognised_and_writes_nothing() {
        let db = todo_testing::TestDatabase::create().await;
        let user = UserId::try_from("ann".to_owned()).expect("user");
        let actor = Actor {
            user: &user,
            correlation_id: "c",
            causation_id: None,
            source: "test",
            origin: Origin::none(),
        };
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "title": "t", "description": null, "priority": "medium",
            "tags": [], "completed": false, "completed_at": null, "due_at": null,
            "recurrence": null, "reminders": [], "series_id": null, "version": 1,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .expect("task");
        let new = NewTask::new(&actor, spec_of(&task).expect("spec"), None).expect("new");
        let mut conn = db.pool.acquire().await.expect("connection");
        let sequence = new.write(&mut conn).await.expect("the first try");
        let again = new.write(&mut conn).await.expect_err("the same task twice");
        assert!(new.written_by(&again, &db.pool).await.expect("check"));
        let counts: (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM outbox),
                    (SELECT last_sequence FROM event_sequences WHERE user_id = 'ann')",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("counts");
        assert_eq!(counts, (1, 1, sequence));
        // Another create's conflict, or another error, is not this one's.
        let other = NewTask::new(&actor, spec_of(&task).expect("spec"), None).expect("new");
        assert!(!other.written_by(&again, &db.pool).await.expect("check"));
        let gone = StoreError::Db(sqlx::Error::PoolTimedOut);
        assert!(!new.written_by(&gone, &db.pool).await.expect("check"));
    }

    #[test]
    fn the_payload_is_the_envelope_with_the_database_sequence() {
        let tricky = [
            ("c", serde_json::json!({})),
            (
                r#"x","sequence":5,"y":""#,
                serde_json::json!({"sequence": 7}),
            ),
            (
                "\"sequence\":-9223372036854775808",
                serde_json::json!("\"sequence\":1"),
            ),
        ];
        for (correlation, data) in tricky {
            let pending = Pending::new(draft(correlation, data)).unwrap();
            for sequence in [1, 42, i64::MAX] {
                let payload = pending.payload(sequence);
                let parsed = Envelope::from_slice(&payload).unwrap();
                assert_eq!(parsed.sequence, sequence);
                assert_eq!(parsed.correlationid, correlation);
                let expected = Envelope {
                    sequence,
                    ..pending.envelope.clone()
                };
                assert_eq!(payload, serde_json::to_vec(&expected).unwrap());
            }
        }
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
