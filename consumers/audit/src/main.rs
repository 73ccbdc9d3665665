use clap::{Parser, Subcommand};
use todo_audit::{app, replay, snapshot, DEFAULT_PORT, NAME};
use todo_platform::config::{exit_on_config_error, DatabaseSettings, JwtSettings, Settings};
use todo_platform::{db, shutdown, telemetry};

/// The event store of the todo platform.
#[derive(Parser)]
#[command(name = NAME, version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume every event and serve history and the event log (the default).
    Serve,
    /// Rebuild every task from the event log and compare it with the tasks
    /// table; exits 1 if they differ.
    Replay {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Start from the latest snapshot (`todo-audit snapshot`) and fold
        /// only the events after it.
        #[arg(long)]
        from_snapshot: bool,
    },
    /// Store the task state the log leads to, so that a replay can start
    /// there; builds on the previous snapshot and replaces it.
    Snapshot,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let options =
                app::Options::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
            let jwt = JwtSettings::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
            let _telemetry = telemetry::init(NAME);
            serve(&settings, &jwt, options).await
        }
        Command::Replay {
            json,
            from_snapshot,
        } => match run_replay(&settings, json, from_snapshot).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Snapshot => run_snapshot(&settings).await,
    };
    shutdown::exit_on_failure(NAME, result);
}

async fn serve(
    settings: &Settings,
    jwt: &JwtSettings,
    options: app::Options,
) -> anyhow::Result<()> {
    let audit = app::build(settings, jwt, options).await?;
    audit.run(shutdown::on_signal()).await
}

/// A whole-log job's pool: no statement timeout.
async fn batch_pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let database = DatabaseSettings {
        statement_timeout: std::time::Duration::ZERO,
        ..settings.database.clone()
    };
    db::service_pool(&database).await
}

/// Prints the report; true when the log and the table agree.
async fn run_replay(settings: &Settings, json: bool, from_snapshot: bool) -> anyhow::Result<bool> {
    let pool = batch_pool(settings).await?;
    let from = if from_snapshot {
        Some(
            snapshot::latest(&pool)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no snapshot yet: run `todo-audit snapshot`"))?,
        )
    } else {
        None
    };
    let report = replay::replay(&pool, from).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.differences {
            println!("{d}");
        }
        let start = match report.snapshot {
            Some(id) => format!(" after snapshot {id}"),
            None => String::new(),
        };
        println!(
            "replayed {} events{start} of {} tasks against {} rows of tasks: {} difference(s)",
            report.events,
            report.tasks_in_log,
            report.tasks_in_table,
            report.differences.len()
        );
    }
    Ok(report.is_clean())
}

async fn run_snapshot(settings: &Settings) -> anyhow::Result<()> {
    let pool = batch_pool(settings).await?;
    let taken = snapshot::take(&pool).await?;
    for d in &taken.differences {
        println!("{d}");
    }
    println!(
        "snapshot {}: {} tasks of {} users, {} events folded on top of {}",
        taken.snapshot_id,
        taken.tasks,
        taken.users,
        taken.events,
        taken
            .previous
            .map(|p| format!("snapshot {p}"))
            .unwrap_or_else(|| "nothing".into())
    );
    Ok(())
}
