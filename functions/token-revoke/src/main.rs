//! The `token-revoke` Lambda: revokes tokens at the provider (RFC 7009) after a disconnect or
//! delete, on the EventBridge rule matching Latchkey's own events.

use latchkey::config::{App, Backend, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env_or(Backend::Aws)?;
    let app = App::build(&config).await?;
    latchkey::lambda::serve_revoke(app).await
}
