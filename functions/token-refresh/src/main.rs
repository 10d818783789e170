//! The `token-refresh` Lambda: the scheduled sweep that refreshes OAuth tokens before they expire,
//! fanning out through its SQS queue to its own workers when more are due than one sweep does.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_refresh(components, &settings).await
}
