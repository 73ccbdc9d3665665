//! Replay: rebuilds every task's state from the event log alone and
//! compares it with the `tasks` table.
//!
//! Each task's events are folded in sequence order. Besides the final
//! comparison, the fold checks the chain itself: a `task.created` starts at
//! version 1, every change follows from the state before it (`previous`) and
//! raises the version by one, a `task.deleted` carries the task as it was.
//! A missing or reordered event shows up as a broken chain.
//!
//! Both sides are streamed in task id order and merged, so memory holds one
//! task's chain and one table row at a time, however long the log is. From
//! a snapshot ([`crate::snapshot`]), each chain starts at the task's state
//! there and folds only the events after what the snapshot covers.

use futures::stream::{BoxStream, Peekable, StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::PgPool;
use std::fmt;
use std::pin::Pin;
use std::sync::LazyLock;
use todo_contract::domain::Task;
use todo_contract::envelope::{EventType, TaskEventData};
use todo_store::tasks;
use todo_store::StoreError;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub task_id: Uuid,
    pub user_id: String,
    pub problem: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} (user {}): {}",
            self.task_id, self.user_id, self.problem
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The snapshot replayed from, if any.
    pub snapshot: Option<i64>,
    /// Events folded from the log (after the snapshot's).
    pub events: u64,
    /// Tasks the log knows, deleted ones included.
    pub tasks_in_log: u64,
    pub tasks_in_table: u64,
    pub differences: Vec<Difference>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    fn differs(&mut self, task_id: Uuid, user_id: &str, problem: String) {
        self.differences.push(Difference {
            task_id,
            user_id: user_id.to_owned(),
            problem,
        });
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct LogRow {
    task_id: Uuid,
    user_id: String,
    sequence: i64,
    event_type: String,
    data: Json<TaskEventData>,
}

/// A task as a snapshot holds it.
#[derive(sqlx::FromRow)]
struct SnapshotRow {
    task_id: Uuid,
    user_id: String,
    state: Option<Json<Task>>,
    deleted: bool,
}

/// A task as the log tells it, so far.
pub(crate) struct Chain {
    pub(crate) task_id: Uuid,
    pub(crate) user_id: String,
    pub(crate) state: Option<Task>,
    pub(crate) deleted: bool,
}

impl Chain {
    fn new(row: &LogRow) -> Chain {
        Chain {
            task_id: row.task_id,
            user_id: row.user_id.clone(),
            state: None,
            deleted: false,
        }
    }

    /// Folds the next event in, reporting where it breaks the chain.
    fn apply(&mut self, row: LogRow, report: &mut Report) {
        let mut broken = |problem: String| {
            report.differs(
                row.task_id,
                &row.user_id,
                format!("event {} ({}): {problem}", row.sequence, row.event_type),
            )
        };
        let Some(event_type) = EventType::parse(&row.event_type) else {
            broken("unknown event type".into());
            return;
        };
        let TaskEventData { task, previous, .. } = row.data.0;
        if task.id != row.task_id {
            broken(format!("its task is {}", task.id));
        }
        if self.deleted {
            broken("follows the task's deletion".into());
        }
        match (event_type, &self.state) {
            (EventType::TaskCreated, None) => {
                if task.version != 1 {
                    broken(format!("created at version {}", task.version));
                }
            }
            (EventType::TaskCreated, Some(_)) => broken("created twice".into()),
            (_, None) => broken("changes a task the log never created".into()),
            (EventType::TaskDeleted, Some(before)) => {
                if &task != before {
                    broken(format!(
                        "deletes a different state: {}",
                        fields_differing(before, &task).join(", ")
                    ));
                }
            }
            (_, Some(before)) => {
                if let Some(previous) = &previous {
                    if previous != before {
                        broken(format!(
                            "its previous state differs from the log's in {}",
                            fields_differing(before, previous).join(", ")
                        ));
                    }
                }
                if task.version != before.version + 1 {
                    broken(format!(
                        "version {} follows version {} (an event is missing)",
                        task.version, before.version
                    ));
                }
            }
        }
        if event_type == EventType::TaskDeleted {
            self.state = None;
            self.deleted = true;
        } else {
            self.state = Some(task);
        }
    }
}

type TableRows<'a> = Pin<Box<Peekable<BoxStream<'a, Result<(String, Task), StoreError>>>>>;

/// The tasks table in id order, met task by task as the log's chains end.
struct Table<'a> {
    rows: TableRows<'a>,
}

impl<'a> Table<'a> {
    fn new(pool: &'a PgPool) -> Self {
        Table {
            rows: Box::pin(tasks::every(pool).peekable()),
        }
    }

    /// The table's row of `task_id`, after reporting every row before it
    /// as a task the log never mentions.
    async fn take(
        &mut self,
        task_id: Uuid,
        report: &mut Report,
    ) -> anyhow::Result<Option<(String, Task)>> {
        loop {
            let next_id = match self.rows.as_mut().peek().await {
                Some(Ok((_, task))) => task.id,
                Some(Err(_)) => {
                    let err = self.rows.next().await;
                    return Err(match err {
                        Some(Err(e)) => e.into(),
                        _ => anyhow::anyhow!("the tasks table stream ended in an error"),
                    });
                }
                None => return Ok(None),
            };
            if next_id > task_id {
                return Ok(None);
            }
            let Some((user_id, task)) = self.rows.try_next().await? else {
                return Ok(None);
            };
            report.tasks_in_table += 1;
            if task.id == task_id {
                return Ok(Some((user_id, task)));
            }
            report.differs(
                task.id,
                &user_id,
                "in the table but the log has no event of it".into(),
            );
        }
    }

    /// Reports the rows after the log's last task.
    async fn rest(&mut self, report: &mut Report) -> anyhow::Result<()> {
        while let Some((user_id, task)) = self.rows.try_next().await? {
            report.tasks_in_table += 1;
            report.differs(
                task.id,
                &user_id,
                "in the table but the log has no event of it".into(),
            );
        }
        Ok(())
    }
}

/// Replays the whole log, or, `from` a snapshot, the events after it on
/// top of its states.
pub async fn replay(pool: &PgPool, from: Option<i64>) -> anyhow::Result<Report> {
    let mut report = Report {
        snapshot: from,
        ..Report::default()
    };
    let mut chains = match from {
        Some(snapshot) => Chains::after_snapshot(pool, snapshot),
        None => Chains::whole_log(pool),
    };
    let mut table = Table::new(pool);
    while let Some(chain) = chains.next(&mut report).await? {
        compare(chain, &mut table, &mut report).await?;
    }
    table.rest(&mut report).await?;
    Ok(report)
}

type Rows<'a, T> = Pin<Box<Peekable<BoxStream<'a, Result<T, sqlx::Error>>>>>;

fn rows<'a, T: Send + 'a>(stream: BoxStream<'a, Result<T, sqlx::Error>>) -> Rows<'a, T> {
    Box::pin(stream.peekable())
}

const TASK_EVENTS: &str = "e.event_type LIKE 'task.%' AND e.task_id IS NOT NULL";

/// Every task's chain in task id order: its state in a snapshot (if any)
/// with the log's events after that folded in.
pub(crate) struct Chains<'a> {
    base: Rows<'a, SnapshotRow>,
    log: Rows<'a, LogRow>,
}

impl<'a> Chains<'a> {
    /// Every task event, from nothing.
    pub(crate) fn whole_log(pool: &'a PgPool) -> Self {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT e.task_id, e.user_id, e.sequence, e.event_type, e.envelope->'data' AS data
                   FROM audit_events e WHERE {TASK_EVENTS}
                  ORDER BY e.task_id, e.sequence"
            )
        });
        Chains {
            base: rows(futures::stream::empty().boxed()),
            log: rows(sqlx::query_as(SQL.as_str()).fetch(pool)),
        }
    }

    /// `snapshot`'s states and the events it does not cover.
    pub(crate) fn after_snapshot(pool: &'a PgPool, snapshot: i64) -> Self {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT e.task_id, e.user_id, e.sequence, e.event_type, e.envelope->'data' AS data
                   FROM audit_events e
                   LEFT JOIN audit_snapshot_users u
                          ON u.snapshot_id = $1 AND u.user_id = e.user_id
                  WHERE {TASK_EVENTS} AND e.sequence > coalesce(u.sequence, 0)
                  ORDER BY e.task_id, e.sequence"
            )
        });
        Chains {
            base: Self::states(pool, snapshot),
            log: rows(sqlx::query_as(SQL.as_str()).bind(snapshot).fetch(pool)),
        }
    }

    /// `from`'s states (nothing, without one) and the events after its
    /// coverage up to `to`'s: what snapshot `to` is made of.
    pub(crate) fn between(pool: &'a PgPool, from: Option<i64>, to: i64) -> Self {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT e.task_id, e.user_id, e.sequence, e.event_type, e.envelope->'data' AS data
                   FROM audit_events e
                   JOIN audit_snapshot_users t ON t.snapshot_id = $2 AND t.user_id = e.user_id
                   LEFT JOIN audit_snapshot_users f
                          ON f.snapshot_id = $1 AND f.user_id = e.user_id
                  WHERE {TASK_EVENTS}
                    AND e.sequence > coalesce(f.sequence, 0) AND e.sequence <= t.sequence
                  ORDER BY e.task_id, e.sequence"
            )
        });
        Chains {
            base: match from {
                Some(from) => Self::states(pool, from),
                None => rows(futures::stream::empty().boxed()),
            },
            log: rows(sqlx::query_as(SQL.as_str()).bind(from).bind(to).fetch(pool)),
        }
    }

    fn states(pool: &'a PgPool, snapshot: i64) -> Rows<'a, SnapshotRow> {
        rows(
            sqlx::query_as(
                "SELECT task_id, user_id, state, deleted FROM audit_snapshot_tasks
                  WHERE snapshot_id = $1 ORDER BY task_id",
            )
            .bind(snapshot)
            .fetch(pool),
        )
    }

    /// The next task's chain, in task id order; none after the last.
    pub(crate) async fn next(&mut self, report: &mut Report) -> anyhow::Result<Option<Chain>> {
        let base = peek_id(&mut self.base, |r| r.task_id).await?;
        let log = peek_id(&mut self.log, |r| r.task_id).await?;
        let mut chain = match (base, log) {
            (None, None) => return Ok(None),
            (Some(b), l) if l.is_none_or(|l| b <= l) => match self.base.try_next().await? {
                Some(row) => Chain {
                    task_id: row.task_id,
                    user_id: row.user_id,
                    state: row.state.map(|j| j.0),
                    deleted: row.deleted,
                },
                None => return Ok(None),
            },
            _ => match self.log.as_mut().peek().await {
                Some(Ok(row)) => Chain::new(row),
                _ => return Ok(None),
            },
        };
        while peek_id(&mut self.log, |r| r.task_id).await? == Some(chain.task_id) {
            let Some(row) = self.log.try_next().await? else {
                break;
            };
            report.events += 1;
            chain.apply(row, report);
        }
        Ok(Some(chain))
    }
}

/// The task id of the next row, or the error the stream ends with.
async fn peek_id<T>(
    rows: &mut Rows<'_, T>,
    id: impl Fn(&T) -> Uuid,
) -> anyhow::Result<Option<Uuid>> {
    match rows.as_mut().peek().await {
        Some(Ok(row)) => Ok(Some(id(row))),
        Some(Err(_)) => match rows.try_next().await {
            Err(e) => Err(e.into()),
            Ok(_) => Err(anyhow::anyhow!("a stream failed and then did not")),
        },
        None => Ok(None),
    }
}

/// A task whose chain is complete against its row in the table.
async fn compare(chain: Chain, table: &mut Table<'_>, report: &mut Report) -> anyhow::Result<()> {
    report.tasks_in_log += 1;
    let row = table.take(chain.task_id, report).await?;
    let problem = match (&chain.state, row) {
        (None, None) => None,
        (Some(_), None) => Some("in the log but not in the table".to_owned()),
        (None, Some(_)) => Some("deleted in the log but still in the table".to_owned()),
        (Some(logged), Some((owner, stored))) => {
            let mut problems = Vec::new();
            if owner != chain.user_id {
                problems.push(format!("owned by {owner} in the table"));
            }
            // Events written before a task knew its series' start and
            // next occurrence lack them; `todo-api migrate` filled them
            // in the table without an event. Only a value the log has
            // can disagree.
            let mut logged = logged.clone();
            if logged.series_start.is_none() && logged.next_occurrence.is_none() {
                logged.series_start = stored.series_start;
                logged.next_occurrence = stored.next_occurrence;
            }
            let fields = fields_differing(&logged, &stored);
            if !fields.is_empty() {
                problems.push(format!("differs from the table in {}", fields.join(", ")));
            }
            (!problems.is_empty()).then(|| problems.join("; "))
        }
    };
    if let Some(problem) = problem {
        report.differs(chain.task_id, &chain.user_id, problem);
    }
    Ok(())
}

/// The names of the fields in which two states of a task differ.
fn fields_differing(a: &Task, b: &Task) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unserializable)".into()];
    };
    let mut names: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    names.sort();
    names
}
