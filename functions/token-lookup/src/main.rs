//! The `token-lookup` Lambda: fresh credentials for integration executions, invoked directly.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_lookup(components, &settings).await
}
