//! The use cases, over the ports. Handlers (HTTP, Lambda) only translate to and from these.

pub mod connect;
mod connections;
mod definitions;
mod error;
pub mod idempotency;
mod lifecycle;
mod lookup;
pub mod oauth;
mod refresh;
mod retry;
mod revoke;
mod selector;
mod verify;
mod views;
mod walk;
pub mod webhooks;

use std::sync::Arc;

use backon::Retryable;

pub use connect::{ConnectLink, ConnectPage, PageConnection, PageDefinition, PageInput};
pub use connections::{ListQuery, MAX_PAGE};
pub use error::{ServiceError, Unusable, error_types, invalid_summary};
pub use idempotency::{IdempotencyError, Idempotent};
pub use lookup::{Channel, LookupRequest, LookupResponse, PrincipalKind, ReadOrigin, ReportedError};
pub use oauth::{Authorization, AuthorizeResponse, CallbackOutcome, DeviceAuthorizeResponse, DevicePollPass};
pub use refresh::{
    DispatchSummary, FanoutPolicy, MAX_SENDS, MessageEntry, QueueError, RefreshMessage, RefreshOutcome, RefreshPolicy,
    RefreshQueue, RefreshTick, SweepSummary,
};
pub use revoke::{
    DUE_REVOCATIONS, DUE_REVOCATIONS_PER_ORGANIZATION, MAX_REVOKE_ATTEMPTS, REVOKE_CONCURRENCY,
    REVOKE_PER_ORGANIZATION, RevokeOutcome,
};
pub use verify::{CREDENTIALS_REJECTED, VerifyAnswer, VerifyPolicy};
pub use views::{ConnectionPage, ConnectionView, DefinitionView};

use crate::crypto::Envelope;
use crate::domain::{Connection, Event, LogEntry, LogType};
use crate::ports::{Clock, EventSink, Store};
use crate::provider::{HttpProviderClient, ProviderClient};

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Latchkey's use cases. Built once per process (or Lambda container) and shared.
pub struct Service {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    /// Every request to a provider's token and revocation endpoints.
    provider: Arc<dyn ProviderClient>,
    /// Bounds verify requests (in flight, and per provider origin).
    verify_gate: verify::VerifyGate,
    /// Sends webhook deliveries (its HTTP clients built once).
    webhook_sender: webhooks::WebhookSender,
    /// Poked when an event enqueued webhook deliveries ([`ServiceOptions::webhook_outbox`]).
    webhook_wake: Arc<tokio::sync::Notify>,
    /// When the device authorizations this process started or its sweep polled come due
    /// ([`Service::device_started`]).
    device_wake: oauth::DeviceWake,
    /// Refreshes at once, adapted to the store's throttling (`refresh::limit`); kept for the
    /// container's life, at most `options.refresh.concurrency`.
    refresh_limit: refresh::RefreshLimit,
    options: ServiceOptions,
}

/// What a [`Service`] is built with besides its ports, fixed for its life (from
/// `config::Settings`, see `Settings::service_options`).
#[derive(Debug)]
pub struct ServiceOptions {
    /// The public base URL, e.g. `https://latchkey.example.com` (no trailing slash needed): the
    /// OAuth redirect URI is `{public_url}/v1/oauth/callback`. `None`: behind API Gateway the
    /// request's domain (`https://{requestContext.domainName}`, see `http::PublicUrl`), elsewhere
    /// authorization is refused (`latchkey serve` always sets one).
    pub public_url: Option<String>,
    /// Whether provider URLs Latchkey calls may name loopback (`LATCHKEY_ALLOW_LOOPBACK_PROVIDERS`).
    pub allow_loopback_providers: bool,
    /// Refresh scheduling and bounds.
    pub refresh: RefreshPolicy,
    /// Credential verification scheduling and bounds (SPEC section 10).
    pub verify: VerifyPolicy,
    /// Who may frame the connect page: the CSP `frame-ancestors` source list
    /// (`LATCHKEY_CONNECT_FRAME_ANCESTORS`, checked by `http::connect::parse_frame_ancestors`),
    /// `'none'` by default.
    pub connect_frame_ancestors: String,
    /// Whether [`Service::emit`] also enqueues the event's webhook deliveries in the store (the
    /// outbox `latchkey serve`'s worker delivers): the embedded backend. On AWS the EventBridge
    /// rule feeds the `webhook-deliver` function instead.
    pub webhook_outbox: bool,
    /// The waits between webhook delivery attempts (`LATCHKEY_WEBHOOK_RETRY_SCHEDULE`, default
    /// [`webhooks::DEFAULT_RETRY_SCHEDULE`]): one retry per entry, then the delivery fails and
    /// its endpoint is disabled.
    pub webhook_retry_schedule: Vec<std::time::Duration>,
    /// How long one webhook delivery attempt may take, connection and answer included (default
    /// [`webhooks::DEFAULT_ATTEMPT_TIMEOUT`], 10 s); one cut off is recorded as `timeout` and
    /// retried on the schedule.
    pub webhook_attempt_timeout: std::time::Duration,
}

impl Default for ServiceOptions {
    /// No public URL, loopback providers allowed (as on the embedded backend), the default
    /// refresh policy.
    fn default() -> Self {
        Self {
            public_url: None,
            allow_loopback_providers: true,
            refresh: RefreshPolicy::default(),
            verify: VerifyPolicy::default(),
            connect_frame_ancestors: "'none'".to_owned(),
            webhook_outbox: false,
            webhook_retry_schedule: webhooks::default_retry_schedule(),
            webhook_attempt_timeout: webhooks::DEFAULT_ATTEMPT_TIMEOUT,
        }
    }
}

impl Service {
    /// A service over a fresh SQLite store (`latchkey.db`) and local key provider in `dir`, its
    /// events to the log, the system clock: the service's own unit tests.
    #[cfg(all(test, feature = "embedded"))]
    pub(crate) fn on_sqlite(dir: &std::path::Path, options: ServiceOptions) -> Self {
        use crate::adapters::{local_key::LocalKeyProvider, log_sink::LogEventSink, sqlite::SqliteStore};
        let keys = Arc::new(LocalKeyProvider::open_or_create(dir).expect("a local key"));
        let store = Arc::new(SqliteStore::open(&dir.join("latchkey.db")).expect("a SQLite store"));
        Self::new(
            store,
            Arc::new(Envelope::new(keys)),
            Arc::new(LogEventSink::default()),
            Arc::new(crate::ports::SystemClock),
            options,
        )
    }

    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        events: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        mut options: ServiceOptions,
    ) -> Self {
        options.public_url = options.public_url.map(|u| u.trim_end_matches('/').to_owned());
        let verify_gate = verify::VerifyGate::new(&options.verify);
        Self {
            store,
            envelope,
            events,
            clock,
            provider: Arc::new(HttpProviderClient::new()),
            verify_gate,
            webhook_sender: webhooks::WebhookSender::new(options.webhook_attempt_timeout),
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
            device_wake: oauth::DeviceWake::default(),
            refresh_limit: refresh::RefreshLimit::new(options.refresh.concurrency),
            options,
        }
    }

    /// This service sending every provider request (token, revocation, verify and device
    /// endpoints) through `provider` instead of the HTTP client: what the scale simulation
    /// (`bench/`) uses to model a provider's latency without sockets. Call before sharing the
    /// service.
    pub fn with_provider_client(mut self, provider: Arc<dyn ProviderClient>) -> Self {
        self.provider = provider;
        self
    }

    /// The connect page's CSP `frame-ancestors` source list ([`ServiceOptions::connect_frame_ancestors`]).
    pub fn connect_frame_ancestors(&self) -> &str {
        &self.options.connect_frame_ancestors
    }

    /// The service clock's now (UTC): what the use cases count leases and schedules on, for
    /// callers that compare against them (the `webhook-deliver` function's due checks).
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Appends a connection log line. A failure is logged, not returned: the change it
    /// describes has already happened.
    async fn log(&self, c: &Connection, kind: LogType, message: impl Into<String>) {
        let entry = LogEntry::new(self.clock.now(), kind, message);
        if let Err(e) = self.store.append_log(&c.org, &c.id, &entry).await {
            tracing::warn!(org = %c.org, connection_id = %c.id, error = %e, "appending a connection log failed");
        }
    }

    /// Publishes an event. Delivery failures are logged, never turned into request failures.
    async fn emit(&self, mut event: Event) {
        event.occurred_at = self.clock.now();
        if let Err(e) = self.events.publish(&event).await {
            tracing::warn!(
                org = %event.org,
                connection_id = event.connection_id().map(|id| id.as_str()),
                event = event.kind.detail_type(),
                error = %e,
                "publishing an event failed"
            );
        }
        if self.options.webhook_outbox {
            self.enqueue_outbox(&event).await;
        }
    }

    /// The outbox of `latchkey serve`: stores the event's webhook deliveries and wakes the
    /// worker. A store that does not answer is tried again a few times
    /// ([`retry::unavailable_retries`], about two seconds; the enqueue is idempotent), then the
    /// failure is logged: the event itself has been published. Not atomic with the change that
    /// caused the event (already committed): a process that dies in between, or a store down
    /// past the retries, loses this event's deliveries (README, "Webhooks").
    async fn enqueue_outbox(&self, event: &Event) {
        let message = webhooks::WebhookMessage::from_event(event);
        let enqueued = (|| self.enqueue_deliveries(&message))
            .retry(retry::unavailable_retries())
            .when(|e| matches!(e, ServiceError::Store(s) if s.is_unavailable()))
            .notify(|e, _| {
                tracing::warn!(org = %event.org, event = event.kind.detail_type(), error = %e, "the store did not take an event's webhook deliveries; trying again");
            })
            .await;
        match enqueued {
            Ok(deliveries) if deliveries.is_empty() => {}
            Ok(_) => self.webhook_wake.notify_one(),
            Err(e) => tracing::warn!(
                org = %event.org,
                event = event.kind.detail_type(),
                error = %e,
                "enqueueing webhook deliveries failed"
            ),
        }
    }
}
