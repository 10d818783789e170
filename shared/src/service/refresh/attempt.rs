//! One refresh attempt under the lease: the grant request (refresh token, JWT bearer assertion or
//! client credentials) and what the provider's answer makes of the connection: new tokens, red
//! after a refusal, or a backoff after a transient failure.

use super::*;

fn days(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(86_400)
}

impl Service {
    /// Calls the provider for a connection whose lease this call holds, and writes the outcome
    /// conditionally on the leased version. `None` when that write lost.
    pub(super) async fn refresh_leased(&self, leased: &Connection) -> Result<Option<Connection>> {
        let def = self.definition_of(leased).await?;
        let settings = match self.oauth_settings(&def, leased).await {
            Ok(settings) => settings,
            // Settings that are incomplete (no client id, an endpoint that is not a URL):
            // the organization's to fix; red, so the sweep does not meet it again.
            Err(ServiceError::Invalid(errors)) => {
                let detail: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
                let error = self.refusal_error(Refusal::ClientRejected, None, &detail.join("; "));
                return self.refused(leased, error, "not refreshed").await;
            }
            Err(e) => return Err(e),
        };
        let without_user = def.auth.grants_without_user();
        let previous = match &leased.oauth {
            Some(tokens) if !without_user => self.open_tokens(leased).await?.map(|s| (tokens.clone(), s)),
            _ => None,
        };
        let refresh_token = previous.as_ref().and_then(|(_, s)| s.refresh_token());
        if !without_user && refresh_token.is_none() {
            // Nothing to refresh with: leave the index, keep the token until it expires.
            return self
                .commit_leased(leased, Persist::Briefly, |base| {
                    let mut next = base.clone();
                    next.refresh.lease = None;
                    next.refresh.due_at = None;
                    next.version = base.version + 1;
                    next
                })
                .await;
        }
        // A grant is bound to the origin that issued it (SPEC section 8): a refresh token is
        // never sent to another token endpoint, whoever changed the setting.
        if let Some((tokens, _)) = &previous
            && tokens.token_origin != settings.token.origin()
        {
            let detail = format!("granted by {}, now {}", tokens.token_origin, settings.token.origin());
            let error = self.refusal_error(Refusal::ReauthorizationRequired, None, &detail);
            return self.refused(leased, error, "not refreshed").await;
        }
        let now = self.clock.now();
        // A lapsed refresh token is never sent (SPEC section 10): red `token_expired`.
        if let Some(at) = rt_lifetime::lapsed_at(leased, now).filter(|_| !without_user) {
            return self.refused(leased, self.lapsed_error(at), "not refreshed").await;
        }
        let day = days(now);
        let attempts = if leased.refresh.day == day { leased.refresh.attempts_today + 1 } else { 1 };

        // JWT bearer: a new assertion (new `jti`, issued now) for every request.
        let assertion = match settings.assertion.as_ref().map(|a| a.sign(now)) {
            Some(Err(why)) => {
                let error = self.refusal_error(Refusal::ClientRejected, None, why);
                return self.refused(leased, error, "not refreshed").await;
            }
            Some(Ok(assertion)) => Some(assertion),
            None => None,
        };
        let grant = match (&refresh_token, &assertion) {
            (Some(token), _) => GrantRequest::RefreshToken { refresh_token: token },
            (None, Some(assertion)) => GrantRequest::JwtBearer { assertion, scope: settings.scope_param() },
            (None, None) => GrantRequest::ClientCredentials { scope: settings.scope_param() },
        };
        match self.request_token(&settings, grant).await {
            Ok(answer) => {
                let kept = previous.as_ref().map(|(t, s)| (t, s));
                let tokens = self.seal_token_answer(leased, &settings, &answer, kept).await?;
                let error = self.scopes_error(&settings, &tokens);
                let written = self
                    .commit_leased(leased, Persist::UntilLeaseEnds, |base| {
                        let mut next =
                            self.with_tokens(base, tokens.clone(), &Default::default(), base.status, error.clone());
                        next.refresh.day = day;
                        next.refresh.attempts_today = attempts;
                        next
                    })
                    .await?;
                let Some(done) = written else {
                    // Disconnected or deleted meanwhile: the new tokens must not stay alive.
                    let current = self.store.get_connection(&leased.org, &leased.id).await?;
                    if current.is_none_or(|c| c.generation != leased.generation || c.status == Status::Disconnected) {
                        self.revoke_orphaned(leased, tokens).await;
                    }
                    return Ok(None);
                };
                let expires = done.oauth.as_ref().and_then(|t| t.expires_at).map(|e| e.to_string());
                self.log(
                    &done,
                    LogType::Refreshed,
                    format!("token refreshed (expires {})", expires.as_deref().unwrap_or("never")),
                )
                .await;
                self.announce_refreshed(leased, &done).await;
                if let Some(error) = &error {
                    self.log(&done, LogType::RefreshFailed, format!("{}: {}", error.code, error.message)).await;
                    self.announce_red(&done).await;
                    return Err(ServiceError::Unusable(Unusable::Error));
                }
                Ok(Some(done))
            }
            Err(TokenFailure::Forbidden { why }) => {
                let detail = format!("the token endpoint {why}");
                let error = self.refusal_error(Refusal::ClientRejected, None, &detail);
                self.refused(leased, error, "not refreshed").await
            }
            Err(TokenFailure::Refused { class, provider_code, status, .. }) => {
                // Another worker may have rotated the token meanwhile (and this one was the
                // old one): only a refusal of the current token turns the connection red.
                let current =
                    self.store.get_connection(&leased.org, &leased.id).await?.ok_or(ServiceError::NotFound)?;
                if current.oauth != leased.oauth || current.generation != leased.generation {
                    self.release_lease(leased, false).await;
                    return Ok(None);
                }
                // The message names the HTTP status, never the provider's text (it could echo
                // what was sent); the provider's code is kept beside the class.
                let detail = format!("HTTP {status}");
                let class =
                    if without_user && class == Refusal::GrantRefused { Refusal::ClientRejected } else { class };
                let error = self.refusal_error(class, provider_code.as_deref(), &detail);
                self.refused(leased, error, "refresh refused").await
            }
            Err(failure) => {
                let failures = leased.refresh.failures + 1;
                let p = self.policy();
                let jittered = self.backoff(failures);
                let retry_after = match &failure {
                    TokenFailure::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = retry_after.map_or(jittered, |r| r.max(jittered)).min(Duration::from_secs(86_400));
                let mut next_at = now + wait;
                if attempts >= p.max_attempts_per_day {
                    next_at = next_at.max(OffsetDateTime::from_unix_timestamp((day + 1) * 86_400).unwrap_or(next_at));
                }
                let backed_off = |base: &Connection| {
                    let mut next = base.clone();
                    next.refresh.lease = None;
                    next.refresh.failures = failures;
                    next.refresh.day = day;
                    next.refresh.attempts_today = attempts;
                    // The next try, by the sweep (lookups wait for it too); none for a connection
                    // reported red meanwhile, which stays out of the index.
                    next.refresh.due_at = (base.status != Status::Error).then_some(next_at);
                    next.version = base.version + 1;
                    next.updated_at = now;
                    next
                };
                let Some(done) = self.commit_leased(leased, Persist::Briefly, backed_off).await? else {
                    return Ok(None);
                };
                let why = match &failure {
                    TokenFailure::Unreadable { status, .. } => {
                        format!("could not read the provider's answer (HTTP {status})")
                    }
                    other => format!("the provider is unavailable ({})", other.code()),
                };
                self.log(
                    &done,
                    LogType::RefreshFailed,
                    format!(
                        "refresh failed: {why}; tokens kept, nobody needs to act: next attempt in {} s",
                        wait.as_secs()
                    ),
                )
                .await;
                let reason = match failure {
                    TokenFailure::Unreadable { .. } => "unreadable_answer",
                    _ => "provider_unavailable",
                };
                self.emit(Event::about(EventType::TokenRefreshFailed, &done).with_reason(reason)).await;
                Err(ServiceError::Provider(failure.code()))
            }
        }
    }

    /// The wait before the next attempt after `failures` failures in a row: exponential from
    /// the policy's base to its maximum, with jitter on the upper half so that an outage does
    /// not end in a stampede.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let p = self.policy();
        jittered(exponential(p.base_backoff, p.max_backoff, failures))
    }

    /// Turns a leased connection red with `error` (a refusal: no further tries until someone
    /// acts), logs it and emits `Token Refresh Failed` (reason: the error class), then
    /// `Connection Error` and `Connection Expired`. A connection reported red meanwhile keeps the
    /// reason it was reported with (and was announced by that report).
    async fn refused(
        &self,
        leased: &Connection,
        error: crate::domain::StatusError,
        what: &str,
    ) -> Result<Option<Connection>> {
        let message = match &error.provider_code {
            Some(code) => format!("{what}: {} ({code}): {}", error.code, error.message),
            None => format!("{what}: {}: {}", error.code, error.message),
        };
        let red = |base: &Connection| {
            let mut red = base.turned_red(error.clone());
            if base.status == Status::Error {
                red.error = base.error.clone();
            }
            red.refresh.lease = None;
            red
        };
        let Some(done) = self.commit_leased(leased, Persist::Briefly, red).await? else {
            return Ok(None);
        };
        self.log(&done, LogType::RefreshFailed, message).await;
        self.emit(Event::about(EventType::TokenRefreshFailed, &done).with_reason(error.code.clone())).await;
        // Red already (reported meanwhile): that report announced it.
        if done.error.as_ref().is_some_and(|e| (&e.code, &e.message, e.at) == (&error.code, &error.message, error.at)) {
            self.announce_red(&done).await;
        }
        Err(ServiceError::Unusable(Unusable::Error))
    }
}
