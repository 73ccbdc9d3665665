use clap::{Parser, Subcommand};
use std::time::Duration;
use todo_api::app::{ApiOptions, Application, DEFAULT_PORT};
use todo_contract::domain::UserId;
use todo_platform::auth::JwtKeys;
use todo_platform::config::{exit_on_config_error, DatabaseSettings, JwtSettings, Settings};
use todo_platform::{db, shutdown, telemetry};

const BINARY: &str = "todo-api";

// A request allocates and frees many small buffers (JSON, headers, the
// envelope): glibc's malloc took ~11 % of todo-api's CPU under load, and
// jemalloc does the same requests in 11 % fewer instructions (callgrind)
// for ~1 MiB more idle memory (mimalloc saved as much but cost 13 MiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The REST API of the todo platform and its outbox relay.
#[derive(Parser)]
#[command(name = BINARY, version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the outbox relay (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Erase a user's data in every service (what DELETE /me does), e.g.
    /// for a request that reached the operators.
    EraseUser {
        /// The user id (the tokens' `sub`).
        #[arg(long)]
        user: String,
    },
    /// Print a development token for a user (signed with JWT_SECRET).
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(BINARY, &e));
    let jwt = || JwtSettings::from_env().unwrap_or_else(|e| exit_on_config_error(BINARY, &e));
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, hours } => {
            let user = UserId::try_from(user).unwrap_or_else(|e| {
                eprintln!("{BINARY}: --user: {e}");
                std::process::exit(2)
            });
            let keys = JwtKeys::new(&jwt());
            let ttl = Duration::from_secs(hours.saturating_mul(3600));
            println!("{}", keys.mint(&user, ttl));
            Ok(())
        }
        Command::EraseUser { user } => {
            let user = UserId::try_from(user).unwrap_or_else(|e| {
                eprintln!("{BINARY}: --user: {e}");
                std::process::exit(2)
            });
            let _telemetry = telemetry::init(BINARY);
            erase_user(&settings, &user).await
        }
        Command::Migrate => {
            let _telemetry = telemetry::init(BINARY);
            migrate(&settings).await
        }
        Command::Serve => {
            let jwt = jwt();
            let _telemetry = telemetry::init(BINARY);
            let options =
                ApiOptions::from_env().unwrap_or_else(|e| exit_on_config_error(BINARY, &e));
            serve(&settings, &jwt, options).await
        }
    };
    shutdown::exit_on_failure(BINARY, result);
}

/// The one migrator: the compose one-shot, the Kubernetes Job and Render's
/// pre-deploy command run it. Migrations may take longer than a request's
/// statement timeout.
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let database = DatabaseSettings {
        statement_timeout: Duration::ZERO,
        ..settings.database.clone()
    };
    let pool = db::pool(&database)?;
    db::migrate_when_reachable(&pool, db::STARTUP_PATIENCE).await?;
    tracing::info!(
        version = db::schema_version(&pool).await?,
        "migrations applied"
    );
    // Data a migration could not compute in SQL.
    let filled = todo_store::tasks::fill_next_occurrences(&pool).await?;
    if filled > 0 {
        tracing::info!(tasks = filled, "next occurrences computed");
    }
    Ok(())
}

/// Erases on the command line; the relay leading in a running service
/// publishes user.erased.
async fn erase_user(settings: &Settings, user: &UserId) -> anyhow::Result<()> {
    let pool = db::service_pool(&settings.database).await?;
    let correlation = uuid::Uuid::now_v7().to_string();
    let erasure = todo_api::erasure::erase(&pool, user, &correlation).await?;
    // Wakes that relay at once instead of at its next poll.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(todo_store::outbox::CHANNEL)
        .execute(&pool)
        .await?;
    match erasure.event_id {
        Some(event) => println!(
            "erased {user}: {} tasks here; user.erased {event} tells the other services",
            erasure.tasks
        ),
        None => println!("{user} had been erased before; nothing to do"),
    }
    Ok(())
}

async fn serve(settings: &Settings, jwt: &JwtSettings, options: ApiOptions) -> anyhow::Result<()> {
    let app = Application::build(settings, jwt, options).await?;
    app.run(shutdown::on_signal()).await
}
