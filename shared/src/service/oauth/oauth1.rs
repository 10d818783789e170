//! OAuth 1.0a, three-legged (RFC 5849 section 2; SPEC section 12): a request token obtained
//! with `oauth_callback` set to Latchkey's callback, the user sent to the provider's authorize
//! URL with it, and at the callback the `oauth_verifier` exchanged for an access token and its
//! token secret, sealed on the connection. Tokens do not expire, so nothing is ever refreshed;
//! RFC 5849 has no revocation, so a disconnect deletes them and the grant stays at the provider.
//! The signing of requests and the reading of answers are [`crate::provider::oauth1`]'s.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

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
use crate::provider::oauth1::{Consumer, Oauth1Failure, Signing, Step, authorization, read_answer};
use crate::provider::{ApiMethod, ApiRequest, Reach};

/// The `token_type` of OAuth 1.0a tokens in reads and lookups.
pub const OAUTH1_TOKEN_TYPE: &str = "OAuth1";

/// A connection's effective OAuth 1.0a settings: its own values over the definition's app
/// settings (read at each use), like [`super::OAuthSettings`].
pub(crate) struct Oauth1Settings {
    pub request_token: Endpoint,
    pub authorize: url::Url,
    pub access_token: Endpoint,
    pub consumer: Consumer,
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

/// Where a connection's OAuth 1.0a values come from: its own (secrets opened) over the
/// definition's defaults that it takes by reference.
struct Sources<'a> {
    def: &'a Definition,
    c: &'a Connection,
    own_secrets: &'a BTreeMap<String, SecretString>,
    /// Opened only when the connection inherits a secret.
    def_secrets: BTreeMap<String, SecretString>,
}

impl Sources<'_> {
    fn own(&self, name: &str) -> Option<&Value> {
        self.c.values.get(name).filter(|v| v.as_str() != Some(""))
    }

    fn inherited(&self, name: &str) -> Option<&Value> {
        self.def.by_reference(name).then(|| self.def.inputs.get(name)?.default.as_ref()).flatten()
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.own(name).or_else(|| self.inherited(name)).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        let found = self.own_secrets.get(name).or_else(|| self.def_secrets.get(name));
        found.filter(|s| !s.expose_secret().is_empty()).cloned()
    }

    /// The consumer as stored (the RSA key as PEM, not parsed); the errors of what is missing.
    fn consumer(&self, errors: &mut Vec<FieldError>) -> Option<StoredConsumer> {
        let key = self.text("consumerKey").map(str::to_owned);
        if key.is_none() {
            errors.push(FieldError::new("values.consumerKey", "is required for OAuth 1.0a"));
        }
        let method_value = self.own(SIGNATURE_METHOD_INPUT).or_else(|| self.inherited(SIGNATURE_METHOD_INPUT));
        let method = SignatureMethod::of_value(method_value)
            .map_err(|m| errors.push(FieldError::new(format!("values.{SIGNATURE_METHOD_INPUT}"), m)))
            .ok()?;
        let private_key = self.secret(PRIVATE_KEY_INPUT).filter(|_| method == SignatureMethod::RsaSha1);
        let secret = self.secret(CONSUMER_SECRET_INPUT).filter(|_| method != SignatureMethod::RsaSha1);
        match (method, &private_key, &secret) {
            (SignatureMethod::RsaSha1, None, _) => {
                errors.push(FieldError::new(format!("values.{PRIVATE_KEY_INPUT}"), "is required for RSA-SHA1"));
            }
            (SignatureMethod::RsaSha1, Some(_), _) | (_, _, Some(_)) => {}
            (m, _, None) => errors.push(FieldError::new(
                format!("values.{CONSUMER_SECRET_INPUT}"),
                format!("is required for {}", m.name()),
            )),
        }
        Some(StoredConsumer {
            key: key?,
            secret: secret.unwrap_or_else(|| SecretString::from(String::new())),
            method,
            private_key,
        })
    }
}

/// The consumer settings as stored: the RSA key (`RSA-SHA1` only) still PEM.
struct StoredConsumer {
    key: String,
    /// Empty for `RSA-SHA1`.
    secret: SecretString,
    method: SignatureMethod,
    private_key: Option<SecretString>,
}

impl Service {
    /// The [`Sources`] of `c`: the definition's secrets opened only when `c` inherits one.
    async fn oauth1_sources<'a>(
        &self,
        def: &'a Definition,
        c: &'a Connection,
        own_secrets: &'a BTreeMap<String, SecretString>,
    ) -> Result<Sources<'a>> {
        let inherits = |name: &str| def.by_reference(name) && !own_secrets.contains_key(name);
        let def_secrets = if inherits(CONSUMER_SECRET_INPUT) || inherits(PRIVATE_KEY_INPUT) {
            self.definition_secrets(def).await?
        } else {
            BTreeMap::new()
        };
        Ok(Sources { def, c, own_secrets, def_secrets })
    }

    /// Resolves the OAuth 1.0a settings of a connection: its own values over the definition's
    /// app settings as they are now (a rotated consumer secret reaches every connection).
    ///
    /// # Errors
    /// `Invalid` naming each missing or bad `values.*` (an endpoint, the consumer key, the
    /// consumer secret of an HMAC or PLAINTEXT consumer, the RSA key of an RSA-SHA1 one).
    pub(crate) async fn oauth1_settings(&self, def: &Definition, c: &Connection) -> Result<Oauth1Settings> {
        let own_secrets = self.open_secrets(c).await?;
        let sources = self.oauth1_sources(def, c, &own_secrets).await?;
        let mut errors = Vec::new();
        let url = |name: &str, errors: &mut Vec<FieldError>| -> Option<url::Url> {
            let Some(raw) = sources.text(name) else {
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
        let stored = sources.consumer(&mut errors);
        let signing = stored.as_ref().and_then(|s| match (s.method, &s.private_key) {
            (SignatureMethod::HmacSha1, _) => Some(Signing::HmacSha1),
            (SignatureMethod::HmacSha256, _) => Some(Signing::HmacSha256),
            (SignatureMethod::Plaintext, _) => Some(Signing::Plaintext),
            (SignatureMethod::RsaSha1, pem) => rsa_signing_key(pem.as_ref()?.expose_secret())
                .map(|key| Signing::RsaSha1(Box::new(key)))
                .map_err(|m| errors.push(FieldError::new(format!("values.{PRIVATE_KEY_INPUT}"), m)))
                .ok(),
        });
        let (Some(request_token), Some(authorize), Some(access_token), Some(stored), Some(signing), true) =
            (request_token, authorize, access_token, stored, signing, errors.is_empty())
        else {
            return Err(ServiceError::Invalid(errors));
        };
        let consumer = Consumer { key: stored.key, secret: stored.secret, signing };
        Ok(Oauth1Settings { request_token, authorize, access_token, consumer })
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
        // The pending authorization is the one of this request token (found by it, but checked
        // here, where its secret is used).
        if state_hash(token) != st.hash {
            return Err(AuthorizationFailure::new("invalid_request", "the oauth_token is not this authorization's"));
        }
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
    /// signing credentials ([`Oauth1Credentials`]). `own_secrets` are `c`'s secret values, opened
    /// by the caller (who hands the others out too). One read of the definition (the consumer
    /// settings `c` inherits, its secrets opened only then); the RSA key goes out as stored.
    ///
    /// # Errors
    /// `Unusable(Pending)` without tokens; `Invalid` when the consumer settings became
    /// incomplete; those of the store and the key service.
    pub(crate) async fn oauth1_lookup(
        &self,
        c: &Connection,
        own_secrets: &BTreeMap<String, SecretString>,
    ) -> Result<(String, Oauth1Credentials)> {
        let opened = self.open_tokens(c).await?.ok_or(ServiceError::Unusable(Unusable::Pending))?;
        let def = self.definition_of(c).await?;
        let mut errors = Vec::new();
        let stored = self.oauth1_sources(&def, c, own_secrets).await?.consumer(&mut errors);
        let Some(stored) = stored.filter(|_| errors.is_empty()) else {
            return Err(ServiceError::Invalid(errors));
        };
        let credentials = Oauth1Credentials {
            consumer_key: stored.key,
            consumer_secret: stored.secret,
            token: SecretString::from(opened.access_token.clone()),
            token_secret: SecretString::from(opened.token_secret.unwrap_or_default()),
            signature_method: stored.method.name(),
            private_key: stored.private_key,
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
