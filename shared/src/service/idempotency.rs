//! `Idempotency-Key` (SPEC section 10): a request that creates something may carry a key; the
//! first request with it claims the key in the store (a conditional write) before doing
//! anything, then stores its response. A retry with the same key and body within 24 hours gets
//! that response again and does nothing; the same key with another body is refused; a retry
//! while the first is still running is told to retry later. A request that fails releases the
//! key, so a retry after a validation error or an outage runs again.
//!
//! The body may hold secrets (a basic-auth password), so its hash is stored sealed like a
//! connection's values (the envelope, under the organization's context): a plain hash would let
//! whoever reads the table test guesses of a weak secret. It is opened only to compare, when a
//! key is sent again.
//!
//! Written for any creating route: the route is part of the key's scope ([`routes`]), and the
//! operation is a closure giving the response to store.

use std::future::Future;

use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::idempotency::{request_hash, scoped_id};
use crate::domain::{IdempotencyKey, IdempotencyRecord, Principal, Sealed, StoredResponse};

/// The routes that take an `Idempotency-Key`, as they scope it.
pub mod routes {
    /// `POST /v1/connections`.
    pub const CREATE_CONNECTION: &str = "POST /v1/connections";
    /// `POST /v1/connect/sessions`: its response holds a secret link, stored sealed
    /// ([`super::Service::idempotent_sealed`]).
    pub const CREATE_CONNECT_SESSION: &str = "POST /v1/connect/sessions";
}

/// What an idempotent request answers.
#[derive(Debug)]
pub struct Idempotent {
    pub response: StoredResponse,
    /// Whether this is a stored response given again (nothing was done this time).
    pub replayed: bool,
}

/// Why an idempotent request was not run.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was used with another body (HTTP 422).
    #[error("the idempotency key was used with another request body")]
    Reused,
    /// A request with this key is still running (HTTP 409, retry shortly).
    #[error("a request with this idempotency key is being processed")]
    InProgress,
    /// The operation, or the store, failed; the key was released.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl Service {
    /// Runs `op` once for `key` sent by `p` to `route` with `body`: the first time it runs and
    /// its response is stored; a retry with the same key and body within 24 hours gets that
    /// response back (`replayed`) without running `op`. `op`'s response must hold no secret
    /// (it is stored in clear). If `op` fails, the key is released and the error returned.
    pub async fn idempotent<F, Fut>(
        &self,
        p: &Principal,
        route: &'static str,
        key: &IdempotencyKey,
        body: &Value,
        op: F,
    ) -> Result<Idempotent, IdempotencyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<StoredResponse, ServiceError>>,
    {
        let now = self.clock.now();
        let id = scoped_id(&p.org, p.customer.as_ref(), route, key);
        let hash = request_hash(body);
        let ctx = EncryptionContext::organization(&p.org);
        let sealed = self.envelope.seal(&ctx, hash.as_bytes()).await.map_err(ServiceError::from)?;
        let sealed = serde_json::to_string(&sealed).map_err(ServiceError::unexpected)?;
        let claim = IdempotencyRecord::claim(id, &p.org, route, sealed, now);
        if let Some(existing) = self.store.claim_idempotency(&claim, now).await.map_err(ServiceError::from)? {
            if !self.same_request(&ctx, &existing.request_hash, &hash).await? {
                return Err(IdempotencyError::Reused);
            }
            return match existing.response {
                Some(response) => Ok(Idempotent { response, replayed: true }),
                None => Err(IdempotencyError::InProgress),
            };
        }
        match op().await {
            Ok(response) => {
                // What was done is done: a failure to record it only means a retry within the
                // claim's lease is told to wait, and one after it runs again.
                if let Err(e) = self.store.complete_idempotency(&claim.completed(response.clone())).await {
                    tracing::warn!(org = %p.org, route, error = %e, "storing an idempotent response failed");
                }
                Ok(Idempotent { response, replayed: false })
            }
            Err(e) => {
                if let Err(release) = self.store.release_idempotency(&claim).await {
                    tracing::warn!(org = %p.org, route, error = %release, "releasing an idempotency key failed");
                }
                Err(e.into())
            }
        }
    }

    /// [`Service::idempotent`] for an operation whose response holds a secret (a connect
    /// session's link): the response body is stored sealed (the JSON of a [`Sealed`] under the
    /// organization's encryption context) and opened when it is given again, so the store never
    /// holds the secret in clear. The first answer is `op`'s own, never re-opened.
    pub async fn idempotent_sealed<F, Fut>(
        &self,
        p: &Principal,
        route: &'static str,
        key: &IdempotencyKey,
        body: &Value,
        op: F,
    ) -> Result<Idempotent, IdempotencyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<StoredResponse, ServiceError>>,
    {
        let ctx = EncryptionContext::organization(&p.org);
        let first = std::sync::Mutex::new(None);
        let mut outcome = self
            .idempotent(p, route, key, body, || async {
                let response = op().await?;
                let sealed = self.envelope.seal(&ctx, response.body.as_bytes()).await?;
                let stored = serde_json::to_string(&sealed).map_err(ServiceError::unexpected)?;
                let status = response.status;
                *first.lock().unwrap_or_else(|p| p.into_inner()) = Some(response);
                Ok(StoredResponse { status, body: stored })
            })
            .await?;
        match first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(response) => outcome.response = response,
            None => {
                let sealed: Sealed = serde_json::from_str(&outcome.response.body).map_err(ServiceError::unexpected)?;
                let opened = self.envelope.open(&ctx, &sealed).await.map_err(ServiceError::from)?;
                outcome.response.body = String::from_utf8(opened.to_vec()).map_err(ServiceError::unexpected)?;
            }
        }
        Ok(outcome)
    }

    /// Whether `stored` (a record's [`IdempotencyRecord::request_hash`]: sealed under `ctx`) is
    /// `hash`, compared in constant time.
    ///
    /// # Errors
    /// The key service's, when the sealed hash cannot be opened; `Unexpected` when the record
    /// holds no sealed hash (every record is written sealed).
    async fn same_request(&self, ctx: &EncryptionContext, stored: &str, hash: &str) -> Result<bool, ServiceError> {
        let sealed: Sealed = serde_json::from_str(stored).map_err(ServiceError::unexpected)?;
        let held = self.envelope.open(ctx, &sealed).await?;
        Ok(bool::from(held.as_slice().ct_eq(hash.as_bytes())))
    }
}
