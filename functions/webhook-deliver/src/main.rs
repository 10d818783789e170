//! The `webhook-deliver` Lambda: reads Latchkey's events from the webhook SQS queue (fed by the
//! EventBridge rule on the bus) and delivers them to the organizations' webhook endpoints,
//! signed per the Standard Webhooks specification.

use latchkey::config::{BackendKind, Components, LogFormat, Settings};

#[tokio::main]
async fn main() -> Result<(), latchkey::lambda::Error> {
    let settings = Settings::from_env(BackendKind::Aws)?;
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let components = Components::build(&settings).await?;
    latchkey::lambda::serve_webhook_deliver(components).await
}
