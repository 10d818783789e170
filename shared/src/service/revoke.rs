//! Disconnect and delete: the tokens leave the connection at once; a revocation job holding them
//! (sealed) revokes them at the provider per RFC 7009, asynchronously and with retries.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ConnectionView, Result, Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::{Connection, ConnectionId, Event, EventType, LogType, OrgId, Principal, RevocationJob, Status};
use crate::ports::StoreError;

/// How long a revocation job may live, and how often it is tried.
const JOB_LIFETIME: time::Duration = time::Duration::days(3);
pub const MAX_REVOKE_ATTEMPTS: u32 = 12;
/// A claimed attempt is retried by others after this if its worker died.
const CLAIM: time::Duration = time::Duration::seconds(60);

#[derive(Serialize, Deserialize)]
struct RevokeSettings {
    revoke_url: String,
    public_only: bool,
    client_id: String,
    client_secret: Option<String>,
    post_auth: bool,
}

#[derive(Deserialize)]
struct SealedTokens {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// What one attempt at a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// Final failure (refused, or attempts exhausted): the job is dropped.
    GaveUp,
    /// Transient failure: retried later.
    Retrying,
    /// Another worker holds this attempt.
    Skipped,
}

enum RevokeAnswer {
    Done,
    Final(String),
    Transient(String, Option<Duration>),
}

impl Service {
    /// A revocation job for `c`'s tokens, or `None` when there is nothing to revoke (no tokens,
    /// or the definition has no revocation endpoint: the tokens are just dropped, and logged).
    async fn revocation_job(&self, c: &Connection) -> Result<Option<RevocationJob>> {
        let Some(tokens) = &c.oauth else {
            return Ok(None);
        };
        let def = self.definition_of(c).await?;
        let secrets = self.open_secrets(c).await?;
        let settings = match self.oauth_settings(&def, c, &secrets).await {
            Ok(s) => s,
            Err(_) => {
                self.log(
                    c,
                    LogType::Revoked,
                    "tokens dropped: the OAuth settings are incomplete, nothing to revoke with",
                )
                .await;
                return Ok(None);
            }
        };
        let Some((revoke_url, public_only)) = settings.revoke_url.clone() else {
            self.log(c, LogType::Revoked, "tokens dropped: the definition has no revokeUrl").await;
            return Ok(None);
        };
        let plain = RevokeSettings {
            revoke_url: revoke_url.to_string(),
            public_only,
            client_id: settings.client_id().to_owned(),
            client_secret: settings.client_secret().map(|s| s.expose_secret().to_owned()),
            post_auth: settings.post_auth(),
        };
        let json = SecretString::from(serde_json::to_string(&plain).map_err(|_| ServiceError::Conflict("settings"))?);
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let now = self.clock.now();
        Ok(Some(RevocationJob {
            id: ulid::Ulid::new().to_string(),
            org: c.org.clone(),
            connection_id: c.id.clone(),
            definition: c.definition.clone(),
            tokens: tokens.sealed.clone(),
            settings: self.envelope.seal_str(&ctx, &json).await?,
            attempts: 0,
            next_attempt_at: now,
            expires_at: now + JOB_LIFETIME,
        }))
    }

    /// `POST /v1/connections/{id}/disconnect`: credentials gone at once (lookups fail), refresh
    /// stopped, the connection kept (`disconnected`) to be authorized or configured again.
    pub async fn disconnect(&self, p: &Principal, id: &str) -> Result<ConnectionView> {
        let c = self.visible_connection(p, id).await?;
        super::connections::require_manage(p, &c)?;
        if c.status != Status::Disconnected {
            let done = self.strip_credentials(p, id).await?;
            self.log(&done, LogType::Disconnected, "disconnected: credentials removed").await;
            self.emit(Event::about(EventType::ConnectionDisconnected, &done)).await;
        }
        self.get_connection(p, id).await
    }

    /// Removes the credentials with a version-conditional write and queues the revocation of the
    /// tokens it removed. The write fences concurrent refreshes: one that finished before it is
    /// seen (its tokens are the ones revoked), one that finishes after it finds a new generation
    /// and revokes its own tokens.
    pub(crate) async fn strip_credentials(&self, p: &Principal, id: &str) -> Result<Connection> {
        for _ in 0..5 {
            let c = self.visible_connection(p, id).await?;
            let job = self.revocation_job(&c).await?;
            let mut next = c.clone();
            next.status = Status::Disconnected;
            next.error = None;
            next.oauth = None;
            next.refresh = Default::default();
            next.generation = c.generation + 1;
            // Without OAuth, the stored passwords are the credentials (an API key): they leave
            // too. OAuth connections keep their client settings, to be authorized again.
            if !c.auth.is_some_and(|a| a.is_oauth()) {
                next.secrets = None;
                next.secret_names.clear();
            }
            next.version = c.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, c.version).await {
                Ok(()) => {
                    self.queue_revocation(&next, job).await;
                    return Ok(next);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict("the connection is being changed concurrently; retry"))
    }

    /// Stores the job; a failure is logged (the credentials are gone from the connection
    /// already, which is what the caller asked for).
    pub(crate) async fn queue_revocation(&self, c: &Connection, job: Option<RevocationJob>) {
        if let Some(job) = job
            && let Err(e) = self.store.put_revocation(&job).await
        {
            tracing::error!(org = %c.org, connection_id = %c.id, error = %e, "storing a revocation job failed");
        }
    }

    /// Runs the pending revocation jobs of one connection now (the `token-revoke` function and
    /// `latchkey serve` call it on `Connection Disconnected` / `Connection Deleted`). A replayed
    /// event finds no job and does nothing.
    pub async fn revoke_pending(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevokeOutcome>> {
        let jobs = self.store.revocations_of(org, id).await?;
        Ok(self.run_jobs(jobs, None).await)
    }

    /// Runs the revocation jobs whose retry time has come (part of the sweep), starting none
    /// after `deadline`: the rest stay due for the next sweep, and an attempt never runs into the
    /// end of a Lambda invocation.
    pub async fn revoke_due(&self, deadline: std::time::Instant) -> Result<Vec<RevokeOutcome>> {
        let jobs = self.store.due_revocations(self.clock.now(), 100).await?;
        Ok(self.run_jobs(jobs, Some(deadline)).await)
    }

    /// One job's failure (a store or key error) does not keep the others from running.
    async fn run_jobs(&self, jobs: Vec<RevocationJob>, deadline: Option<std::time::Instant>) -> Vec<RevokeOutcome> {
        let mut outcomes = Vec::new();
        for job in jobs {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                break;
            }
            match self.attempt_revocation(job).await {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    tracing::warn!(error = %e, "a revocation attempt failed");
                    outcomes.push(RevokeOutcome::Retrying);
                }
            }
        }
        outcomes
    }

    async fn attempt_revocation(&self, job: RevocationJob) -> Result<RevokeOutcome> {
        let now = self.clock.now();
        if job.next_attempt_at > now {
            return Ok(RevokeOutcome::Skipped);
        }
        if job.expires_at <= now {
            self.store.delete_revocation(&job).await?;
            return Ok(RevokeOutcome::GaveUp);
        }
        // Claim this attempt: of concurrent workers (event and sweep), one proceeds.
        let mut claimed = job.clone();
        claimed.attempts = job.attempts + 1;
        claimed.next_attempt_at = now + CLAIM;
        match self.store.update_revocation(&claimed, job.attempts).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Ok(RevokeOutcome::Skipped),
            Err(e) => return Err(e.into()),
        }
        let (tokens, settings) = match self.open_job(&job).await {
            Ok(opened) => opened,
            // Counted as a failed attempt: retried later, dropped after the last one.
            Err(e) => {
                tracing::warn!(org = %job.org, connection_id = %job.connection_id, error = %e, "a revocation job cannot be opened");
                if claimed.attempts >= MAX_REVOKE_ATTEMPTS {
                    self.store.delete_revocation(&claimed).await?;
                    return Ok(RevokeOutcome::GaveUp);
                }
                return Ok(RevokeOutcome::Retrying);
            }
        };

        // The refresh token first (revoking it usually ends the whole grant), then the access
        // token, in case the provider keeps them apart.
        let mut pending: Vec<(&str, &str)> = Vec::new();
        if let Some(r) = &tokens.refresh_token {
            pending.push((r.as_str(), "refresh_token"));
        }
        pending.push((tokens.access_token.as_str(), "access_token"));
        let mut failure = None;
        let mut refused = None;
        for (token, hint) in pending {
            match self.revoke_one(&settings, token, hint).await {
                RevokeAnswer::Done => {}
                RevokeAnswer::Final(code) => refused = Some(code),
                RevokeAnswer::Transient(code, retry_after) => {
                    failure = Some((code, retry_after));
                    break;
                }
            }
        }
        let connection = self.store.get_connection(&job.org, &job.connection_id).await.ok().flatten();
        match failure {
            None => {
                self.store.delete_revocation(&claimed).await?;
                if let Some(c) = &connection {
                    let message = match &refused {
                        None => "tokens revoked at the provider".to_owned(),
                        Some(code) => format!("revocation refused by the provider ({code}); tokens dropped"),
                    };
                    let kind = if refused.is_none() { LogType::Revoked } else { LogType::RevokeFailed };
                    self.log(c, kind, message).await;
                }
                tracing::info!(org = %job.org, connection_id = %job.connection_id, refused = refused.is_some(), "revocation done");
                Ok(if refused.is_none() { RevokeOutcome::Revoked } else { RevokeOutcome::GaveUp })
            }
            Some((code, retry_after)) if claimed.attempts >= MAX_REVOKE_ATTEMPTS => {
                self.store.delete_revocation(&claimed).await?;
                if let Some(c) = &connection {
                    self.log(
                        c,
                        LogType::RevokeFailed,
                        format!("revocation failed ({code}); gave up after {} attempts", claimed.attempts),
                    )
                    .await;
                }
                let _ = retry_after;
                Ok(RevokeOutcome::GaveUp)
            }
            Some((code, retry_after)) => {
                // 4 s, 8 s, ... up to an hour: 12 attempts span about two and a half hours.
                let backoff = Duration::from_secs(2u64 << claimed.attempts.min(12)).min(Duration::from_secs(3600));
                let wait = retry_after.map_or(backoff, |r| r.max(backoff).min(Duration::from_secs(86_400)));
                let mut retry = claimed.clone();
                retry.next_attempt_at = now + wait;
                // Only this worker holds the claim, so the attempts count is still ours.
                match self.store.update_revocation(&retry, claimed.attempts).await {
                    Ok(()) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e.into()),
                }
                if let Some(c) = &connection {
                    self.log(
                        c,
                        LogType::RevokeFailed,
                        format!("revocation failed ({code}); retrying in {} s", wait.as_secs()),
                    )
                    .await;
                }
                Ok(RevokeOutcome::Retrying)
            }
        }
    }

    async fn open_job(&self, job: &RevocationJob) -> Result<(SealedTokens, RevokeSettings)> {
        let ctx = EncryptionContext::connection(&job.org, &job.connection_id);
        let bad = || ServiceError::Crypto(crate::crypto::CryptoError::Decrypt);
        let tokens = serde_json::from_str(self.envelope.open_str(&ctx, &job.tokens).await?.expose_secret())
            .map_err(|_| bad())?;
        let settings = serde_json::from_str(self.envelope.open_str(&ctx, &job.settings).await?.expose_secret())
            .map_err(|_| bad())?;
        Ok((tokens, settings))
    }

    /// Tokens obtained by an authorization or refresh that raced a disconnect or delete: they
    /// never reach the connection, and are revoked like the ones disconnect removed.
    pub(crate) async fn revoke_orphaned(&self, c: &Connection, tokens: crate::domain::OAuthTokens) {
        let mut ghost = c.clone();
        ghost.oauth = Some(tokens);
        match self.revocation_job(&ghost).await {
            Ok(job) => self.queue_revocation(c, job).await,
            Err(e) => {
                tracing::error!(connection_id = %c.id, error = %e, "queueing the revocation of orphaned tokens failed")
            }
        }
    }

    /// One RFC 7009 request: 200 is success whatever the body; `unsupported_token_type` (and any
    /// other 4xx refusal) is final; 429, 5xx and network failures are transient.
    async fn revoke_one(&self, settings: &RevokeSettings, token: &str, hint: &str) -> RevokeAnswer {
        let client = if settings.public_only { &self.http_public } else { &self.http };
        let mut form: Vec<(&str, &str)> = vec![("token", token), ("token_type_hint", hint)];
        let mut request = client.post(&settings.revoke_url);
        if settings.post_auth {
            form.push(("client_id", &settings.client_id));
            if let Some(secret) = &settings.client_secret {
                form.push(("client_secret", secret));
            }
        } else {
            request = request
                .basic_auth(form_encode(&settings.client_id), settings.client_secret.as_deref().map(form_encode));
        }
        let response = match request.form(&form).send().await {
            Ok(r) => r,
            Err(_) => return RevokeAnswer::Transient("temporarily_unavailable".into(), None),
        };
        let status = response.status().as_u16();
        let retry_after = super::oauth::retry_after(response.headers());
        match status {
            200..=299 => RevokeAnswer::Done,
            429 | 500..=599 => RevokeAnswer::Transient(format!("http_{status}"), retry_after),
            _ => {
                // The body is read only for its `error` code, never logged as a whole.
                let code = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                    .unwrap_or_else(|| format!("http_{status}"));
                RevokeAnswer::Final(code)
            }
        }
    }
}

/// RFC 6749 section 2.3.1: client credentials in a Basic header are form-encoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
