use todo_notifier::app::{App, Options};
use todo_notifier::channels::webpush::Vapid;
use todo_notifier::{DEFAULT_PORT, NAME};
use todo_platform::config::{exit_on_config_error, Settings};
use todo_platform::{shutdown, telemetry};

#[tokio::main]
async fn main() {
    // `todo-notifier vapid-keys`: a fresh Web Push key pair for the
    // environment (VAPID_PRIVATE_KEY here, VAPID_PUBLIC_KEY for todo-api).
    if std::env::args().nth(1).as_deref() == Some("vapid-keys") {
        let vapid = Vapid::generate();
        println!("VAPID_PRIVATE_KEY={}", vapid.private_key());
        println!("VAPID_PUBLIC_KEY={}", vapid.public_key());
        return;
    }
    let settings =
        Settings::from_env(DEFAULT_PORT).unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let options = Options::from_env().unwrap_or_else(|e| exit_on_config_error(NAME, &e));
    let _telemetry = telemetry::init(NAME);
    let result = async {
        App::with_log_delivery(&settings, options)
            .await?
            .run(shutdown::on_signal())
            .await
    };
    shutdown::exit_on_failure(NAME, result.await);
}
