//! The `oauth-callback` Lambda: the public `GET /v1/oauth/callback` route behind API Gateway.
//! It mounts only that route (and `/healthz`), so its role needs only what the callback uses.

use latchkey::config::{App, Backend, Config};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    latchkey::telemetry::init();
    let config = Config::from_env_or(Backend::Aws)?;
    let app = App::build(&config).await?;
    latchkey::lambda::serve_http(app, &config, latchkey::http::Surface::OauthCallback).await
}
