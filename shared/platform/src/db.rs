//! The PostgreSQL pool and the migrations.

use crate::config::DatabaseSettings;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How to connect, with the session settings every connection carries
/// (`statement_timeout`).
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let timeout_ms = settings.statement_timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(settings.url.expose_secret())?
        .options([("statement_timeout", timeout_ms.as_str())]))
}

/// A lazily connecting pool: a service starts (and answers `/health`) while
/// the database is still coming up; `/ready` tells whether it is reachable.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before every use (a round trip per request); a connection
        // that died meanwhile is caught by `begin` instead.
        .test_before_acquire(false)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(connect_options(settings)?))
}

/// Applies the migrations this binary knows. Migrations applied by a newer
/// release are left alone, so that rolling back the image never fails here.
/// The one migrator is `todo-api migrate`; services only check the schema
/// ([`wait_for_schema`]).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// [`migrate`], waiting up to `patience` for the database to answer (the
/// migrator may start before it).
pub async fn migrate_when_reachable(pool: &PgPool, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    let mut attempt = 0;
    loop {
        match migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if is_unavailable(&e) && Instant::now() < deadline =>
            {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "database not reachable for migrations; retrying");
                tokio::time::sleep(crate::retry::backoff(attempt)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("migrations failed: {e}")),
        }
    }
}

/// The schema version this binary needs: its newest migration.
pub fn required_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The newest migration applied to the database (0: none).
pub async fn schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(version.unwrap_or(0))
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database schema is at version {found}, this release needs {needed}: \
         run `todo-api migrate` (the compose one-shot or the Kubernetes Job does)"
    )]
    TooOld { found: i64, needed: i64 },
    #[error("database unreachable: {0}")]
    Unreachable(#[from] sqlx::Error),
}

/// Waits up to `patience` for the schema this binary needs (the migrator
/// may still be running); a newer schema is fine. Services never migrate,
/// so their database role needs no DDL rights.
pub async fn wait_for_schema(pool: &PgPool, patience: Duration) -> Result<(), SchemaError> {
    let deadline = Instant::now() + patience;
    let needed = required_schema_version();
    let mut attempt = 0;
    loop {
        let error = match schema_version(pool).await {
            Ok(found) if found >= needed => return Ok(()),
            Ok(found) => SchemaError::TooOld { found, needed },
            Err(e) => SchemaError::Unreachable(e),
        };
        if Instant::now() >= deadline {
            return Err(error);
        }
        attempt += 1;
        if attempt == 1 || attempt % 10 == 0 {
            tracing::warn!(error = %error, attempt, "database schema not ready; waiting");
        }
        tokio::time::sleep(crate::retry::backoff(attempt)).await;
    }
}

/// Begins a transaction. A pooled connection that died since its last use
/// (the server restarted or failed over, `pg_terminate_backend`, a proxy
/// dropped it) fails on `BEGIN`, before any work: sqlx discards it and this
/// tries the next one. After a restart every idle connection is dead, so
/// it may take as many tries as the pool holds; then a new one is opened.
pub async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    read(pool, || pool.begin()).await
}

/// Runs a read (or a `BEGIN`) again on the next connection while the one it
/// got turns out to be dead: reading twice changes nothing. At most once per
/// connection the pool can hold, and once more on a fresh one.
pub async fn read<T, E, F, Fut>(pool: &PgPool, mut query: F) -> Result<T, E>
where
    E: ConnectionError,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = pool.options().get_max_connections() + 1;
    loop {
        match query().await {
            Err(e) if e.connection_gone() && tries > 1 => tries -= 1,
            other => return other,
        }
    }
}

/// An error that may say the database connection is gone.
pub trait ConnectionError {
    fn connection_gone(&self) -> bool;
}

impl ConnectionError for sqlx::Error {
    fn connection_gone(&self) -> bool {
        is_connection_gone(self)
    }
}

/// The connection itself is gone (closed, reset, or the server terminated
/// it: 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
/// now), as opposed to the statement failing on a live one.
pub fn is_connection_gone(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// How long a service waits at start for the database and its schema.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// The pool of a service, once the database holds the schema it needs.
pub async fn service_pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = self::pool(settings)?;
    wait_for_schema(&pool, STARTUP_PATIENCE).await?;
    warn_if_autovacuum_off(&pool).await;
    Ok(pool)
}

/// Every table here but the outbox (which the relay vacuums itself) relies
/// on autovacuum to reuse the space of deleted and updated rows: the
/// retention jobs keep the row counts level, yet without it the files grow
/// by every row ever deleted (seen in a soak on a server with autovacuum
/// off: `processed_events` at a level 90 k rows went from 8 to 161 MiB in
/// 40 minutes). Said once at start, where an operator looks.
async fn warn_if_autovacuum_off(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await;
    if let Ok("off") = setting.as_deref() {
        tracing::warn!(
            "autovacuum is off on this PostgreSQL server: the space of deleted rows is never \
             reused and every table but the outbox grows on disk however short the retention; \
             turn it on (autovacuum = on)"
        );
    }
}

/// Whether the database answers, within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// Errors that say the database cannot be reached or is not accepting work
/// (the server restarted, a connection was terminated, too many clients),
/// rather than that this statement is wrong: worth waiting out.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many
            // connections, disk full); 57P: the server is shutting down,
            // terminated this connection or is starting; 58: system error.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("58")
        }),
        _ => false,
    }
}

/// A deadlock (40P01) or a serialization failure (40001): the transaction
/// lost a race, not a fault of its statements; the same work succeeds when
/// tried again.
pub fn is_transient_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// How often a retention job runs for a retention of `keep`: hourly, or a
/// tenth of it when that is shorter (a retention of minutes, in a soak),
/// but not more often than every 10 s.
pub fn prune_every(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

/// Runs a retention `statement` until it deletes fewer than `batch` rows:
/// `$1` is the age in seconds past which rows go (`make_interval(secs =>
/// $1)`), `$2` the most rows one run deletes. Returns how many rows went.
pub async fn delete_in_batches(
    pool: &PgPool,
    statement: &str,
    older_than: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    delete_in_batches_with(pool, batch, |limit| {
        sqlx::query(statement)
            .bind(older_than.as_secs_f64())
            .bind(limit)
    })
    .await
}

/// The loop of [`delete_in_batches`], for a statement with parameters of
/// its own: `query(batch)` deletes at most `batch` rows; it runs until it
/// deletes fewer. Many short statements instead of one long DELETE: each
/// locks little and leaves little for one vacuum.
pub async fn delete_in_batches_with<'q, F>(
    pool: &PgPool,
    batch: i64,
    mut query: F,
) -> Result<u64, sqlx::Error>
where
    F: FnMut(i64) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
{
    let mut total = 0;
    loop {
        let done = query(batch).execute(pool).await?.rows_affected();
        total += done;
        if done < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// The statement touched the events of a user who has been erased: their
/// sequence row refuses every writer (migration `user_erasure`).
pub fn is_user_erased(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(USER_ERASED))
}

/// The SQLSTATE of [`is_user_erased`].
pub const USER_ERASED: &str = "TD001";

/// PostgreSQL cancelled a statement that ran past `statement_timeout`.
pub fn is_statement_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// Is this the error PostgreSQL raises for a unique-constraint violation?
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
