use todo_recurring::{app, DEFAULT_PORT, NAME};
use todo_shared::config::{exit_on_config_error, Settings};
use todo_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() {
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let config = app::consumer_config().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    telemetry::init(NAME);
    if let Err(e) = run(&settings, config).await {
        tracing::error!(error = %format!("{e:#}"), "{NAME} failed");
        eprintln!("{NAME}: {e:#}");
        std::process::exit(1);
    }
}

async fn run(
    settings: &Settings,
    config: todo_shared::consumer::ConsumerConfig,
) -> anyhow::Result<()> {
    let app = app::App::build(settings, config).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.trigger();
    });
    app.run(shutdown).await
}
