//! A definition's `verify` request (SPEC section 10): one HTTP request to the provider that says
//! whether a connection's credentials are accepted, for providers (API keys, basic) that cannot
//! be checked any other way.
//!
//! ```json
//! "verify": { "method": "GET", "url": "https://api.acme.com/v1/me?account={{accountId}}",
//!             "headers": { "Authorization": "Bearer {{apiKey}}" },
//!             "expect_status": [200] }
//! ```
//!
//! Templates are `{{name}}` and nothing else (no filters, no conditions, no escapes): `name` is
//! one of the definition's inputs, or `access_token` for OAuth definitions. Values go only
//! where they cannot change where the request goes or how it is framed:
//! - the URL's path and query, percent-encoded (every byte but `A-Z a-z 0-9 - . _ ~`), never
//!   its scheme, host, port or user info (a template checked with two different samples must
//!   keep one origin);
//! - header values, raw, refused when a value holds a control character (no CR/LF injection);
//! - string members of a JSON `body` (POST only), serialized by serde, so a value is always
//!   one JSON string.
//!
//! A rendered request holds secrets: [`VerifyRequest`]'s `Debug` shows the origin and header
//! names only.

use std::fmt;

use base64::Engine;
use indexmap::IndexMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validate::{FieldError, UrlError, check_secure_url};

/// The template name of an OAuth connection's access token.
pub const ACCESS_TOKEN: &str = "access_token";
/// The longest `url` template, in bytes.
const MAX_URL: usize = 2_048;
const MAX_HEADERS: usize = 20;
const MAX_HEADER_NAME: usize = 64;
/// The longest header value template, in bytes.
const MAX_HEADER_VALUE: usize = 1_024;
/// The largest `body`, serialized, in bytes.
const MAX_BODY: usize = 8_192;
const MAX_EXPECT: usize = 10;
/// The most placeholders one verify request may hold.
const MAX_PLACEHOLDERS: usize = 20;

/// Headers a definition may not set: the HTTP client frames the request itself.
const FORBIDDEN_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "expect",
];

/// The request method of a verify request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VerifyMethod {
    Get,
    Head,
    Post,
}

impl VerifyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
        }
    }
}

/// A definition's (or a catalog entry's) verify request, as stored and as `PUT
/// /v1/definitions/{key}` takes it. Checked by [`Verify::check`] (or [`verify_from_json`])
/// before it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    pub method: VerifyMethod,
    /// An absolute https URL (http on loopback hosts), with `{{name}}` only in path and query.
    pub url: String,
    /// Header name → value template.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    /// A JSON body (POST only), sent as `application/json`; templates in its string values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// HTTP Basic credentials (RFC 7617) for providers whose keys travel that way (Twilio's
    /// account SID and auth token, Mailgun's `api:KEY`): sent as `Authorization: Basic
    /// base64(username:password)`, which `{{name}}` templates alone cannot spell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// The statuses that mean "accepted"; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
}

/// `verify.basic`: templates of the user-id and password of an HTTP Basic header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// Empty for providers that take the key as the user-id alone (`{{apiKey}}:`).
    #[serde(default)]
    pub password: String,
}

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Why a template does not parse; `Display` is the field message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` without a closing `}}}}`")]
    Unclosed,
    #[error("`}}}}` without an opening `{{{{`")]
    StrayClose,
    #[error("`{{{{{0}}}}}` is not a template name (1-64 letters, digits or _ starting with a letter)")]
    BadName(String),
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Splits a template into text and `{{name}}` pieces. A lone `{` or `}` is text; `{{` must
/// open a name and `}}` may only close one.
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let text = &rest[..open];
        if text.contains("}}") {
            return Err(TemplateError::StrayClose);
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let name = &after[..close];
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.chars().take(64).collect()));
        }
        out.push(Piece::Name(name));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err(TemplateError::StrayClose);
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// RFC 3986 unreserved bytes pass; every other byte is `%XX` (upper-case hex): RFC 5849 section
/// 3.6's encoding too (OAuth 1.0a signatures). Safe in a path segment and in a query name or
/// value alike: a value can neither add a segment nor a parameter.
pub(crate) fn percent_encode(s: &str) -> String {
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

/// Why a verify request could not be rendered from a connection's values. Names inputs,
/// never values.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The connection has no value for this input (or no access token).
    #[error("the verification needs a value for {0}")]
    Missing(String),
    /// A value bound for a header holds a control character (CR, LF, NUL...).
    #[error("the value of {0} holds a control character and cannot go into a header")]
    ControlCharacter(String),
    /// The rendered URL does not parse, or left the template's origin.
    #[error("the verification URL could not be built")]
    Url,
    #[error("the verification template is invalid: {0}")]
    Template(#[from] TemplateError),
}

/// Verification bookkeeping of a connection (SPEC section 10): when the sweep verifies it
/// next, and what the last verification found. Default: never verified, not scheduled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    /// When the sweep verifies next; `None` keeps it out of the due index (no verify request).
    /// Counted by the index only while the connection is `configured` or `active`.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub due_at: Option<time::OffsetDateTime>,
    /// Transient failures in a row (drives the backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// When it was last verified, and the provider's status then (none when it did not answer).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<time::OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A rendered verify request: what the provider client sends. Holds secrets (the URL's query
/// may carry one): `Debug` shows the method, origin and header names only.
pub struct VerifyRequest {
    pub method: VerifyMethod,
    pub url: url::Url,
    pub headers: Vec<(String, SecretString)>,
    /// Serialized JSON, sent as `application/json`.
    pub body: Option<SecretString>,
}

impl fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("method", &self.method)
            .field("origin", &self.url.origin().ascii_serialization())
            .field("headers", &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("body", &self.body.is_some())
            .finish()
    }
}

/// What a provider's status says about the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One of `expect_status` (any 2xx when it is empty).
    Accepted,
    /// 401 or 403: the provider refused the credentials.
    Rejected,
    /// 408, 429 or 5xx: the provider could not answer now; try again later.
    Unavailable,
    /// Any other status: the credentials could not be confirmed (a wrong account id in the
    /// URL, a moved endpoint). Refused at connect time; not a reason to turn a connection red.
    Unexpected,
}

impl Verify {
    /// Every template of the request (URL, header values, body strings), with the field each
    /// comes from.
    fn templates(&self) -> Vec<(String, &str)> {
        let mut all = vec![("verify.url".to_owned(), self.url.as_str())];
        for (name, value) in &self.headers {
            all.push((format!("verify.headers.{name}"), value.as_str()));
        }
        if let Some(body) = &self.body {
            body_strings(body, "verify.body", &mut all);
        }
        if let Some(basic) = &self.basic {
            all.push(("verify.basic.username".to_owned(), basic.username.as_str()));
            all.push(("verify.basic.password".to_owned(), basic.password.as_str()));
        }
        all
    }

    /// The names the templates use, each once, in order of appearance.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, t) in self.templates() {
            for p in pieces(t).unwrap_or_default() {
                if let Piece::Name(n) = p
                    && !out.contains(&n)
                {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Checks the request; `known` says whether a template name may be used (the definition's
    /// inputs, and [`ACCESS_TOKEN`] for OAuth definitions). Errors name `verify.*` fields.
    pub fn check(&self, known: impl Fn(&str) -> bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut placeholders = 0;
        for (field, template) in self.templates() {
            match pieces(template) {
                Err(e) => errors.push(FieldError::new(field, e.to_string())),
                Ok(ps) => {
                    for p in ps {
                        if let Piece::Name(n) = p {
                            placeholders += 1;
                            if !known(n) {
                                errors.push(FieldError::new(
                                    &field,
                                    format!("`{{{{{n}}}}}` names no input of the definition"),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if placeholders > MAX_PLACEHOLDERS {
            errors.push(FieldError::new("verify", format!("at most {MAX_PLACEHOLDERS} templates")));
        }
        if let Err(e) = check_url_template(&self.url) {
            errors.push(FieldError::new("verify.url", e.to_string()));
        }
        if self.headers.len() > MAX_HEADERS {
            errors.push(FieldError::new("verify.headers", format!("at most {MAX_HEADERS} headers")));
        }
        for (name, value) in &self.headers {
            let field = format!("verify.headers.{name}");
            if !valid_header_name(name) {
                errors.push(FieldError::new(&field, "is not a header name (1-64 token characters)"));
            } else if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                || name.to_ascii_lowercase().starts_with("proxy-")
            {
                errors.push(FieldError::new(&field, "is set by the HTTP client itself"));
            }
            if value.len() > MAX_HEADER_VALUE {
                errors.push(FieldError::new(&field, format!("must be at most {MAX_HEADER_VALUE} bytes")));
            } else if value.chars().any(|c| c.is_control()) {
                errors.push(FieldError::new(&field, "must not hold control characters"));
            }
        }
        if self.basic.is_some() && self.headers.keys().any(|h| h.eq_ignore_ascii_case("authorization")) {
            errors.push(FieldError::new("verify.basic", "cannot go with an Authorization header"));
        }
        if let Some(body) = &self.body {
            if self.method != VerifyMethod::Post {
                errors.push(FieldError::new("verify.body", "is only for POST"));
            }
            if serde_json::to_vec(body).map_or(true, |b| b.len() > MAX_BODY) {
                errors.push(FieldError::new("verify.body", format!("must be at most {MAX_BODY} bytes of JSON")));
            }
        }
        if self.expect_status.len() > MAX_EXPECT {
            errors.push(FieldError::new("verify.expect_status", format!("at most {MAX_EXPECT} statuses")));
        }
        for s in &self.expect_status {
            if !(200..=599).contains(s) || matches!(s, 401 | 403) {
                errors.push(FieldError::new(
                    "verify.expect_status",
                    format!("{s}: expected statuses are 200-599 except 401 and 403 (always a refusal)"),
                ));
            }
        }
        errors
    }

    /// The URL's scheme, host and port (templates only ever fill its path and query), for
    /// checks of where the request goes; `None` for a URL that does not parse.
    pub fn origin_url(&self) -> Option<url::Url> {
        let mut url = sample_url(&self.url, "x").ok()?;
        url.set_path("/");
        url.set_query(None);
        Some(url)
    }

    /// What a provider's answer status says.
    pub fn verdict(&self, status: u16) -> Verdict {
        let accepted = if self.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect_status.contains(&status)
        };
        match status {
            _ if accepted => Verdict::Accepted,
            401 | 403 => Verdict::Rejected,
            408 | 429 | 500..=599 => Verdict::Unavailable,
            _ => Verdict::Unexpected,
        }
    }

    /// Renders the request with a connection's values. `value` gives an input's value (or the
    /// access token) as text, `None` when the connection has none.
    ///
    /// # Errors
    /// [`RenderError`] naming the input at fault, never its value.
    pub fn render(&self, value: impl Fn(&str) -> Option<SecretString>) -> Result<VerifyRequest, RenderError> {
        let lookup = |name: &str| value(name).ok_or_else(|| RenderError::Missing(name.to_owned()));
        let template_origin = sample_url(&self.url, "x").map_err(|_| RenderError::Url)?;

        let mut url = String::new();
        for p in pieces(&self.url)? {
            match p {
                Piece::Text(t) => url.push_str(t),
                Piece::Name(n) => url.push_str(&percent_encode(lookup(n)?.expose_secret())),
            }
        }
        let url = url::Url::parse(&url).map_err(|_| RenderError::Url)?;
        if !same_origin(&url, &template_origin) {
            return Err(RenderError::Url);
        }

        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, template) in &self.headers {
            let mut rendered = String::new();
            for p in pieces(template)? {
                match p {
                    Piece::Text(t) => rendered.push_str(t),
                    Piece::Name(n) => {
                        let v = lookup(n)?;
                        if v.expose_secret().chars().any(|c| c.is_control()) {
                            return Err(RenderError::ControlCharacter(n.to_owned()));
                        }
                        rendered.push_str(v.expose_secret());
                    }
                }
            }
            headers.push((name.clone(), SecretString::from(rendered)));
        }
        if let Some(basic) = &self.basic {
            let part = |template: &str| -> Result<String, RenderError> {
                let mut out = String::new();
                for p in pieces(template)? {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Name(n) => out.push_str(lookup(n)?.expose_secret()),
                    }
                }
                Ok(out)
            };
            let pair = format!("{}:{}", part(&basic.username)?, part(&basic.password)?);
            let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            headers.push(("Authorization".to_owned(), SecretString::from(value)));
        }

        let body = match &self.body {
            None => None,
            Some(b) => {
                let rendered = render_json(b, &lookup)?;
                Some(SecretString::from(serde_json::to_string(&rendered).map_err(|_| RenderError::Url)?))
            }
        };
        Ok(VerifyRequest { method: self.method, url, headers, body })
    }
}

/// Collects the string values of a JSON body with their field paths (keys are literal).
fn body_strings<'a>(v: &'a Value, field: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((field.to_owned(), s.as_str())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                body_strings(item, &format!("{field}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                body_strings(item, &format!("{field}.{k}"), out);
            }
        }
        _ => {}
    }
}

fn render_json(v: &Value, lookup: &impl Fn(&str) -> Result<SecretString, RenderError>) -> Result<Value, RenderError> {
    Ok(match v {
        Value::String(s) => {
            let mut rendered = String::new();
            for p in pieces(s)? {
                match p {
                    Piece::Text(t) => rendered.push_str(t),
                    Piece::Name(n) => rendered.push_str(lookup(n)?.expose_secret()),
                }
            }
            Value::String(rendered)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| render_json(i, lookup)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, i)| Ok((k.clone(), render_json(i, lookup)?))).collect::<Result<_, RenderError>>()?,
        ),
        other => other.clone(),
    })
}

/// A header name: RFC 9110 token characters, at most [`MAX_HEADER_NAME`].
fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HEADER_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a `verify.url` template is refused; `Display` is the field message.
#[derive(Debug, thiserror::Error)]
enum UrlTemplateError {
    #[error("must be at most {MAX_URL} bytes")]
    TooLong,
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The template with a sample in each placeholder is not a URL Latchkey may call.
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("templates may appear only in the path and query")]
    InOrigin,
    #[error("must not hold user info (send credentials in a header)")]
    UserInfo,
    #[error("must not have a fragment")]
    Fragment,
}

/// The template with every placeholder replaced by `sample`, parsed.
fn sample_url(template: &str, sample: &str) -> Result<url::Url, UrlTemplateError> {
    let mut s = String::new();
    for p in pieces(template)? {
        match p {
            Piece::Text(t) => s.push_str(t),
            Piece::Name(_) => s.push_str(sample),
        }
    }
    Ok(check_secure_url(&s)?)
}

fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.username() == b.username()
        && a.password() == b.password()
}

/// The URL policy of provider endpoints (https, or http on loopback), with templates only in
/// path and query: two different samples must give one origin, no user info, no fragment.
fn check_url_template(template: &str) -> Result<(), UrlTemplateError> {
    if template.len() > MAX_URL {
        return Err(UrlTemplateError::TooLong);
    }
    let a = sample_url(template, "x")?;
    let b = sample_url(template, "0")?;
    if !same_origin(&a, &b) {
        return Err(UrlTemplateError::InOrigin);
    }
    if !a.username().is_empty() || a.password().is_some() {
        return Err(UrlTemplateError::UserInfo);
    }
    if template.contains('#') {
        return Err(UrlTemplateError::Fragment);
    }
    Ok(())
}

/// Parses and checks a definition's `verify` member; `known` as in [`Verify::check`].
///
/// # Errors
/// Each bad field, named `verify.*`.
pub fn verify_from_json(v: &Value, known: impl Fn(&str) -> bool) -> Result<Verify, Vec<FieldError>> {
    // An object only: serde would also read a JSON array as the members in order.
    if !v.is_object() {
        return Err(vec![FieldError::new("verify", "must be an object {method, url, ...}")]);
    }
    if v.get("basic").is_some_and(|b| !b.is_object() && !b.is_null()) {
        return Err(vec![FieldError::new("verify.basic", "must be an object {username, password}")]);
    }
    let verify: Verify =
        serde_json::from_value(v.clone()).map_err(|e| vec![FieldError::new("verify", e.to_string())])?;
    let errors = verify.check(known);
    if errors.is_empty() { Ok(verify) } else { Err(errors) }
}

#[cfg(test)]
mod tests;
