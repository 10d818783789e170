//! Single flight: a refresh takes the connection's lease (a conditional write, so of many
//! contenders in every process exactly one calls the provider), writes its outcome fenced by the
//! version the lease was taken at, and releases the lease when it fails before writing one.
//!
//! A provider's answer is written harder than other outcomes ([`Persist::UntilLeaseEnds`]): it
//! may hold a rotated refresh token, and the provider has spent the old one, so a store that
//! throttles is tried again until shortly before the lease ends rather than for two seconds.

use std::time::Instant;

use super::*;

/// How often a leased refresh's outcome is written again after losing to other writers.
const COMMIT_ATTEMPTS: usize = 25;

/// A provider's answer is written until this long before its lease ends, no later: the last
/// try (itself bounded by the store adapter's timeout) ends before another worker may take the
/// lease over, and a try that still came late would fail its version condition anyway.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How [`Service::refresh_connection`] meets a connection's lease.
#[derive(Debug, Clone, Copy)]
pub(super) enum Take {
    /// A lookup's (or a forced refresh's): another holder's lease is waited for (up to the
    /// lease's length and 5 s) and its result read.
    Wait,
    /// The sweep's and the fan-out worker's: a connection leased elsewhere is left
    /// ([`Refreshed::Busy`]), and no lease is taken at or after this instant, the invocation's
    /// deadline ([`Refreshed::Late`]): every lease this call takes ends at most the lease's
    /// length after it, which [`crate::lambda::SWEEP_MARGIN`] covers.
    Leave(Instant),
}

/// How hard [`Service::commit_leased`] writes an outcome through a store that throttles or does
/// not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persist {
    /// A few tries over about two seconds ([`unavailable_retries`]): an outcome the next
    /// attempt reproduces (a backoff, a red status, a released lease).
    Briefly,
    /// Until [`LEASE_MARGIN`] before the lease ends ([`held_retries`]): a provider's answer,
    /// which cannot be asked for twice (it may hold a rotated refresh token, and the old one is
    /// then spent).
    UntilLeaseEnds,
}

impl Service {
    /// Refreshes one connection if `needed` says so, so that across every process only one
    /// caller talks to the provider: the others wait ([`Take::Wait`]) and read its result.
    ///
    /// `seen` is when the token the caller judged insufficient was obtained (`None`: it saw no
    /// token): any token obtained after it is the shared result of a refresh that raced this one.
    ///
    /// `read` is the record as the caller has just read it from the store (the sweep does), taken
    /// as the first read instead of reading it again: one store read less per refresh. It may be
    /// stale: the lease is written conditionally on its version, and a lost write re-reads.
    pub(super) async fn refresh_connection(
        &self,
        org: &OrgId,
        id: &ConnectionId,
        read: Option<Connection>,
        seen: Option<OffsetDateTime>,
        needed: impl Fn(&Connection, OffsetDateTime) -> bool,
        take: Take,
    ) -> Result<Refreshed> {
        let wait = matches!(take, Take::Wait);
        let owner = ulid::Ulid::new().to_string();
        let give_up = Instant::now() + self.policy().lease + Duration::from_secs(5);
        let mut read = read.filter(|c| (&c.org, &c.id) == (org, id));
        loop {
            let c = match read.take() {
                Some(c) => c,
                None => self.store.get_connection(org, id).await?.ok_or(ServiceError::NotFound)?,
            };
            let without_user = c.auth.is_some_and(AuthKind::grants_without_user);
            // A client-credentials or JWT bearer connection without a token is what this call
            // is about to authorize.
            match Unusable::of(c.status) {
                Some(why @ (Unusable::Error | Unusable::Disconnected)) => return Err(ServiceError::Unusable(why)),
                _ if c.oauth.is_none() && !without_user => return Err(ServiceError::Unusable(Unusable::Pending)),
                _ => {}
            }
            let now = self.clock.now();
            // Obtained by anyone since the caller looked: that result is the caller's too.
            let newer = c.oauth.as_ref().is_some_and(|t| seen.is_none_or(|s| t.obtained_at > s));
            if newer || !needed(&c, now) {
                tracing::debug!(connection_id = %id, newer, "no refresh needed any more");
                return Ok(Refreshed::Already(c));
            }
            if let Some(lease) = c.refresh.lease.as_ref().filter(|l| l.until > now && l.owner != owner) {
                if !wait {
                    return Ok(Refreshed::Busy);
                }
                if Instant::now() > give_up {
                    tracing::warn!(org = %org, connection_id = %id, holder = %lease.owner, "gave up waiting for a refresh lease");
                    return Ok(Refreshed::Already(c));
                }
                let pause = rand::rng().random_range(40..120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            if let Take::Leave(deadline) = take
                && Instant::now() >= deadline
            {
                return Ok(Refreshed::Late);
            }
            // Take the lease: a conditional write, so of many contenders exactly one wins.
            let mut leased = c.clone();
            leased.refresh.lease = Some(Lease { owner: owner.clone(), until: now + self.policy().lease });
            leased.version = c.version + 1;
            match self.store.update_connection(&leased, c.version).await {
                Ok(()) => {}
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
            match self.refresh_leased(&leased).await {
                Ok(Some(done)) => return Ok(Refreshed::Now(done)),
                // The lease is gone (expired and taken over, or a disconnect): re-read.
                Ok(None) => continue,
                // The outcome is written (red, or backed off after a provider failure).
                Err(e @ (ServiceError::Unusable(_) | ServiceError::Provider(_))) => return Err(e),
                Err(e) => {
                    // Nothing was written: the lease must not outlive this call, and a sweep
                    // (which does not wait) must not meet this connection first again next time.
                    self.release_lease(&leased, !wait).await;
                    return Err(e);
                }
            }
        }
    }

    /// Writes the outcome of a leased refresh, built by `apply` from the record. The write is
    /// conditional on the version read; if another write won meanwhile (a label PATCH, a status
    /// change) while this call still holds the lease in the same generation, the outcome is
    /// applied again to the latest record, so rotated tokens are never dropped. `None` when the
    /// lease is no longer ours (expired and taken over) or the connection was disconnected or
    /// deleted: a stale worker cannot overwrite newer tokens.
    ///
    /// A store that throttles or does not answer is tried again as `persist` says (a provider's
    /// answer until shortly before the lease ends), and tells the container's adaptive limit
    /// ([`limit`]) to slow down once per commit: one connection retrying for the length of its
    /// lease is one refresh that met throttling, not one per retry (which would halve the limit
    /// a window at a time, 64 to 1, on its own).
    ///
    /// # Errors
    /// The store's: a failure other than a lost race, or unavailable past the retries (for a
    /// provider's answer, logged as an error: its tokens are lost).
    pub(super) async fn commit_leased(
        &self,
        leased: &Connection,
        persist: Persist,
        apply: impl Fn(&Connection) -> Connection,
    ) -> Result<Option<Connection>> {
        let owner = leased.refresh.lease.as_ref().map(|l| l.owner.clone());
        let stop = (persist == Persist::UntilLeaseEnds).then(|| self.lease_stop(leased));
        let mut base = leased.clone();
        // An atomic, not a `Cell`: the future stays `Send` while the retries borrow it.
        let reported = std::sync::atomic::AtomicBool::new(false);
        // While the lease is ours the outcome must land (it may hold a rotated refresh token the
        // provider will not accept twice): other writers' conflicts are re-read and re-applied,
        // a store that does not answer is tried again, each a bounded number of times.
        for _ in 0..COMMIT_ATTEMPTS {
            let next = apply(&base);
            let write = || self.store.update_connection(&next, base.version);
            let noticed = |e: &StoreError, _| {
                if !reported.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    self.refresh_limit.congested();
                }
                tracing::warn!(connection_id = %leased.id, error = %e, "the store did not take a refresh outcome; trying again");
            };
            let written = match stop {
                None => write.retry(unavailable_retries()).when(StoreError::is_unavailable).notify(noticed).await,
                Some(stop) => {
                    write
                        .retry(held_retries())
                        .when(|e| e.is_unavailable() && tokio::time::Instant::now() + HELD_RETRY_MAX_WAIT < stop)
                        .notify(noticed)
                        .await
                }
            };
            match written {
                Ok(()) => return Ok(Some(next)),
                Err(StoreError::Conflict) => {
                    let Some(current) = self.store.get_connection(&leased.org, &leased.id).await? else {
                        return Ok(None);
                    };
                    let ours = current.refresh.lease.as_ref().map(|l| &l.owner) == owner.as_ref()
                        && current.generation == leased.generation
                        && current.status != Status::Disconnected;
                    if !ours {
                        return Ok(None);
                    }
                    base = current;
                }
                Err(e) => {
                    if stop.is_some() && e.is_unavailable() {
                        // `lost_answer` is counted on Lambda (telemetry::metrics, an EMF line for
                        // Latchkey/LostAnswers) and watched by the stack's LostAnswersAlarm.
                        tracing::error!(
                            org = %leased.org,
                            connection_id = %leased.id,
                            error = %e,
                            lost_answer = true,
                            "a provider's answer could not be written before its refresh lease ends: the tokens it holds are lost"
                        );
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    /// When a held commit ([`Persist::UntilLeaseEnds`]) stops trying: [`LEASE_MARGIN`] before
    /// `leased`'s lease ends, on tokio's clock (which its retries wait on).
    fn lease_stop(&self, leased: &Connection) -> tokio::time::Instant {
        let left = leased
            .refresh
            .lease
            .as_ref()
            .and_then(|l| Duration::try_from(l.until - self.clock.now()).ok())
            .unwrap_or_default();
        tokio::time::Instant::now() + left.saturating_sub(LEASE_MARGIN)
    }

    /// Best effort: clears this call's lease after a failure, so others need not wait it out.
    /// With `retry_later` (the sweep), a connection still in the due index is due again only
    /// after the policy's base backoff: a store, key or configuration failure must not put it
    /// first in every sweep. Its failure count (which makes lookups wait too, for provider
    /// outages) is left alone: lookups keep refreshing on demand, so service resumes as soon as
    /// the dependency does.
    pub(super) async fn release_lease(&self, leased: &Connection, retry_later: bool) {
        let retry_at = self.clock.now() + self.backoff(1);
        let released = self
            .commit_leased(leased, Persist::Briefly, |base| {
                let mut next = base.clone();
                next.refresh.lease = None;
                if retry_later && base.refresh.due_at.is_some() {
                    next.refresh.due_at = Some(retry_at);
                }
                next.version = base.version + 1;
                next
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(connection_id = %leased.id, error = %e, "releasing a refresh lease failed; it expires by itself");
        }
    }
}
