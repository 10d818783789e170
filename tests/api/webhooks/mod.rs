//! Webhooks (SPEC section 11) as their callers and receivers see them: the configuration routes
//! ([`config`]) and the signed deliveries of `latchkey serve`'s outbox ([`delivery`]), verified
//! by a loopback receiver with the `standardwebhooks` crate. `tests/run.sh` runs this module on
//! the aws backend too, where the events reach the deliveries as in AWS: EventBridge (moto) to
//! an SQS queue, from which [`WebhookApp`] enqueues them as `webhook-deliver` does, and the
//! server's worker attempts them.

mod config;
mod delivery;
mod listing;
pub mod receiver;

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::moto;

use crate::harness::{Backend, Reply, TestApp, random_hex, random_secret};

/// A `latchkey serve` binary for one organization of its own, with the settings `env` (e.g. a
/// short `LATCHKEY_WEBHOOK_RETRY_SCHEDULE`), and on the aws backend the pump from its events'
/// SQS queue to the deliveries.
pub struct WebhookApp {
    pub app: TestApp,
    pub org_id: String,
    /// An organization user's token.
    pub org: String,
    secret: String,
    env: Vec<(String, String)>,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for WebhookApp {
    fn drop(&mut self) {
        if let Some(p) = &self.pump {
            p.abort();
        }
    }
}

impl std::ops::Deref for WebhookApp {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl WebhookApp {
    /// The binary on a fresh backend of `LATCHKEY_TEST_BACKEND`'s kind.
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        let backend = Backend::fresh().await;
        let org_id = format!("acme-{}", &random_hex()[..12]);
        // The aws backend: this organization's events, from EventBridge to a queue of its own.
        let queue = match backend.aws() {
            Some(aws) => {
                let config = moto::sdk_config_for(&aws.endpoint).await;
                Some((config.clone(), moto::sqs_queue_for_org_events(&config, "default", &org_id).await.0))
            }
            None => None,
        };
        let secret = random_secret();
        let app = TestApp::spawn_binary_with_env(&backend, &secret, env).await;
        let org = app.token(&org_id, None, &[]).await;
        let pump = match (queue, backend.aws()) {
            (Some((config, queue)), Some(aws)) => {
                Some(spawn_pump(config, queue, aws.table.clone(), aws.kms_key_id.clone()))
            }
            _ => None,
        };
        let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
        app.put_definition(&org, "acme-api", &def).await.assert_status(StatusCode::CREATED);
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self { app, org_id, org, secret, env, pump }
    }

    /// Kills the server (SIGKILL, as a crash would) and starts it again on the same data.
    pub async fn crash_and_restart(&mut self) {
        self.app.kill().await;
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.app = TestApp::spawn_binary_with_env(&self.app.backend.clone(), &self.secret, &env).await;
    }

    pub async fn put_webhook(&self, id: &str, body: &Value) -> Reply {
        self.request(Method::PUT, &format!("/v1/webhooks/{id}"), Some(&self.org), Some(body)).await
    }

    /// Creates a webhook of `events` posting to `url`; its secret.
    pub async fn create_webhook(&self, id: &str, url: &str, events: &[&str]) -> String {
        let created = self.put_webhook(id, &json!({"url": url, "events": events})).await;
        created.assert_status(StatusCode::CREATED);
        created.body["secret"].as_str().expect("a created webhook shows its secret").to_owned()
    }

    /// `Connection Created`, by creating a connection; its id.
    pub async fn emit_connection_created(&self) -> String {
        let body = json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k-1"}});
        let created = self.create_connection(&self.org, &body).await;
        created.assert_status(StatusCode::CREATED);
        created.body["id"].as_str().unwrap().to_owned()
    }

    /// A service of this process on the server's backend ([`service_on`]): to play what the
    /// server does not do on demand, such as a late SQS message.
    pub async fn service(&self) -> Arc<latchkey::service::Service> {
        service_on(&self.app.backend).await
    }

    /// The webhook's deliveries, newest first.
    pub async fn deliveries(&self, id: &str) -> Vec<Value> {
        let listed = self.get(&format!("/v1/webhooks/{id}/deliveries"), &self.org).await;
        listed.assert_status(StatusCode::OK);
        listed.body["items"].as_array().unwrap().clone()
    }
}

/// A service of this process on `backend` (the system clock, default options: loopback
/// allowed), with no server.
pub async fn service_on(backend: &Backend) -> Arc<latchkey::service::Service> {
    service_with(backend, latchkey::service::ServiceOptions::default()).await
}

/// A service of this process on `backend` with `options` (settings the binary does not take,
/// such as a short webhook attempt timeout), with no server.
pub async fn service_with(
    backend: &Backend,
    options: latchkey::service::ServiceOptions,
) -> Arc<latchkey::service::Service> {
    match backend.aws() {
        Some(aws) => {
            let config = moto::sdk_config_for(&aws.endpoint).await;
            aws_service(&config, &aws.table, &aws.kms_key_id, options)
        }
        None => {
            latchkey::config::Components::embedded(backend.data_dir(), options)
                .expect("open the embedded backend")
                .service
        }
    }
}

/// A service on the aws backend in moto (`config`'s endpoint), events to the `default` bus.
fn aws_service(
    config: &aws_config::SdkConfig,
    table: &str,
    kms_key_id: &str,
    options: latchkey::service::ServiceOptions,
) -> Arc<latchkey::service::Service> {
    latchkey::config::Components::aws(
        aws_sdk_dynamodb::Client::new(config),
        aws_sdk_kms::Client::new(config),
        aws_sdk_eventbridge::Client::new(config),
        table,
        kms_key_id,
        "default",
        options,
    )
    .service
}

/// What `webhook-deliver` does with each SQS message, in this process: the envelope becomes a
/// `WebhookMessage` and its deliveries are enqueued (the server's worker attempts them).
fn spawn_pump(
    config: aws_config::SdkConfig,
    queue: String,
    table: String,
    kms_key_id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let service = aws_service(&config, &table, &kms_key_id, latchkey::service::ServiceOptions::default());
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tick.tick().await;
            for envelope in moto::receive_all(&config, &queue, 0).await {
                let message = latchkey::service::webhooks::WebhookMessage::from_eventbridge(&envelope)
                    .expect("a Latchkey event envelope");
                service.enqueue_deliveries(&message).await.expect("enqueue the deliveries");
            }
        }
    })
}

/// The aws backend's stand-in for `webhook-deliver` for `org`'s events (as [`WebhookApp`] runs
/// it), for suites that spawn their own server; `None` on the embedded backend, whose outbox
/// needs none. The pump stops when the handle is dropped.
pub async fn pump_for(backend: &Backend, org: &str) -> Option<Pump> {
    let aws = backend.aws()?;
    let config = moto::sdk_config_for(&aws.endpoint).await;
    let queue = moto::sqs_queue_for_org_events(&config, "default", org).await.0;
    Some(Pump(spawn_pump(config, queue, aws.table.clone(), aws.kms_key_id.clone())))
}

/// A running [`pump_for`]; aborted when dropped.
pub struct Pump(tokio::task::JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}
