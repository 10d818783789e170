//! The `token-revoke` Lambda: revokes tokens at the provider (RFC 7009) after a disconnect or
//! delete, on the EventBridge rule matching Latchkey's own events.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_revoke(components).await
}
