//! Disconnect and delete: the tokens leave the connection at once; a revocation job holding them
//! (sealed) revokes them at the provider per RFC 7009, asynchronously and with retries.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::oauth::TokenSecrets;
use super::retry::{Races, exponential};
use super::{ConnectionView, Result, Service};
use crate::crypto::EncryptionContext;
use crate::domain::validate::is_loopback_host;
use crate::domain::{
    AuthKind, Connection, ConnectionId, Event, EventType, LogType, OrgId, Principal, RevocationJob, Status,
};
use crate::ports::StoreError;
use crate::provider::destination::{DestinationError, check_public_destination};
use crate::provider::{ClientAuth, ClientAuthMethod, Reach, RevokeAnswer, read_revoke_answer};

/// How long a revocation job may live, and how often it is tried.
const JOB_LIFETIME: time::Duration = time::Duration::days(3);
pub const MAX_REVOKE_ATTEMPTS: u32 = 12;
/// A claimed attempt is retried by others after this if its worker died.
const CLAIM: time::Duration = time::Duration::seconds(60);
/// How many revocation jobs one run (a connection's jobs, or a sweep's due ones) attempts at
/// once. One after another, a single organization's revocation endpoint that held its answers
/// until the client's timeout held back every job queued after its own, other organizations'
/// included.
pub const REVOKE_CONCURRENCY: usize = 16;
/// How many of those places one organization's jobs may hold at once: the others are for the
/// other organizations. Without it, 16 stuck jobs of one organization's endpoint (each up to two
/// 15 s provider calls) filled a sweep's run, and the jobs behind them waited.
pub const REVOKE_PER_ORGANIZATION: usize = 4;
/// How many due revocation jobs one sweep reads ([`crate::ports::Store::due_revocations`]),
/// round by round: each organization's oldest, then each one's second oldest, and so on. So
/// while fewer organizations than this have jobs due, each one's oldest is read, however many
/// due jobs the others have. A job's first attempt is not the sweep's: it runs on its
/// disconnect's event.
pub const DUE_REVOCATIONS: usize = 100;
/// At most how many of [`DUE_REVOCATIONS`] one organization's jobs take: an organization whose
/// endpoint is down for all its grants gets its 25 oldest retried a sweep (no more calls a
/// sweep to an endpoint that is down, even when no other organization has a job due).
pub const DUE_REVOCATIONS_PER_ORGANIZATION: usize = 25;

/// What a revocation job needs besides the tokens, sealed beside them under the connection's
/// context ([`RevocationJob::settings`]): `{"revoke_url", "client_id", "client_secret",
/// "client_auth"}`, the last one `client_secret_basic` or `client_secret_post`. Its `Debug`
/// redacts the secret.
#[derive(Debug, Serialize, Deserialize)]
struct RevokeSettings {
    revoke_url: String,
    client_id: String,
    /// Written out only into the envelope that seals these settings.
    #[serde(serialize_with = "expose_for_sealing")]
    client_secret: Option<SecretString>,
    client_auth: ClientAuthMethod,
}

/// Serializes the client secret in clear: only for [`RevokeSettings`], whose serialization is
/// sealed at once (`Envelope::seal_json`) and never stored or logged as it is.
fn expose_for_sealing<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    secret.as_ref().map(ExposeSecret::expose_secret).serialize(s)
}

impl RevokeSettings {
    fn client(&self) -> ClientAuth {
        ClientAuth {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            method: self.client_auth,
        }
    }
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

impl Service {
    /// A revocation job for `c`'s tokens, or `None` when there is nothing to revoke (no tokens,
    /// or the definition has no revocation endpoint: the tokens are just dropped, and logged).
    async fn revocation_job(&self, c: &Connection) -> Result<Option<RevocationJob>> {
        let Some(tokens) = &c.oauth else {
            return Ok(None);
        };
        if c.auth == Some(AuthKind::Oauth1) {
            // RFC 5849 defines no revocation: the access token lives at the provider until the
            // user or the provider revokes it there.
            self.log(
                c,
                LogType::Disconnected,
                "tokens deleted, not revoked: OAuth 1.0a has no standard revocation; the provider keeps the \
                 grant until the user revokes it there",
            )
            .await;
            return Ok(None);
        }
        let def = self.definition_of(c).await?;
        let settings = match self.oauth_settings(&def, c).await {
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
        let Some(revoke) = settings.revoke.clone() else {
            self.log(c, LogType::Revoked, "tokens dropped: the definition has no revokeUrl").await;
            return Ok(None);
        };
        // Tokens go only to the origins the grant was obtained with (SPEC section 8).
        let origin = revoke.origin();
        if origin != tokens.token_origin && tokens.revoke_origin.as_ref() != Some(&origin) {
            self.log(
                c,
                LogType::RevokeFailed,
                format!(
                    "tokens dropped, not revoked: the revocation endpoint {origin} is not an origin the grant was \
                     obtained with"
                ),
            )
            .await;
            return Ok(None);
        }
        let plain = RevokeSettings {
            revoke_url: revoke.url.to_string(),
            client_id: settings.client.client_id.clone(),
            client_secret: settings.client.client_secret.clone(),
            client_auth: settings.client.method,
        };
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let now = self.clock.now();
        Ok(Some(RevocationJob {
            id: ulid::Ulid::new().to_string(),
            org: c.org.clone(),
            connection_id: c.id.clone(),
            definition: c.definition.clone(),
            tokens: tokens.sealed.clone(),
            settings: self.envelope.seal_json(&ctx, &plain).await?,
            attempts: 0,
            // The current whole second: the due index rounds up (`domain::due_second`), and a
            // job stamped with the instant itself would wait for the next second's sweep.
            next_attempt_at: self.due_now(),
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
        let mut races = Races::default();
        loop {
            let c = self.visible_connection(p, id).await?;
            let job = self.revocation_job(&c).await?;
            let mut next = c.clone();
            next.status = Status::Disconnected;
            next.error = None;
            next.oauth = None;
            next.device = None;
            next.refresh = Default::default();
            next.generation = c.generation + 1;
            // Without OAuth, the stored passwords are the credentials (an API key): they leave
            // too. OAuth connections keep their client settings, to be authorized again.
            if !c.auth.is_some_and(AuthKind::has_app_settings) {
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
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
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
    /// end of a Lambda invocation. Up to [`DUE_REVOCATIONS`] jobs, oldest first, at most
    /// [`DUE_REVOCATIONS_PER_ORGANIZATION`] of one organization
    /// ([`crate::ports::Store::due_revocations`]); a deadline already past reads nothing.
    ///
    /// # Errors
    ///
    /// The store's, when the due jobs cannot be read; a job's own failure is logged and counted
    /// as [`RevokeOutcome::Retrying`].
    pub async fn revoke_due(&self, deadline: std::time::Instant) -> Result<Vec<RevokeOutcome>> {
        if std::time::Instant::now() >= deadline {
            return Ok(Vec::new());
        }
        let jobs =
            self.store.due_revocations(self.clock.now(), DUE_REVOCATIONS, DUE_REVOCATIONS_PER_ORGANIZATION).await?;
        Ok(self.run_jobs(jobs, Some(deadline)).await)
    }

    /// Runs `jobs`, up to [`REVOKE_CONCURRENCY`] at once and [`REVOKE_PER_ORGANIZATION`] of one
    /// organization, starting none after `deadline`; the outcomes in the order the attempts
    /// ended. A place that comes free goes to the first job in `jobs`' order whose organization
    /// is under its share. One job's failure (a store or key error) does not keep the others from
    /// running, nor does a revocation endpoint that holds its answers: each of its jobs holds one
    /// place (up to two provider calls of 15 s), not the jobs behind it, and one organization's
    /// held jobs leave the other organizations 12 places.
    async fn run_jobs(&self, jobs: Vec<RevocationJob>, deadline: Option<std::time::Instant>) -> Vec<RevokeOutcome> {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;

        let open = || deadline.is_none_or(|d| std::time::Instant::now() < d);
        let mut waiting: std::collections::VecDeque<RevocationJob> = jobs.into();
        let mut in_flight: std::collections::BTreeMap<OrgId, usize> = std::collections::BTreeMap::new();
        let mut running = FuturesUnordered::new();
        let mut outcomes = Vec::new();
        loop {
            // The deadline is read as each job starts.
            while running.len() < REVOKE_CONCURRENCY && !waiting.is_empty() && open() {
                let under_share =
                    |j: &RevocationJob| in_flight.get(&j.org).copied().unwrap_or(0) < REVOKE_PER_ORGANIZATION;
                let Some(job) = waiting.iter().position(under_share).and_then(|i| waiting.remove(i)) else {
                    break;
                };
                *in_flight.entry(job.org.clone()).or_default() += 1;
                running.push(async move {
                    let (org, connection_id) = (job.org.clone(), job.connection_id.clone());
                    let outcome = self.attempt_revocation(job).await.unwrap_or_else(|e| {
                        tracing::warn!(%org, %connection_id, error = %e, "a revocation attempt failed");
                        RevokeOutcome::Retrying
                    });
                    (org, outcome)
                });
            }
            let Some((org, outcome)) = running.next().await else { break };
            if let Some(n) = in_flight.get_mut(&org) {
                *n -= 1;
            }
            outcomes.push(outcome);
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
                let (org, connection_id) = (&job.org, &job.connection_id);
                tracing::warn!(%org, %connection_id, error = %e, "a revocation job cannot be opened");
                if claimed.attempts >= MAX_REVOKE_ATTEMPTS {
                    self.store.delete_revocation(&claimed).await?;
                    return Ok(RevokeOutcome::GaveUp);
                }
                return Ok(RevokeOutcome::Retrying);
            }
        };

        // The refresh token first (revoking it usually ends the whole grant), then the access
        // token, in case the provider keeps them apart.
        let mut pending: Vec<(SecretString, &str)> = Vec::new();
        if let Some(r) = tokens.refresh_token() {
            pending.push((r, "refresh_token"));
        }
        pending.push((SecretString::from(tokens.access_token.clone()), "access_token"));
        let mut failure = None;
        let mut refused = None;
        for (token, hint) in pending {
            match self.revoke_one(&settings, &token, hint).await {
                RevokeAnswer::Revoked => {}
                RevokeAnswer::Refused(code) => refused = Some(code),
                RevokeAnswer::Transient { code, retry_after } => {
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
                let (org, connection_id, refused_now) = (&job.org, &job.connection_id, refused.is_some());
                tracing::info!(%org, %connection_id, refused = refused_now, "revocation done");
                Ok(if refused.is_none() { RevokeOutcome::Revoked } else { RevokeOutcome::GaveUp })
            }
            Some((code, _)) if claimed.attempts >= MAX_REVOKE_ATTEMPTS => {
                self.store.delete_revocation(&claimed).await?;
                if let Some(c) = &connection {
                    self.log(
                        c,
                        LogType::RevokeFailed,
                        format!("revocation failed ({code}); gave up after {} attempts", claimed.attempts),
                    )
                    .await;
                }
                Ok(RevokeOutcome::GaveUp)
            }
            Some((code, retry_after)) => {
                // 4 s, 8 s, ... up to an hour: 12 attempts span about two and a half hours.
                let backoff = exponential(Duration::from_secs(4), Duration::from_secs(3600), claimed.attempts);
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

    async fn open_job(&self, job: &RevocationJob) -> Result<(TokenSecrets, RevokeSettings)> {
        let ctx = EncryptionContext::connection(&job.org, &job.connection_id);
        Ok((self.envelope.open_json(&ctx, &job.tokens).await?, self.envelope.open_json(&ctx, &job.settings).await?))
    }

    /// Tokens obtained by an authorization or refresh that raced a disconnect or delete: they
    /// never reach the connection, and are revoked like the ones disconnect removed.
    pub(crate) async fn revoke_orphaned(&self, c: &Connection, tokens: crate::domain::OAuthTokens) {
        let mut holding = c.clone();
        holding.oauth = Some(tokens);
        match self.revocation_job(&holding).await {
            Ok(job) => self.queue_revocation(c, job).await,
            Err(e) => {
                tracing::error!(connection_id = %c.id, error = %e, "queueing the revocation of orphaned tokens failed")
            }
        }
    }

    /// One RFC 7009 request, read by [`read_revoke_answer`]; a request that got no answer is
    /// transient.
    async fn revoke_one(&self, settings: &RevokeSettings, token: &SecretString, hint: &str) -> RevokeAnswer {
        let Ok(url) = url::Url::parse(&settings.revoke_url) else {
            return RevokeAnswer::Refused("invalid_revoke_url".into());
        };
        // The outbound policy, at each call, whoever set the URL.
        match check_public_destination(&url, self.allow_loopback_providers()).await {
            Ok(()) => {}
            Err(DestinationError::Refused(_)) => return RevokeAnswer::Refused("destination_refused".into()),
            Err(DestinationError::Unresolved) => {
                return RevokeAnswer::Transient { code: "unresolved".into(), retry_after: None };
            }
        }
        let reach = if is_loopback_host(&url) { Reach::Any } else { Reach::PublicOnly };
        let post = settings.client().revocation_request(url, reach, token, hint);
        match self.provider.post_form(&post).await {
            Ok(raw) => read_revoke_answer(&raw),
            Err(e) => RevokeAnswer::Transient { code: e.code().to_owned(), retry_after: None },
        }
    }
}

// The envelope of these tests is the embedded backend's local key.
#[cfg(all(test, feature = "embedded"))]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::adapters::local_key::LocalKeyProvider;
    use crate::crypto::Envelope;
    use crate::domain::DefinitionKey;

    const SECRET: &str = "client-secret-canary-5f0c";

    fn settings(client_secret: Option<&str>, client_auth: ClientAuthMethod) -> RevokeSettings {
        RevokeSettings {
            revoke_url: "https://idp.example.com/revoke".into(),
            client_id: "client".into(),
            client_secret: client_secret.map(|s| SecretString::from(s.to_owned())),
            client_auth,
        }
    }

    #[tokio::test]
    async fn a_revocation_job_keeps_the_client_secret_sealed_and_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let envelope = Envelope::new(Arc::new(LocalKeyProvider::open_or_create(dir.path()).unwrap()));
        let (org, id) = (OrgId::parse("acme").unwrap(), ConnectionId::generate());
        let ctx = EncryptionContext::connection(&org, &id);
        let sealed = envelope.seal_json(&ctx, &settings(Some(SECRET), ClientAuthMethod::Post)).await.unwrap();
        let now = time::OffsetDateTime::now_utc();
        let job = RevocationJob {
            id: "job".into(),
            org,
            connection_id: id,
            definition: DefinitionKey::parse("idp").unwrap(),
            tokens: sealed.clone(),
            settings: sealed,
            attempts: 0,
            next_attempt_at: now,
            expires_at: now + JOB_LIFETIME,
        };
        assert!(!format!("{job:?}").contains(SECRET), "Debug of the job");
        // What both stores write (the job's JSON): the secret only inside the seal.
        assert!(!serde_json::to_string(&job).unwrap().contains(SECRET), "the stored job");

        let opened: RevokeSettings = envelope.open_json(&ctx, &job.settings).await.unwrap();
        assert!(!format!("{opened:?}").contains(SECRET), "Debug of the opened settings: {opened:?}");
        assert_eq!(opened.client_secret.as_ref().map(|s| s.expose_secret()), Some(SECRET));
        assert_eq!(opened.client_auth, ClientAuthMethod::Post);
    }

    #[test]
    fn sealed_settings_name_the_client_authentication_method() {
        let written = serde_json::to_value(settings(Some(SECRET), ClientAuthMethod::Post)).unwrap();
        assert_eq!(
            written,
            json!({"revoke_url": "https://idp.example.com/revoke", "client_id": "client",
                "client_secret": SECRET, "client_auth": "client_secret_post"})
        );
        let public = json!({"revoke_url": "https://idp.example.com/revoke", "client_id": "client",
            "client_secret": null, "client_auth": "client_secret_basic"});
        let read: RevokeSettings = serde_json::from_value(public.clone()).unwrap();
        assert!(read.client_secret.is_none());
        assert_eq!(read.client().method, ClientAuthMethod::Basic);
        assert_eq!(serde_json::to_value(read).unwrap(), public);
    }
}
