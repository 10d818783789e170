//! The callback (RFC 6749 section 4.1.2): the state taken once, the RFC 9207 issuer checked,
//! the code exchanged (section 4.1.3), the answer read by [`crate::provider::answer`], the
//! tokens stored, and the browser sent on.

use std::collections::BTreeMap;

use serde_json::Value;

use super::super::{Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::connect::{SESSION_COOKIE_PREFIX, hash_matches};
use crate::domain::{
    BrowserBinding, ConnectContext, Connection, Definition, Event, EventType, LogType, OAuthState, Redirects, Refusal,
    Status, provider_code,
};
use crate::provider::TokenFailure;
use crate::provider::request::GrantRequest;

/// Where the callback sends the browser.
#[derive(Debug)]
pub enum CallbackOutcome {
    Redirect(String),
    /// No redirect configured (or nothing to redirect for): a small page.
    Page {
        status: u16,
        title: &'static str,
        message: String,
    },
}

/// Why an authorization did not complete, as the failure redirect reports it (RFC 6749
/// section 4.1.2.1): `error` is the provider's code (reduced) or Latchkey's, never free text.
#[derive(Debug)]
pub(super) struct AuthorizationFailure {
    error: String,
    description: String,
}

impl AuthorizationFailure {
    pub(super) fn new(error: impl Into<String>, description: impl Into<String>) -> Self {
        Self { error: error.into(), description: description.into() }
    }

    pub(super) fn internal() -> Self {
        Self::new("server_error", "Latchkey could not complete the authorization")
    }

    /// A failed code exchange: the provider's refusal code, or what went wrong.
    fn exchange(f: &TokenFailure) -> Self {
        match f {
            // Never the token endpoint's own text: it could echo what it was sent (the code,
            // the verifier, the client secret).
            TokenFailure::Refused { .. } => Self::new(f.code(), "the provider refused the authorization code"),
            TokenFailure::Transient { code, .. } => {
                Self::new("temporarily_unavailable", format!("the provider is unavailable ({code}); try again"))
            }
            TokenFailure::Unreadable { code: "invalid_token_response", .. } => Self::new(
                "invalid_token_response",
                "the provider's answer has no access token where the definition says it is",
            ),
            TokenFailure::Forbidden { why } => Self::new(
                "server_error",
                format!("the token endpoint is not allowed: it {why}; the organization must fix the definition"),
            ),
            TokenFailure::Unreadable { status, .. } => {
                Self::new("server_error", format!("could not read the provider's answer (HTTP {status})"))
            }
        }
    }
}

/// The longest `error_description` passed on to the failure redirect.
const MAX_DESCRIPTION: usize = 120;

/// A provider's `error_description`, reduced before it is echoed to the organization's failure
/// URL: letters, digits, spaces and `.,:;'()_-` only (no markup, no URL), white space folded,
/// at most [`MAX_DESCRIPTION`] characters. Whoever sent the browser here controls it.
fn safe_description(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || " .,:;'()_-".contains(*c))
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_DESCRIPTION).collect()
}

fn page(status: u16, title: &'static str, message: &str) -> CallbackOutcome {
    CallbackOutcome::Page { status, title, message: message.to_owned() }
}

/// Where a callback of a connect page's authorization goes: that session's redirects and
/// context when it is still there, and its page when no redirect is set (while the session
/// lasts: an expired one's page only says the link is no longer valid).
struct PageReturn {
    session: String,
    /// Whether the session was still there (not expired) at the callback.
    live: bool,
    /// `{public_url}` of the authorization (its redirect URI without the callback path).
    base: String,
    redirects: Option<Redirects>,
    context: ConnectContext,
}

impl PageReturn {
    /// `{base}/connect/{session}?{pairs}`.
    fn page(&self, pairs: &[(&str, &str)]) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        format!("{}/connect/{}?{query}", self.base, self.session)
    }
}

/// `url` with the query parameters `pairs` appended.
fn with_params(mut url: url::Url, pairs: &[(&str, &str)]) -> String {
    url.query_pairs_mut().extend_pairs(pairs);
    url.to_string()
}

impl Service {
    /// `GET /v1/oauth/callback`: never fails; every outcome is a redirect or a page. `cookies`
    /// are the request's (name to value): an authorization started from the connect page needs
    /// that page's session cookie, or it is refused and nothing about the connection changes.
    pub async fn callback(
        &self,
        params: &BTreeMap<String, String>,
        cookies: &BTreeMap<String, String>,
    ) -> CallbackOutcome {
        let nonempty = |name: &str| params.get(name).filter(|s| !s.is_empty());
        // OAuth 1.0a (RFC 5849 section 2.2) sends no state back: the pending authorization is
        // found by its request token (`oauth_token`; X's refusal names it `denied`).
        let Some(state) = nonempty("state").or_else(|| nonempty("oauth_token")).or_else(|| nonempty("denied")) else {
            return page(400, "Authorization failed", "The authorization response has no state.");
        };
        let taken = match self.store.take_oauth_state(&super::state_hash(state), self.clock.now()).await {
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
        // A bound state needs only its browser's cookie, which outlives the session by the
        // state's lifetime: an authorization started in the session's last minutes completes
        // even if the session expires meanwhile. A refused state stays taken (used once).
        if let Some(binding) = &st.browser {
            let cookie = cookies.get(&format!("{SESSION_COOKIE_PREFIX}{}", binding.session));
            if !cookie.is_some_and(|secret| hash_matches(secret, &binding.hash)) {
                tracing::warn!(org = %st.org, connection_id = %st.connection_id, "OAuth callback without the connect session's cookie");
                return page(
                    400,
                    "Authorization refused",
                    "This authorization was started in another browser. Start it again from the connect page, in the \
                     browser you want to use.",
                );
            }
        }
        let loaded = async {
            let c = self.store.get_connection(&st.org, &st.connection_id).await?.ok_or(ServiceError::NotFound)?;
            let def = self.definition_of(&c).await?;
            Ok::<_, ServiceError>((c, def))
        };
        let (c, def) = match loaded.await {
            Ok(found) => found,
            Err(_) => return page(400, "Authorization failed", "The connection no longer exists."),
        };
        let back = match &st.browser {
            Some(binding) => Some(self.page_return(&st, binding, &c).await),
            None => None,
        };
        let redirect = |pick: fn(&Redirects) -> Option<&String>| {
            let own = back.as_ref().and_then(|b| b.redirects.as_ref()).and_then(pick);
            own.or_else(|| def.redirects.as_ref().and_then(pick)).and_then(|u| url::Url::parse(u).ok())
        };
        let context = back.as_ref().map(|b| b.context.pairs()).unwrap_or_default();
        match self.complete_authorization(&st, &c, &def, params).await {
            Ok(done) => {
                let instance = done.instance_id.as_ref().map(|i| i.as_str());
                let mut pairs = vec![
                    ("connection_id", done.id.as_str()),
                    ("definition", done.definition.as_str()),
                    ("customer", done.customer.as_ref().map_or("", |c| c.as_str())),
                ];
                match instance.or_else(|| context.iter().find(|(k, _)| *k == "instance_id").map(|(_, v)| *v)) {
                    Some(i) => pairs.push(("instance_id", i)),
                    None => pairs.push(("instance_id", "")),
                }
                pairs.extend(context.iter().filter(|(k, _)| *k != "instance_id"));
                match (redirect(|r| r.success_url.as_ref()), &back) {
                    (Some(u), _) => CallbackOutcome::Redirect(with_params(u, &pairs)),
                    (None, Some(b)) if b.live => CallbackOutcome::Redirect(b.page(&[("connected", done.id.as_str())])),
                    (None, Some(_)) => page(
                        200,
                        "Authorization completed successfully",
                        "The connection is authorized. You can close this window.",
                    ),
                    (None, None) => page(200, "Connected", "The connection is authorized. You can close this window."),
                }
            }
            Err(f) => {
                self.log(&c, LogType::AuthorizeFailed, format!("authorization failed: {}: {}", f.error, f.description))
                    .await;
                let mut pairs = vec![("error", f.error.as_str()), ("error_description", f.description.as_str())];
                match (redirect(|r| r.failure_url.as_ref()), &back) {
                    (Some(u), _) => {
                        pairs.extend(context.iter());
                        CallbackOutcome::Redirect(with_params(u, &pairs))
                    }
                    (None, Some(b)) if b.live => CallbackOutcome::Redirect(b.page(&pairs)),
                    (None, _) => page(400, "Authorization failed", &format!("{}: {}", f.error, f.description)),
                }
            }
        }
    }

    /// Where a bound authorization returns: its session's redirects and context while the
    /// session lasts (else the connection's own context), and the page's address.
    async fn page_return(&self, st: &OAuthState, binding: &BrowserBinding, c: &Connection) -> PageReturn {
        let session = match self.store.get_connect_session(&binding.session, self.clock.now()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(org = %st.org, error = %e, "reading a connect session failed");
                None
            }
        };
        let base = st.redirect_uri.strip_suffix(super::CALLBACK_PATH).unwrap_or(&st.redirect_uri).to_owned();
        PageReturn {
            session: binding.session.clone(),
            live: session.is_some(),
            base,
            redirects: session.as_ref().and_then(|s| s.redirects.clone()),
            context: match session {
                Some(s) => s.context,
                None => c.connect_context.clone().unwrap_or_default(),
            },
        }
    }

    /// Checks the response, exchanges the code and stores the tokens.
    async fn complete_authorization(
        &self,
        st: &OAuthState,
        c: &Connection,
        def: &Definition,
        params: &BTreeMap<String, String>,
    ) -> std::result::Result<Connection, AuthorizationFailure> {
        if c.generation != st.generation {
            return Err(AuthorizationFailure::new(
                "access_denied",
                "the connection was disconnected after this authorization began",
            ));
        }
        if let Some(sealed) = &st.request_token_secret {
            return self.complete_oauth1(st, sealed, c, def, params).await;
        }
        if let Some(error) = params.get("error") {
            let description = params.get("error_description").map_or_else(String::new, |d| safe_description(d));
            return Err(AuthorizationFailure::new(
                provider_code(error).unwrap_or_else(|| "server_error".to_owned()),
                description,
            ));
        }
        // RFC 9207: with a known issuer, the response must name it (a missing `iss` could be a
        // mix-up attack stripping it).
        if let Some(expected) = &st.issuer
            && params.get("iss").is_none_or(|got| expected.trim_end_matches('/') != got.trim_end_matches('/'))
        {
            return Err(AuthorizationFailure::new(
                "invalid_request",
                "the authorization response came from an unexpected issuer",
            ));
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| AuthorizationFailure::new("invalid_request", "the authorization response has no code"))?;
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let verifier = match &st.verifier {
            Some(sealed) => {
                Some(self.envelope.open_str(&ctx, sealed).await.map_err(|_| AuthorizationFailure::internal())?)
            }
            None => None,
        };
        let settings = self.oauth_settings(def, c).await.map_err(|e| match e {
            ServiceError::Invalid(_) => {
                AuthorizationFailure::new("invalid_request", "the connection's OAuth settings are incomplete")
            }
            _ => AuthorizationFailure::internal(),
        })?;
        let grant =
            GrantRequest::AuthorizationCode { code, redirect_uri: &st.redirect_uri, verifier: verifier.as_ref() };
        let answer = self.request_token(&settings, grant).await.map_err(|f| AuthorizationFailure::exchange(&f))?;
        let callback_values: BTreeMap<String, Value> = settings
            .quirks
            .capture
            .callback
            .iter()
            .filter_map(|name| Some((name.clone(), Value::from(params.get(name)?.clone()))))
            .collect();
        let done = self
            .store_tokens(c, &settings, &answer, callback_values, Status::Configured)
            .await
            .map_err(|_| AuthorizationFailure::internal())?;
        let scopes = done.oauth.as_ref().map(|o| o.scopes.join(" ")).unwrap_or_default();
        self.log(&done, LogType::Authorized, format!("authorized (scopes: {scopes})")).await;
        self.emit(Event::about(EventType::ConnectionAuthorized, &done)).await;
        if super::reconnect::is_reconnect(c) {
            self.announce_reconnect(c, &done, answer.refresh_token.is_some()).await;
        }
        if let Some(error) = done.error.as_ref().filter(|e| e.code == Refusal::ScopesMissing.code()) {
            self.log(&done, LogType::AuthorizeFailed, error.message.clone()).await;
            self.emit(Event::about(EventType::ConnectionError, &done)).await;
            return Err(AuthorizationFailure::new(Refusal::ScopesMissing.code(), error.message.clone()));
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_reduced_before_they_are_passed_on() {
        assert_eq!(safe_description("bad\nthing<>"), "bad thing");
        assert_eq!(safe_description("Visit https://evil.example/?a=1 now"), "Visit https:evil.examplea1 now");
        assert_eq!(safe_description("<script>alert(1)</script>"), "scriptalert(1)script");
        assert_eq!(safe_description(&"x".repeat(500)).len(), MAX_DESCRIPTION);
        assert_eq!(safe_description("  The user   denied\taccess.  "), "The user denied access.");
    }
}
