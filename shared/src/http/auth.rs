//! Bearer-token authentication: HS256 JWTs with `org`, optional `customer` and `roles`, `exp`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::problem::Problem;
use crate::domain::{CustomerId, OrgId, Principal};

/// The claims Latchkey reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    pub exp: u64,
}

/// How callers are authenticated. Built once per process or container.
pub enum Verifier {
    /// `Authorization: Bearer` HS256 JWTs signed with `LATCHKEY_JWT_SECRET` (`latchkey serve`,
    /// and the HTTP functions when the secret is set, e.g. under `cargo lambda watch`).
    Hs256 { key: Box<DecodingKey>, validation: Box<Validation> },
    /// The claims of API Gateway's JWT authorizer (RS256/ES256 against the issuer's JWKS),
    /// which API Gateway verified (signature, `exp`, issuer, audience) before invoking the
    /// function. A request without authorizer claims is refused.
    ApiGatewayClaims,
}

fn principal(org: &str, customer: Option<&str>, roles: Vec<String>) -> Result<Principal, Problem> {
    let org = OrgId::parse(org).map_err(|_| Problem::unauthorized("the token's org claim is invalid"))?;
    let customer = customer
        .map(CustomerId::parse)
        .transpose()
        .map_err(|_| Problem::unauthorized("the token's customer claim is invalid"))?;
    Ok(Principal { org, customer, roles })
}

/// API Gateway flattens claims to strings: a list arrives as `[a b]` (or as JSON).
fn roles_claim(raw: &str) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(raw) {
        return list;
    }
    raw.trim_start_matches('[')
        .trim_end_matches(']')
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|r| r.trim_matches('"'))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Verifier {
    pub fn hs256(secret: &SecretString) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp"]);
        Self::Hs256 {
            key: Box::new(DecodingKey::from_secret(secret.expose_secret().as_bytes())),
            validation: Box::new(validation),
        }
    }

    /// The principal of a valid bearer token. The reason of a failure is generic on purpose.
    pub fn verify(&self, token: &str) -> Result<Principal, Problem> {
        let Self::Hs256 { key, validation } = self else {
            return Err(Problem::unauthorized("bearer tokens are verified by API Gateway here"));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|_| Problem::unauthorized("the bearer token is invalid or expired"))?;
        let c = data.claims;
        principal(&c.org, c.customer.as_deref(), c.roles)
    }

    /// The principal of API Gateway JWT-authorizer claims.
    pub fn from_authorizer_claims(claims: &std::collections::HashMap<String, String>) -> Result<Principal, Problem> {
        let org = claims.get("org").ok_or_else(|| Problem::unauthorized("the token has no org claim"))?;
        let roles = claims.get("roles").map(|r| roles_claim(r)).unwrap_or_default();
        // A present but empty or invalid customer is refused, as the HS256 path does: never
        // read as "no customer", which would make the caller an organization user.
        principal(org, claims.get("customer").map(String::as_str), roles)
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

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Verifier::ApiGatewayClaims = *state.verifier {
            let claims = match parts.extensions.get::<lambda_http::request::RequestContext>() {
                Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => {
                    ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).map(|jwt| &jwt.claims)
                }
                _ => None,
            };
            let claims =
                claims.ok_or_else(|| Problem::unauthorized("no verified token (API Gateway JWT authorizer)"))?;
            return Verifier::from_authorizer_claims(claims);
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        state.verifier.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn api_gateway_claims_become_a_principal() {
        let claims = HashMap::from([
            ("org".to_owned(), "acme".to_owned()),
            ("customer".to_owned(), "c-1".to_owned()),
            ("roles".to_owned(), "[runtime admin]".to_owned()),
        ]);
        let p = Verifier::from_authorizer_claims(&claims).map_err(|p| p.detail).unwrap();
        assert_eq!((p.org.as_str(), p.customer.as_ref().map(|c| c.as_str())), ("acme", Some("c-1")));
        assert!(p.is_runtime());
        assert_eq!(roles_claim(r#"["runtime"]"#), ["runtime"]);
        assert!(Verifier::from_authorizer_claims(&HashMap::new()).is_err(), "org is required");
        let empty = HashMap::from([("org".to_owned(), "acme".to_owned()), ("customer".to_owned(), String::new())]);
        assert!(Verifier::from_authorizer_claims(&empty).is_err(), "an empty customer is not an organization user");
    }
}
