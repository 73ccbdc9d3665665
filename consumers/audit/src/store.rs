//! The handler: every event into `audit_events`, in bulk, once.

use crate::partitions::Partitions;
use sqlx::PgConnection;
use std::sync::Arc;
use todo_consumer::{Event, Handler, HandlerError};
use todo_contract::envelope::{EventKind, EventType, Topic};
use uuid::Uuid;

pub struct AuditStore {
    pub partitions: Arc<Partitions>,
}

/// The task an event is about: the subject of a task event, the `task_id`
/// of a reminder event. Known by the topic it came from, so that events of
/// types this version does not know are placed too.
fn task_id(event: &Event) -> Option<Uuid> {
    let env = &event.envelope;
    let reminders = Topic::Reminders.base_name();
    if event.origin.topic.ends_with(reminders) {
        env.data["task_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    } else {
        Uuid::parse_str(&env.subject).ok()
    }
}

impl Handler for AuditStore {
    /// Every event, of every type: the store keeps what a newer producer
    /// sends too, so a sync never has a hole where it is.
    fn wants(&self, _kind: &EventKind) -> bool {
        true
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[event]).await
    }

    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<(), HandlerError> {
        // An erasure is not stored: it deletes the user's log (the one
        // exception the append-only trigger allows, for an erased user).
        let (erasures, events): (Vec<&Event>, Vec<&Event>) = events
            .iter()
            .copied()
            .partition(|e| e.envelope.event_type == EventType::UserErased);
        // An event older than the retention would bring back a month that
        // was dropped: it is passed over, as that month's events were.
        let horizon = self.partitions.horizon();
        let (events, expired): (Vec<&Event>, Vec<&Event>) = events
            .into_iter()
            .partition(|e| horizon.is_none_or(|h| e.envelope.time >= h));
        for e in &expired {
            e.span.in_scope(|| {
                tracing::info!(time = %e.envelope.time, "event older than AUDIT_RETENTION_MONTHS; not stored")
            });
        }
        self.partitions.expired(expired.len());
        if !events.is_empty() {
            self.partitions
                .ensure(events.iter().map(|e| e.envelope.time))
                .await?;
            insert(conn, &events).await?;
        }
        for e in erasures {
            let user = &e.envelope.userid;
            let deleted = sqlx::query("DELETE FROM audit_events WHERE user_id = $1")
                .bind(user)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            // And the user's tasks in the replay snapshot.
            for statement in [
                "DELETE FROM audit_snapshot_tasks WHERE user_id = $1",
                "DELETE FROM audit_snapshot_users WHERE user_id = $1",
            ] {
                sqlx::query(statement)
                    .bind(user)
                    .execute(&mut *conn)
                    .await?;
            }
            e.span
                .in_scope(|| tracing::info!(deleted, "erased the user's audit log"));
        }
        Ok(())
    }
}

/// Every event of `events` into `audit_events`, in one statement.
async fn insert(conn: &mut PgConnection, events: &[&Event]) -> Result<(), HandlerError> {
    let n = events.len();
    let (mut ids, mut users, mut sequences, mut types) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut tasks, mut times, mut envelopes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut topics, mut partitions, mut offsets) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        let env = &e.envelope;
        // The envelope as it was published, extension attributes included.
        let raw = std::str::from_utf8(&e.payload)
            .map_err(|err| HandlerError::rejected(format!("payload is not UTF-8: {err}")))?;
        ids.push(env.id);
        users.push(env.userid.as_str());
        sequences.push(env.sequence);
        types.push(env.event_type.as_str());
        tasks.push(task_id(e));
        times.push(env.time);
        envelopes.push(raw);
        topics.push(e.origin.topic.as_str());
        partitions.push(e.origin.partition);
        offsets.push(e.origin.offset);
    }
    sqlx::query(
        "INSERT INTO audit_events (event_id, user_id, sequence, event_type, task_id, time,
                                       envelope, topic, partition, kafka_offset)
             SELECT id, u, s, t, task, tm, env::jsonb, tp, p, o
               FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::uuid[],
                           $6::timestamptz[], $7::text[], $8::text[], $9::int[], $10::bigint[])
                    AS x(id, u, s, t, task, tm, env, tp, p, o)
             ON CONFLICT (event_id, time) DO NOTHING",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&sequences)
    .bind(&types)
    .bind(&tasks)
    .bind(&times)
    .bind(&envelopes)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .execute(conn)
    .await?;
    Ok(())
}
