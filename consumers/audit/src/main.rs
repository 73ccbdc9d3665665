use clap::{Parser, Subcommand};
use todo_audit::{app, replay, DEFAULT_PORT, NAME};
use todo_shared::config::{exit_on_config_error, DatabaseSettings, JwtSettings, Settings};
use todo_shared::{db, shutdown, telemetry};

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
    },
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
        Command::Replay { json } => match run_replay(&settings, json).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
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

/// Prints the report; true when the log and the table agree.
async fn run_replay(settings: &Settings, json: bool) -> anyhow::Result<bool> {
    // A replay reads the whole log: no statement timeout.
    let database = DatabaseSettings {
        statement_timeout: std::time::Duration::ZERO,
        ..settings.database.clone()
    };
    let pool = db::service_pool(&database).await?;
    let report = replay::replay(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.differences {
            println!("{d}");
        }
        println!(
            "replayed {} events of {} tasks against {} rows of tasks: {} difference(s)",
            report.events,
            report.tasks_in_log,
            report.tasks_in_table,
            report.differences.len()
        );
    }
    Ok(report.is_clean())
}
