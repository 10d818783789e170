//! Writing a verification's result: to the connection only while it still holds the
//! credentials that were checked (see the module documentation of [`super`]), with its log
//! line and, for a refusal, the red status and its event; a lost race is redone on the latest
//! record.

use super::super::retry::{Races, exponential, jittered};
use super::super::{Result, Service, ServiceError};
use super::CREDENTIALS_REJECTED;
use super::request::Checked;
use crate::domain::{Connection, LogType, Status, StatusError, Verdict};
use crate::ports::StoreError;

impl Service {
    /// Writes a verification's outcome (see the module documentation), its log line and, for
    /// a refusal, the red status and `Connection Error` event.
    pub(super) async fn record_verification(&self, c: &Connection, checked: Checked) -> Result<Connection> {
        let now = self.clock.now();
        let next_at = self.next_verify_at();
        let policy = self.verify_policy();
        let (message, kind) = match checked {
            Checked::Answered(status, Verdict::Accepted) => {
                (format!("credentials verified (HTTP {status})"), LogType::Verified)
            }
            Checked::Answered(status, Verdict::Rejected) => {
                (format!("the provider refused the credentials (HTTP {status})"), LogType::VerifyFailed)
            }
            Checked::Answered(status, _) => {
                (format!("verification not confirmed (HTTP {status}); retried later"), LogType::VerifyFailed)
            }
            Checked::Unavailable(code) => {
                (format!("verification unavailable ({code}); retried later"), LogType::VerifyFailed)
            }
        };
        let apply = |base: &mut Connection| {
            if !applies(c, base) {
                return false;
            }
            base.verify.checked_at = Some(now);
            match checked {
                Checked::Answered(status, Verdict::Accepted) => {
                    base.verify.status = Some(status);
                    base.verify.failures = 0;
                    base.verify.due_at = Some(next_at);
                    if base.status == Status::Error
                        && base.error.as_ref().is_some_and(|e| e.code == CREDENTIALS_REJECTED)
                    {
                        base.status = Status::Configured;
                        base.error = None;
                    }
                }
                Checked::Answered(status, Verdict::Rejected) => {
                    base.verify.status = Some(status);
                    base.verify.failures = 0;
                    base.verify.due_at = Some(next_at);
                    if base.status != Status::Error {
                        let red = base.turned_red(StatusError {
                            code: CREDENTIALS_REJECTED.to_owned(),
                            provider_code: None,
                            message: format!("the provider refused the credentials (HTTP {status})"),
                            at: now,
                        });
                        // `turned_red` counts a version of its own; the write below counts one.
                        *base = Connection { version: base.version, ..red };
                    }
                }
                Checked::Answered(status, _) => {
                    base.verify.status = Some(status);
                    base.verify.failures += 1;
                    base.verify.due_at =
                        Some(now + jittered(exponential(policy.base_backoff, policy.interval, base.verify.failures)));
                }
                Checked::Unavailable(_) => {
                    base.verify.failures += 1;
                    base.verify.due_at =
                        Some(now + jittered(exponential(policy.base_backoff, policy.interval, base.verify.failures)));
                }
            }
            true
        };
        let before = self.write_verify_state_seen(c, apply).await?;
        let Some((was, done)) = before else {
            // The connection changed while the provider was asked: the result is not its own.
            let current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
            tracing::info!(org = %c.org, connection_id = %c.id, "a verification result for credentials replaced meanwhile is dropped");
            return Ok(current);
        };
        self.log(&done, kind, message).await;
        if done.status == Status::Error && was.status != Status::Error {
            tracing::info!(org = %done.org, connection_id = %done.id, "credentials rejected by the provider");
            self.announce_red(&done).await;
        }
        Ok(done)
    }

    /// Applies `apply` to the latest record and writes it, redone on a lost race; when `apply`
    /// says `false` nothing is written and the latest record is returned.
    pub(super) async fn write_verify_state(
        &self,
        c: &Connection,
        apply: impl Fn(&mut Connection) -> bool,
    ) -> Result<Connection> {
        Ok(match self.write_verify_state_seen(c, apply).await? {
            Some((_, done)) => done,
            None => self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?,
        })
    }

    /// [`Self::write_verify_state`], returning the record `apply` changed and what it became,
    /// or `None` when `apply` declined the latest record.
    async fn write_verify_state_seen(
        &self,
        c: &Connection,
        apply: impl Fn(&mut Connection) -> bool,
    ) -> Result<Option<(Connection, Connection)>> {
        let mut races = Races::default();
        let mut current = c.clone();
        loop {
            let mut next = current.clone();
            if !apply(&mut next) {
                return Ok(None);
            }
            next.version = current.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(Some((current, next))),
                Err(StoreError::Conflict) => {
                    races.lost()?;
                    current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether `latest` still holds the credentials `checked` was verified with: the same values,
/// the same sealed secrets and tokens (compared sealed, never opened), the same generation.
fn same_credentials(checked: &Connection, latest: &Connection) -> bool {
    checked.generation == latest.generation
        && checked.values == latest.values
        && checked.secrets == latest.secrets
        && checked.oauth.as_ref().map(|t| &t.sealed) == latest.oauth.as_ref().map(|t| &t.sealed)
}

/// Whether a verification of `checked` may be written to `latest`: the same credentials, and a
/// state the result speaks to (`configured`/`active`, or red `credentials_rejected`, which an
/// accepting answer turns back).
fn applies(checked: &Connection, latest: &Connection) -> bool {
    if !same_credentials(checked, latest) {
        return false;
    }
    match latest.status {
        Status::Configured | Status::Active => true,
        // Red for this very reason: an accepting answer turns it back, any other is recorded.
        Status::Error => latest.error.as_ref().is_some_and(|e| e.code == CREDENTIALS_REJECTED),
        Status::Pending | Status::Disconnected => false,
    }
}
