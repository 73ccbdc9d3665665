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
//! task's chain and one table row at a time, however long the log is.

use futures::stream::{BoxStream, Peekable, StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::PgPool;
use std::fmt;
use std::pin::Pin;
use todo_shared::domain::Task;
use todo_shared::envelope::{EventType, TaskEventData};
use todo_shared::tasks::{self, StoreError};
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
struct LogRow {
    task_id: Uuid,
    user_id: String,
    sequence: i64,
    event_type: String,
    data: Json<TaskEventData>,
}

/// A task as the log tells it, so far.
struct Chain {
    task_id: Uuid,
    user_id: String,
    state: Option<Task>,
    deleted: bool,
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

pub async fn replay(pool: &PgPool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut log = sqlx::query_as::<_, LogRow>(
        "SELECT task_id, user_id, sequence, event_type, envelope->'data' AS data
           FROM audit_events
          WHERE event_type LIKE 'task.%' AND task_id IS NOT NULL
          ORDER BY task_id, sequence",
    )
    .fetch(pool);
    let mut table = Table::new(pool);
    let mut chain: Option<Chain> = None;
    while let Some(row) = log.try_next().await? {
        report.events += 1;
        if let Some(done) = chain.take_if(|c| c.task_id != row.task_id) {
            compare(done, &mut table, &mut report).await?;
        }
        chain
            .get_or_insert_with(|| Chain::new(&row))
            .apply(row, &mut report);
    }
    if let Some(done) = chain {
        compare(done, &mut table, &mut report).await?;
    }
    table.rest(&mut report).await?;
    Ok(report)
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
