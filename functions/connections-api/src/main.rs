//! The `connections-api` Lambda: the HTTP API behind API Gateway.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_http(components, &settings, latchkey::http::Surface::ConnectionsApi).await
}
