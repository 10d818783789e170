//! Bearer-token authentication (RFC 6750): every caller's JWT (RFC 7519) is verified here, in
//! `latchkey serve` and in the deployed functions alike.
//!
//! Two kinds of tokens, chosen by the header's `alg` and accepted only where configured:
//! - **RS256 / ES256** from a [`JwtIssuer`] (`LATCHKEY_JWT_ISSUER`, `LATCHKEY_JWT_AUDIENCE`):
//!   signed with a key of the issuer's JWK Set (RFC 7517, found through OpenID Connect
//!   Discovery / RFC 8414 metadata), `iss` equal to the issuer, `aud` naming an accepted
//!   audience.
//! - **HS256** signed with a local secret of at least [`MIN_HS256_SECRET_BYTES`] bytes
//!   (`LATCHKEY_JWT_SECRET`, or the secret `latchkey serve` generates).
//!
//! Any other `alg` (`none` included), a token of a kind that is not configured (an HS256 token
//! where only an issuer is: algorithm confusion), a bad signature, `exp` passed or `nbf` to come
//! (both with [`CLOCK_SKEW`] of leeway), a wrong `iss` or `aud`, and claims of the wrong shape are
//! 401. A verifier with neither kind refuses every token. The claims of API Gateway's JWT
//! authorizer never authenticate anyone: when present they must agree with the verified token.

mod cache;
mod jwks;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use self::cache::{CAPACITY as VERIFIED_TOKENS_CAPACITY, MAX_AGE as VERIFIED_TOKEN_MAX_AGE};
pub use self::jwks::{
    CONNECT_TIMEOUT, FAILURE_BACKOFF, FETCH_TIMEOUT, IssuerError, JwtIssuer, KEYS_MAX_AGE, MAX_DOCUMENT_BYTES,
    MAX_KEYS, UNKNOWN_KID_REFETCH_INTERVAL,
};
use super::RouterState;
use super::problem::Problem;
use crate::domain::{CustomerId, OrgId, Principal};

/// The shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key of at least the hash's
/// size, 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Leeway on `exp` and `nbf` for clocks that disagree.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Longer bearer tokens are refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claims `latchkey token` signs (HS256 development tokens).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Expiry, seconds since the Unix epoch (RFC 7519 §4.1.4).
    pub exp: u64,
}

/// The claims Latchkey reads from a verified token. `customer` and `roles` keep what the token
/// said, `null` included, so that a present-but-null claim is refused rather than read as absent.
#[derive(Deserialize)]
struct TokenClaims {
    org: String,
    #[serde(default, deserialize_with = "present")]
    customer: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    roles: Option<Value>,
    /// Checked by jsonwebtoken (a required claim); read here only for how long the token may
    /// be answered from the cache.
    #[serde(default)]
    exp: Option<Value>,
}

/// `Some` for any value a claim has, `null` included (serde reads `null` as `None` otherwise).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why the configuration of a verifier is refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(
        "an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} bytes (256 bits), this one has {0}; \
         generate one with `openssl rand -hex 32`"
    )]
    SecretTooShort(usize),
}

struct Hs256 {
    key: DecodingKey,
    validation: Validation,
}

struct Issuer {
    keys: JwtIssuer,
    /// One per algorithm: jsonwebtoken wants the algorithms of a validation in one family.
    rs256: Validation,
    es256: Validation,
}

/// How callers are authenticated. Built once per process or container. Tokens it accepted are
/// remembered (by SHA-256, [`VERIFIED_TOKENS_CAPACITY`] at most) until their `exp` or
/// [`VERIFIED_TOKEN_MAX_AGE`], whichever comes first; refusals never are.
pub struct Verifier {
    hs256: Option<Hs256>,
    issuer: Option<Issuer>,
    verified: cache::VerifiedTokens,
}

/// Why a token is refused; the reason is logged (debug) and phrased for the caller here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Algorithm,
    Expired,
    NotYetValid,
    /// Signature, issuer, audience or required claim.
    Invalid,
    UnknownKey,
    Claims,
    IssuerUnavailable,
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Self {
        tracing::debug!(reason = ?r, "bearer token refused");
        match r {
            Refusal::Malformed => Problem::unauthorized("the bearer token is not a well-formed JWT"),
            Refusal::Algorithm => Problem::unauthorized("the bearer token's algorithm is not accepted here"),
            Refusal::Expired | Refusal::NotYetValid => {
                Problem::unauthorized("the bearer token is expired or not valid yet")
            }
            Refusal::Invalid | Refusal::UnknownKey => Problem::unauthorized("the bearer token is invalid"),
            Refusal::Claims => Problem::unauthorized("the bearer token's claims are invalid"),
            Refusal::IssuerUnavailable => Problem {
                detail: "the token issuer's signing keys cannot be fetched; try again shortly".into(),
                ..Problem::unavailable()
            },
        }
    }
}

fn refusal(e: &jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        ErrorKind::Json(_) => Refusal::Claims,
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => Refusal::Malformed,
        _ => Refusal::Invalid,
    }
}

fn principal(org: &str, customer: Option<&str>, roles: Vec<String>) -> Result<Principal, Problem> {
    let org = OrgId::parse(org).map_err(|_| Problem::unauthorized("the token's org claim is invalid"))?;
    let customer = customer
        .map(CustomerId::parse)
        .transpose()
        .map_err(|_| Problem::unauthorized("the token's customer claim is invalid"))?;
    Ok(Principal { org, customer, roles })
}

impl TokenClaims {
    fn into_principal(self) -> Result<Principal, Problem> {
        // A customer claim that is present must be a customer: `null`, `""` or a number never
        // make the caller an organization user.
        let customer = match &self.customer {
            None => None,
            Some(Value::String(c)) => Some(c.as_str()),
            Some(_) => return Err(Problem::unauthorized("the token's customer claim must be a string")),
        };
        let roles = match self.roles {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|r| match r {
                    Value::String(r) => Ok(r),
                    _ => Err(Problem::unauthorized("the token's roles claim must be a list of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Problem::unauthorized("the token's roles claim must be a list of strings")),
        };
        principal(&self.org, customer, roles)
    }
}

fn validation(algorithms: Vec<Algorithm>) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = algorithms;
    v.leeway = CLOCK_SKEW.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v
}

impl Verifier {
    /// A verifier that refuses every token: what runs when nothing is configured, rather than
    /// trusting claims nobody verified.
    pub fn refuse_all() -> Self {
        Self { hs256: None, issuer: None, verified: cache::VerifiedTokens::new(cache::CAPACITY, cache::MAX_AGE) }
    }

    /// HS256 tokens signed with `secret` (its bytes as given).
    ///
    /// # Errors
    /// [`VerifierError::SecretTooShort`] under [`MIN_HS256_SECRET_BYTES`].
    pub fn hs256(secret: &SecretString) -> Result<Self, VerifierError> {
        Self::refuse_all().with_hs256(secret)
    }

    /// RS256/ES256 tokens of `issuer`.
    pub fn jwks(issuer: JwtIssuer) -> Self {
        Self::refuse_all().with_issuer(issuer)
    }

    /// This verifier, accepting HS256 tokens signed with `secret` too.
    ///
    /// # Errors
    /// [`VerifierError::SecretTooShort`] under [`MIN_HS256_SECRET_BYTES`].
    pub fn with_hs256(mut self, secret: &SecretString) -> Result<Self, VerifierError> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_HS256_SECRET_BYTES {
            return Err(VerifierError::SecretTooShort(bytes.len()));
        }
        let mut validation = validation(vec![Algorithm::HS256]);
        validation.set_required_spec_claims(&["exp"]);
        // Tokens of the local secret are this deployment's own; they carry no audience.
        validation.validate_aud = false;
        self.hs256 = Some(Hs256 { key: DecodingKey::from_secret(bytes), validation });
        Ok(self)
    }

    /// This verifier, accepting RS256/ES256 tokens of `issuer` too.
    pub fn with_issuer(mut self, issuer: JwtIssuer) -> Self {
        let of = |alg| {
            let mut v = validation(vec![alg]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.set_issuer(&[issuer.issuer()]);
            v.set_audience(issuer.audiences());
            v
        };
        let (rs256, es256) = (of(Algorithm::RS256), of(Algorithm::ES256));
        self.issuer = Some(Issuer { keys: issuer, rs256, es256 });
        self
    }

    /// Whether any token can pass (an HS256 secret or an issuer is configured).
    pub fn accepts_any(&self) -> bool {
        self.hs256.is_some() || self.issuer.is_some()
    }

    /// The principal of a valid bearer token: 401 problems for refused tokens, 503 when the
    /// issuer's keys cannot be fetched. The problem's detail never quotes the token.
    pub async fn verify(&self, token: &str) -> Result<Principal, Problem> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Malformed.into());
        }
        let now = jsonwebtoken::get_current_timestamp();
        let key = cache::VerifiedTokens::key(token);
        if let Some(principal) = self.verified.get(&key, now) {
            return Ok(principal);
        }
        let mut claims = self.verify_claims(token).await?;
        // jsonwebtoken checked `exp` is a number in range; a float is floored.
        let exp = claims.exp.take().and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)));
        let principal = claims.into_principal()?;
        if let Some(exp) = exp {
            self.verified.put(key, &principal, exp, now);
        }
        Ok(principal)
    }

    async fn verify_claims(&self, token: &str) -> Result<TokenClaims, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Malformed);
        }
        // An unknown `alg` (`none` included) fails here: jsonwebtoken's `Algorithm` has no
        // `none`.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) => Refusal::Algorithm,
            _ => Refusal::Malformed,
        })?;
        match header.alg {
            Algorithm::HS256 => {
                let hs = self.hs256.as_ref().ok_or(Refusal::Algorithm)?;
                jsonwebtoken::decode::<TokenClaims>(token, &hs.key, &hs.validation)
                    .map(|d| d.claims)
                    .map_err(|e| refusal(&e))
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let issuer = self.issuer.as_ref().ok_or(Refusal::Algorithm)?;
                let kid = header.kid.as_deref();
                let set = issuer.keys.keys(alg, kid).await.map_err(|e| match e {
                    jwks::KeyError::Unknown => Refusal::UnknownKey,
                    jwks::KeyError::Unavailable => Refusal::IssuerUnavailable,
                })?;
                let validation = if alg == Algorithm::RS256 { &issuer.rs256 } else { &issuer.es256 };
                let mut last = Refusal::UnknownKey;
                for key in set.matching(alg, kid) {
                    match jsonwebtoken::decode::<TokenClaims>(token, key, validation) {
                        Ok(d) => return Ok(d.claims),
                        // Without a `kid`, another key of the set may have signed it.
                        Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Refusal::Invalid,
                        Err(e) => return Err(refusal(&e)),
                    }
                }
                Err(last)
            }
            _ => Err(Refusal::Algorithm),
        }
    }
}

/// Signs a development token (`latchkey token`, the token printed by `latchkey serve`).
pub fn sign_hs256(secret: &SecretString, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive).
fn bearer_token(parts: &Parts) -> Result<&str, Problem> {
    let missing = || Problem::unauthorized("an Authorization: Bearer token is required");
    let header =
        parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
    let (scheme, token) = header.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// The claims API Gateway's JWT authorizer put in the request context, if any. Anyone who may
/// invoke the function directly can write these: they are never trusted on their own.
fn authorizer_claims(parts: &Parts) -> Option<&HashMap<String, String>> {
    match parts.extensions.get::<lambda_http::request::RequestContext>() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => {
            ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).map(|jwt| &jwt.claims)
        }
        _ => None,
    }
}

/// Authorizer claims must name the verified token's organization and customer (API Gateway
/// flattens claims to strings: an absent customer is an absent key).
fn check_authorizer_claims(claims: &HashMap<String, String>, verified: &Principal) -> Result<(), Problem> {
    let org = claims.get("org").map(String::as_str);
    let customer = claims.get("customer").map(String::as_str);
    if org == Some(verified.org.as_str()) && customer == verified.customer.as_ref().map(|c| c.as_str()) {
        Ok(())
    } else {
        tracing::warn!("API Gateway authorizer claims disagree with the verified bearer token");
        Err(Problem::unauthorized("the authorizer's claims do not match the bearer token"))
    }
}

impl FromRequestParts<RouterState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &RouterState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let principal = state.verifier.verify(token).await?;
        if let Some(claims) = authorizer_claims(parts) {
            check_authorizer_claims(claims, &principal)?;
        }
        // The request's span (`http::trace::trace_request`) names the organization from here on.
        tracing::Span::current().record("org", principal.org.as_str());
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = "unit-test-secret-unit-test-secret-0123";

    fn sign(claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::hs256(&SecretString::from(SECRET)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[tokio::test]
    async fn hs256_claims_become_a_principal_and_null_is_not_absent() {
        let v = verifier();
        let exp = now() + 600;
        let p = v.verify(&sign(&json!({"org": "acme", "customer": "c-1", "roles": ["runtime"], "exp": exp}))).await;
        let p = p.map_err(|p| p.detail).unwrap();
        assert_eq!((p.org.as_str(), p.customer.as_ref().map(|c| c.as_str())), ("acme", Some("c-1")));
        assert!(p.is_runtime());
        assert!(v.verify(&sign(&json!({"org": "acme", "exp": exp}))).await.unwrap().is_organization());
        for bad in [
            json!({"org": "acme", "customer": null, "exp": exp}),
            json!({"org": "acme", "customer": "", "exp": exp}),
            json!({"org": "acme", "customer": 7, "exp": exp}),
            json!({"org": "acme", "roles": null, "exp": exp}),
            json!({"org": "acme", "roles": "runtime", "exp": exp}),
            json!({"org": null, "exp": exp}),
            json!({"customer": "c-1", "exp": exp}),
            json!({"org": "acme"}),
            json!({"org": "acme", "exp": now() - 120}),
            json!({"org": "acme", "exp": exp, "nbf": now() + 120}),
        ] {
            let refused = v.verify(&sign(&bad)).await.unwrap_err();
            assert_eq!(refused.status, 401, "{bad}: {}", refused.detail);
        }
        // Within the clock skew.
        assert!(v.verify(&sign(&json!({"org": "acme", "exp": now() - 5, "nbf": now() + 5}))).await.is_ok());
    }

    #[tokio::test]
    async fn accepted_tokens_are_cached_to_their_own_principal_and_refusals_never_are() {
        let v = verifier();
        let exp = now() + 600;
        let acme = sign(&json!({"org": "acme", "customer": "c-1", "roles": ["runtime"], "exp": exp}));
        let umbrella = sign(&json!({"org": "umbrella", "roles": ["runtime"], "exp": exp}));
        for _ in 0..3 {
            let p = v.verify(&acme).await.unwrap();
            assert_eq!((p.org.as_str(), p.customer.as_ref().map(|c| c.as_str())), ("acme", Some("c-1")));
            assert!(p.is_runtime());
        }
        assert_eq!(v.verified.len(), 1, "the accepted token is kept once");
        let p = v.verify(&umbrella).await.unwrap();
        assert_eq!((p.org.as_str(), p.customer.is_none()), ("umbrella", true), "another organization's token");
        assert_eq!(v.verified.len(), 2);
        // The same claims under a broken signature: refused every time, never kept.
        let (body, signature) = acme.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{body}.{flipped}{}", &signature[1..]);
        for _ in 0..2 {
            assert_eq!(v.verify(&forged).await.unwrap_err().status, 401);
        }
        // Claims refused after the signature checked out are not kept either.
        let bad_claims = sign(&json!({"org": "acme", "customer": 7, "exp": exp}));
        for _ in 0..2 {
            assert_eq!(v.verify(&bad_claims).await.unwrap_err().status, 401);
        }
        // Accepted within the clock skew after its exp: verified every time, never kept.
        let lapsed = sign(&json!({"org": "acme", "exp": now() - 5}));
        assert!(v.verify(&lapsed).await.is_ok());
        let expired = sign(&json!({"org": "acme", "exp": now() - 120}));
        assert_eq!(v.verify(&expired).await.unwrap_err().status, 401);
        assert_eq!(v.verified.len(), 2, "only the two valid tokens are kept");
        // Another verifier (another secret) never answers from this one's cache.
        let other = Verifier::hs256(&SecretString::from("another-secret-another-secret-0123456")).unwrap();
        assert_eq!(other.verify(&acme).await.unwrap_err().status, 401);
    }

    #[tokio::test]
    async fn nothing_configured_refuses_everything() {
        let token = sign(&json!({"org": "acme", "exp": now() + 600}));
        assert!(!Verifier::refuse_all().accepts_any());
        assert_eq!(Verifier::refuse_all().verify(&token).await.unwrap_err().status, 401);
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = SecretString::from("x".repeat(MIN_HS256_SECRET_BYTES - 1));
        assert!(matches!(Verifier::hs256(&short), Err(VerifierError::SecretTooShort(31))));
        assert!(Verifier::hs256(&SecretString::from("x".repeat(MIN_HS256_SECRET_BYTES))).is_ok());
    }

    #[test]
    fn authorizer_claims_must_match_the_verified_token() {
        let p = principal("acme", Some("c-1"), vec!["runtime".into()]).unwrap();
        let claims = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert!(check_authorizer_claims(&claims(&[("org", "acme"), ("customer", "c-1")]), &p).is_ok());
        assert!(check_authorizer_claims(&claims(&[("org", "umbrella"), ("customer", "c-1")]), &p).is_err());
        assert!(check_authorizer_claims(&claims(&[("org", "acme")]), &p).is_err(), "an organization user's claims");
        let org_user = principal("acme", None, Vec::new()).unwrap();
        assert!(check_authorizer_claims(&claims(&[("org", "acme"), ("customer", "c-1")]), &org_user).is_err());
        assert!(check_authorizer_claims(&claims(&[("org", "acme")]), &org_user).is_ok());
    }
}
