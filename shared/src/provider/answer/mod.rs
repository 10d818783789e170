//! The one reader of provider answers (SPEC section 8): what a token endpoint's or revocation
//! endpoint's answer means, whatever the provider's dialect.
//!
//! - Any 2xx whose body is a token answer is a success: JSON whatever the `Content-Type`
//!   (`text/plain`, `text/javascript`, `text/html`...), or a form-encoded body (GitHub's
//!   default).
//! - A body with an `error` member is a refusal whatever the status (GitHub answers 200), and
//!   so is Slack's `{"ok": false, "error": ...}`. Its class comes from the code.
//! - 429, 5xx, `temporarily_unavailable` and its kin, and 4xx answers carrying `Retry-After`
//!   are transient. A 400/401 to a refresh whose body says nothing readable is a refused grant.
//! - Anything else is an answer Latchkey could not read: reported as such, never as a refusal.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::RawAnswer;
use super::destination::NotPublic;
use crate::domain::{Refusal, provider_code};

/// The largest `expires_in` taken at its word (ten years); beyond it the lifetime is unknown.
pub const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 86_400;

/// Which grant an answer is for: it decides what an unexplained refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    /// A poll of an RFC 8628 device authorization.
    DeviceCode,
}

/// A successful token answer (RFC 6749 section 5.1), read leniently. `Debug` never prints a
/// token.
pub struct TokenAnswer {
    pub access_token: SecretString,
    /// As the provider spelled it, `Bearer` when absent (`bearer` is normalised).
    pub token_type: String,
    /// Seconds; `None` when the lifetime is unknown (absent, null, zero, negative, unreadable).
    pub expires_in: Option<u64>,
    pub refresh_token: Option<SecretString>,
    /// The granted scopes as the answer states them; `None` when it says nothing.
    pub scopes: Option<Vec<String>>,
    /// Seconds the refresh token lives, as the answer states it (`refresh_token_expires_in`, or
    /// the member the definition names: [`TokenAnswer::read_refresh_token_lifetime`]); `None`
    /// when it says nothing readable (absent, not positive, beyond ten years).
    pub refresh_token_expires_in: Option<u64>,
    /// The whole answer, for captured values. Never logged.
    raw: Map<String, Value>,
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("scopes", &self.scopes)
            .field("refresh_token_expires_in", &self.refresh_token_expires_in)
            .finish_non_exhaustive()
    }
}

/// A token type as Latchkey keeps it: printable ASCII, at most 64 characters; `Bearer` when
/// absent or nothing printable is left (`bearer` is normalised).
fn normal_token_type(stated: &str) -> String {
    let kept: String = stated.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if kept.is_empty() || kept.eq_ignore_ascii_case("bearer") { "Bearer".to_owned() } else { kept }
}

impl TokenAnswer {
    /// Tokens Latchkey did not read from a provider's answer: imported from another platform
    /// with a new connection (SPEC section 10), to be stored exactly as an answer's are. The
    /// token type is normalised as an answer's; nothing is captured from it.
    pub fn imported(
        access_token: SecretString,
        token_type: Option<&str>,
        expires_in: Option<u64>,
        refresh_token: Option<SecretString>,
        scopes: Option<Vec<String>>,
    ) -> Self {
        TokenAnswer {
            access_token,
            token_type: normal_token_type(token_type.unwrap_or_default()),
            expires_in,
            refresh_token,
            scopes,
            refresh_token_expires_in: None,
            raw: Map::new(),
        }
    }

    /// Reads the refresh token's lifetime again from `member` of the object at `token_path`
    /// (the top level when absent, or when a refresh answer lacks it, as the token is read):
    /// for providers that name it otherwise (QuickBooks: `x_refresh_token_expires_in`).
    pub fn read_refresh_token_lifetime(&mut self, member: &str, token_path: Option<&str>) {
        let holder = token_path.and_then(|p| at_path(&self.raw, p)).and_then(Value::as_object).unwrap_or(&self.raw);
        self.refresh_token_expires_in = lifetime(holder.get(member));
    }

    /// The value at a dotted path of the whole answer (`instance_url`, `team.id`), if it is a
    /// string, number or boolean.
    pub fn captured(&self, path: &str) -> Option<&Value> {
        at_path(&self.raw, path).filter(|v| v.is_string() || v.is_number() || v.is_boolean())
    }
}

/// Why a token request did not give tokens.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// The provider said no, and saying it again will not help.
    Refused {
        class: Refusal,
        /// The provider's code (`invalid_grant`, `bad_refresh_token`), `None` when its answer
        /// named none.
        provider_code: Option<String>,
        status: u16,
    },
    /// Worth retrying later: an outage, a rate limit, a timeout.
    Transient { code: String, retry_after: Option<Duration> },
    /// An answer Latchkey could not read (`unreadable_answer`), or a token answer without a
    /// token where the definition says it is (`invalid_token_response`).
    Unreadable { code: &'static str, status: u16 },
    /// Not sent: the endpoint's address is refused by the outbound policy (a private,
    /// link-local or, where not allowed, loopback address).
    Forbidden { why: NotPublic },
}

impl TokenFailure {
    /// The code logs and redirects show: the provider's, `http_<status>` for a refusal that
    /// named none, or Latchkey's for the others.
    pub fn code(&self) -> String {
        match self {
            Self::Refused { provider_code: Some(code), .. } => code.clone(),
            Self::Refused { status, .. } => format!("http_{status}"),
            Self::Transient { code, .. } => code.clone(),
            Self::Unreadable { code, .. } => (*code).to_owned(),
            Self::Forbidden { .. } => "destination_refused".to_owned(),
        }
    }
}

/// What a revocation request came to (RFC 7009 section 2.2).
#[derive(Debug, PartialEq, Eq)]
pub enum RevokeAnswer {
    Revoked,
    /// Refused for good (`unsupported_token_type`, an unknown client...): not retried.
    Refused(String),
    Transient {
        code: String,
        retry_after: Option<Duration>,
    },
}

/// Codes that mean "not now" whatever grant they answer.
const TRANSIENT_CODES: [&str; 12] = [
    "temporarily_unavailable",
    "server_error",
    "slow_down",
    "ratelimited",
    "rate_limited",
    "rate_limit_exceeded",
    "too_many_requests",
    "internal_error",
    "service_unavailable",
    "timeout",
    "request_timeout",
    "fatal_error",
];

/// Codes that blame the OAuth app's settings, not the grant.
const CLIENT_CODES: [&str; 5] = [
    "unsupported_grant_type",
    "redirect_uri_mismatch",
    "bad_redirect_uri",
    "invalid_redirect_uri",
    "unsupported_response_type",
];

/// The class of a refusal code, or `None` when it is transient.
pub(crate) fn class_of(code: &str, grant: Grant) -> Option<Refusal> {
    let lower = code.to_ascii_lowercase();
    if TRANSIENT_CODES.contains(&lower.as_str()) {
        return None;
    }
    Some(if lower.contains("client") || CLIENT_CODES.contains(&lower.as_str()) {
        Refusal::ClientRejected
    } else if lower == "invalid_scope" || lower == "insufficient_scope" {
        Refusal::ScopesMissing
    } else if grant == Grant::ClientCredentials {
        // There is no user grant to refuse: the client's own credentials were turned down.
        Refusal::ClientRejected
    } else {
        Refusal::GrantRefused
    })
}

/// The refusal code of a body: `error` as a string, or the `code`/`type` of an `error` object;
/// any other `error` member but `null`, `false` and `""` is a refusal too (code `error`);
/// `{"ok": false}` without one is `ok_false`.
pub(crate) fn error_code(obj: &Map<String, Value>) -> Option<String> {
    let raw = match obj.get("error") {
        None | Some(Value::Null | Value::Bool(false)) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(e)) => Some(
            e.get("code")
                .or_else(|| e.get("type"))
                .map_or_else(|| "error".to_owned(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
        ),
        Some(_) => Some("error".to_owned()),
    };
    match raw {
        Some(r) => Some(provider_code(&r).unwrap_or_else(|| "unreadable_error_code".to_owned())),
        None if obj.get("ok") == Some(&Value::Bool(false)) => Some("ok_false".to_owned()),
        None => None,
    }
}

/// The body as an object: JSON whatever the content type says, else a form-encoded body that
/// has `key` (the member a successful answer must have, `access_token` for token answers) or
/// `error`.
pub(crate) fn parse_body(raw: &RawAnswer, key: &str) -> Option<Map<String, Value>> {
    // A byte order mark may open a JSON text (RFC 8259 section 8.1): it is not part of it.
    let text = std::str::from_utf8(&raw.body).ok()?.trim_start_matches('\u{feff}').trim();
    if text.starts_with('{') {
        return serde_json::from_str::<Map<String, Value>>(text).ok();
    }
    if text.is_empty() || text.contains(['<', '\n', ' ']) {
        return None;
    }
    let form: Map<String, Value> = url::form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
        .collect();
    (form.contains_key(key) || form.contains_key("error")).then_some(form)
}

/// The value at a dotted path (`authed_user.access_token`).
fn at_path<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

/// `expires_in` as a number or a numeric string; a lifetime that is not positive and sane is
/// unknown.
fn lifetime(v: Option<&Value>) -> Option<u64> {
    let secs = match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64)?,
        _ => return None,
    };
    u64::try_from(secs).ok().filter(|s| (1..=MAX_EXPIRES_IN_SECS).contains(s))
}

fn scopes(v: Option<&Value>, split: &dyn Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(split(s)),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).flat_map(split).collect()),
        _ => None,
    }
}

fn secret_text(obj: &Map<String, Value>, key: &str) -> Option<SecretString> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(|s| SecretString::from(s.to_owned()))
}

/// Reads a token endpoint's answer to `grant`.
///
/// `token_path` is the definition's (SPEC section 8): for a code exchange the token must be in
/// that object; a refresh answer is read from it when present, else from the top level (a
/// refresh answers for exactly the token it renewed). `split` splits a scope string.
pub fn read_token_answer(
    raw: &RawAnswer,
    grant: Grant,
    token_path: Option<&str>,
    split: &dyn Fn(&str) -> Vec<String>,
) -> Result<TokenAnswer, TokenFailure> {
    let status = raw.status;
    let body = parse_body(raw, "access_token");
    let busy = status == 429 || status >= 500;
    let code = body.as_ref().and_then(error_code);
    if busy {
        return Err(TokenFailure::Transient {
            code: code.unwrap_or_else(|| format!("http_{status}")),
            retry_after: raw.retry_after,
        });
    }
    if let Some(code) = code {
        return Err(match class_of(&code, grant) {
            Some(class) => TokenFailure::Refused { class, provider_code: Some(code), status },
            None => TokenFailure::Transient { code, retry_after: raw.retry_after },
        });
    }
    if (200..300).contains(&status) {
        let Some(obj) = body else {
            return Err(TokenFailure::Unreadable { code: "unreadable_answer", status });
        };
        let holder = match token_path {
            None => Some(&obj),
            Some(path) => match at_path(&obj, path).and_then(Value::as_object) {
                Some(inner) => Some(inner),
                None if grant == Grant::RefreshToken => Some(&obj),
                None => None,
            },
        };
        let Some(holder) = holder else {
            return Err(TokenFailure::Unreadable { code: "invalid_token_response", status });
        };
        let Some(access_token) = secret_text(holder, "access_token") else {
            let code = if token_path.is_some() { "invalid_token_response" } else { "unreadable_answer" };
            return Err(TokenFailure::Unreadable { code, status });
        };
        return Ok(TokenAnswer {
            access_token,
            token_type: normal_token_type(holder.get("token_type").and_then(Value::as_str).unwrap_or_default()),
            expires_in: lifetime(holder.get("expires_in")),
            refresh_token: secret_text(holder, "refresh_token"),
            scopes: scopes(holder.get("scope"), split),
            refresh_token_expires_in: lifetime(holder.get("refresh_token_expires_in")),
            raw: obj.clone(),
        });
    }
    if raw.retry_after.is_some() || matches!(status, 408 | 425) {
        return Err(TokenFailure::Transient { code: format!("http_{status}"), retry_after: raw.retry_after });
    }
    let provider_code = None;
    match (grant, status) {
        // SPEC section 8: a 400/401 to a refresh that says nothing readable is a dead grant.
        (Grant::RefreshToken | Grant::AuthorizationCode | Grant::DeviceCode, 400 | 401) => {
            Err(TokenFailure::Refused { class: Refusal::GrantRefused, provider_code, status })
        }
        // The endpoint itself is wrong (moved, mistyped) or refuses the client.
        (_, 400 | 401 | 404 | 405 | 410) => {
            Err(TokenFailure::Refused { class: Refusal::ClientRejected, provider_code, status })
        }
        _ => Err(TokenFailure::Unreadable { code: "unreadable_answer", status }),
    }
}

/// Reads a revocation endpoint's answer (RFC 7009 section 2.2): 2xx revoked (unless the body
/// carries an `error`), 429 and 5xx transient, other 4xx refused for good.
pub fn read_revoke_answer(raw: &RawAnswer) -> RevokeAnswer {
    let status = raw.status;
    let code = parse_body(raw, "access_token").as_ref().and_then(error_code);
    let transient = |code: String| RevokeAnswer::Transient { code, retry_after: raw.retry_after };
    if status == 429 || status >= 500 {
        return transient(code.unwrap_or_else(|| format!("http_{status}")));
    }
    match code {
        Some(c) if TRANSIENT_CODES.contains(&c.to_ascii_lowercase().as_str()) => transient(c),
        Some(c) => RevokeAnswer::Refused(c),
        None if (200..300).contains(&status) => RevokeAnswer::Revoked,
        None => RevokeAnswer::Refused(format!("http_{status}")),
    }
}

#[cfg(test)]
mod tests;
