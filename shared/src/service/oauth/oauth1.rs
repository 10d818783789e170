//! OAuth 1.0a, three-legged (RFC 5849 section 2; SPEC section 12): a request token obtained
//! with `oauth_callback` set to Latchkey's callback, the user sent to the provider's authorize
//! URL with it, and at the callback the `oauth_verifier` exchanged for an access token and its
//! token secret, sealed on the connection. Tokens do not expire, so nothing is ever refreshed;
//! RFC 5849 has no revocation, so a disconnect deletes them and the grant stays at the provider.
//!
//! Signatures (section 3.4) are built by the `oauth1-request` crate: its signature base string
//! and HMAC-SHA1. Gaps of the crate (0.6.1) are closed here, through its `SignatureMethod` trait:
//! its PLAINTEXT puts the signature into the header unencoded (section 3.5.1 wants it encoded,
//! which matters for secrets with reserved characters), its `ParameterList` writes parameter
//! names into the base string unencoded (section 3.4.1.3.2 encodes them), it has no HMAC-SHA256,
//! and its RSA-SHA1 signs unblinded. So [`Plaintext`], [`HmacSha256`] and [`RsaSha1`] (RustCrypto
//! `rsa`, blinded: aws-lc-rs and ring sign PKCS#1 v1.5 only with SHA-256 and up) are Latchkey's,
//! and query parameter names are encoded before they are handed over. Requests carry the protocol parameters in the
//! `Authorization` header (section 3.5.1) and an empty body.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use oauth1_request::signature_method::{Sign, SignatureMethod as Oauth1Method};
use oauth1_request::{Builder, Credentials, HmacSha1, ParameterList};
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use super::super::retry::Races;
use super::super::{Result, Service, ServiceError, Unusable};
use super::callback::AuthorizationFailure;
use super::{AuthorizeResponse, CALLBACK_PATH, Endpoint, STATE_TTL, TokenSecrets, state_hash};
use crate::crypto::EncryptionContext;
use crate::domain::validate::{
    CONSUMER_SECRET_INPUT, FieldError, PRIVATE_KEY_INPUT, SIGNATURE_METHOD_INPUT, SignatureMethod, Values,
    check_consumer_values, check_secure_url, is_loopback_host, rsa_signing_key,
};
use crate::domain::{
    AuthKind, BrowserBinding, Connection, Definition, Event, EventType, LogType, OAuthState, OAuthTokens, Status,
    provider_code,
};
use crate::ports::StoreError;
use crate::provider::destination::{DestinationError, check_public_destination};
use crate::provider::{ApiMethod, ApiRequest, Reach};

/// The `token_type` of OAuth 1.0a tokens in reads and lookups.
pub const OAUTH1_TOKEN_TYPE: &str = "OAuth1";

/// The consumer (RFC 5849 section 1.1's client) and how it signs.
pub(crate) struct Consumer {
    pub key: String,
    /// Empty for `RSA-SHA1`, which does not use it.
    pub secret: SecretString,
    pub method: SignatureMethod,
    /// The `RSA-SHA1` key, parsed.
    pub rsa: Option<RsaPrivateKey>,
}

/// A connection's effective OAuth 1.0a settings: its own values over the definition's app
/// settings (read at each use), like [`super::OAuthSettings`].
pub(crate) struct Oauth1Settings {
    pub request_token: Endpoint,
    pub authorize: url::Url,
    pub access_token: Endpoint,
    pub consumer: Consumer,
    /// The key as the connection or definition holds it (PEM), for lookups of `RSA-SHA1`.
    pub private_key: Option<SecretString>,
}

/// What a lookup of an `oauth1` connection returns beside `token`: everything an execution
/// needs to sign its requests to the provider (RFC 5849 section 3). Serialized in camelCase;
/// `privateKey` (PEM) only for `RSA-SHA1`, `consumerSecret` empty for it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Oauth1Credentials {
    pub consumer_key: String,
    #[serde(serialize_with = "expose")]
    pub consumer_secret: SecretString,
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    #[serde(serialize_with = "expose")]
    pub token_secret: SecretString,
    pub signature_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "expose_some")]
    pub private_key: Option<SecretString>,
}

impl fmt::Debug for Oauth1Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth1Credentials")
            .field("consumer_key", &self.consumer_key)
            .field("signature_method", &self.signature_method)
            .finish_non_exhaustive()
    }
}

fn expose<S: serde::Serializer>(v: &SecretString, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

fn expose_some<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v.expose_secret()),
        None => s.serialize_none(),
    }
}

/// Why a request to the provider's request token or access token endpoint gave no credentials.
#[derive(Debug)]
pub(crate) enum Oauth1Failure {
    /// The provider refused (4xx): its `oauth_problem` (the OAuth Problem Reporting extension)
    /// or `error`, reduced, else Latchkey's code for the status.
    Refused(String),
    /// No answer, a 5xx or a 429: `timeout`, `unreachable`, `temporarily_unavailable`...
    Unavailable(String),
    /// A 2xx that is not a form with the members RFC 5849 requires.
    Unreadable(&'static str),
    /// The endpoint's address is not allowed (the outbound policy).
    Forbidden,
}

impl Oauth1Failure {
    /// The code the authorize error and the logs show.
    pub fn code(&self) -> String {
        match self {
            Self::Refused(code) | Self::Unavailable(code) => code.clone(),
            Self::Unreadable(code) => (*code).to_owned(),
            Self::Forbidden => "destination_refused".to_owned(),
        }
    }
}

/// RFC 3986 percent-encoding of RFC 5849 section 3.6: everything but `A-Z a-z 0-9 - . _ ~`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `HMAC-SHA256`: section 3.4.2 with SHA-256, the extension most providers that left SHA-1
/// behind use (NetSuite, Garmin). The key is `consumer_secret&token_secret`, both encoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HmacSha256;

/// `PLAINTEXT` (section 3.4.4): the signature is `consumer_secret&token_secret`, both encoded,
/// and encoded once more in the header (section 3.5.1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plaintext;

/// `RSA-SHA1` (section 3.4.3): RSASSA-PKCS1-v1_5 with SHA-1 over the base string, under the
/// consumer's RSA key, blinded with a fresh random value each time (`sign_with_rng`: the
/// private-key operation's timing says nothing of the key; RUSTSEC-2023-0071).
#[derive(Clone)]
pub(crate) struct RsaSha1(pub RsaPrivateKey);

/// The section 3.4.2 key of HMAC and the section 3.4.4 signature of PLAINTEXT.
fn signing_key(client_secret: &str, token_secret: Option<&str>) -> String {
    format!("{}&{}", percent_encode(client_secret), percent_encode(token_secret.unwrap_or_default()))
}

/// What [`HmacSha256`] (and, in tests, the bare base string) does with the signature base string
/// the crate feeds it piece by piece.
#[derive(Clone)]
enum Finish {
    HmacSha256(Vec<u8>),
    Plaintext(String),
    RsaSha1(Box<RsaPrivateKey>),
    #[cfg(test)]
    BaseString,
}

/// Collects the signature base string (section 3.4.1.1) exactly as the crate's own methods
/// hash it: `METHOD&uri&k%3Dv%26k%3Dv`, the crate having encoded the URI and parameters.
#[derive(Clone)]
pub(crate) struct CollectSign {
    base: String,
    finish: Finish,
}

impl Oauth1Method for HmacSha256 {
    type Sign = CollectSign;

    fn sign_with(self, client_secret: &str, token_secret: Option<&str>) -> CollectSign {
        let key = signing_key(client_secret, token_secret);
        CollectSign { base: String::new(), finish: Finish::HmacSha256(key.into_bytes()) }
    }
}

impl Oauth1Method for RsaSha1 {
    type Sign = CollectSign;

    fn sign_with(self, _client_secret: &str, _token_secret: Option<&str>) -> CollectSign {
        CollectSign { base: String::new(), finish: Finish::RsaSha1(Box::new(self.0)) }
    }
}

impl Oauth1Method for Plaintext {
    type Sign = CollectSign;

    fn sign_with(self, client_secret: &str, token_secret: Option<&str>) -> CollectSign {
        CollectSign { base: String::new(), finish: Finish::Plaintext(signing_key(client_secret, token_secret)) }
    }
}

impl Sign for CollectSign {
    type Signature = String;

    fn get_signature_method_name(&self) -> &'static str {
        match self.finish {
            Finish::HmacSha256(_) => "HMAC-SHA256",
            Finish::Plaintext(_) => "PLAINTEXT",
            Finish::RsaSha1(_) => "RSA-SHA1",
            #[cfg(test)]
            Finish::BaseString => "HMAC-SHA1",
        }
    }

    fn request_method(&mut self, method: &str) {
        self.base.push_str(method);
        self.base.push('&');
    }

    fn uri<T: fmt::Display>(&mut self, uri: T) {
        self.base.push_str(&format!("{uri}&"));
    }

    fn parameter<V: fmt::Display>(&mut self, key: &str, value: V) {
        self.base.push_str(&format!("{key}%3D{value}"));
    }

    fn delimiter(&mut self) {
        self.base.push_str("%26");
    }

    /// The signature as the header carries it: base64, percent-encoded.
    fn end(self) -> String {
        match self.finish {
            Finish::HmacSha256(key) => {
                // HMAC takes a key of any length.
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length");
                mac.update(self.base.as_bytes());
                percent_encode(&STANDARD.encode(mac.finalize().into_bytes()))
            }
            Finish::Plaintext(key) => percent_encode(&key),
            Finish::RsaSha1(key) => {
                use rsa::signature::{RandomizedSigner, SignatureEncoding};
                let signer = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(*key);
                let signature = signer.sign_with_rng(&mut rsa::rand_core::OsRng, self.base.as_bytes());
                percent_encode(&STANDARD.encode(signature.to_vec()))
            }
            #[cfg(test)]
            Finish::BaseString => self.base,
        }
    }
}

/// The protocol parameters of one request besides the consumer's.
#[derive(Default, Clone, Copy)]
pub(crate) struct Step<'a> {
    /// The token and its secret: the request token (access token request) or the access token.
    pub token: Option<(&'a str, &'a str)>,
    pub callback: Option<&'a str>,
    pub verifier: Option<&'a str>,
    /// A fixed nonce and timestamp (tests of known signatures); otherwise fresh ones.
    pub fixed: Option<(&'a str, u64)>,
}

/// The `Authorization: OAuth ...` header value of a request (RFC 5849 section 3.5.1): `url`'s
/// query parameters are signed as request parameters (section 3.4.1.3.1), the body is empty.
pub(crate) fn authorization(method: &str, url: &url::Url, consumer: &Consumer, step: Step<'_>) -> String {
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    let params = ParameterList::new(query_parameters(url));
    let client = Credentials::new(consumer.key.as_str(), consumer.secret.expose_secret());
    match (consumer.method, &consumer.rsa) {
        (SignatureMethod::HmacSha1, _) => sign_with(client, HmacSha1::new(), step, method, &base, &params),
        (SignatureMethod::HmacSha256, _) => sign_with(client, HmacSha256, step, method, &base, &params),
        (SignatureMethod::Plaintext, _) => sign_with(client, Plaintext, step, method, &base, &params),
        (SignatureMethod::RsaSha1, Some(key)) => sign_with(client, RsaSha1(key.clone()), step, method, &base, &params),
        // Settings never hold RSA-SHA1 without its key: they refuse to resolve.
        (SignatureMethod::RsaSha1, None) => String::new(),
    }
}

/// The query parameters of `url` as the crate's `ParameterList` must get them: names already
/// in their base string form (encoded twice: section 3.4.1.3.2, then 3.4.1.1), since the crate
/// writes names as they are; values as they are (the crate encodes those).
fn query_parameters(url: &url::Url) -> Vec<(String, String)> {
    url.query_pairs().map(|(k, v)| (percent_encode(&percent_encode(&k)), v.into_owned())).collect()
}

/// [`authorization`] with one signature method.
fn sign_with<SM: Oauth1Method + Clone>(
    client: Credentials<&str>,
    method_impl: SM,
    step: Step<'_>,
    method: &str,
    base: &url::Url,
    params: &ParameterList<String, String>,
) -> String {
    let mut b: Builder<'_, SM, &str, &str> = Builder::new(client, method_impl);
    b.token(step.token.map(|(t, s)| Credentials::new(t, s)));
    b.callback(step.callback).verifier(step.verifier);
    if let Some((nonce, at)) = step.fixed {
        b.nonce(nonce).timestamp(std::num::NonZeroU64::new(at));
    }
    b.authorize(method, base.as_str(), params)
}

/// Reads a token answer (RFC 5849 sections 2.1 and 2.3): `application/x-www-form-urlencoded`
/// with `oauth_token` and `oauth_token_secret`.
fn read_answer(
    status: u16,
    body: &[u8],
    refused_as: &str,
) -> std::result::Result<BTreeMap<String, String>, Oauth1Failure> {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    match status {
        200..=299 => {
            let has = |k: &str| form.get(k).is_some_and(|v| !v.is_empty());
            if has("oauth_token") && form.contains_key("oauth_token_secret") {
                Ok(form)
            } else {
                Err(Oauth1Failure::Unreadable("unreadable_answer"))
            }
        }
        429 | 500..=599 => Err(Oauth1Failure::Unavailable("temporarily_unavailable".to_owned())),
        _ => {
            // Never the provider's free text: its problem code at most.
            let code = form.get("oauth_problem").or_else(|| form.get("error")).and_then(|c| provider_code(c));
            Err(Oauth1Failure::Refused(code.unwrap_or_else(|| match status {
                401 => refused_as.to_owned(),
                _ => format!("http_{status}"),
            })))
        }
    }
}

impl Service {
    /// Resolves the OAuth 1.0a settings of a connection: its own values over the definition's
    /// app settings as they are now (a rotated consumer secret reaches every connection).
    ///
    /// # Errors
    /// `Invalid` naming each missing or bad `values.*` (an endpoint, the consumer key, the
    /// consumer secret of an HMAC or PLAINTEXT consumer, the RSA key of an RSA-SHA1 one).
    pub(crate) async fn oauth1_settings(&self, def: &Definition, c: &Connection) -> Result<Oauth1Settings> {
        let own_secrets = self.open_secrets(c).await?;
        let inherits = |name: &str| def.by_reference(name) && !own_secrets.contains_key(name);
        let def_secrets = if inherits(CONSUMER_SECRET_INPUT) || inherits(PRIVATE_KEY_INPUT) {
            self.definition_secrets(def).await?
        } else {
            BTreeMap::new()
        };
        let own = |name: &str| c.values.get(name).filter(|v| v.as_str() != Some(""));
        let inherited = |name: &str| def.by_reference(name).then(|| def.inputs.get(name)?.default.as_ref()).flatten();
        let text = |name: &str| own(name).or_else(|| inherited(name)).and_then(Value::as_str).filter(|s| !s.is_empty());
        let secret = |name: &str| {
            own_secrets.get(name).or_else(|| def_secrets.get(name)).filter(|s| !s.expose_secret().is_empty()).cloned()
        };
        let mut errors = Vec::new();
        let url = |name: &str, errors: &mut Vec<FieldError>| -> Option<url::Url> {
            let Some(raw) = text(name) else {
                errors.push(FieldError::new(format!("values.{name}"), "is required for OAuth 1.0a"));
                return None;
            };
            check_secure_url(raw)
                .map_err(|e| errors.push(FieldError::new(format!("values.{name}"), e.to_string())))
                .ok()
        };
        let endpoint = |u: url::Url| {
            let reach = if is_loopback_host(&u) { Reach::Any } else { Reach::PublicOnly };
            Endpoint { url: u, reach }
        };
        let request_token = url("requestTokenUrl", &mut errors).map(endpoint);
        let authorize = url("authorizeUrl", &mut errors);
        let access_token = url("accessTokenUrl", &mut errors).map(endpoint);
        let key = text("consumerKey").map(str::to_owned);
        if key.is_none() {
            errors.push(FieldError::new("values.consumerKey", "is required for OAuth 1.0a"));
        }
        let method_value = own(SIGNATURE_METHOD_INPUT).or_else(|| inherited(SIGNATURE_METHOD_INPUT));
        let method = SignatureMethod::of_value(method_value)
            .map_err(|m| errors.push(FieldError::new(format!("values.{SIGNATURE_METHOD_INPUT}"), m)))
            .ok();
        let private_key = secret(PRIVATE_KEY_INPUT);
        let consumer_secret = secret(CONSUMER_SECRET_INPUT);
        let rsa = match (method, &private_key) {
            (Some(SignatureMethod::RsaSha1), Some(pem)) => rsa_signing_key(pem.expose_secret())
                .map_err(|m| errors.push(FieldError::new(format!("values.{PRIVATE_KEY_INPUT}"), m)))
                .ok(),
            (Some(SignatureMethod::RsaSha1), None) => {
                errors.push(FieldError::new(format!("values.{PRIVATE_KEY_INPUT}"), "is required for RSA-SHA1"));
                None
            }
            (Some(m), _) if consumer_secret.is_none() => {
                errors.push(FieldError::new(
                    format!("values.{CONSUMER_SECRET_INPUT}"),
                    format!("is required for {}", m.name()),
                ));
                None
            }
            _ => None,
        };
        let (Some(request_token), Some(authorize), Some(access_token), Some(key), Some(method), true) =
            (request_token, authorize, access_token, key, method, errors.is_empty())
        else {
            return Err(ServiceError::Invalid(errors));
        };
        Ok(Oauth1Settings {
            request_token,
            authorize,
            access_token,
            consumer: Consumer {
                key,
                secret: consumer_secret.unwrap_or_else(|| SecretString::from(String::new())),
                method,
                rsa,
            },
            private_key: private_key.filter(|_| method == SignatureMethod::RsaSha1),
        })
    }

    /// One signed POST (empty body, parameters in the `Authorization` header) to a token
    /// endpoint; its form answer. `refused_as` is the code of a bare 401.
    async fn oauth1_post(
        &self,
        endpoint: &Endpoint,
        consumer: &Consumer,
        step: Step<'_>,
        refused_as: &str,
    ) -> std::result::Result<BTreeMap<String, String>, Oauth1Failure> {
        // The outbound policy, at each call: the address called is the address checked.
        match check_public_destination(&endpoint.url, self.allow_loopback_providers()).await {
            Ok(()) => {}
            Err(DestinationError::Refused(_)) => return Err(Oauth1Failure::Forbidden),
            Err(DestinationError::Unresolved) => return Err(Oauth1Failure::Unavailable("unresolved".to_owned())),
        }
        let header = authorization("POST", &endpoint.url, consumer, step);
        let request = ApiRequest {
            method: ApiMethod::Post,
            url: endpoint.url.clone(),
            reach: endpoint.reach,
            headers: vec![("Authorization".to_owned(), SecretString::from(header))],
            json_body: None,
        };
        let raw = self.provider.send(&request).await.map_err(|e| Oauth1Failure::Unavailable(e.code().to_owned()))?;
        read_answer(raw.status, &raw.body, refused_as)
    }

    /// The authorize step of an `oauth1` connection (RFC 5849 section 2.1, 2.2): a request
    /// token with `oauth_callback` = `{public_url}/v1/oauth/callback` (the provider must confirm
    /// it), its secret sealed in a pending authorization stored under the SHA-256 of the token
    /// (single use, 10 minutes, bound to `browser` when given), and the provider's authorize
    /// URL with `oauth_token`.
    ///
    /// # Errors
    /// `Invalid` for incomplete settings ([`Service::oauth1_settings`]); `Provider` with the
    /// provider's problem code, or `consumer_rejected` (a 401: the consumer key, secret, RSA key
    /// or signature method is wrong), `callback_not_confirmed`, `temporarily_unavailable`,
    /// `timeout`, `unreadable_answer`, `destination_refused`; `Unexpected` without a public URL.
    pub(crate) async fn authorize_oauth1(
        &self,
        c: &Connection,
        def: &Definition,
        public_url: Option<&str>,
        browser: Option<BrowserBinding>,
    ) -> Result<AuthorizeResponse> {
        let public_url = public_url.ok_or_else(|| {
            ServiceError::unexpected(
                "LATCHKEY_PUBLIC_URL is not configured and no API Gateway domain: no OAuth callback URL",
            )
        })?;
        let redirect_uri = format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/'));
        let settings = self.oauth1_settings(def, c).await?;
        let step = Step { callback: Some(&redirect_uri), ..Step::default() };
        let answer =
            match self.oauth1_post(&settings.request_token, &settings.consumer, step, "consumer_rejected").await {
                Ok(a) if a.get("oauth_callback_confirmed").map(String::as_str) == Some("true") => a,
                // RFC 5849 section 2.1: an OAuth 1.0 (not 1.0a) provider, which would not send the
                // verifier back.
                Ok(_) => return Err(self.request_token_failed(c, "callback_not_confirmed".to_owned()).await),
                Err(f) => return Err(self.request_token_failed(c, f.code()).await),
            };
        let token = &answer["oauth_token"];
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let secret = SecretString::from(answer["oauth_token_secret"].clone());
        let sealed = self.envelope.seal_str(&ctx, &secret).await?;
        let expires_at = self.clock.now() + STATE_TTL;
        let record = OAuthState {
            hash: state_hash(token),
            org: c.org.clone(),
            connection_id: c.id.clone(),
            verifier: None,
            request_token_secret: Some(sealed),
            redirect_uri,
            issuer: None,
            expires_at,
            generation: c.generation,
            browser,
        };
        self.store.put_oauth_state(&record).await?;
        let mut url = settings.authorize;
        url.query_pairs_mut().append_pair("oauth_token", token);
        self.log(c, LogType::AuthorizeStarted, "authorization started (OAuth 1.0a request token obtained)").await;
        Ok(AuthorizeResponse { authorize_url: url.to_string(), expires_at })
    }

    async fn request_token_failed(&self, c: &Connection, code: String) -> ServiceError {
        let why = match code.as_str() {
            "consumer_rejected" => {
                ": the provider refused the consumer (check consumerKey, consumerSecret, signatureMethod, privateKey)"
            }
            "callback_not_confirmed" => ": the provider did not confirm the callback (not OAuth 1.0a)",
            _ => "",
        };
        self.log(c, LogType::AuthorizeFailed, format!("request token refused ({code}){why}")).await;
        ServiceError::Provider(code)
    }

    /// The callback of an `oauth1` authorization (RFC 5849 section 2.3): `oauth_verifier` and
    /// the request token (the parameter the pending authorization was found by) exchanged for
    /// the access token and token secret, sealed on `c`, status `configured`.
    pub(super) async fn complete_oauth1(
        &self,
        st: &OAuthState,
        sealed_secret: &crate::domain::Sealed,
        c: &Connection,
        def: &Definition,
        params: &BTreeMap<String, String>,
    ) -> std::result::Result<Connection, AuthorizationFailure> {
        // Providers say no in their own ways: `denied=<token>` (X), `oauth_problem`.
        if params.contains_key("denied") {
            return Err(AuthorizationFailure::new("access_denied", "the user denied the authorization"));
        }
        if let Some(problem) = params.get("oauth_problem") {
            let code = provider_code(problem).unwrap_or_else(|| "server_error".to_owned());
            return Err(AuthorizationFailure::new(code, "the provider ended the authorization"));
        }
        let token = params.get("oauth_token").filter(|t| !t.is_empty());
        let verifier = params.get("oauth_verifier").filter(|v| !v.is_empty());
        let (Some(token), Some(verifier)) = (token, verifier) else {
            return Err(AuthorizationFailure::new(
                "invalid_request",
                "the authorization response has no oauth_token or oauth_verifier",
            ));
        };
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let secret = self.envelope.open_str(&ctx, sealed_secret).await.map_err(|_| AuthorizationFailure::internal())?;
        let settings = self.oauth1_settings(def, c).await.map_err(|e| match e {
            ServiceError::Invalid(_) => {
                AuthorizationFailure::new("invalid_request", "the connection's OAuth 1.0a settings are incomplete")
            }
            _ => AuthorizationFailure::internal(),
        })?;
        let step = Step { token: Some((token, secret.expose_secret())), verifier: Some(verifier), ..Step::default() };
        let answer = self
            .oauth1_post(&settings.access_token, &settings.consumer, step, "verifier_rejected")
            .await
            .map_err(|f| match f {
                Oauth1Failure::Refused(code) => {
                    AuthorizationFailure::new(code, "the provider refused the request token or verifier")
                }
                Oauth1Failure::Unavailable(code) => AuthorizationFailure::new(
                    "temporarily_unavailable",
                    format!("the provider is unavailable ({code}); try again"),
                ),
                Oauth1Failure::Unreadable(code) => {
                    AuthorizationFailure::new(code, "could not read the provider's access token answer")
                }
                Oauth1Failure::Forbidden => AuthorizationFailure::new(
                    "server_error",
                    "the access token endpoint is not allowed; the organization must fix the definition",
                ),
            })?;
        let done = self
            .store_oauth1_tokens(st, c, &settings, &answer["oauth_token"], &answer["oauth_token_secret"])
            .await
            .map_err(|e| match e {
                ServiceError::Unusable(Unusable::Disconnected) => AuthorizationFailure::new(
                    "access_denied",
                    "the connection was disconnected after this authorization began",
                ),
                _ => AuthorizationFailure::internal(),
            })?;
        self.log(&done, LogType::Authorized, "authorized (OAuth 1.0a access token)").await;
        self.emit(Event::about(EventType::ConnectionAuthorized, &done)).await;
        if super::reconnect::is_reconnect(c) {
            self.announce_reconnect(c, &done, false).await;
        }
        Ok(done)
    }

    /// Seals the access token and its secret onto `c` (a conditional write, redone on the latest
    /// version of the same generation): status `configured`, out of the refresh index (nothing
    /// expires).
    async fn store_oauth1_tokens(
        &self,
        st: &OAuthState,
        c: &Connection,
        settings: &Oauth1Settings,
        token: &str,
        token_secret: &str,
    ) -> Result<Connection> {
        let secrets = TokenSecrets {
            access_token: token.to_owned(),
            refresh_token: None,
            captured: BTreeMap::new(),
            token_secret: Some(token_secret.to_owned()),
        };
        let sealed = self.envelope.seal_json(&EncryptionContext::connection(&c.org, &c.id), &secrets).await?;
        let tokens = OAuthTokens {
            sealed,
            token_type: OAUTH1_TOKEN_TYPE.to_owned(),
            expires_at: None,
            scopes: Vec::new(),
            has_refresh_token: false,
            obtained_at: self.clock.now(),
            token_origin: settings.access_token.origin(),
            revoke_origin: None,
            refresh_token_expires_at: None,
        };
        let mut current = c.clone();
        let mut races = Races::default();
        loop {
            if current.generation != st.generation {
                return Err(ServiceError::Unusable(Unusable::Disconnected));
            }
            let mut next = self.with_tokens(&current, tokens.clone(), &BTreeMap::new(), Status::Configured, None);
            next.device = None;
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
        }
    }

    /// What a lookup of an `oauth1` connection hands out: the access token (as `token`) and the
    /// signing credentials ([`Oauth1Credentials`]).
    ///
    /// # Errors
    /// `Unusable(Pending)` without tokens; `Invalid` when the definition's consumer settings
    /// became incomplete; those of the store and the key service.
    pub(crate) async fn oauth1_lookup(&self, c: &Connection) -> Result<(String, Oauth1Credentials)> {
        let opened = self.open_tokens(c).await?.ok_or(ServiceError::Unusable(Unusable::Pending))?;
        let def = self.definition_of(c).await?;
        let settings = self.oauth1_settings(&def, c).await?;
        let credentials = Oauth1Credentials {
            consumer_key: settings.consumer.key,
            consumer_secret: settings.consumer.secret,
            token: SecretString::from(opened.access_token.clone()),
            token_secret: SecretString::from(opened.token_secret.unwrap_or_default()),
            signature_method: settings.consumer.method.name(),
            private_key: settings.private_key,
        };
        Ok((opened.access_token, credentials))
    }
}

/// The field errors of an `oauth1` connection's own values (`values.signatureMethod`, and the
/// RSA key of `RSA-SHA1`, over the definition's default method), checked when they are written.
pub(crate) fn value_errors(def: &Definition, values: &Values) -> Vec<FieldError> {
    if def.auth != AuthKind::Oauth1 {
        return Vec::new();
    }
    let mut plain = values.plain.clone();
    if !plain.contains_key(SIGNATURE_METHOD_INPUT)
        && let Some(default) = def.inputs.get(SIGNATURE_METHOD_INPUT).and_then(|i| i.default.clone())
    {
        plain.insert(SIGNATURE_METHOD_INPUT.to_owned(), default);
    }
    check_consumer_values(&plain, &values.secret, "values.", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(key: &str, secret: &str, method: SignatureMethod) -> Consumer {
        Consumer { key: key.to_owned(), secret: SecretString::from(secret.to_owned()), method, rsa: None }
    }

    /// The `oauth_signature` of an `Authorization` header, decoded.
    fn signature_of(header: &str) -> String {
        let raw = header.split("oauth_signature=\"").nth(1).and_then(|s| s.split('"').next()).unwrap();
        url::form_urlencoded::parse(format!("s={raw}").as_bytes()).next().unwrap().1.into_owned()
    }

    #[test]
    fn the_signature_base_string_is_rfc_5849_section_3_4_1_1s() {
        // RFC 5849 section 3.4.1.1's example, the body parameters (c2, a3=2 q) left out: Latchkey
        // sends none. The query's b5, a3, c@ and a2 are sorted in among the protocol parameters.
        let url = url::Url::parse("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b").unwrap();
        let c = consumer("9djdj82h48djs9d2", "j49sk3j29djd", SignatureMethod::HmacSha1);
        let mut b: Builder<'_, _, &str, &str> =
            Builder::new(Credentials::new(c.key.as_str(), "j49sk3j29djd"), BaseString);
        b.token(Some(Credentials::new("kkk9d7dh3k39sjv7", "dh893hdasih9")));
        b.nonce("7d8f3e4a").timestamp(std::num::NonZeroU64::new(137131201));
        let mut base = url.clone();
        base.set_query(None);
        let params = ParameterList::new(query_parameters(&url));
        let header = b.authorize("POST", base.as_str(), &params);
        // The "signature" is the base string itself, as the header carries it (not encoded again).
        let raw = header.split("oauth_signature=\"").nth(1).and_then(|s| s.split('"').next()).unwrap();
        let expected = "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D\
                        %26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1\
                        %26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7";
        assert_eq!(raw, expected);
    }

    /// Test-only method whose "signature" is the base string itself.
    #[derive(Clone, Copy)]
    struct BaseString;

    impl Oauth1Method for BaseString {
        type Sign = CollectSign;

        fn sign_with(self, _: &str, _: Option<&str>) -> CollectSign {
            CollectSign { base: String::new(), finish: Finish::BaseString }
        }
    }

    #[test]
    fn hmac_sha1_signs_rfc_5849_section_1_2s_example() {
        // RFC 5849 section 1.2: printer.example.com's request for the vacation photo.
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let c = consumer("dpf43f3p2l4k3l03", "kd94hf93k423kf44", SignatureMethod::HmacSha1);
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")),
            fixed: Some(("chapoH", 137131202)),
            ..Step::default()
        };
        let header = authorization("GET", &url, &c, step);
        assert_eq!(signature_of(&header), "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
        assert!(header.starts_with("OAuth "), "{header}");
        assert!(!header.contains("file="), "query parameters are signed, not repeated in the header: {header}");
    }

    #[test]
    fn hmac_sha256_and_plaintext_sign_with_both_secrets() {
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")),
            fixed: Some(("chapoH", 137131202)),
            ..Step::default()
        };
        // HMAC-SHA256 over the same base string as HMAC-SHA1 above, with the method's name.
        let sha256 = authorization(
            "GET",
            &url,
            &consumer("dpf43f3p2l4k3l03", "kd94hf93k423kf44", SignatureMethod::HmacSha256),
            step,
        );
        let base = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03\
                    %26oauth_nonce%3DchapoH%26oauth_signature_method%3DHMAC-SHA256%26oauth_timestamp%3D137131202\
                    %26oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"kd94hf93k423kf44&pfkkdhi9sl3r4s00").unwrap();
        mac.update(base.as_bytes());
        assert_eq!(signature_of(&sha256), STANDARD.encode(mac.finalize().into_bytes()));
        assert!(sha256.contains("oauth_signature_method=\"HMAC-SHA256\""), "{sha256}");
        // PLAINTEXT (section 3.4.4): the encoded secrets joined by `&`.
        let plain = authorization("GET", &url, &consumer("k", "s&cret", SignatureMethod::Plaintext), step);
        assert_eq!(signature_of(&plain), "s%26cret&pfkkdhi9sl3r4s00");
    }

    #[test]
    fn rsa_sha1_signs_blinded_what_the_crates_unblinded_signer_signs() {
        // PKCS#1 v1.5 is deterministic: blinding changes the timing, never the signature.
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let url = url::Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let mut c = consumer("dpf43f3p2l4k3l03", "", SignatureMethod::RsaSha1);
        c.rsa = Some(key.clone());
        let step = Step {
            token: Some(("nnch734d00sl2jdk", "")),
            fixed: Some(("13917289812797014437", 1196666512)),
            ..Step::default()
        };
        let ours = authorization("GET", &url, &c, step);
        let crates = sign_with(
            Credentials::new("dpf43f3p2l4k3l03", ""),
            oauth1_request::Rsa09Sha1::new(key),
            step,
            "GET",
            &url::Url::parse("http://photos.example.net/photos").unwrap(),
            &ParameterList::new(query_parameters(&url)),
        );
        assert_eq!(ours, crates);
        assert!(ours.contains("oauth_signature_method=\"RSA-SHA1\""), "{ours}");
    }

    #[test]
    fn answers_are_read_without_echoing_the_provider() {
        let ok = read_answer(200, b"oauth_token=t&oauth_token_secret=s&oauth_callback_confirmed=true", "x").unwrap();
        assert_eq!(ok["oauth_token"], "t");
        assert!(matches!(read_answer(200, b"{\"token\":1}", "x"), Err(Oauth1Failure::Unreadable(_))));
        assert_eq!(read_answer(401, b"", "consumer_rejected").unwrap_err().code(), "consumer_rejected");
        assert_eq!(
            read_answer(400, b"oauth_problem=signature_invalid<script>", "x").unwrap_err().code(),
            "signature_invalidscript"
        );
        assert_eq!(read_answer(503, b"", "x").unwrap_err().code(), "temporarily_unavailable");
        assert_eq!(read_answer(403, b"nope", "x").unwrap_err().code(), "http_403");
    }
}
