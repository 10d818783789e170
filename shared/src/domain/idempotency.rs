//! Idempotency records (SPEC section 10): a request sent with an `Idempotency-Key` claims the
//! key first, then stores its response; a retry with the same key and body within
//! [`RETENTION`] gets that response again and creates nothing.
//!
//! A record is identified by the SHA-256 of the key scoped by organization, the principal's
//! customer (if any) and route ([`scoped_id`]), so one route's keys never answer for another's,
//! nor one customer's for another's. Neither the key nor the request body is stored: only the
//! SHA-256 of the body's canonical JSON ([`request_hash`]), sealed (the body may hold a weak
//! secret, which a plain hash would let a reader of the store test guesses of), and the
//! response, which never holds a secret (connection reads show `{"set": true}` for secret
//! values).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::{CustomerId, OrgId};

/// How long a completed record answers retries (and is kept: DynamoDB TTL or SQLite purge).
pub const RETENTION: Duration = Duration::hours(24);
/// How long a claim without a response blocks its key: the request holding it is answered long
/// before (API Gateway gives up after 30 s), so a claim older than this belongs to a request
/// that died, and the key may be claimed again.
pub const CLAIM_LEASE: Duration = Duration::seconds(60);
/// Longest key, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header is refused; `Display` is the 400 problem's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    #[error("Idempotency-Key must be 1 to 255 characters")]
    Length,
    #[error("Idempotency-Key must be printable ASCII")]
    NotPrintable,
}

/// The value of an `Idempotency-Key` header: 1-255 printable ASCII characters (space to `~`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value.
    ///
    /// # Errors
    /// [`IdempotencyKeyError`]: what is wrong.
    pub fn parse(raw: &[u8]) -> Result<Self, IdempotencyKeyError> {
        if raw.is_empty() || raw.len() > MAX_KEY_LEN {
            return Err(IdempotencyKeyError::Length);
        }
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(IdempotencyKeyError::NotPrintable);
        }
        // Every byte is ASCII, so this is valid UTF-8.
        Ok(Self(raw.iter().map(|&b| char::from(b)).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of the record of `key` sent by a principal of `org` (and `customer`, for customer
/// users) to `route` (`"POST /v1/connections"`): hex SHA-256 of the four, each length-prefixed
/// so that no two different tuples give the same input.
pub fn scoped_id(org: &OrgId, customer: Option<&CustomerId>, route: &str, key: &IdempotencyKey) -> String {
    let mut h = Sha256::new();
    for part in [org.as_str(), customer.map_or("", CustomerId::as_str), route, key.as_str()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Hex SHA-256 of `body`'s canonical JSON: object keys sorted at every depth, no whitespace.
/// Two bodies that differ only in key order or spacing hash the same.
pub fn request_hash(body: &Value) -> String {
    let mut out = String::new();
    canonical(body, &mut out);
    hex::encode(Sha256::digest(out.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The response a completed request gave: replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    /// The JSON body, as sent. Never holds a secret: it is a read of what was created.
    pub body: String,
}

/// One key's record: claimed (no `response` yet) or completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// [`scoped_id`]: hex SHA-256.
    pub id: String,
    pub org: OrgId,
    pub route: String,
    /// [`request_hash`] of the body that claimed the key, sealed: the JSON of a
    /// [`super::Sealed`] under the organization's encryption context
    /// (`crate::crypto::EncryptionContext::organization`). Opaque to the store.
    pub request_hash: String,
    /// A ULID per claim: only its holder completes or releases the record.
    pub claim: String,
    /// Until when an incomplete claim blocks the key ([`CLAIM_LEASE`] after it was taken).
    #[serde(with = "time::serde::rfc3339")]
    pub claimed_until: OffsetDateTime,
    pub response: Option<StoredResponse>,
    /// Ignored, then removed, after this ([`RETENTION`] after the claim).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl IdempotencyRecord {
    /// A new claim of record `id` at `now`.
    pub fn claim(id: String, org: &OrgId, route: &str, request_hash: String, now: OffsetDateTime) -> Self {
        Self {
            id,
            org: org.clone(),
            route: route.to_owned(),
            request_hash,
            claim: ulid::Ulid::new().to_string(),
            claimed_until: now + CLAIM_LEASE,
            response: None,
            expires_at: now + RETENTION,
        }
    }

    /// This claim completed with `response`.
    pub fn completed(&self, response: StoredResponse) -> Self {
        Self { response: Some(response), ..self.clone() }
    }

    /// Whether the record still holds its key at `now`: unexpired, and either completed or
    /// claimed by a request that may still be running. Anything else may be claimed again.
    pub fn holds_key(&self, now: OffsetDateTime) -> bool {
        self.expires_at > now && (self.response.is_some() || self.claimed_until > now)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii() {
        assert_eq!(IdempotencyKey::parse(b"order-42 retry").unwrap().as_str(), "order-42 retry");
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        for (bad, why) in [
            (&b""[..], IdempotencyKeyError::Length),
            (&[b'k'; 256][..], IdempotencyKeyError::Length),
            (&b"tab\there"[..], IdempotencyKeyError::NotPrintable),
            ("caf\u{e9}".as_bytes(), IdempotencyKeyError::NotPrintable),
            (&b"nul\0"[..], IdempotencyKeyError::NotPrintable),
        ] {
            assert_eq!(IdempotencyKey::parse(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn the_request_hash_ignores_key_order_and_spacing_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "v"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"v","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&json!({"a": "v", "b": [1, {"x": 1, "y": 3}]})));
        assert_ne!(request_hash(&json!({"a": "1"})), request_hash(&json!({"a": 1})));
        assert_eq!(request_hash(&a).len(), 64);
    }

    #[test]
    fn ids_are_scoped_by_org_customer_and_route() {
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let org = OrgId::parse("acme").unwrap();
        let c1 = CustomerId::parse("c-1").unwrap();
        let base = scoped_id(&org, None, "POST /v1/connections", &key);
        assert_eq!(base, scoped_id(&org, None, "POST /v1/connections", &key));
        assert_ne!(base, scoped_id(&OrgId::parse("other").unwrap(), None, "POST /v1/connections", &key));
        assert_ne!(base, scoped_id(&org, Some(&c1), "POST /v1/connections", &key));
        assert_ne!(base, scoped_id(&org, None, "POST /v1/connect/sessions", &key));
    }

    #[test]
    fn a_claim_holds_its_key_for_the_lease_and_a_response_for_the_retention() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let org = OrgId::parse("acme").unwrap();
        let claim = IdempotencyRecord::claim("id".into(), &org, "r", "h".into(), now);
        assert!(claim.holds_key(now + Duration::seconds(59)));
        assert!(!claim.holds_key(now + CLAIM_LEASE), "an abandoned claim frees the key");
        let done = claim.completed(StoredResponse { status: 201, body: "{}".into() });
        assert!(done.holds_key(now + Duration::hours(23)));
        assert!(!done.holds_key(now + RETENTION));
    }
}
