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

/// Verifies bearer tokens. Built once; holds the HS256 secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn hs256(secret: &SecretString) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp"]);
        Self { key: DecodingKey::from_secret(secret.expose_secret().as_bytes()), validation }
    }

    /// The principal of a valid token. The reason of a failure is generic on purpose.
    pub fn verify(&self, token: &str) -> Result<Principal, Problem> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| Problem::unauthorized("the bearer token is invalid or expired"))?;
        let c = data.claims;
        let org = OrgId::parse(&c.org).map_err(|_| Problem::unauthorized("the token's org claim is invalid"))?;
        let customer = c
            .customer
            .as_deref()
            .map(CustomerId::parse)
            .transpose()
            .map_err(|_| Problem::unauthorized("the token's customer claim is invalid"))?;
        Ok(Principal { org, customer, roles: c.roles })
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
