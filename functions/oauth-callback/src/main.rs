//! The `oauth-callback` Lambda: the public `GET /v1/oauth/callback` route behind API Gateway.
//! It mounts only that route (and `/healthz`), so its role needs only what the callback uses.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_http(components, &settings, latchkey::http::Surface::OauthCallback).await
}
