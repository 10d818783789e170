//! OAuth 2.0: the authorize step, the callback (state, `iss`, code exchange with the `oauth2`
//! crate), client-credentials tokens, and the provider quirks of token responses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    TokenResponse, TokenUrl,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Result, Service, ServiceError};
use crate::catalog::{self, CaptureSource, Provider};
use crate::crypto::EncryptionContext;
use crate::domain::validate::{check_secure_url, is_loopback_host};
use crate::domain::{
    AuthKind, Connection, Definition, Event, EventType, FieldError, LogType, OAuthState, OAuthTokens, Principal, Status,
};
use crate::ports::StoreError;

/// How long an authorize URL (its state) stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// The largest `expires_in` taken at its word (ten years).
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 86_400;
/// The callback path under `LATCHKEY_PUBLIC_URL`.
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";
/// The input naming the expected RFC 9207 issuer of OAuth definitions.
pub const ISSUER_INPUT: &str = "issuer";

/// The HTTP client of every provider call: built once, redirects never followed (a token
/// endpoint that redirects is refused rather than followed with credentials), bounded time.
pub fn provider_http_client() -> reqwest::Client {
    provider_client_builder().build().expect("the provider HTTP client builds with static settings")
}

fn provider_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
}

/// `Retry-After` in its seconds form (the HTTP-date form is not honoured: the backoff applies).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A token response read leniently: `expires_in` as a number or a string, the access token at
/// the top level or one object down (Slack's `authed_user`), `token_type` defaulting to bearer.
/// The raw object is kept for captured values; `Debug` never prints a token.
#[derive(Serialize)]
pub struct FlexTokenResponse {
    #[serde(skip)]
    access_token: AccessToken,
    #[serde(skip)]
    token_type: BasicTokenType,
    #[serde(skip)]
    expires_in: Option<u64>,
    #[serde(skip)]
    refresh_token: Option<RefreshToken>,
    #[serde(skip)]
    scopes: Option<Vec<Scope>>,
    #[serde(skip)]
    raw: Map<String, Value>,
}

impl std::fmt::Debug for FlexTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlexTokenResponse").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The value at a dotted path (`authed_user.access_token`).
fn at_path<'a>(raw: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = raw.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

impl<'de> Deserialize<'de> for FlexTokenResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = Map::<String, Value>::deserialize(d)?;
        // The object holding the token: the response itself, or the first child that has one.
        let holder = if raw.get("access_token").is_some_and(Value::is_string) {
            &raw
        } else {
            raw.values()
                .filter_map(Value::as_object)
                .find(|o| o.get("access_token").is_some_and(Value::is_string))
                .ok_or_else(|| serde::de::Error::custom("the token response has no access_token"))?
        };
        let text = |k: &str| holder.get(k).and_then(Value::as_str).or_else(|| raw.get(k).and_then(Value::as_str));
        let access_token = AccessToken::new(text("access_token").unwrap_or_default().to_owned());
        let token_type = text("token_type")
            .and_then(|t| serde_json::from_value(Value::String(t.to_ascii_lowercase())).ok())
            .unwrap_or(BasicTokenType::Bearer);
        // Beyond ten years is no expiry worth scheduling (and must not overflow a date).
        let expires_in = holder
            .get("expires_in")
            .or_else(|| raw.get("expires_in"))
            .and_then(lenient_u64)
            .filter(|s| *s <= MAX_EXPIRES_IN_SECS);
        let refresh_token = text("refresh_token").filter(|r| !r.is_empty()).map(|r| RefreshToken::new(r.to_owned()));
        let scopes = text("scope")
            .map(|s| s.split([' ', ',']).filter(|s| !s.is_empty()).map(|s| Scope::new(s.to_owned())).collect());
        let raw = raw.clone();
        Ok(Self { access_token, token_type, expires_in, refresh_token, scopes, raw })
    }
}

impl TokenResponse for FlexTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

type OAuthClient<HasAuthUrl> = oauth2::Client<
    BasicErrorResponse,
    FlexTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A connection's effective OAuth settings: its values over the definition's catalog provider.
pub(crate) struct Settings {
    authorize_url: Option<url::Url>,
    token_url: url::Url,
    client_id: String,
    client_secret: Option<SecretString>,
    post_auth: bool,
    pkce: bool,
    scopes: Vec<String>,
    separator: String,
    params: BTreeMap<String, String>,
    issuer: Option<String>,
    provider: Option<&'static Provider>,
    /// The token URL came from a customer: call it through the public-only resolver.
    customer_token_url: bool,
    /// The RFC 7009 endpoint, and whether it came from a customer.
    pub(crate) revoke_url: Option<(url::Url, bool)>,
}

impl Settings {
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn client_secret(&self) -> Option<&SecretString> {
        self.client_secret.as_ref()
    }

    pub(crate) fn post_auth(&self) -> bool {
        self.post_auth
    }

    /// The `scope` parameter: the scopes joined with the provider's separator.
    pub(crate) fn scope_param(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(&self.separator))
    }

    pub(crate) fn client(&self) -> OAuthClient<EndpointNotSet> {
        let mut client = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            .set_auth_type(if self.post_auth { AuthType::RequestBody } else { AuthType::BasicAuth });
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        client
    }
}

/// A host label a customer may put into a provider URL (`{shop}`): letters, digits, hyphens.
fn valid_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn ip_is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // Addresses that embed an IPv4 one are judged by it: mapped, compatible (::a.b.c.d),
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            let embedded = v6
                .to_ipv4_mapped()
                .or_else(|| {
                    (seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
                        .then(|| v6.to_ipv4().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))
                })
                .or_else(|| {
                    (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0; 4]).then(|| {
                        let o = v6.octets();
                        std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])
                    })
                })
                .or_else(|| {
                    (seg[0] == 0x2002).then(|| {
                        let o = v6.octets();
                        std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5])
                    })
                });
            match embedded {
                Some(v4) => ip_is_public(IpAddr::V4(v4)),
                None => {
                    !(v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_multicast()
                        || (seg[0] & 0xfe00) == 0xfc00
                        || (seg[0] & 0xffc0) == 0xfe80)
                }
            }
        }
    }
}

/// DNS for provider URLs that came from a customer: only public addresses are ever connected
/// to, so the address checked is the address used (no DNS rebinding between check and call).
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| ip_is_public(a.ip())).collect();
            if addrs.is_empty() {
                return Err("the host has no public address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The provider client for URLs that came from a customer: [`provider_http_client`] that only
/// resolves hosts to public addresses.
pub fn public_only_http_client() -> reqwest::Client {
    provider_client_builder()
        .dns_resolver(std::sync::Arc::new(PublicOnlyResolver))
        .build()
        .expect("the provider HTTP client builds with static settings")
}

/// A URL built from a customer's input must not reach into private networks (SSRF): every
/// address its host resolves to must be public. Loopback written literally is the one
/// exception, where allowed (local development and tests; off by default on AWS).
pub async fn check_public_destination(url: &url::Url, allow_loopback: bool) -> std::result::Result<(), &'static str> {
    if is_loopback_host(url) {
        return if allow_loopback { Ok(()) } else { Err("is a loopback address") };
    }
    let host = url.host_str().ok_or("has no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|_| "does not resolve")?;
    let mut any = false;
    for a in addrs {
        any = true;
        if !ip_is_public(a.ip()) {
            return Err("resolves to a private, loopback or link-local address");
        }
    }
    if any { Ok(()) } else { Err("does not resolve") }
}

/// `error` codes as RFC 6749 spells them; anything else becomes `server_error`.
fn oauth_error_code(raw: &str) -> String {
    if !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        raw.to_owned()
    } else {
        "server_error".to_owned()
    }
}

/// A provider's `error_description`, kept printable and short before it is echoed.
fn safe_description(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(200).collect()
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of a state: what is stored, so a store dump reveals no usable state.
pub fn state_hash(state: &str) -> String {
    Sha256::digest(state.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a provider's HTTP answer said besides its body.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Answer {
    pub status: Option<u16>,
    /// `Retry-After` in seconds (the HTTP-date form is not honoured: the backoff applies).
    pub retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request to the provider failed")]
pub struct ProviderHttpError(#[source] Option<reqwest::Error>);

/// The provider HTTP client as the `oauth2` crate calls it, recording the status and
/// `Retry-After` of the answer (the crate's errors do not carry them).
pub(crate) struct ProviderHttp {
    client: reqwest::Client,
    answer: std::sync::Arc<std::sync::Mutex<Answer>>,
}

impl ProviderHttp {
    /// What the last answer said.
    pub(crate) fn answer(&self) -> Answer {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderHttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = std::result::Result<oauth2::HttpResponse, ProviderHttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|e| ProviderHttpError(Some(e)))?;
            let response = self.client.execute(request).await.map_err(|e| ProviderHttpError(Some(e)))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            *self.answer.lock().unwrap_or_else(|p| p.into_inner()) =
                Answer { status: Some(status.as_u16()), retry_after };
            let mut builder = oauth2::http::Response::builder().status(status.as_u16());
            for (k, v) in response.headers() {
                builder = builder.header(k.as_str(), v.as_bytes());
            }
            let body = response.bytes().await.map_err(|e| ProviderHttpError(Some(e)))?;
            builder.body(body.to_vec()).map_err(|_| ProviderHttpError(None))
        })
    }
}

/// Why a token request failed, for logs, redirects and status.
#[derive(Debug, Clone)]
pub(crate) struct TokenFailure {
    /// The provider's `error` (`invalid_grant`), or `temporarily_unavailable` / `server_error`.
    pub code: String,
    /// True for refusals that will not go away by retrying (`invalid_grant`, `invalid_client`...).
    pub permanent: bool,
    pub retry_after: Option<Duration>,
}

/// Classifies a failed token request: 429, 5xx, timeouts and unreadable answers are transient
/// whatever their body says; an OAuth error from a 4xx is a refusal.
pub(crate) fn classify<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>>,
    answer: Answer,
) -> TokenFailure {
    let busy = answer.status.is_some_and(|s| s == 429 || s >= 500);
    let (code, permanent) = match e {
        RequestTokenError::ServerResponse(r) if !busy => {
            let code = oauth_error_code(r.error().as_ref());
            let permanent = code != "temporarily_unavailable" && code != "server_error";
            (code, permanent)
        }
        RequestTokenError::ServerResponse(_) | RequestTokenError::Request(_) => {
            ("temporarily_unavailable".into(), false)
        }
        // The body is never logged: it could hold a token.
        RequestTokenError::Parse(..) | RequestTokenError::Other(_) if busy => ("temporarily_unavailable".into(), false),
        RequestTokenError::Parse(..) | RequestTokenError::Other(_) => ("server_error".into(), false),
    };
    TokenFailure { code, permanent, retry_after: answer.retry_after }
}

/// What authorize answers.
#[derive(Debug, Serialize)]
pub struct AuthorizeResponse {
    pub authorize_url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Where the callback sends the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    Redirect(String),
    /// No redirect configured (or nothing to redirect for): a small page.
    Page {
        status: u16,
        title: &'static str,
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct TokenSecrets {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

impl Service {
    /// The provider client for one call to `settings`' token endpoint (it records the answer's
    /// status and Retry-After); customer-supplied endpoints go through the public-only resolver.
    pub(crate) fn provider_http(&self, settings: &Settings) -> ProviderHttp {
        let client = if settings.customer_token_url { &self.http_public } else { &self.http };
        ProviderHttp { client: client.clone(), answer: Default::default() }
    }

    /// Whether customer-supplied provider URLs may name loopback (local development, tests).
    pub fn allow_loopback_providers(&self) -> bool {
        self.allow_loopback.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_allow_loopback_providers(&self, allow: bool) {
        self.allow_loopback.store(allow, std::sync::atomic::Ordering::Relaxed);
    }

    /// The OAuth redirect URI, `{LATCHKEY_PUBLIC_URL}/v1/oauth/callback`.
    pub fn redirect_uri(&self) -> Option<String> {
        self.public_url.get().map(|u| format!("{}{CALLBACK_PATH}", u.trim_end_matches('/')))
    }

    /// Sets the public base URL once (at start, when the listening address is known).
    pub fn set_public_url(&self, url: &str) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_owned());
    }

    /// Resolves the OAuth settings of a connection.
    pub(crate) async fn oauth_settings(
        &self,
        def: &Definition,
        c: &Connection,
        secrets: &BTreeMap<String, SecretString>,
    ) -> Result<Settings> {
        let provider = def.provider.as_deref().and_then(catalog::provider);
        let text = |name: &str| c.values.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let customer_set = |name: &str| def.inputs.get(name).is_some_and(|i| i.visibility.customer_can_set());
        let mut errors = Vec::new();

        // Placeholders of per-tenant provider URLs, filled from the connection's inputs.
        let fill = |template: &str, errors: &mut Vec<FieldError>| -> Option<String> {
            let mut url = template.to_owned();
            for p in provider.map(|p| p.url_params.as_slice()).unwrap_or_default() {
                match text(p) {
                    Some(v) if valid_label(v) => url = url.replace(&format!("{{{p}}}"), v),
                    _ => {
                        errors
                            .push(FieldError::new(format!("values.{p}"), "must be a host label (letters, digits, -)"));
                        return None;
                    }
                }
            }
            Some(url)
        };
        let endpoint =
            |name: &str, from_provider: Option<&str>, errors: &mut Vec<FieldError>| -> Option<(url::Url, bool)> {
                let (raw, customer) = match (text(name), from_provider) {
                    (Some(v), _) => (v.to_owned(), customer_set(name)),
                    (None, Some(t)) => (fill(t, errors)?, provider.is_some_and(|p| !p.url_params.is_empty())),
                    (None, None) => return None,
                };
                match check_secure_url(&raw) {
                    Ok(u) => Some((u, customer)),
                    Err(msg) => {
                        errors.push(FieldError::new(format!("values.{name}"), msg));
                        None
                    }
                }
            };
        let authorize = endpoint("authorizeUrl", provider.and_then(|p| p.authorize_url.as_deref()), &mut errors);
        let token = endpoint("tokenUrl", provider.map(|p| p.token_url.as_str()), &mut errors);
        let revoke = endpoint("revokeUrl", provider.and_then(|p| p.revoke_url.as_deref()), &mut errors);
        for (name, found) in [("authorizeUrl", &authorize), ("tokenUrl", &token), ("revokeUrl", &revoke)] {
            if let Some((url, true)) = found
                && let Err(msg) = check_public_destination(url, self.allow_loopback_providers()).await
            {
                errors.push(FieldError::new(format!("values.{name}"), msg));
            }
        }
        let customer_token_url = token.as_ref().is_some_and(|(u, customer)| *customer && !is_loopback_host(u));
        if token.is_none() && !errors.iter().any(|e| e.field == "values.tokenUrl") {
            errors.push(FieldError::new("values.tokenUrl", "is required for OAuth"));
        }
        if def.auth == AuthKind::Oauth2AuthorizationCode
            && authorize.is_none()
            && !errors.iter().any(|e| e.field == "values.authorizeUrl")
        {
            errors.push(FieldError::new("values.authorizeUrl", "is required for OAuth"));
        }
        let client_id = text("clientId").map(str::to_owned);
        if client_id.is_none() {
            errors.push(FieldError::new("values.clientId", "is required for OAuth"));
        }
        let (Some((token_url, _)), Some(client_id), true) = (token, client_id, errors.is_empty()) else {
            return Err(ServiceError::Invalid(errors));
        };
        let separator = provider.map_or(" ".to_owned(), |p| p.scope_separator.clone());
        let scopes = text("scopes")
            .map(|s| s.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Settings {
            authorize_url: authorize.map(|(u, _)| u),
            token_url,
            client_id,
            client_secret: secrets.get("clientSecret").cloned(),
            post_auth: text("clientAuth") == Some("client_secret_post"),
            pkce: c.values.get("pkce").and_then(Value::as_bool).unwrap_or(true),
            scopes,
            separator,
            params: provider.map(|p| p.authorize_params.clone()).unwrap_or_default(),
            issuer: text(ISSUER_INPUT).map(str::to_owned),
            provider,
            customer_token_url,
            revoke_url: revoke.map(|(u, customer)| {
                let public_only = customer && !is_loopback_host(&u);
                (u, public_only)
            }),
        })
    }

    /// `POST /v1/connections/{id}/authorize`: a single-use authorize URL for the browser.
    pub async fn authorize(&self, p: &Principal, id: &str) -> Result<AuthorizeResponse> {
        let c = self.visible_connection(p, id).await?;
        super::connections::require_manage(p, &c)?;
        let def = self.definition_of(&c).await?;
        if def.auth != AuthKind::Oauth2AuthorizationCode {
            return Err(ServiceError::Conflict("only oauth2_authorization_code connections are authorized"));
        }
        let redirect_uri = self
            .redirect_uri()
            .ok_or(ServiceError::Conflict("LATCHKEY_PUBLIC_URL is not configured: no OAuth redirect URI"))?;
        let secrets = self.open_secrets(&c).await?;
        let settings = self.oauth_settings(&def, &c, &secrets).await?;
        let auth_url = settings.authorize_url.clone().ok_or(ServiceError::Conflict("no authorize URL"))?;

        let state = random_token();
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let client = settings.client().set_auth_uri(AuthUrl::from_url(auth_url)).set_redirect_uri(
            RedirectUrl::new(redirect_uri.clone()).map_err(|_| ServiceError::Conflict("bad redirect URI"))?,
        );
        let mut request = client.authorize_url(|| CsrfToken::new(state.clone()));
        if !settings.scopes.is_empty() {
            request = request.add_extra_param("scope", settings.scopes.join(&settings.separator));
        }
        for (k, v) in &settings.params {
            request = request.add_extra_param(k.clone(), v.clone());
        }
        let verifier = if settings.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            let secret = SecretString::from(verifier.secret().clone());
            Some(self.envelope.seal_str(&ctx, &secret).await?)
        } else {
            None
        };
        let (url, _) = request.url();
        let now = self.clock.now();
        let expires_at = now + STATE_TTL;
        let record = OAuthState {
            hash: state_hash(&state),
            org: c.org.clone(),
            connection_id: c.id.clone(),
            verifier,
            redirect_uri,
            issuer: settings.issuer,
            expires_at,
            generation: c.generation,
        };
        self.store.put_oauth_state(&record).await?;
        self.log(&c, LogType::AuthorizeStarted, "authorization started").await;
        Ok(AuthorizeResponse { authorize_url: url.to_string(), expires_at })
    }

    /// `GET /v1/oauth/callback`: never fails; every outcome is a redirect or a page.
    pub async fn callback(&self, params: &BTreeMap<String, String>) -> CallbackOutcome {
        let page = |status: u16, title: &'static str, message: &str| CallbackOutcome::Page {
            status,
            title,
            message: message.to_owned(),
        };
        let Some(state) = params.get("state").filter(|s| !s.is_empty()) else {
            return page(400, "Authorization failed", "The authorization response has no state.");
        };
        let taken = match self.store.take_oauth_state(&state_hash(state), self.clock.now()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "reading an OAuth state failed");
                return page(500, "Authorization failed", "Something went wrong; please try again.");
            }
        };
        let Some(st) = taken else {
            tracing::warn!("OAuth callback with an unknown, expired or already used state");
            return page(
                400,
                "Authorization failed",
                "This authorization link is invalid, expired or was already used.",
            );
        };
        let loaded = async {
            let c = self.store.get_connection(&st.org, &st.connection_id).await?.ok_or(ServiceError::NotFound)?;
            let def = self.definition_of(&c).await?;
            Ok::<_, ServiceError>((c, def))
        };
        let (c, def) = match loaded.await {
            Ok(found) => found,
            Err(_) => return page(400, "Authorization failed", "The connection no longer exists."),
        };
        match self.complete_authorization(&st, &c, &def, params).await {
            Ok(done) => {
                let target = def.redirects.as_ref().and_then(|r| r.success_url.as_deref());
                match target.and_then(|u| url::Url::parse(u).ok()) {
                    Some(mut u) => {
                        {
                            let mut q = u.query_pairs_mut();
                            q.append_pair("connection_id", done.id.as_str());
                            q.append_pair("definition", done.definition.as_str());
                            q.append_pair("customer", done.customer.as_ref().map_or("", |c| c.as_str()));
                            q.append_pair("instance_id", done.instance_id.as_ref().map_or("", |i| i.as_str()));
                        }
                        CallbackOutcome::Redirect(u.to_string())
                    }
                    None => page(200, "Connected", "The connection is authorized. You can close this window."),
                }
            }
            Err((code, description)) => {
                self.log(&c, LogType::AuthorizeFailed, format!("authorization failed: {code}")).await;
                let target = def.redirects.as_ref().and_then(|r| r.failure_url.as_deref());
                match target.and_then(|u| url::Url::parse(u).ok()) {
                    Some(mut u) => {
                        u.query_pairs_mut().append_pair("error", &code).append_pair("error_description", &description);
                        CallbackOutcome::Redirect(u.to_string())
                    }
                    None => page(400, "Authorization failed", &format!("{code}: {description}")),
                }
            }
        }
    }

    /// Checks the response, exchanges the code and stores the tokens; on failure the OAuth
    /// `(error, error_description)` to report.
    async fn complete_authorization(
        &self,
        st: &OAuthState,
        c: &Connection,
        def: &Definition,
        params: &BTreeMap<String, String>,
    ) -> std::result::Result<Connection, (String, String)> {
        let internal = || ("server_error".to_owned(), "Latchkey could not complete the authorization".to_owned());
        if c.generation != st.generation {
            return Err((
                "access_denied".into(),
                "the connection was disconnected after this authorization began".into(),
            ));
        }
        if let Some(error) = params.get("error") {
            let description = params.get("error_description").map_or_else(String::new, |d| safe_description(d));
            return Err((oauth_error_code(error), description));
        }
        // RFC 9207: with a known issuer, the response must name it (a missing `iss` could be a
        // mix-up attack stripping it).
        if let Some(expected) = &st.issuer
            && params.get("iss").is_none_or(|got| expected.trim_end_matches('/') != got.trim_end_matches('/'))
        {
            return Err(("invalid_request".into(), "the authorization response came from an unexpected issuer".into()));
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ("invalid_request".to_owned(), "the authorization response has no code".to_owned()))?;
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let verifier = match &st.verifier {
            Some(sealed) => Some(self.envelope.open_str(&ctx, sealed).await.map_err(|_| internal())?),
            None => None,
        };
        let secrets = self.open_secrets(c).await.map_err(|_| internal())?;
        let settings = self
            .oauth_settings(def, c, &secrets)
            .await
            .map_err(|_| ("invalid_request".to_owned(), "the connection's OAuth settings are incomplete".to_owned()))?;
        let redirect = RedirectUrl::new(st.redirect_uri.clone()).map_err(|_| internal())?;
        let client = settings.client().set_redirect_uri(redirect);
        let mut exchange = client.exchange_code(AuthorizationCode::new(code.clone()));
        if let Some(v) = &verifier {
            exchange = exchange.set_pkce_verifier(PkceCodeVerifier::new(v.expose_secret().to_owned()));
        }
        let http = self.provider_http(&settings);
        let response = exchange.request_async(&http).await.map_err(|e| {
            let f = classify(&e, http.answer());
            (f.code, "the provider refused the authorization code".to_owned())
        })?;
        let callback_values: BTreeMap<String, Value> = settings
            .provider
            .map(|p| p.captured.iter())
            .into_iter()
            .flatten()
            .filter(|cap| cap.from == CaptureSource::Callback)
            .filter_map(|cap| Some((cap.name.clone(), Value::from(params.get(&cap.key)?.clone()))))
            .collect();
        let done = self
            .store_tokens(c, &settings, &response, callback_values, Status::Configured)
            .await
            .map_err(|_| internal())?;
        let scopes = done.oauth.as_ref().map(|o| o.scopes.join(" ")).unwrap_or_default();
        self.log(&done, LogType::Authorized, format!("authorized (scopes: {scopes})")).await;
        self.emit(Event::about(EventType::ConnectionAuthorized, &done)).await;
        Ok(done)
    }

    /// Seals a token response onto the connection with its metadata and captured values, and
    /// sets `status`: a conditional write, redone on the latest version if another write won
    /// (a new authorization or client-credentials token supersedes whatever was there).
    pub(crate) async fn store_tokens(
        &self,
        c: &Connection,
        settings: &Settings,
        response: &FlexTokenResponse,
        captured: BTreeMap<String, Value>,
        status: Status,
    ) -> Result<Connection> {
        let (tokens, captured) = self.seal_token_response(c, settings, response, captured, None).await?;
        let mut current = c.clone();
        for _ in 0..5 {
            if current.generation != c.generation {
                // Disconnected while the code was being exchanged: the new tokens are revoked.
                self.revoke_orphaned(&current, tokens).await;
                return Err(ServiceError::Unusable(super::Unusable::Disconnected));
            }
            let next = self.with_tokens(&current, tokens.clone(), &captured, status);
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) => match self.store.get_connection(&c.org, &c.id).await? {
                    Some(latest) => current = latest,
                    None => {
                        self.revoke_orphaned(c, tokens).await;
                        return Err(ServiceError::NotFound);
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict("the connection is being changed concurrently; retry"))
    }

    /// `c` with new tokens: status set, error and lease cleared, due time recomputed.
    pub(crate) fn with_tokens(
        &self,
        c: &Connection,
        tokens: OAuthTokens,
        captured: &BTreeMap<String, Value>,
        status: Status,
    ) -> Connection {
        let mut next = c.clone();
        next.refresh = crate::domain::RefreshState {
            due_at: self.due_at(&tokens),
            day: c.refresh.day,
            attempts_today: c.refresh.attempts_today,
            ..Default::default()
        };
        next.oauth = Some(tokens);
        next.captured.extend(captured.clone());
        next.status = status;
        next.error = None;
        next.version = c.version + 1;
        next.updated_at = self.clock.now();
        next
    }

    /// Seals a token response: the access token (at the provider's path), the refresh token (or
    /// `keep` = the previous one, when the response has none and `keep` is given), and the
    /// metadata; returns it with the values captured from the response added to `captured`.
    pub(crate) async fn seal_token_response(
        &self,
        c: &Connection,
        settings: &Settings,
        response: &FlexTokenResponse,
        mut captured: BTreeMap<String, Value>,
        keep: Option<(&OAuthTokens, Option<String>)>,
    ) -> Result<(OAuthTokens, BTreeMap<String, Value>)> {
        let provider = settings.provider;
        let access = provider
            .and_then(|p| p.token_response.access_token_path.as_deref())
            .and_then(|path| at_path(&response.raw, path))
            .and_then(Value::as_str)
            .map_or_else(|| response.access_token().secret().clone(), str::to_owned);
        let from_response = provider.map(|p| p.captured.as_slice()).unwrap_or_default();
        for cap in from_response.iter().filter(|cap| cap.from == CaptureSource::TokenResponse) {
            if let Some(v) =
                at_path(&response.raw, &cap.key).filter(|v| v.is_string() || v.is_number() || v.is_boolean())
            {
                captured.insert(cap.name.clone(), v.clone());
            }
        }
        let now = self.clock.now();
        let buffer = Duration::from_secs(provider.map_or(0, |p| p.expiry_buffer_secs));
        let expires_at = response
            .expires_in()
            .and_then(|d| time::Duration::try_from(d.saturating_sub(buffer.min(d / 2))).ok())
            .and_then(|d| now.checked_add(d));
        // A response without `scope` keeps what was granted before (RFC 6749 section 5.1).
        let scopes = response.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()).unwrap_or_else(|| {
            keep.as_ref().map_or_else(|| settings.scopes.clone(), |(previous, _)| previous.scopes.clone())
        });
        let token_type = match response.token_type() {
            BasicTokenType::Bearer => "Bearer".to_owned(),
            BasicTokenType::Mac => "MAC".to_owned(),
            BasicTokenType::Extension(e) => e.clone(),
        };
        // A new refresh token replaces the old one; none keeps the old one.
        let refresh = response
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| keep.as_ref().and_then(|(_, old)| old.clone()));
        let secrets = TokenSecrets { access_token: access, refresh_token: refresh.clone() };
        let json = SecretString::from(serde_json::to_string(&secrets).map_err(|_| ServiceError::Conflict("token"))?);
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let sealed = self.envelope.seal_str(&ctx, &json).await?;
        let tokens = OAuthTokens {
            sealed,
            token_type,
            expires_at,
            scopes,
            has_refresh_token: refresh.is_some(),
            obtained_at: now,
        };
        Ok((tokens, captured))
    }

    /// The unsealed access token of `c`.
    pub(crate) async fn open_access_token(&self, c: &Connection) -> Result<Option<SecretString>> {
        Ok(self.open_tokens(c).await?.map(|(access, _)| access))
    }

    /// The unsealed access and refresh tokens of `c`.
    pub(crate) async fn open_tokens(&self, c: &Connection) -> Result<Option<(SecretString, Option<String>)>> {
        let Some(tokens) = &c.oauth else {
            return Ok(None);
        };
        let json = self.envelope.open_str(&EncryptionContext::connection(&c.org, &c.id), &tokens.sealed).await?;
        let secrets: TokenSecrets = serde_json::from_str(json.expose_secret())
            .map_err(|_| ServiceError::Crypto(crate::crypto::CryptoError::Decrypt))?;
        Ok(Some((SecretString::from(secrets.access_token), secrets.refresh_token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> FlexTokenResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn token_responses_are_read_with_their_quirks() {
        let std = parse(
            serde_json::json!({"access_token": "a", "token_type": "bearer", "expires_in": 3600, "refresh_token": "r", "scope": "x y"}),
        );
        assert_eq!(std.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(std.refresh_token().map(|r| r.secret().as_str()), Some("r"));
        assert_eq!(std.scopes().map(Vec::len), Some(2));
        let string = parse(serde_json::json!({"access_token": "a", "expires_in": "7200"}));
        assert_eq!(string.expires_in(), Some(Duration::from_secs(7200)));
        assert_eq!(*string.token_type(), BasicTokenType::Bearer);
        let slack = parse(serde_json::json!({"ok": true, "authed_user": {"access_token": "xoxp", "scope": "a,b"}}));
        assert_eq!(slack.access_token().secret(), "xoxp");
        assert_eq!(slack.scopes().map(Vec::len), Some(2));
        let never = parse(serde_json::json!({"access_token": "a"}));
        assert_eq!(never.expires_in(), None);
        assert!(serde_json::from_value::<FlexTokenResponse>(serde_json::json!({"error": "x"})).is_err());
        assert!(!format!("{slack:?}").contains("xoxp"), "Debug never shows a token");
    }

    #[test]
    fn private_destinations_are_not_public() {
        for ip in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!ip_is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(ip_is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn provider_errors_are_reduced_to_safe_codes() {
        assert_eq!(oauth_error_code("access_denied"), "access_denied");
        assert_eq!(oauth_error_code("<script>"), "server_error");
        assert_eq!(safe_description("bad\nthing<>"), "badthing<>");
        assert!(valid_label("my-shop") && !valid_label("evil.com/x") && !valid_label("-x"));
    }
}
