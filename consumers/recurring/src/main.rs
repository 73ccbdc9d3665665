use todo_platform::config::{exit_on_config_error, Env, Settings};
use todo_platform::{shutdown, telemetry};
use todo_recurring::{app, DEFAULT_PORT, NAME};

#[tokio::main]
async fn main() {
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let config = app::consumer_config().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let retention = todo_recurring::retention::from_env(&Env::process())
        .unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let _telemetry = telemetry::init(NAME);
    let result = async {
        app::App::build(&settings, config)
            .await?
            .with_retention(retention)
            .run(shutdown::on_signal())
            .await
    };
    shutdown::exit_on_failure(NAME, result.await);
}
