use todo_realtime::app::{App, Options};
use todo_realtime::{DEFAULT_PORT, NAME};
use todo_shared::config::{exit_on_config_error, Settings};
use todo_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() {
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let options = Options::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    telemetry::init(NAME);
    if let Err(e) = run(&settings, options).await {
        tracing::error!(error = %format!("{e:#}"), "{NAME} failed");
        eprintln!("{NAME}: {e:#}");
        std::process::exit(1);
    }
}

async fn run(settings: &Settings, options: Options) -> anyhow::Result<()> {
    let app = App::build(settings, options).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.trigger();
    });
    app.run(shutdown).await
}
