//! The `connections-api` Lambda: the HTTP API behind API Gateway.

use latchkey::config::{App, Backend, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env_or(Backend::Aws)?;
    let app = App::build(&config).await?;
    latchkey::lambda::serve_http(app, &config, latchkey::http::Surface::ConnectionsApi).await
}
