//! The `connections-api` Lambda: the HTTP API behind API Gateway.

use latchkey::config::{App, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env()?;
    let app = App::build(&config)?;
    latchkey::lambda::serve_http(app, &config).await
}
