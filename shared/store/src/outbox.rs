//! The writing side of the transactional outbox: an event is appended in the
//! same transaction as the change it describes, with the next number of its
//! user's `sequence`. [`OutboxSignal`] wakes the relay once that transaction
//! has committed.

use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::{PgConnection, PgPool, Postgres};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use todo_contract::envelope::{Envelope, EventDraft};
use tokio::sync::Notify;
use uuid::Uuid;

/// The PostgreSQL channel the relay listens on.
pub const CHANNEL: &str = "todo_outbox";

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
        event_type: todo_contract::envelope::EventType,
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

/// How many parameters the outbox statement itself takes ([`Pending::bind`]
/// binds them); a change's own are numbered after them ([`Placeholders`]).
const OWN_PARAMS: usize = 7;

/// The parameter that holds the event's user id, which a change may use too
/// (a task's owner is its event's user).
pub(crate) const USER_PARAM: &str = "$1";

/// Hands out a change's placeholders in the order its values are bound,
/// after the outbox statement's own: whoever binds them in the same order
/// never counts parameters.
pub(crate) struct Placeholders(usize);

impl Placeholders {
    pub(crate) fn after_outbox() -> Self {
        Placeholders(OWN_PARAMS)
    }

    /// The next placeholder (`$8` first).
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
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
pub(crate) fn statement_after(change: Option<&str>) -> String {
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
pub(crate) struct Pending<D> {
    event_type: todo_contract::envelope::EventType,
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
    pub(crate) fn new(draft: EventDraft<D>) -> Result<Self, OutboxError> {
        let event_type = draft.event_type;
        let mut envelope =
            draft.into_envelope(Uuid::now_v7(), todo_contract::domain::now(), PLACEHOLDER);
        // The change's trace goes with its event: the relay continues it.
        envelope.traceparent =
            todo_platform::telemetry::TraceParent::current().map(|t| t.to_string());
        let mut head = serde_json::to_vec(&envelope)?;
        // The first `"sequence":` is the envelope's own: it comes before
        // `data`, and a JSON string cannot hold an unescaped `":`.
        let at = head
            .windows(MARKER.len())
            .position(|w| w == MARKER)
            .ok_or(OutboxError::NoSequence)?;
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
    pub(crate) fn bind<'q, O>(
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
    pub(crate) fn into_envelope(self, sequence: i64) -> Envelope<D> {
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

/// Tells the relay that outbox rows were committed.
///
/// In-process it is a [`Notify`] (no database round trip on the request
/// path). When the relay that currently leads runs in another process, a
/// background task sends one `NOTIFY` per burst of commits, outside the
/// request's transaction, so commits never queue on PostgreSQL's notify lock.
#[derive(Clone, Default)]
pub struct OutboxSignal {
    inner: Arc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    local: Notify,
    remote: Notify,
    leader_here: AtomicBool,
}

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after a transaction that appended events has committed.
    pub fn committed(&self) {
        if self.inner.leader_here.load(Ordering::Relaxed) {
            self.inner.local.notify_one();
        } else {
            self.inner.remote.notify_one();
        }
    }

    /// Resolves at the next local commit (or at once if one happened since
    /// the last call).
    pub async fn local_commit(&self) {
        self.inner.local.notified().await
    }

    /// Set by the relay when it gains or loses leadership in this process.
    pub fn set_leader_here(&self, leader: bool) {
        self.inner.leader_here.store(leader, Ordering::Relaxed);
    }

    /// Forwards commits to a relay in another process with `NOTIFY`; one
    /// notification covers every commit made while the previous one was sent.
    pub async fn forward_to_other_processes(
        self,
        pool: PgPool,
        shutdown: todo_platform::shutdown::Shutdown,
    ) {
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = self.inner.remote.notified() => {}
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&pool)
                .await
            {
                // The relay's polling fallback publishes the rows anyway.
                tracing::warn!(error = %e, "could not notify the outbox relay");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_contract::envelope::EventType;

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
}
