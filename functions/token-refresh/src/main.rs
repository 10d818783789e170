//! The `token-refresh` Lambda: the scheduled sweep that refreshes OAuth tokens before they expire.

use latchkey::config::{App, Backend, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env_or(Backend::Aws)?;
    let app = App::build(&config).await?;
    latchkey::lambda::serve_refresh(app).await
}
