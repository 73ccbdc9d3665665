use todo_notifier::app::{App, Options};
use todo_notifier::{DEFAULT_PORT, NAME};
use todo_shared::config::{exit_on_config_error, Settings};
use todo_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() {
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let options = Options::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    telemetry::init(NAME);
    let result = async {
        App::with_log_delivery(&settings, options)
            .await?
            .run(shutdown::on_signal())
            .await
    };
    shutdown::exit_on_failure(NAME, result.await);
}
