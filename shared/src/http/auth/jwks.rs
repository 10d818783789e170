//! The signing keys of a JWT issuer, for RS256 and ES256 bearer tokens.
//!
//! Where the keys are: the issuer's metadata, `<issuer>/.well-known/openid-configuration`
//! (OpenID Connect Discovery 1.0 §4; RFC 8414 §3 describes the same document for OAuth
//! servers), names a `jwks_uri`, an RFC 7517 JWK Set. Only that chain is followed: a token's own
//! `jku`, `jwk`, `x5u` or `x5c` header never names a key (RFC 8725 §3.10), and symmetric (`oct`)
//! keys of the set are ignored, so a public key can never become an HMAC secret.
//!
//! Caching: the set is fetched on the first token that needs it and kept for [`KEYS_MAX_AGE`];
//! a token whose `kid` the set lacks causes one refetch (the issuer rotated its keys), at most
//! once per [`UNKNOWN_KID_REFETCH_INTERVAL`] however many such tokens arrive, so that nobody can
//! make every request call the issuer. Concurrent requests wait for the one fetch in flight,
//! unless the keys they need are merely old (then they use them meanwhile). A failed fetch keeps
//! the keys already known and is not retried for [`FAILURE_BACKOFF`] (for
//! [`UNKNOWN_KID_REFETCH_INTERVAL`] while old keys still serve).
//!
//! The fetch is an outbound call to a URL the operator configured: https only (plain http only
//! when the issuer itself is on loopback, as in tests), no redirects, no proxy, short timeouts,
//! bounded answers.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::domain::validate::UrlError;

/// How long a fetched key set is used before the next token that needs it fetches it again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// A token signed with a key the cached set lacks refetches the set at most this often.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed fetch, no other fetch for this long: requests fail fast meanwhile.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
/// Connect timeout of each fetch.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-request timeout of each fetch (the discovery document, then the key set).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery document or key set read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// At most this many keys of a set are kept.
pub const MAX_KEYS: usize = 64;

/// Why an issuer cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("the issuer {0}")]
    Url(#[from] UrlError),
    #[error("the issuer must have no query or fragment (OpenID Connect Discovery 1.0 §2)")]
    QueryOrFragment,
    #[error("at least one audience is required")]
    NoAudience,
    #[error("the HTTP client cannot be built: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy)]
pub(super) enum KeyError {
    /// The issuer's set has no such key, even after a refetch (or a refetch was not allowed yet).
    Unknown,
    /// The set could not be fetched: the token can be neither accepted nor called invalid.
    Unavailable,
}

/// Why a fetch failed; logged, never shown to a caller.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("GET {url} failed: {source}")]
    Http { url: Url, source: reqwest::Error },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: Url, status: u16 },
    #[error("GET {url}: the answer is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: Url },
    #[error("GET {url}: the answer is not the JSON document expected")]
    Shape { url: Url },
    #[error("the discovery document names the issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    #[error("the discovery document's jwks_uri {0}")]
    JwksUri(UrlError),
    #[error("the discovery document's jwks_uri must be https, as the issuer is")]
    JwksUriDowngrade,
}

/// One verification key of the set.
pub(super) struct SigningKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of one fetch of the set.
pub(super) struct KeySet {
    keys: Vec<SigningKey>,
    fetched_at: Instant,
}

impl KeySet {
    /// The keys that may have signed a token with this `alg` and `kid` (every key of the
    /// algorithm when the token names none).
    pub(super) fn matching<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> {
        self.keys.iter().filter(move |k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid)).map(|k| &k.key)
    }

    fn has(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.matching(alg, kid).next().is_some()
    }

    fn fresh(&self) -> bool {
        self.fetched_at.elapsed() < KEYS_MAX_AGE
    }
}

#[derive(Default)]
struct FetchState {
    /// From the discovery document; forgotten after a failed fetch, so that the next one
    /// discovers it again.
    jwks_uri: Option<Url>,
    last_unknown_kid_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing fetched yet.
    Cold,
    /// The key is known but the set is older than [`KEYS_MAX_AGE`].
    Stale,
    /// The set lacks the key.
    UnknownKey,
}

/// A JWT issuer whose RS256/ES256 tokens are accepted: `iss` must equal `issuer` exactly and
/// `aud` must name one of `audiences` (RFC 7519 §4.1.1, §4.1.3). Built once per process or
/// container; cheap to share.
pub struct JwtIssuer {
    issuer: String,
    audiences: Vec<String>,
    discovery: Url,
    client: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl JwtIssuer {
    /// An issuer URL (`https://...`, or `http://` on a loopback host) and the accepted audiences.
    /// Fetches nothing yet.
    ///
    /// # Errors
    /// [`IssuerError::Url`] for a URL that is not https (or loopback http),
    /// [`IssuerError::QueryOrFragment`] for one with a query or fragment;
    /// [`IssuerError::NoAudience`] for an empty list.
    pub fn new(issuer: &str, audiences: Vec<String>) -> Result<Self, IssuerError> {
        let (discovery, audiences) = Self::settings(issuer, audiences)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(IssuerError::Client)?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audiences,
            discovery,
            client,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        })
    }

    /// Checks what [`JwtIssuer::new`] checks, without building anything.
    ///
    /// # Errors
    /// As [`JwtIssuer::new`].
    pub fn check(issuer: &str, audiences: &[String]) -> Result<(), IssuerError> {
        Self::settings(issuer, audiences.to_vec()).map(|_| ())
    }

    /// The discovery URL and the audiences, trimmed.
    fn settings(issuer: &str, audiences: Vec<String>) -> Result<(Url, Vec<String>), IssuerError> {
        let url = crate::domain::validate::check_secure_url(issuer)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(IssuerError::QueryOrFragment);
        }
        let audiences: Vec<String> =
            audiences.into_iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        if audiences.is_empty() {
            return Err(IssuerError::NoAudience);
        }
        // `<issuer>/.well-known/openid-configuration`, a trailing slash of the issuer removed
        // (OpenID Connect Discovery 1.0 §4).
        let discovery = Url::parse(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
            .map_err(|_| IssuerError::Url(UrlError::NotAbsolute))?;
        Ok((discovery, audiences))
    }

    /// The `iss` value tokens must carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The accepted `aud` values.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A key set with a key for `alg` and `kid`, fetching or refetching it when needed (and
    /// allowed): see the module documentation.
    pub(super) async fn keys(&self, alg: Algorithm, kid: Option<&str>) -> Result<Arc<KeySet>, KeyError> {
        let mut state = match self.current() {
            Some(set) if set.has(alg, kid) && set.fresh() => return Ok(set),
            // Stale but usable: one request refreshes it, the others do not wait for that.
            Some(set) if set.has(alg, kid) => match self.fetch.try_lock() {
                Ok(state) => state,
                Err(_) => return Ok(set),
            },
            _ => self.fetch.lock().await,
        };
        // Another request may have fetched while this one waited.
        let current = self.current();
        let need = match &current {
            Some(set) if set.has(alg, kid) && set.fresh() => return Ok(set.clone()),
            Some(set) if set.has(alg, kid) => Need::Stale,
            Some(_) => Need::UnknownKey,
            None => Need::Cold,
        };
        // Stale keys still work: their refresh backs off longer than a fetch nothing works without.
        let backoff = if need == Need::Stale { UNKNOWN_KID_REFETCH_INTERVAL } else { FAILURE_BACKOFF };
        let backing_off = state.last_failure.is_some_and(|t| t.elapsed() < backoff);
        let allowed = !backing_off
            && (need != Need::UnknownKey
                || state.last_unknown_kid_refetch.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH_INTERVAL));
        if !allowed {
            return match (need, current) {
                (Need::Stale, Some(set)) => Ok(set),
                (Need::Cold, _) => Err(KeyError::Unavailable),
                _ => Err(KeyError::Unknown),
            };
        }
        if need == Need::UnknownKey {
            state.last_unknown_kid_refetch = Some(Instant::now());
        }
        match self.fetch_keys(&mut state).await {
            Ok(set) => {
                state.last_failure = None;
                let set = Arc::new(set);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
                tracing::info!(issuer = %self.issuer, keys = set.keys.len(), ?need, "fetched the issuer's signing keys");
                if set.has(alg, kid) { Ok(set) } else { Err(KeyError::Unknown) }
            }
            Err(e) => {
                state.last_failure = Some(Instant::now());
                state.jwks_uri = None;
                tracing::warn!(issuer = %self.issuer, error = %e, "the issuer's signing keys could not be fetched");
                match (need, current) {
                    (Need::Stale, Some(set)) => Ok(set),
                    _ => Err(KeyError::Unavailable),
                }
            }
        }
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> Result<KeySet, FetchError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        #[derive(Deserialize)]
        struct JwkSet {
            keys: Vec<serde_json::Value>,
        }
        let set: JwkSet = self.get_json(&jwks_uri).await?;
        let keys: Vec<SigningKey> = set.keys.into_iter().filter_map(signing_key).take(MAX_KEYS).collect();
        if keys.is_empty() {
            tracing::warn!(issuer = %self.issuer, "the issuer's key set has no RS256 or ES256 signing key");
        }
        Ok(KeySet { keys, fetched_at: Instant::now() })
    }

    /// The `jwks_uri` of the discovery document, whose `issuer` must be the configured one
    /// (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3).
    async fn discover(&self) -> Result<Url, FetchError> {
        #[derive(Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: String,
        }
        let meta: Metadata = self.get_json(&self.discovery).await?;
        if meta.issuer != self.issuer {
            return Err(FetchError::IssuerMismatch { found: meta.issuer });
        }
        let uri = crate::domain::validate::check_secure_url(&meta.jwks_uri).map_err(FetchError::JwksUri)?;
        if uri.scheme() != "https" && self.discovery.scheme() == "https" {
            return Err(FetchError::JwksUriDowngrade);
        }
        Ok(uri)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, FetchError> {
        let http = |source| FetchError::Http { url: url.clone(), source };
        let mut res = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http)?;
        if !res.status().is_success() {
            return Err(FetchError::Status { url: url.clone(), status: res.status().as_u16() });
        }
        if res.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(FetchError::TooLarge { url: url.clone() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge { url: url.clone() });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| FetchError::Shape { url: url.clone() })
    }
}

/// A verification key from one member of the set (RFC 7517 §4), or `None` for a key that is not
/// for RS256 or ES256 signatures: another use or operation, another algorithm or curve, a
/// symmetric or malformed key.
fn signing_key(member: serde_json::Value) -> Option<SigningKey> {
    let jwk: Jwk = serde_json::from_value(member).ok()?;
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return None;
    }
    if jwk.common.key_operations.as_ref().is_some_and(|ops| !ops.contains(&KeyOperations::Verify)) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256)) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(SigningKey { kid: jwk.common.key_id, alg, key })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_rs256_and_es256_signing_keys_are_kept() {
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        let ec = json!({"kty": "EC", "kid": "e", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        assert_eq!(signing_key(rsa.clone()).map(|k| k.alg), Some(Algorithm::RS256));
        assert_eq!(signing_key(ec.clone()).map(|k| k.alg), Some(Algorithm::ES256));
        let with = |mut v: serde_json::Value, k: &str, x: serde_json::Value| {
            v[k] = x;
            v
        };
        for refused in [
            with(rsa.clone(), "use", json!("enc")),
            with(rsa.clone(), "alg", json!("PS256")),
            with(rsa.clone(), "key_ops", json!(["encrypt"])),
            with(ec.clone(), "crv", json!("P-384")),
            with(ec, "alg", json!("ES384")),
            json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}),
            json!({"kty": "RSA", "n": 5}),
        ] {
            assert!(signing_key(refused.clone()).is_none(), "{refused}");
        }
        assert!(signing_key(with(rsa, "key_ops", json!(["verify"]))).is_some());
    }

    #[test]
    fn issuers_must_be_https_or_loopback_and_name_an_audience() {
        assert!(JwtIssuer::new("https://idp.example.com/", vec!["api".into()]).is_ok());
        assert!(JwtIssuer::new("http://127.0.0.1:9/", vec!["api".into()]).is_ok());
        assert!(matches!(JwtIssuer::new("http://idp.example.com", vec!["api".into()]), Err(IssuerError::Url(_))));
        assert!(matches!(
            JwtIssuer::new("https://idp.example.com/?a=b", vec!["a".into()]),
            Err(IssuerError::QueryOrFragment)
        ));
        assert!(matches!(JwtIssuer::new("https://idp.example.com", vec![" ".into()]), Err(IssuerError::NoAudience)));
        let issuer = JwtIssuer::new("https://idp.example.com/tenant/", vec!["api".into()]).unwrap();
        assert_eq!(issuer.discovery.as_str(), "https://idp.example.com/tenant/.well-known/openid-configuration");
    }
}
