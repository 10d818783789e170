//! The `token-lookup` Lambda: fresh credentials for integration executions, invoked directly.

use latchkey::config::{App, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env()?;
    let app = App::build(&config)?;
    latchkey::lambda::serve_lookup(app).await
}
