//! What Latchkey answers and what it is sent, as SPEC sections 4, 5 and 10 describe it. Unknown
//! members of an answer are kept in `other`, so a newer server's additions survive a round trip.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// A connection's lifecycle status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// OAuth not yet authorized.
    Pending,
    /// Has credentials, never used (yellow).
    Configured,
    /// Used successfully (green).
    Active,
    /// Broken (red): see [`Connection::error`].
    Error,
    /// Disconnected: tokens gone, can be authorized again.
    Disconnected,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Configured => "configured",
            Self::Active => "active",
            Self::Error => "error",
            Self::Disconnected => "disconnected",
            Self::Unknown => "unknown",
        })
    }
}

/// Why a connection is red.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    /// Latchkey's class: `grant_refused`, `client_rejected`, `reported`...
    pub code: String,
    /// The provider's own code (`invalid_grant`...), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    /// Who must act, in words.
    pub message: String,
    /// When it turned red.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A connection as reads show it: a `password` value or a token shows as `{"set": true}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// `con_...`.
    pub id: String,
    /// The definition's key.
    pub definition: String,
    /// `instance`, `customer` or `organization`.
    pub scope: String,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    pub status: Status,
    #[serde(default)]
    pub error: Option<StatusError>,
    /// The values the caller may see; secrets as `{"set": true}`.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// Increases with every change; `If-Match` takes it.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Members this client does not know (tags, user...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One page of `GET /v1/connections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionPage {
    pub items: Vec<Connection>,
    /// Pass to [`ConnectionFilter::cursor`] for the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The query of `GET /v1/connections`; every member optional.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub definition: Option<String>,
    pub customer: Option<String>,
    /// `pending`, `configured`, `active`, `error` or `disconnected`.
    pub status: Option<String>,
    /// Only the connections of this end user.
    pub user: Option<String>,
    /// Page size (the server caps it).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl ConnectionFilter {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let mut put = |k, v: &Option<String>| {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        };
        put("definition", &self.definition);
        put("customer", &self.customer);
        put("status", &self.status);
        put("user", &self.user);
        put("cursor", &self.cursor);
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

/// A definition as reads show it: a secret default shows as `{"set": true}` (sending that back
/// keeps the stored secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Definition {
    pub key: String,
    pub label: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `api_key`, `basic`, `oauth2_authorization_code`, `oauth2_client_credentials`, `custom`.
    pub auth: String,
    #[serde(default)]
    pub provider: Option<String>,
    /// Input name to `{label, type, required, default, visibility, ...}`.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default)]
    pub redirects: Option<Value>,
    /// The definition's own OAuth quirks block; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<Value>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Members this client does not know (verify...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Whether `PUT /v1/definitions/{key}` created the definition or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
}

fn expose<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

fn expose_option<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

/// Tokens obtained elsewhere, imported with a new connection (SPEC section 10, "Import").
#[derive(Clone, Serialize, Deserialize)]
pub struct ImportedTokens {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    #[serde(default, serialize_with = "expose_option", skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<SecretString>,
    /// RFC 3339; or give `expires_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Seconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    /// A list, or one string separated as the provider does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
}

impl fmt::Debug for ImportedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportedTokens")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("expires_at", &self.expires_at)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The body of `POST /v1/connections`. `values` may hold secrets (an API key): `Debug` shows
/// only their names.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct NewConnection {
    pub definition: String,
    /// `instance`, `customer` or `organization`; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub values: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<ImportedTokens>,
    /// Other members the server accepts (tags, user...), sent as they are.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl fmt::Debug for NewConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConnection")
            .field("definition", &self.definition)
            .field("scope", &self.scope)
            .field("customer", &self.customer)
            .field("instance_id", &self.instance_id)
            .field("values", &self.values.keys().collect::<Vec<_>>())
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The decrypted values of a connection. Strings (API keys, passwords, client secrets) are held
/// as [`SecretString`]; `Debug` shows only the names.
#[derive(Clone, Default)]
pub struct Fields {
    strings: BTreeMap<String, SecretString>,
    other: BTreeMap<String, Value>,
}

impl Fields {
    /// A string field (every secret is one).
    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.strings.get(name)
    }

    /// A field that is not a string (a number, a boolean).
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.other.get(name)
    }

    /// The field names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.strings.keys().chain(self.other.keys()).map(String::as_str)
    }

    /// Every field in clear, as JSON: for printing on purpose (`latchkey lookup`).
    pub fn expose_json(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> =
            self.strings.iter().map(|(k, v)| (k.clone(), Value::from(v.expose_secret()))).collect();
        m.extend(self.other.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields").field("names", &self.names().collect::<Vec<_>>()).finish()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        let mut fields = Self::default();
        for (k, v) in map {
            match v {
                Value::String(s) => {
                    fields.strings.insert(k, SecretString::from(s));
                }
                other => {
                    fields.other.insert(k, other);
                }
            }
        }
        Ok(fields)
    }
}

/// An OAuth access token as a lookup hands it out.
#[derive(Clone, Deserialize)]
pub struct AccessToken {
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// `None` when the provider gave no lifetime.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// What an execution signs its OAuth 1.0a requests with (RFC 5849 section 3): the `oauth1`
/// member of a lookup of an `oauth1` connection (SPEC section 12), camelCase on the wire.
/// `Debug` shows only the consumer key and the signature method.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Oauth1Credentials {
    /// The consumer (client) key: `oauth_consumer_key`.
    pub consumer_key: String,
    /// The consumer secret, the first half of an HMAC or PLAINTEXT signing key; empty for
    /// `RSA-SHA1`, which signs with [`Oauth1Credentials::private_key`] instead.
    pub consumer_secret: SecretString,
    /// The access token: `oauth_token` (also the lookup's `token.access_token`).
    pub token: SecretString,
    /// The token secret, the second half of an HMAC or PLAINTEXT signing key.
    pub token_secret: SecretString,
    /// `HMAC-SHA1`, `HMAC-SHA256`, `RSA-SHA1` or `PLAINTEXT`.
    pub signature_method: String,
    /// The consumer's RSA private key (PEM, PKCS#1 or PKCS#8): only for `RSA-SHA1`.
    #[serde(default)]
    pub private_key: Option<SecretString>,
}

impl Oauth1Credentials {
    /// Every member in clear, in the answer's shape (`privateKey` only when present).
    pub fn expose_json(&self) -> Value {
        let mut m = serde_json::json!({
            "consumerKey": self.consumer_key,
            "consumerSecret": self.consumer_secret.expose_secret(),
            "token": self.token.expose_secret(),
            "tokenSecret": self.token_secret.expose_secret(),
            "signatureMethod": self.signature_method,
        });
        if let Some(key) = &self.private_key {
            m["privateKey"] = Value::from(key.expose_secret());
        }
        m
    }
}

impl fmt::Debug for Oauth1Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth1Credentials")
            .field("consumer_key", &self.consumer_key)
            .field("signature_method", &self.signature_method)
            .finish_non_exhaustive()
    }
}

/// Fresh credentials (SPEC section 5): every value decrypted, and the OAuth token, refreshed
/// first when it would expire within the lookup's `min_valid_seconds`.
#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    pub connection_id: String,
    pub definition: String,
    pub status: Status,
    pub fields: Fields,
    /// `None` for connections without OAuth tokens (API keys, basic auth). For `oauth1`
    /// connections, the access token with `token_type` `OAuth1` and no expiry.
    #[serde(default)]
    pub token: Option<AccessToken>,
    /// `oauth1` connections only: what signing needs (the consumer secret and private key are
    /// here, not in `fields`).
    #[serde(default)]
    pub oauth1: Option<Oauth1Credentials>,
}

impl Credentials {
    /// Everything in clear, in the lookup answer's shape: for printing on purpose.
    pub fn expose_json(&self) -> Value {
        let token = self.token.as_ref().map(|t| {
            serde_json::json!({
                "access_token": t.access_token.expose_secret(),
                "token_type": t.token_type,
                "expires_at": t.expires_at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()),
                "scopes": t.scopes,
            })
        });
        let mut answer = serde_json::json!({
            "connection_id": self.connection_id,
            "definition": self.definition,
            "status": self.status,
            "fields": self.fields.expose_json(),
            "token": token,
        });
        if let Some(oauth1) = &self.oauth1 {
            answer["oauth1"] = oauth1.expose_json();
        }
        answer
    }
}

/// The answer to `report_error`: the connection is now red.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportedError {
    pub connection_id: String,
    pub status: Status,
    pub error: StatusError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_read_a_lookup_answer_and_debug_shows_no_secret() {
        let answer = serde_json::json!({
            "connection_id": "con_1", "definition": "acme", "status": "active",
            "fields": {"apiKey": "sk_live_canary", "port": 8443},
            "token": {"access_token": "at_canary", "token_type": "Bearer",
                      "expires_at": "2030-01-01T00:00:00Z", "scopes": ["read"]}
        });
        let c: Credentials = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(c.fields.secret("apiKey").unwrap().expose_secret(), "sk_live_canary");
        assert_eq!(c.fields.value("port"), Some(&Value::from(8443)));
        assert_eq!(c.token.as_ref().unwrap().access_token.expose_secret(), "at_canary");
        let debug = format!("{c:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(debug.contains("apiKey"), "names are shown: {debug}");
        assert_eq!(c.expose_json(), answer, "printing on purpose gives the answer back");
    }

    #[test]
    fn an_oauth1_lookup_keeps_what_signing_needs_and_debug_shows_no_secret() {
        let answer = serde_json::json!({
            "connection_id": "con_1", "definition": "x1", "status": "active",
            "fields": {"requestTokenUrl": "https://api.x.com/oauth/request_token"},
            "token": {"access_token": "tok_canary", "token_type": "OAuth1", "expires_at": null, "scopes": []},
            "oauth1": {"consumerKey": "ck_1", "consumerSecret": "cs_canary", "token": "tok_canary",
                       "tokenSecret": "ts_canary", "signatureMethod": "HMAC-SHA1"}
        });
        let c: Credentials = serde_json::from_value(answer.clone()).unwrap();
        let o = c.oauth1.as_ref().expect("the oauth1 member");
        assert_eq!(o.consumer_key, "ck_1");
        assert_eq!(o.consumer_secret.expose_secret(), "cs_canary");
        assert_eq!(o.token.expose_secret(), "tok_canary");
        assert_eq!(o.token_secret.expose_secret(), "ts_canary");
        assert_eq!(o.signature_method, "HMAC-SHA1");
        assert!(o.private_key.is_none());
        let token = c.token.as_ref().unwrap();
        assert_eq!((token.token_type.as_str(), token.expires_at), ("OAuth1", None));
        let debug = format!("{c:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(debug.contains("ck_1") && debug.contains("HMAC-SHA1"), "{debug}");
        assert_eq!(c.expose_json(), answer, "printing on purpose gives the answer back");

        // RSA-SHA1: the private key, and an empty consumer secret.
        let mut rsa = answer;
        rsa["oauth1"]["consumerSecret"] = Value::from("");
        rsa["oauth1"]["signatureMethod"] = Value::from("RSA-SHA1");
        rsa["oauth1"]["privateKey"] =
            Value::from("-----BEGIN PRIVATE KEY-----\npk_canary\n-----END PRIVATE KEY-----\n");
        let c: Credentials = serde_json::from_value(rsa.clone()).unwrap();
        let key = c.oauth1.as_ref().unwrap().private_key.as_ref().expect("the RSA key");
        assert!(key.expose_secret().contains("pk_canary"));
        assert!(!format!("{c:?}").contains("canary"), "{c:?}");
        assert_eq!(c.expose_json(), rsa);
    }

    #[test]
    fn a_new_connection_with_tokens_is_sent_in_clear_and_debugged_without_secrets() {
        let n = NewConnection {
            definition: "acme".into(),
            customer: Some("c-1".into()),
            values: [("apiKey".to_owned(), Value::from("sk_canary"))].into_iter().collect(),
            tokens: Some(ImportedTokens {
                access_token: "at_canary".into(),
                refresh_token: Some("rt_canary".into()),
                expires_at: None,
                expires_in: Some(3600),
                scopes: None,
                token_type: None,
            }),
            ..Default::default()
        };
        let body = serde_json::to_value(&n).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": "sk_canary"},
                "tokens": {"access_token": "at_canary", "refresh_token": "rt_canary", "expires_in": 3600}})
        );
        assert!(!format!("{n:?}").contains("canary"), "{n:?}");
    }
}
