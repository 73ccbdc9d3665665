//! The PostgreSQL pool and the migrations.

use crate::config::DatabaseSettings;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The migrations in `migrations/`, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(settings.url.expose_secret())
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

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Begins a transaction. A pooled connection that died since its last use
/// (the server restarted, a proxy dropped it) fails on `BEGIN`, before any
/// work: sqlx discards it and this retries once on a fresh connection.
pub async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    match pool.begin().await {
        Err(sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) => pool.begin().await,
        other => other,
    }
}

/// Waits up to a minute for the database (a service may start first), then
/// applies the migrations.
pub async fn wait_and_migrate(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        match migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "database not ready for migrations; retrying");
                tokio::time::sleep(crate::retry::backoff(attempt)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("migrations failed: {e}")),
        }
    }
}

/// Whether the database answers, within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// Is this the error PostgreSQL raises for a unique-constraint violation?
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
