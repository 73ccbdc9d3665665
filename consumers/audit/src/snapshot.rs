//! `todo-audit snapshot`: the task state the log leads to, stored so that
//! a replay folds only what came after it (`replay --from-snapshot`).
//!
//! A snapshot covers, per user, every event up to a sequence: the longest
//! run from 1 without a gap when it is taken. An event that is still on its
//! way (the two topics are read side by side) ends that run, so it is
//! folded by the next snapshot or replay instead of being passed over. A
//! snapshot builds on the one before: its states plus the events between
//! the two coverages. Only the latest complete one is kept.

use crate::replay::{Chains, Difference, Report};
use serde::Serialize;
use sqlx::PgPool;

/// What one snapshot holds.
#[derive(Debug, Serialize)]
pub struct Taken {
    pub snapshot_id: i64,
    /// The snapshot it was built on.
    pub previous: Option<i64>,
    pub users: u64,
    pub tasks: u64,
    /// Events folded now (on top of `previous`).
    pub events: u64,
    /// Where the log's chains break (as a replay reports them).
    pub differences: Vec<Difference>,
}

/// Tasks written per statement.
const BATCH: usize = 1_000;

/// The latest complete snapshot.
pub async fn latest(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(snapshot_id) FROM audit_snapshots WHERE complete")
        .fetch_one(pool)
        .await
}

pub async fn take(pool: &PgPool) -> anyhow::Result<Taken> {
    // One left half-written by a run that died is of no use.
    sqlx::query("DELETE FROM audit_snapshots WHERE NOT complete")
        .execute(pool)
        .await?;
    let previous = latest(pool).await?;
    let snapshot_id: i64 =
        sqlx::query_scalar("INSERT INTO audit_snapshots DEFAULT VALUES RETURNING snapshot_id")
            .fetch_one(pool)
            .await?;
    // Each user's run of sequences from 1 without a gap.
    let users = sqlx::query(
        "INSERT INTO audit_snapshot_users (snapshot_id, user_id, sequence)
         SELECT $1, user_id, max(sequence)
           FROM (SELECT user_id, sequence,
                        row_number() OVER (PARTITION BY user_id ORDER BY sequence) AS n
                   FROM audit_events) numbered
          WHERE sequence = n
          GROUP BY user_id",
    )
    .bind(snapshot_id)
    .execute(pool)
    .await?
    .rows_affected();

    let mut report = Report::default();
    let mut chains = Chains::between(pool, previous, snapshot_id);
    let mut batch = Vec::with_capacity(BATCH);
    let mut tasks = 0u64;
    while let Some(chain) = chains.next(&mut report).await? {
        batch.push(chain);
        if batch.len() == BATCH {
            tasks += write(pool, snapshot_id, &mut batch).await?;
        }
    }
    tasks += write(pool, snapshot_id, &mut batch).await?;

    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE audit_snapshots
            SET complete = true,
                events = $2 + coalesce((SELECT events FROM audit_snapshots WHERE snapshot_id = $3), 0)
          WHERE snapshot_id = $1",
    )
    .bind(snapshot_id)
    .bind(i64::try_from(report.events).unwrap_or(i64::MAX))
    .bind(previous)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM audit_snapshots WHERE snapshot_id < $1")
        .bind(snapshot_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Taken {
        snapshot_id,
        previous,
        users,
        tasks,
        events: report.events,
        differences: report.differences,
    })
}

/// Writes and empties `batch`; how many rows.
async fn write(
    pool: &PgPool,
    snapshot_id: i64,
    batch: &mut Vec<crate::replay::Chain>,
) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut users = Vec::with_capacity(batch.len());
    let mut states = Vec::with_capacity(batch.len());
    let mut deleted = Vec::with_capacity(batch.len());
    for chain in batch.drain(..) {
        ids.push(chain.task_id);
        users.push(chain.user_id);
        states.push(chain.state.map(serde_json::to_value).transpose()?);
        deleted.push(chain.deleted);
    }
    Ok(sqlx::query(
        "INSERT INTO audit_snapshot_tasks (snapshot_id, task_id, user_id, state, deleted)
         SELECT $1, t, u, s, d FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::bool[])
                AS x(t, u, s, d)",
    )
    .bind(snapshot_id)
    .bind(&ids)
    .bind(&users)
    .bind(&states)
    .bind(&deleted)
    .execute(pool)
    .await?
    .rows_affected())
}
