//! The `token-lookup` Lambda: fresh credentials for integration executions, invoked directly.

use latchkey::config::{App, Backend, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env_or(Backend::Aws)?;
    let app = App::build(&config).await?;
    latchkey::lambda::serve_lookup(app, &config).await
}
