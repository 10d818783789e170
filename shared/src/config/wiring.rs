//! The composition root: [`Components`], the adapters a [`Settings`] value names wired into one
//! [`Service`]. Built once per process (or Lambda container); nothing is adjusted afterwards.

#[cfg(feature = "embedded")]
use std::path::Path;
use std::sync::Arc;

use super::{BackendKind, ConfigError, Settings};
use crate::adapters::LogEventSink;
use crate::adapters::aws::{DynamoStore, EventBridgeSink, KmsKeyProvider};
#[cfg(feature = "embedded")]
use crate::adapters::{LocalKeyProvider, SqliteStore, secret_file};
use crate::crypto::{BranchKeyring, Envelope, KeyProvider};
use crate::http::RouterState;
use crate::http::auth::Verifier;
use crate::ports::{Clock, EventSink, Store, SystemClock};
use crate::service::{Service, ServiceOptions};

/// A wired backend: the service, its store (for operational tools and tests), and for the
/// embedded backend (and the aws one in `latchkey serve`) its event sink to subscribe to.
pub struct Components {
    pub service: Arc<Service>,
    pub store: Arc<dyn Store>,
    pub events: Option<Arc<LogEventSink>>,
    /// The key hierarchy the service seals with: per-organization branch keys wrapped by the
    /// master key (KMS or the local one), kept in the store. [`BranchKeyring::rotate`] is what
    /// `latchkey keys rotate` calls.
    pub keys: Arc<BranchKeyring>,
    /// The standard AWS configuration the aws backend was built from by [`Components::build`]
    /// or [`Components::build_serving`] (`None` otherwise), so a function builds its other
    /// clients (SQS) from it rather than loading it, and parsing its trust store, a second time
    /// at init: [`Components::sdk_config`].
    pub sdk: Option<aws_config::SdkConfig>,
}

impl Components {
    /// The backend `settings` names, with the service options they give
    /// ([`Settings::service_options`]). For aws, the standard AWS configuration applies
    /// (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`).
    ///
    /// # Errors
    /// aws: `LATCHKEY_TABLE` or `LATCHKEY_KMS_KEY_ID` unset; embedded: as [`Components::embedded`],
    /// or [`ConfigError::Invalid`] naming `LATCHKEY_BACKEND` in a build without the `embedded`
    /// feature (the Lambda functions).
    pub async fn build(settings: &Settings) -> Result<Self, ConfigError> {
        Self::build_with(settings, false).await
    }

    /// [`Components::build`] for `latchkey serve`: on the aws backend too, events go to the log
    /// and to in-process subscribers ([`Components::events`]: serve's revoker, so a disconnect
    /// is revoked at once rather than at the next sweep) besides EventBridge
    /// ([`LogEventSink::forwarding`]). A function has no subscriber, and its events only go to
    /// the bus.
    ///
    /// # Errors
    /// As [`Components::build`].
    pub async fn build_serving(settings: &Settings) -> Result<Self, ConfigError> {
        Self::build_with(settings, true).await
    }

    async fn build_with(settings: &Settings, local_events: bool) -> Result<Self, ConfigError> {
        let options = settings.service_options();
        match settings.backend {
            #[cfg(feature = "embedded")]
            BackendKind::Embedded => Self::embedded(&settings.data_dir, options),
            #[cfg(not(feature = "embedded"))]
            BackendKind::Embedded => Err(embedded_not_built()),
            BackendKind::Aws => {
                let table = settings.require_table()?;
                let key = settings.require_kms_key_id()?;
                let sdk = crate::adapters::aws::sdk_config().await;
                let clients = (
                    aws_sdk_dynamodb::Client::new(&sdk),
                    aws_sdk_kms::Client::new(&sdk),
                    aws_sdk_eventbridge::Client::new(&sdk),
                );
                let app = Self::aws_with(clients, table, key, &settings.event_bus, options, local_events);
                Ok(Self { sdk: Some(sdk), ..app })
            }
        }
    }

    /// The embedded backend under `dir` (created if missing, mode 0700): `latchkey.db` and
    /// `master.key`.
    ///
    /// # Errors
    /// The directory or master key cannot be used ([`ConfigError::DataDir`]), or the store
    /// cannot be opened.
    #[cfg(feature = "embedded")]
    pub fn embedded(dir: &Path, options: ServiceOptions) -> Result<Self, ConfigError> {
        Self::embedded_with_clock(dir, options, Arc::new(SystemClock))
    }

    /// [`Components::embedded`] telling the time by `clock` rather than the system clock: what
    /// tests use to age tokens and leases without waiting.
    ///
    /// # Errors
    /// As [`Components::embedded`].
    #[cfg(feature = "embedded")]
    pub fn embedded_with_clock(
        dir: &Path,
        mut options: ServiceOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        // Events become webhook deliveries in the embedded store, which serve's worker sends.
        options.webhook_outbox = true;
        let unusable = |source| ConfigError::DataDir { path: dir.to_owned(), source };
        secret_file::ensure_private_dir(dir).map_err(unusable)?;
        let master: Arc<dyn KeyProvider> = Arc::new(LocalKeyProvider::open_or_create(dir).map_err(unusable)?);
        let sqlite = Arc::new(SqliteStore::open(&dir.join("latchkey.db"))?);
        let keys = Arc::new(BranchKeyring::new(master, sqlite.clone()).with_clock(clock.clone()));
        let store: Arc<dyn Store> = sqlite;
        let events = Arc::new(LogEventSink::default());
        let sink: Arc<dyn EventSink> = events.clone();
        let service = Self::service(store.clone(), keys.clone(), sink, clock, options);
        Ok(Self { service, store, events: Some(events), keys, sdk: None })
    }

    /// The aws backend over the given clients (built once per process or container).
    pub fn aws(
        dynamodb: aws_sdk_dynamodb::Client,
        kms: aws_sdk_kms::Client,
        eventbridge: aws_sdk_eventbridge::Client,
        table: &str,
        kms_key_id: &str,
        event_bus: &str,
        options: ServiceOptions,
    ) -> Self {
        Self::aws_with((dynamodb, kms, eventbridge), table, kms_key_id, event_bus, options, false)
    }

    /// [`Components::aws`]; with `local_events`, the bus's sink behind a [`LogEventSink`]
    /// ([`Components::build_serving`]).
    fn aws_with(
        (dynamodb, kms, eventbridge): (aws_sdk_dynamodb::Client, aws_sdk_kms::Client, aws_sdk_eventbridge::Client),
        table: &str,
        kms_key_id: &str,
        event_bus: &str,
        options: ServiceOptions,
        local_events: bool,
    ) -> Self {
        let dynamo = Arc::new(DynamoStore::new(dynamodb, table));
        let master: Arc<dyn KeyProvider> = Arc::new(KmsKeyProvider::new(kms, kms_key_id));
        let keys = Arc::new(BranchKeyring::new(master, dynamo.clone()));
        let store: Arc<dyn Store> = dynamo;
        let bus: Arc<dyn EventSink> = Arc::new(EventBridgeSink::new(eventbridge, event_bus));
        let events = local_events.then(|| Arc::new(LogEventSink::forwarding(bus.clone())));
        let sink = events.clone().map_or(bus, |local| local as Arc<dyn EventSink>);
        let service = Self::service(store.clone(), keys.clone(), sink, Arc::new(SystemClock), options);
        Self { service, store, events, keys, sdk: None }
    }

    /// The standard AWS configuration ([`crate::adapters::aws::sdk_config`]): the one the
    /// backend was built from when there is one, else loaded now.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        match &self.sdk {
            Some(sdk) => sdk.clone(),
            None => crate::adapters::aws::sdk_config().await,
        }
    }

    fn service(
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyProvider>,
        events: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        options: ServiceOptions,
    ) -> Arc<Service> {
        Arc::new(Service::new(store, Arc::new(Envelope::new(keys)), events, clock, options))
    }

    /// The HTTP router's state: this service, callers checked by `verifier`.
    pub fn router_state(&self, verifier: Verifier) -> RouterState {
        RouterState { service: self.service.clone(), verifier: Arc::new(verifier) }
    }
}

/// What [`Components::build`] answers for `LATCHKEY_BACKEND=embedded` in a build without the
/// `embedded` feature (the Lambda functions): [`ConfigError::Invalid`] naming `LATCHKEY_BACKEND`.
/// Compiled in every build, so that the workspace's tests check the error that only the
/// functions return. tests/infra.sh looks for its reason's text in each arm64 function binary:
/// the text survives LTO only where the branch returning it is linked.
#[cfg_attr(feature = "embedded", allow(dead_code))]
fn embedded_not_built() -> ConfigError {
    let why = concat!(
        "embedded is not in this build (built without latchkey's `embedded` feature, ",
        "as the Lambda functions are): use aws",
    );
    ConfigError::Invalid { name: "LATCHKEY_BACKEND", why: why.into() }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_setting_and_says_what_to_use() {
        let refused = embedded_not_built();
        assert!(matches!(refused, ConfigError::Invalid { name: "LATCHKEY_BACKEND", .. }), "{refused}");
        assert_eq!(
            refused.to_string(),
            "LATCHKEY_BACKEND is invalid: embedded is not in this build (built without latchkey's \
             `embedded` feature, as the Lambda functions are): use aws"
        );
    }
}

// What a Lambda function does when told to use the embedded backend it was built without: that
// `Components::build` answers `embedded_not_built`. Run with
// `cargo test -p latchkey --no-default-features --lib config::wiring` (a workspace build always
// has the feature, through the CLI). The test command does not run it (that build recompiles the
// library and 36 of its dependencies, 130 to 160 s): tests/infra.sh checks instead that each
// arm64 function binary holds `embedded_not_built`'s text whole and no SQLite.
#[cfg(all(test, not(feature = "embedded")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_backend_is_refused_in_a_build_without_it() {
        let settings = Settings::from_vars(BackendKind::Embedded, |_| None).unwrap();
        let Err(refused) = Components::build(&settings).await else {
            panic!("a build without the embedded feature wired the embedded backend");
        };
        assert_eq!(refused.to_string(), embedded_not_built().to_string());
    }
}

#[cfg(all(test, feature = "embedded"))]
mod embedded_tests {
    use super::*;

    /// The embedded backend wired from `vars`, its data directory a fresh one kept alive by the
    /// returned guard.
    async fn wired(vars: &[(&str, &str)]) -> (Components, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let settings = Settings::from_vars(BackendKind::Embedded, |name| {
            let set = vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
            set.or_else(|| (name == "LATCHKEY_DATA_DIR").then(|| data.clone()))
        })
        .unwrap();
        (Components::build(&settings).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn the_refresh_concurrency_setting_is_the_services_refresh_concurrency() {
        let (set, _dir) = wired(&[("LATCHKEY_REFRESH_CONCURRENCY", "7")]).await;
        assert_eq!(set.service.policy().concurrency, 7);
        let (default, _dir) = wired(&[]).await;
        assert_eq!(default.service.policy().concurrency, 64, "RefreshPolicy's default");
    }
}

#[cfg(test)]
mod aws_tests {
    use super::*;

    /// Clients for one region and no endpoint: building them calls nothing, and no test here
    /// makes a call.
    async fn clients() -> (aws_sdk_dynamodb::Client, aws_sdk_kms::Client, aws_sdk_eventbridge::Client) {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .http_client(crate::adapters::aws::https_client())
            .load()
            .await;
        (aws_sdk_dynamodb::Client::new(&sdk), aws_sdk_kms::Client::new(&sdk), aws_sdk_eventbridge::Client::new(&sdk))
    }

    /// A function's events go to EventBridge alone: nothing in its container subscribes to
    /// them, so none is kept for a subscriber or logged a second time. `latchkey serve`'s are
    /// kept for its revoker as well ([`Components::build_serving`]).
    #[tokio::test]
    async fn only_serve_keeps_its_aws_events_in_the_process() {
        let options = ServiceOptions::default;
        let (ddb, kms, eb) = clients().await;
        let function = Components::aws(ddb, kms, eb, "table", "alias/key", "bus", options());
        assert!(function.events.is_none(), "a function's events go to the bus alone");
        let serving = Components::aws_with(clients().await, "table", "alias/key", "bus", options(), true);
        assert!(serving.events.is_some(), "serve's revoker subscribes to its own events");
    }
}
