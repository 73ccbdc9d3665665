use todo_platform::config::{exit_on_config_error, JwtSettings, Settings};
use todo_platform::{shutdown, telemetry};
use todo_realtime::app::{App, Options};
use todo_realtime::{DEFAULT_PORT, NAME};

#[tokio::main]
async fn main() {
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let jwt = JwtSettings::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let options = Options::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let _telemetry = telemetry::init(NAME);
    let result = async {
        App::build(&settings, &jwt, options)
            .await?
            .run(shutdown::on_signal())
            .await
    };
    shutdown::exit_on_failure(NAME, result.await);
}
