//! Connect sessions (SPEC section 9): a short-lived grant, made by an organization user, that
//! lets one customer's browser use the hosted connect page.
//!
//! A session is reached through a link `{public_url}/connect?session={id}.{link_secret}`. The
//! first GET trades the link secret for a browser secret kept in an HttpOnly cookie
//! ([`ConnectSession::cookie_name`]); only SHA-256 hashes of both secrets are stored, so a store
//! dump opens no session. The link works once: trading it sets [`ConnectSession::browser_hash`],
//! and a session with one cannot be traded again.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use super::validate::check_secure_url;
use super::{ConnectionId, CustomerId, DefinitionKey, FieldError, InstanceId, OrgId, Redirects};

/// How long a session (its link, and the browser that traded it) stays valid.
pub const SESSION_TTL: Duration = Duration::minutes(30);
/// The cookie holding a session's browser secret is this prefix followed by the session id.
pub const SESSION_COOKIE_PREFIX: &str = "latchkey_connect_";
/// The longest name or id of the session's context, in characters.
pub const MAX_CONTEXT_LEN: usize = 200;
/// The most definitions one session may list.
pub const MAX_DEFINITIONS: usize = 100;

/// What the organization's system says the connection is for: carried to the connections the
/// page creates, to their events (flat members, absent ones skipped), and to the session's
/// redirects as query parameters. Every member is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectContext {
    /// The integration instance: connections created by the page get scope `instance` with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_variable_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_variable_name: Option<String>,
}

impl ConnectContext {
    /// The members that are set, by their flat names (`instance_id`, `instance_name`,
    /// `integration_id`, `integration_name`, `config_variable_key`, `config_variable_name`),
    /// in that order: the extra query parameters of a session's redirects.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("instance_id", self.instance_id.as_ref().map(InstanceId::as_str)),
            ("instance_name", self.instance_name.as_deref()),
            ("integration_id", self.integration_id.as_deref()),
            ("integration_name", self.integration_name.as_deref()),
            ("config_variable_key", self.config_variable_key.as_deref()),
            ("config_variable_name", self.config_variable_name.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// Whether no member is set.
    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

/// A connect session as stored: everything but its secrets, of which only hashes are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSession {
    /// A ULID (26 characters): public, in the page's URL and its cookie's name.
    pub id: String,
    pub org: OrgId,
    /// The one customer the page acts for.
    pub customer: CustomerId,
    /// The definitions the page offers; empty: every definition of the organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub definitions: Vec<DefinitionKey>,
    /// The customer's connection to reconnect: the page then shows only it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConnectionId>,
    #[serde(default)]
    pub context: ConnectContext,
    /// Where the OAuth callback sends the browser; each URL set wins over the definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<Redirects>,
    /// The origin (`https://app.example.com`) of the window that opens the page as a popup or
    /// frames it: the `postMessage` target. `None`: nothing is posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_origin: Option<String>,
    /// Hex SHA-256 of the link secret.
    pub link_hash: String,
    /// Hex SHA-256 of the browser secret; set once, when the link is traded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_hash: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// [`SESSION_TTL`] after `created_at`; the store forgets the session afterwards.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// 32 random bytes, base64url without padding (43 characters): a link or browser secret.
pub fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a secret: what is stored of it.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `hash` (hex SHA-256), compared in constant time.
pub fn hash_matches(secret: &str, hash: &str) -> bool {
    bool::from(secret_hash(secret).as_bytes().ct_eq(hash.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length (a long one is hashed first): this never fails.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `s` is a session id: a ULID, 26 ASCII letters and digits.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The parts of a link's `session` parameter, `{id}.{link_secret}`; `None` when it has not
/// that shape.
pub fn parse_link(link: &str) -> Option<(&str, &str)> {
    let (id, secret) = link.split_once('.')?;
    let secret_ok = (16..=128).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    (is_session_id(id) && secret_ok).then_some((id, secret))
}

impl ConnectSession {
    /// The name of the cookie that holds this session's browser secret.
    pub fn cookie_name(&self) -> String {
        format!("{SESSION_COOKIE_PREFIX}{}", self.id)
    }

    /// Whether the session is still valid at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.expires_at > now
    }

    /// Whole seconds left at `now` (0 once expired): the cookie's `Max-Age`.
    pub fn seconds_left(&self, now: OffsetDateTime) -> i64 {
        (self.expires_at - now).whole_seconds().max(0)
    }

    /// Whether the page may offer `definition`.
    pub fn allows(&self, definition: &DefinitionKey) -> bool {
        self.definitions.is_empty() || self.definitions.contains(definition)
    }

    /// Whether `browser_secret` is the one this session's link was traded for (constant time).
    pub fn browser_matches(&self, browser_secret: &SecretString) -> bool {
        self.browser_hash.as_deref().is_some_and(|h| hash_matches(browser_secret.expose_secret(), h))
    }

    /// The CSRF token of the page's forms: hex HMAC-SHA256 keyed by the browser secret over
    /// `latchkey-connect-csrf:{id}`. Only the browser holding the cookie can compute it, and it
    /// is bound to this session.
    pub fn csrf_token(&self, browser_secret: &SecretString) -> String {
        let message = format!("latchkey-connect-csrf:{}", self.id);
        hex::encode(hmac_sha256(browser_secret.expose_secret().as_bytes(), message.as_bytes()))
    }

    /// Whether `sent` is this session's CSRF token for `browser_secret` (constant time).
    pub fn csrf_matches(&self, browser_secret: &SecretString, sent: &str) -> bool {
        bool::from(self.csrf_token(browser_secret).as_bytes().ct_eq(sent.as_bytes()))
    }
}

/// A `POST /v1/connect/sessions` body, checked for shape (whether its definitions exist and
/// its connection is the customer's is the service's to check):
///
/// ```json
/// {"customer": "c-1", "definitions": ["acme-api"], "connection_id": "con_…",
///  "instance": {"id": "i-1", "name": "Main"}, "integration": {"id": "int-1", "name": "Sync"},
///  "config_variable": {"key": "acme", "name": "Acme account"},
///  "redirects": {"success_url": "https://…", "failure_url": "https://…"},
///  "parent_origin": "https://app.example.com"}
/// ```
#[derive(Debug)]
pub struct ConnectRequest {
    pub customer: CustomerId,
    pub definitions: Vec<DefinitionKey>,
    pub connection_id: Option<ConnectionId>,
    pub context: ConnectContext,
    pub redirects: Option<Redirects>,
    pub parent_origin: Option<String>,
}

fn reject_unknown(obj: &Map<String, Value>, allowed: &[&str], prefix: &str, errors: &mut Vec<FieldError>) {
    for k in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{prefix}{k}"), "unknown field"));
    }
}

/// A string member of at most `max` characters (`None` when absent or null).
fn text(obj: &Map<String, Value>, key: &str, field: &str, max: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(field, format!("must be at most {max} characters")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// A context object (`instance`, `integration`, `config_variable`): its `id_key` and `name`.
fn named(
    obj: &Map<String, Value>,
    key: &str,
    id_key: &str,
    errors: &mut Vec<FieldError>,
) -> (Option<String>, Option<String>) {
    match obj.get(key) {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(o)) => {
            reject_unknown(o, &[id_key, "name"], &format!("{key}."), errors);
            let id = text(o, id_key, &format!("{key}.{id_key}"), MAX_CONTEXT_LEN, errors);
            let name = text(o, "name", &format!("{key}.name"), MAX_CONTEXT_LEN, errors);
            (id, name)
        }
        Some(_) => {
            errors.push(FieldError::new(key, "must be an object"));
            (None, None)
        }
    }
}

/// An origin a page may post to: `scheme://host[:port]`, https or http on loopback, nothing
/// else (no path, query, fragment or credentials). Returns its serialization.
fn origin(s: &str) -> Result<String, &'static str> {
    let url = check_secure_url(s)
        .map_err(|_| "must be an origin such as https://app.example.com (https, or http on a loopback host)")?;
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if bare {
        Ok(url.origin().ascii_serialization())
    } else {
        Err("must be an origin: scheme://host[:port], with no path")
    }
}

impl ConnectRequest {
    /// Reads a request body, naming every bad field (`customer`, `definitions[1]`,
    /// `instance.id`, `redirects.success_url`, `parent_origin`...).
    ///
    /// # Errors
    /// The field errors, all at once.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        reject_unknown(
            obj,
            &[
                "customer",
                "definitions",
                "connection_id",
                "instance",
                "integration",
                "config_variable",
                "redirects",
                "parent_origin",
            ],
            "",
            &mut errors,
        );
        let customer = match obj.get("customer") {
            Some(Value::String(s)) => {
                CustomerId::parse(s).map_err(|e| errors.push(FieldError::new("customer", e.to_string()))).ok()
            }
            None | Some(Value::Null) => {
                errors.push(FieldError::new("customer", "is required"));
                None
            }
            Some(_) => {
                errors.push(FieldError::new("customer", "must be a string"));
                None
            }
        };
        let mut definitions = Vec::new();
        match obj.get("definitions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.len() > MAX_DEFINITIONS => {
                errors.push(FieldError::new("definitions", format!("must list at most {MAX_DEFINITIONS}")));
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let field = format!("definitions[{i}]");
                    match item.as_str().map(DefinitionKey::parse) {
                        Some(Ok(key)) if !definitions.contains(&key) => definitions.push(key),
                        Some(Ok(_)) => errors.push(FieldError::new(field, "is listed twice")),
                        Some(Err(e)) => errors.push(FieldError::new(field, e.to_string())),
                        None => errors.push(FieldError::new(field, "must be a string")),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new("definitions", "must be an array of definition keys")),
        }
        let connection_id = match obj.get("connection_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                ConnectionId::parse(s).map_err(|e| errors.push(FieldError::new("connection_id", e.to_string()))).ok()
            }
            Some(_) => {
                errors.push(FieldError::new("connection_id", "must be a string"));
                None
            }
        };
        let (instance_id, instance_name) = named(obj, "instance", "id", &mut errors);
        let instance_id = instance_id.and_then(|s| {
            InstanceId::parse(&s).map_err(|e| errors.push(FieldError::new("instance.id", e.to_string()))).ok()
        });
        let (integration_id, integration_name) = named(obj, "integration", "id", &mut errors);
        let (config_variable_key, config_variable_name) = named(obj, "config_variable", "key", &mut errors);
        let redirects = match obj.get("redirects") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => {
                reject_unknown(r, &["success_url", "failure_url"], "redirects.", &mut errors);
                let mut url = |k: &str| {
                    let field = format!("redirects.{k}");
                    let s = text(r, k, &field, 2_048, &mut errors)?;
                    check_secure_url(&s).map(|_| s).map_err(|e| errors.push(FieldError::new(field, e.to_string()))).ok()
                };
                let (success_url, failure_url) = (url("success_url"), url("failure_url"));
                (success_url.is_some() || failure_url.is_some()).then_some(Redirects { success_url, failure_url })
            }
            Some(_) => {
                errors.push(FieldError::new("redirects", "must be an object"));
                None
            }
        };
        let parent_origin = text(obj, "parent_origin", "parent_origin", 2_048, &mut errors)
            .and_then(|s| origin(&s).map_err(|e| errors.push(FieldError::new("parent_origin", e))).ok());
        match customer {
            Some(customer) if errors.is_empty() => Ok(Self {
                customer,
                definitions,
                connection_id,
                context: ConnectContext {
                    instance_id,
                    instance_name,
                    integration_id,
                    integration_name,
                    config_variable_key,
                    config_variable_name,
                },
                redirects,
                parent_origin,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(body: Value) -> Vec<String> {
        ConnectRequest::from_json(&body).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    fn session() -> ConnectSession {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        ConnectSession {
            id: ulid::Ulid::new().to_string(),
            org: OrgId::parse("acme").unwrap(),
            customer: CustomerId::parse("c-1").unwrap(),
            definitions: vec![],
            connection_id: None,
            context: ConnectContext::default(),
            redirects: None,
            parent_origin: None,
            link_hash: secret_hash("link"),
            browser_hash: None,
            created_at: now,
            expires_at: now + SESSION_TTL,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1 and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_browser_secret_and_the_session() {
        let s = session();
        let secret = new_secret();
        let token = s.csrf_token(&secret);
        assert_eq!(token.len(), 64);
        assert!(s.csrf_matches(&secret, &token));
        assert!(!s.csrf_matches(&new_secret(), &token), "another browser's token");
        let other = ConnectSession { id: ulid::Ulid::new().to_string(), ..s.clone() };
        assert!(!other.csrf_matches(&secret, &token), "another session's token");
        assert!(!s.csrf_matches(&secret, ""));
    }

    #[test]
    fn a_browser_matches_only_once_traded_and_only_with_its_secret() {
        let mut s = session();
        let secret = new_secret();
        assert!(!s.browser_matches(&secret), "not traded yet");
        s.browser_hash = Some(secret_hash(secret.expose_secret()));
        assert!(s.browser_matches(&secret));
        assert!(!s.browser_matches(&new_secret()));
        assert_eq!(s.cookie_name(), format!("latchkey_connect_{}", s.id));
    }

    #[test]
    fn secrets_are_32_random_bytes_and_links_split_in_two() {
        let a = new_secret();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), new_secret().expose_secret());
        let id = ulid::Ulid::new().to_string();
        let link = format!("{id}.{}", a.expose_secret());
        assert_eq!(parse_link(&link), Some((id.as_str(), a.expose_secret())));
        for bad in
            ["", "x.y", &id, &format!("{id}."), &format!("{id}.a b c d e f g h i j k l"), "../x.abcdefghijklmnopq"]
        {
            assert_eq!(parse_link(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_full_request_reads() {
        let r = ConnectRequest::from_json(&json!({
            "customer": "c-1", "definitions": ["acme-api", "beta"], "connection_id": ConnectionId::generate().as_str(),
            "instance": {"id": "i-1", "name": "Main"}, "integration": {"id": "int-1", "name": "Sync"},
            "config_variable": {"key": "acme", "name": "Acme account"},
            "redirects": {"success_url": "https://app.example.com/ok"},
            "parent_origin": "https://app.example.com:8443/"
        }))
        .unwrap();
        assert_eq!(r.definitions.len(), 2);
        assert_eq!(r.parent_origin.as_deref(), Some("https://app.example.com:8443"));
        assert_eq!(
            r.context.pairs(),
            vec![
                ("instance_id", "i-1"),
                ("instance_name", "Main"),
                ("integration_id", "int-1"),
                ("integration_name", "Sync"),
                ("config_variable_key", "acme"),
                ("config_variable_name", "Acme account"),
            ]
        );
        assert_eq!(r.redirects.unwrap().failure_url, None);
        let minimal = ConnectRequest::from_json(&json!({"customer": "c-1"})).unwrap();
        assert!(minimal.context.is_empty() && minimal.definitions.is_empty() && minimal.redirects.is_none());
    }

    #[test]
    fn every_bad_member_is_named() {
        assert_eq!(fields(json!({})), vec!["customer"]);
        assert_eq!(fields(json!({"customer": "a#b"})), vec!["customer"]);
        assert_eq!(
            fields(json!({"customer": "c", "definitions": ["ok", "Bad", 3, "ok"]})),
            vec!["definitions[1]", "definitions[2]", "definitions[3]"]
        );
        assert_eq!(fields(json!({"customer": "c", "connection_id": "con_1"})), vec!["connection_id"]);
        assert_eq!(
            fields(json!({"customer": "c", "instance": {"id": "a#b", "x": 1}})),
            vec!["instance.x", "instance.id"]
        );
        assert_eq!(
            fields(json!({"customer": "c", "integration": {"name": "n".repeat(201)}})),
            vec!["integration.name"]
        );
        assert_eq!(
            fields(json!({"customer": "c", "redirects": {"success_url": "http://evil.example/"}})),
            vec!["redirects.success_url"]
        );
        assert_eq!(fields(json!({"customer": "c", "nope": 1})), vec!["nope"]);
        assert_eq!(fields(json!([])), vec![""]);
    }

    #[test]
    fn parent_origins_are_bare_secure_origins() {
        for (raw, want) in [
            ("https://app.example.com", "https://app.example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://127.0.0.1:9/", "http://127.0.0.1:9"),
        ] {
            assert_eq!(origin(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com/path",
            "https://app.example.com/?q",
            "https://app.example.com#f",
            "https://user@app.example.com",
            "javascript:alert(1)",
            "*",
            "null",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
