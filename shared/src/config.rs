//! Configuration from the environment, and the wiring of a backend into a [`Service`].

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use secrecy::SecretString;

use crate::adapters::aws::{DynamoStore, EventBridgeSink, KmsKeyProvider};
use crate::adapters::{LocalKeyProvider, LogEventSink, SqliteStore};
use crate::crypto::Envelope;
use crate::crypto::KeyProvider;
use crate::http::AppState;
use crate::http::auth::{JwtIssuer, MIN_HS256_SECRET_BYTES, Verifier};
use crate::ports::{Clock, EventSink, Store, SystemClock};
use crate::service::Service;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
    #[error("{0} must be set for the aws backend")]
    Missing(&'static str),
    #[error("the data directory {path} cannot be used: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the embedded store cannot be opened: {0}")]
    Store(#[from] crate::ports::StoreError),
}

/// How the `token-lookup` function authorizes a payload (`LATCHKEY_LOOKUP_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupAuth {
    /// `iam` (default): whoever may invoke the function (IAM `lambda:InvokeFunction`) may look
    /// up any organization's connections; a payload's `token` is ignored.
    Iam,
    /// `token`: every payload carries a runtime JWT (`"token"`), verified like HTTP bearer
    /// tokens; its `org` must be the payload's and its `customer`, if any, restricts the lookup.
    Token,
}

/// Which adapters back the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + local master key + log events, under `LATCHKEY_DATA_DIR`.
    Embedded,
    /// DynamoDB + KMS + EventBridge.
    Aws,
}

/// Settings read from `LATCHKEY_*` variables; see the README's configuration table.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    pub addr: SocketAddr,
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    /// `LATCHKEY_JWT_SECRET`: the HS256 secret, at least [`MIN_HS256_SECRET_BYTES`] bytes.
    pub jwt_secret: Option<SecretString>,
    /// `LATCHKEY_JWT_ISSUER`: the issuer (`iss`) of RS256/ES256 tokens, whose keys come from
    /// `<issuer>/.well-known/openid-configuration` (https, or http on loopback).
    pub jwt_issuer: Option<String>,
    /// `LATCHKEY_JWT_AUDIENCE`: the accepted `aud` values, comma-separated; required with
    /// `LATCHKEY_JWT_ISSUER`.
    pub jwt_audience: Vec<String>,
    /// `LATCHKEY_LOOKUP_AUTH` (`iam` by default, or `token`).
    pub lookup_auth: LookupAuth,
    pub refresh_interval: Duration,
    /// `LATCHKEY_REFRESH_LOOKAHEAD_SECS` (default 600).
    pub refresh_lookahead: Duration,
    /// `LATCHKEY_ALLOW_LOOPBACK_PROVIDERS`: whether customer-supplied provider URLs may name
    /// loopback (default: yes on the embedded backend, no on aws).
    pub allow_loopback_providers: bool,
    /// aws backend: the DynamoDB table (`LATCHKEY_TABLE`).
    pub table: Option<String>,
    /// aws backend: the KMS key id, ARN or alias (`LATCHKEY_KMS_KEY_ID`).
    pub kms_key_id: Option<String>,
    /// aws backend: the EventBridge bus (`LATCHKEY_EVENT_BUS`, default `default`).
    pub event_bus: String,
}

/// The file of the generated HS256 secret when `LATCHKEY_JWT_SECRET` is unset.
pub const JWT_SECRET_FILE: &str = "jwt.secret";
/// The organization of the token `latchkey serve` prints when it generated the secret.
pub const DEV_ORG: &str = "local";

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// The configuration of `latchkey serve`: the embedded backend unless `LATCHKEY_BACKEND`
    /// says otherwise.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_or(Backend::Embedded)
    }

    /// The configuration with `default` as the backend when `LATCHKEY_BACKEND` is unset (the
    /// Lambda functions default to `aws`).
    pub fn from_env_or(default: Backend) -> Result<Self, ConfigError> {
        Self::from_vars(default, env_var)
    }

    /// The configuration from `vars` (a variable's value by name, `None` when unset) rather
    /// than the process environment; empty values count as unset.
    pub fn from_vars(default: Backend, vars: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| vars(name).filter(|v| !v.trim().is_empty());
        let backend = match var("LATCHKEY_BACKEND").as_deref() {
            None => default,
            Some("embedded") => Backend::Embedded,
            Some("aws") => Backend::Aws,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_BACKEND",
                    why: format!("{other:?} is not one of embedded, aws"),
                });
            }
        };
        let addr = match var("LATCHKEY_ADDR") {
            Some(a) => a
                .parse()
                .map_err(|_| ConfigError::Invalid { name: "LATCHKEY_ADDR", why: format!("{a:?} is not host:port") })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let public_url = match var("LATCHKEY_PUBLIC_URL") {
            Some(u) => {
                crate::domain::validate::check_secure_url(&u)
                    .map_err(|why| ConfigError::Invalid { name: "LATCHKEY_PUBLIC_URL", why: why.to_owned() })?;
                Some(u.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        let refresh_interval = match var("LATCHKEY_REFRESH_INTERVAL_SECS") {
            Some(s) => {
                Duration::from_secs(s.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| ConfigError::Invalid {
                    name: "LATCHKEY_REFRESH_INTERVAL_SECS",
                    why: "must be a positive integer".into(),
                })?)
            }
            None => Duration::from_secs(60),
        };
        let refresh_lookahead = match var("LATCHKEY_REFRESH_LOOKAHEAD_SECS") {
            Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| ConfigError::Invalid {
                name: "LATCHKEY_REFRESH_LOOKAHEAD_SECS",
                why: "must be a non-negative integer".into(),
            })?),
            None => Duration::from_secs(600),
        };
        let allow_loopback_providers = match var("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS").as_deref() {
            None => backend == Backend::Embedded,
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_ALLOW_LOOPBACK_PROVIDERS",
                    why: format!("{other:?} is not true or false"),
                });
            }
        };
        let jwt_secret = match var("LATCHKEY_JWT_SECRET") {
            Some(s) if s.len() < MIN_HS256_SECRET_BYTES => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_JWT_SECRET",
                    why: format!(
                        "an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} bytes (256 bits), this one has {}; \
                         generate one with `openssl rand -hex 32`",
                        s.len()
                    ),
                });
            }
            s => s.map(SecretString::from),
        };
        let jwt_issuer = var("LATCHKEY_JWT_ISSUER").map(|s| s.trim().to_owned());
        let jwt_audience: Vec<String> = var("LATCHKEY_JWT_AUDIENCE")
            .map(|a| a.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        match (&jwt_issuer, jwt_audience.is_empty()) {
            (Some(issuer), _) => {
                JwtIssuer::check(issuer, &jwt_audience)
                    .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_ISSUER", why: e.to_string() })?;
            }
            (None, false) => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_JWT_AUDIENCE",
                    why: "is set without LATCHKEY_JWT_ISSUER".into(),
                });
            }
            (None, true) => {}
        }
        let lookup_auth = match var("LATCHKEY_LOOKUP_AUTH").as_deref() {
            None | Some("iam") => LookupAuth::Iam,
            Some("token") => LookupAuth::Token,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_LOOKUP_AUTH",
                    why: format!("{other:?} is not one of iam, token"),
                });
            }
        };
        Ok(Self {
            backend,
            jwt_issuer,
            jwt_audience,
            lookup_auth,
            refresh_lookahead,
            allow_loopback_providers,
            addr,
            public_url,
            data_dir: var("LATCHKEY_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./.latchkey")),
            jwt_secret,
            refresh_interval,
            table: var("LATCHKEY_TABLE"),
            kms_key_id: var("LATCHKEY_KMS_KEY_ID"),
            event_bus: var("LATCHKEY_EVENT_BUS").unwrap_or_else(|| "default".to_owned()),
        })
    }

    /// The bearer-token verifier: RS256/ES256 tokens of `LATCHKEY_JWT_ISSUER` if set, and HS256
    /// tokens signed with `hs256_secret` if given (`LATCHKEY_JWT_SECRET`, or the secret
    /// `latchkey serve` generated). With neither it refuses every token. Fetches nothing yet.
    ///
    /// # Errors
    /// An HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`], an invalid issuer or no
    /// audience.
    pub fn verifier(&self, hs256_secret: Option<&SecretString>) -> Result<Verifier, ConfigError> {
        let mut verifier = Verifier::refuse_all();
        if let Some(issuer) = &self.jwt_issuer {
            let issuer = JwtIssuer::new(issuer, self.jwt_audience.clone())
                .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_ISSUER", why: e.to_string() })?;
            verifier = verifier.with_issuer(issuer);
        }
        if let Some(secret) = hs256_secret {
            verifier = verifier
                .with_hs256(secret)
                .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_SECRET", why: e.to_string() })?;
        }
        Ok(verifier)
    }

    /// `LATCHKEY_TABLE`, required by the aws backend and `latchkey bootstrap`.
    pub fn require_table(&self) -> Result<&str, ConfigError> {
        self.table.as_deref().ok_or(ConfigError::Missing("LATCHKEY_TABLE"))
    }

    /// `{LATCHKEY_PUBLIC_URL}` or `http://<addr>`: the base of the OAuth redirect URI.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{bound}"))
    }

    /// Creates the data directory if needed and sets its mode to 0700.
    pub fn ensure_data_dir(&self) -> Result<&Path, ConfigError> {
        let dir = &self.data_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ConfigError::DataDir { path: dir.clone(), source })?;
        // Whatever the umask, and for a directory that existed already: only this user.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| ConfigError::DataDir { path: dir.clone(), source })?;
        Ok(dir)
    }

    /// The HS256 secret: `LATCHKEY_JWT_SECRET`, else the one stored in the data directory,
    /// generated (256 bits, mode 0600) on first use. `true` when it came from the data directory.
    /// The HS256 secret without creating one (what `latchkey token` signs with, which must be
    /// what a running `latchkey serve` verifies with): `LATCHKEY_JWT_SECRET`, else the one in the
    /// data directory; an error naming where it looked when there is none.
    pub fn jwt_secret_existing(&self) -> Result<SecretString, ConfigError> {
        if let Some(s) = &self.jwt_secret {
            return Ok(s.clone());
        }
        let path = self.data_dir.join(JWT_SECRET_FILE);
        if !path.exists() {
            let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            return Err(ConfigError::Invalid {
                name: "LATCHKEY_JWT_SECRET",
                why: format!(
                    "is unset and {} does not exist: run this where `latchkey serve` runs, or set \
                     LATCHKEY_DATA_DIR to its data directory (or LATCHKEY_JWT_SECRET to its secret)",
                    shown.display()
                ),
            });
        }
        self.jwt_secret_or_generate().map(|(s, _)| s)
    }

    pub fn jwt_secret_or_generate(&self) -> Result<(SecretString, bool), ConfigError> {
        if let Some(s) = &self.jwt_secret {
            return Ok((s.clone(), false));
        }
        let dir = self.ensure_data_dir()?;
        let path = dir.join(JWT_SECRET_FILE);
        let io = |source| ConfigError::DataDir { path: path.clone(), source };
        if !path.exists() {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = dir.join(format!(".{JWT_SECRET_FILE}.{}", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, hex.as_bytes()))
                .map_err(io)?;
            let linked = std::fs::hard_link(&tmp, &path);
            std::fs::remove_file(&tmp).map_err(io)?;
            if let Err(e) = linked
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(io(e));
            }
        }
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::Invalid {
                name: "LATCHKEY_JWT_SECRET",
                why: format!("{} must not be readable by group or others", path.display()),
            });
        }
        let s = std::fs::read_to_string(&path).map_err(io)?;
        Ok((SecretString::from(s.trim().to_owned()), true))
    }
}

/// A built backend: the service, its store (for operational tools and tests), and for the
/// embedded one its event sink to subscribe to.
pub struct App {
    pub service: Arc<Service>,
    pub store: Arc<dyn Store>,
    pub events: Option<Arc<LogEventSink>>,
}

impl App {
    /// The embedded backend under `dir`.
    pub fn embedded(dir: &Path) -> Result<Self, ConfigError> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("latchkey.db"))?);
        let keys: Arc<dyn KeyProvider> = Arc::new(
            LocalKeyProvider::open_or_create(dir)
                .map_err(|source| ConfigError::DataDir { path: dir.to_owned(), source })?,
        );
        let events = Arc::new(LogEventSink::default());
        let sink: Arc<dyn EventSink> = events.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let service = Service::new(store.clone(), Arc::new(Envelope::new(keys)), sink, clock);
        Ok(Self { service: Arc::new(service), store, events: Some(events) })
    }

    /// The aws backend over the given clients (built once per process or container).
    pub fn aws(
        dynamodb: aws_sdk_dynamodb::Client,
        kms: aws_sdk_kms::Client,
        eventbridge: aws_sdk_eventbridge::Client,
        table: &str,
        kms_key_id: &str,
        event_bus: &str,
    ) -> Self {
        let store: Arc<dyn Store> = Arc::new(DynamoStore::new(dynamodb, table));
        let keys: Arc<dyn KeyProvider> = Arc::new(KmsKeyProvider::new(kms, kms_key_id));
        let sink: Arc<dyn EventSink> = Arc::new(EventBridgeSink::new(eventbridge, event_bus));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let service = Service::new(store.clone(), Arc::new(Envelope::new(keys)), sink, clock);
        Self { service: Arc::new(service), store, events: None }
    }

    /// Builds the backend `config` names. For aws, the standard AWS configuration applies
    /// (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`).
    pub async fn build(config: &Config) -> Result<Self, ConfigError> {
        let app = Self::build_backend(config).await?;
        app.service.set_refresh_policy(crate::service::RefreshPolicy {
            lookahead: config.refresh_lookahead,
            ..Default::default()
        });
        if let Some(url) = &config.public_url {
            app.service.set_public_url(url);
        }
        app.service.set_allow_loopback_providers(config.allow_loopback_providers);
        Ok(app)
    }

    async fn build_backend(config: &Config) -> Result<Self, ConfigError> {
        match config.backend {
            Backend::Embedded => Self::embedded(config.ensure_data_dir()?),
            Backend::Aws => {
                let table = config.require_table()?;
                let key = config.kms_key_id.as_deref().ok_or(ConfigError::Missing("LATCHKEY_KMS_KEY_ID"))?;
                let sdk = crate::adapters::aws::sdk_config().await;
                Ok(Self::aws(
                    aws_sdk_dynamodb::Client::new(&sdk),
                    aws_sdk_kms::Client::new(&sdk),
                    aws_sdk_eventbridge::Client::new(&sdk),
                    table,
                    key,
                    &config.event_bus,
                ))
            }
        }
    }

    /// The HTTP state with `verifier`.
    pub fn http_state(&self, verifier: Verifier) -> AppState {
        AppState { service: self.service.clone(), verifier: Arc::new(verifier) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(Backend::Aws, |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    fn refused(vars: &[(&str, &str)]) -> String {
        match config(vars) {
            Ok(_) => panic!("{vars:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bearer_token_settings_are_checked_at_start() {
        let why = refused(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcde")]);
        assert!(why.contains("LATCHKEY_JWT_SECRET") && why.contains("at least 32 bytes"), "{why}");
        assert!(!why.contains("0123456789abcdef"), "the secret is not quoted: {why}");
        assert!(config(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcdef")]).is_ok());

        assert!(refused(&[("LATCHKEY_JWT_ISSUER", "https://idp.example.com/")]).contains("audience"));
        assert!(refused(&[("LATCHKEY_JWT_AUDIENCE", "api")]).contains("LATCHKEY_JWT_ISSUER"));
        let plain = [("LATCHKEY_JWT_ISSUER", "http://idp.example.com"), ("LATCHKEY_JWT_AUDIENCE", "api")];
        assert!(refused(&plain).contains("LATCHKEY_JWT_ISSUER"));
        let ok = config(&[("LATCHKEY_JWT_ISSUER", "https://idp.example.com/"), ("LATCHKEY_JWT_AUDIENCE", "a, b,")]);
        let ok = ok.unwrap();
        assert_eq!(ok.jwt_audience, ["a", "b"]);
        assert!(ok.verifier(None).unwrap().accepts_any());
        assert!(!config(&[]).unwrap().verifier(None).unwrap().accepts_any(), "nothing configured: refuse all");

        assert_eq!(config(&[]).unwrap().lookup_auth, LookupAuth::Iam);
        assert_eq!(config(&[("LATCHKEY_LOOKUP_AUTH", "token")]).unwrap().lookup_auth, LookupAuth::Token);
        assert!(refused(&[("LATCHKEY_LOOKUP_AUTH", "none")]).contains("LATCHKEY_LOOKUP_AUTH"));
    }
}
