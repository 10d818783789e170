//! RFC 7523 section 2.1, JWT bearer grants (SPEC section 12, `oauth2_jwt_bearer`): the
//! assertion a service account signs in place of a user's consent.
//!
//! Each token request carries a new assertion: issued now, valid for [`ASSERTION_LIFETIME`]
//! (RFC 7523 section 3 lets servers refuse long-lived ones; Google takes at most an hour), with
//! a fresh random `jti` so a server that remembers them (section 3, item 7) never sees one twice.
//! The token endpoint call itself is the ordinary provider-client port, so the outbound policy,
//! timeouts and the lenient answer reader apply as for every other grant; renewal before expiry
//! is the refresh machinery's (single flight through the lease, the sweep), with the assertion
//! standing where a refresh token would.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use rand::Rng;
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;

use std::collections::BTreeMap;

use crate::domain::validate::{ALGORITHM_INPUT, AssertionAlgorithm, PRIVATE_KEY_INPUT, Values, check_assertion_values};
use crate::domain::{AuthKind, Connection, Definition, FieldError, Input};
use crate::service::Service;

/// How long an assertion is valid: `exp` is this long after `iat`.
pub const ASSERTION_LIFETIME: time::Duration = time::Duration::minutes(5);

/// The claims of RFC 7523 section 3. Times are seconds since the epoch.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

/// A connection's assertion settings, resolved like its other OAuth settings (its own values
/// over the definition's). `Debug` never shows the key.
pub(crate) struct AssertionSigner {
    issuer: String,
    subject: String,
    audience: String,
    algorithm: AssertionAlgorithm,
    key_id: Option<String>,
    key: EncodingKey,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("audience", &self.audience)
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The inputs an [`AssertionSigner`] is made from, as the connection's settings resolve them.
pub(crate) struct AssertionInputs<'a> {
    pub issuer: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub algorithm: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub private_key: Option<&'a SecretString>,
    /// The token endpoint: the audience when none is set (RFC 7523 section 3, item 3).
    pub token_url: &'a str,
}

impl AssertionSigner {
    /// Resolves and checks the settings: an issuer and a key that parses for the algorithm are
    /// required; the subject defaults to the issuer (a service account acting as itself), the
    /// audience to the token URL. Problems are pushed onto `errors` as `values.{input}`.
    pub fn resolve(inputs: AssertionInputs<'_>, errors: &mut Vec<FieldError>) -> Option<Self> {
        use secrecy::ExposeSecret;
        let issuer = inputs.issuer.filter(|s| !s.is_empty());
        if issuer.is_none() {
            errors.push(FieldError::new("values.issuer", "is required for a JWT bearer grant"));
        }
        let algorithm = match inputs.algorithm.filter(|s| !s.is_empty()) {
            None => Some(AssertionAlgorithm::Rs256),
            Some(a) => AssertionAlgorithm::parse(a),
        };
        let Some(algorithm) = algorithm else {
            let message = format!("must be one of {}", AssertionAlgorithm::NAMES.join(", "));
            errors.push(FieldError::new("values.algorithm", message));
            return None;
        };
        let key = match inputs.private_key {
            None => {
                errors.push(FieldError::new("values.privateKey", "is required for a JWT bearer grant"));
                None
            }
            Some(pem) => match algorithm.signing_key(pem.expose_secret()) {
                Ok(key) => Some(key),
                Err(message) => {
                    errors.push(FieldError::new("values.privateKey", message));
                    None
                }
            },
        };
        let (issuer, key) = (issuer?, key?);
        Some(Self {
            issuer: issuer.to_owned(),
            subject: inputs.subject.filter(|s| !s.is_empty()).unwrap_or(issuer).to_owned(),
            audience: inputs.audience.filter(|s| !s.is_empty()).unwrap_or(inputs.token_url).to_owned(),
            algorithm,
            key_id: inputs.key_id.filter(|s| !s.is_empty()).map(str::to_owned),
            key,
        })
    }

    /// A new assertion, issued at `now`: a compact JWS with `kid` in its header when set.
    ///
    /// # Errors
    /// The signature failed (a key that parsed but cannot sign: checked when it was written, so
    /// only a library failure); the message names no part of the key.
    pub fn sign(&self, now: OffsetDateTime) -> Result<SecretString, &'static str> {
        let mut header = Header::new(self.algorithm.jose());
        header.kid = self.key_id.clone();
        let iat = now.unix_timestamp();
        let claims = Claims {
            iss: &self.issuer,
            sub: &self.subject,
            aud: &self.audience,
            iat,
            exp: iat + ASSERTION_LIFETIME.whole_seconds(),
            jti: URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 16]>()),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|_| "the private key could not sign the assertion")
    }
}

/// The field errors (422) of a JWT bearer connection's new values: an `algorithm` that is not
/// `RS256` or `ES256`, a `privateKey` of its own that does not parse for the effective algorithm
/// (its own, else the definition's). Empty for other kinds. A key the change did not write
/// (`key_written` false: the connection's kept key, or the definition's key it inherits, taken
/// from the unsealed `defaults`) that does not fit a new `algorithm` is that algorithm's error,
/// `values.algorithm`, so a connection never holds settings it cannot sign with. The key is never
/// quoted.
pub(crate) fn value_errors(def: &Definition, values: &Values, defaults: &Values, key_written: bool) -> Vec<FieldError> {
    if def.auth != AuthKind::Oauth2JwtBearer {
        return Vec::new();
    }
    let own_algorithm = values.plain.get(ALGORITHM_INPUT);
    let algorithm = own_algorithm
        .or_else(|| def.inputs.get(ALGORITHM_INPUT).and_then(|i| i.default.as_ref()))
        .map(|a| (ALGORITHM_INPUT.to_owned(), a.clone()));
    let own_key = values.secret.get(PRIVATE_KEY_INPUT);
    let inherited_key = own_algorithm
        .filter(|_| own_key.is_none() && def.by_reference(PRIVATE_KEY_INPUT))
        .and_then(|_| defaults.secret.get(PRIVATE_KEY_INPUT));
    let key = own_key.or(inherited_key).map(|k| (PRIVATE_KEY_INPUT.to_owned(), k.clone()));
    let kept = key.is_some() && !(key_written && own_key.is_some());
    let mut errors =
        check_assertion_values(&algorithm.into_iter().collect(), &key.into_iter().collect(), "values.", "");
    if kept {
        rename_kept_key_errors(&mut errors, "values.privateKey", "values.algorithm");
    }
    errors
}

/// The field errors (422) of a definition re-PUT that keeps its stored private key (`{"set":
/// true}`): the kept key, unsealed, must fit the new `algorithm` default (absent: `RS256`), else
/// every connection would fail at its next token request. Errors name
/// `inputs.algorithm.default` and never quote the key.
pub(crate) fn kept_key_errors(inputs: &indexmap::IndexMap<String, Input>, kept: &SecretString) -> Vec<FieldError> {
    let algorithm = inputs.get(ALGORITHM_INPUT).and_then(|i| i.default.clone());
    let plain = algorithm.map(|a| (ALGORITHM_INPUT.to_owned(), a)).into_iter().collect();
    let secret = BTreeMap::from([(PRIVATE_KEY_INPUT.to_owned(), kept.clone())]);
    let mut errors = check_assertion_values(&plain, &secret, "inputs.", ".default");
    rename_kept_key_errors(&mut errors, "inputs.privateKey.default", "inputs.algorithm.default");
    errors
}

/// A kept key that does not fit is the new algorithm's error: the caller did not send the key.
fn rename_kept_key_errors(errors: &mut [FieldError], key_field: &str, algorithm_field: &str) {
    for e in errors.iter_mut().filter(|e| e.field == key_field) {
        *e = FieldError::new(
            algorithm_field,
            format!("does not fit the private key kept (it {}): send a new private key with it", e.message),
        );
    }
}

impl Service {
    /// A new JWT bearer connection gets its first token at once (SPEC section 12: no user to
    /// wait for), through the lookup's single-flight path. A refusal turns it red there (a
    /// wrong key, an unknown issuer: `client_rejected`); a transient failure leaves it
    /// `configured` with the sweep's retry scheduled. Either way the connection exists: the
    /// caller reads the outcome from the returned record.
    pub(crate) async fn obtain_at_connect(&self, c: Connection) -> Connection {
        if c.auth != Some(AuthKind::Oauth2JwtBearer) {
            return c;
        }
        match self.fresh_for_lookup(c.clone(), time::Duration::ZERO).await {
            Ok(done) => done,
            Err(e) => {
                tracing::info!(org = %c.org, connection_id = %c.id, error = %e, "no token at connect");
                match self.store.get_connection(&c.org, &c.id).await {
                    Ok(Some(latest)) => latest,
                    _ => c,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use secrecy::ExposeSecret;

    use super::*;

    const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsVkHgx92n/97vy4C
Thq4WVovPSyXH+L4xUm6CRrLDjqhRANCAAS8Rdif+t1qAVW3mxbJMBn8SdUOAs+L
HKfgnrSJEwCEUnxdlUtrWPDmkwMqQP9YdjSovdejZ+rZTjGxr4gX0LBF
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEvEXYn/rdagFVt5sWyTAZ/EnVDgLP
ixyn4J60iRMAhFJ8XZVLa1jw5pMDKkD/WHY0qL3Xo2fq2U4xsa+IF9CwRQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn each_assertion_is_short_lived_signed_with_its_kid_and_a_new_jti() {
        let key = SecretString::from(EC_KEY.to_owned());
        let mut errors = Vec::new();
        let signer = AssertionSigner::resolve(
            AssertionInputs {
                issuer: Some("svc@example.iam"),
                subject: None,
                audience: None,
                algorithm: Some("ES256"),
                key_id: Some("k-1"),
                private_key: Some(&key),
                token_url: "https://idp.example.com/token",
            },
            &mut errors,
        )
        .expect("resolves");
        assert!(errors.is_empty());
        assert!(!format!("{signer:?}").contains("BEGIN"), "Debug never shows the key");
        let now = OffsetDateTime::now_utc();
        let (a, b) = (signer.sign(now).unwrap(), signer.sign(now).unwrap());
        let header = jsonwebtoken::decode_header(a.expose_secret()).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k-1"));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["https://idp.example.com/token"]);
        validation.set_issuer(&["svc@example.iam"]);
        let decoding = DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).unwrap();
        let read = |t: &SecretString| {
            jsonwebtoken::decode::<serde_json::Value>(t.expose_secret(), &decoding, &validation).unwrap().claims
        };
        let (ca, cb) = (read(&a), read(&b));
        assert_eq!(ca["sub"], "svc@example.iam", "the subject defaults to the issuer");
        assert_eq!(ca["exp"].as_i64().unwrap() - ca["iat"].as_i64().unwrap(), 300);
        assert_ne!(ca["jti"], cb["jti"]);
        assert!(ca["jti"].as_str().unwrap().len() >= 22, "128 bits or more");
    }

    #[test]
    fn missing_or_unusable_settings_name_their_input() {
        let key = SecretString::from("not a key".to_owned());
        let mut errors = Vec::new();
        let signer = AssertionSigner::resolve(
            AssertionInputs {
                issuer: None,
                subject: None,
                audience: None,
                algorithm: None,
                key_id: None,
                private_key: Some(&key),
                token_url: "https://idp.example.com/token",
            },
            &mut errors,
        );
        assert!(signer.is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["values.issuer", "values.privateKey"]);
        assert!(errors.iter().all(|e| !e.message.contains("not a key")));
    }
}
