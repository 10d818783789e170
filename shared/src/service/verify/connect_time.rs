//! Verification at connect time (create, values PATCH, import): the provider must accept the
//! credentials before they are stored; refused ones never are.

use secrecy::SecretString;

use super::super::{Result, Service, ServiceError};
use super::request::{Checked, template_source, unavailable_code};
use crate::domain::validate::Values;
use crate::domain::{Connection, Definition, LogType, Verdict, VerifyState};

impl Service {
    /// Connect-time verification of `conn`'s new values (create, values PATCH), before they are
    /// stored: when its definition has a verify request and the connection needs no
    /// authorization for it (not OAuth: those are verified on demand and by the sweep, with
    /// their access token), the provider must accept them; then `conn.verify` records it and
    /// schedules the next one. Without a verify request nothing happens.
    ///
    /// # Errors
    /// [`ServiceError::CredentialsRejected`] (401/403 or another unexpected status),
    /// [`ServiceError::VerificationUnavailable`] (no answer, 408, 429, 5xx), a validation error
    /// for a value the request needs and lacks.
    pub(crate) async fn verify_new_values(
        &self,
        def: &Definition,
        conn: &mut Connection,
        values: &Values,
    ) -> Result<()> {
        let Some(verify) = &def.verify else {
            return Ok(());
        };
        if def.auth.is_oauth() {
            if conn.verify.due_at.is_none() {
                conn.verify.due_at = Some(self.next_verify_at());
            }
            return Ok(());
        }
        let defaults = self.definition_defaults(def).await?;
        let checked = self.send_verify(verify, template_source(defaults, values, None), false).await?;
        self.connect_time_outcome(conn, checked)
    }

    /// Connect-time verification of an imported grant (SPEC section 10): its access token (and
    /// `conn`'s values, sealed already) sent with the definition's verify request, before
    /// anything is stored, with the outcomes of [`Self::verify_new_values`]. Without a verify
    /// request nothing happens.
    ///
    /// # Errors
    /// As [`Self::verify_new_values`].
    pub(crate) async fn verify_imported_token(
        &self,
        def: &Definition,
        conn: &mut Connection,
        access_token: &SecretString,
    ) -> Result<()> {
        let Some(verify) = &def.verify else {
            return Ok(());
        };
        let own = Values { plain: conn.values.clone(), secret: self.open_secrets(conn).await? };
        let defaults = self.definition_defaults(def).await?;
        let source = template_source(defaults, &own, Some(access_token.clone()));
        let checked = self.send_verify(verify, source, false).await?;
        self.connect_time_outcome(conn, checked)
    }

    /// What a connect-time check came to: accepted is recorded in `conn.verify` (the next one
    /// scheduled), anything else an error.
    fn connect_time_outcome(&self, conn: &mut Connection, checked: Checked) -> Result<()> {
        match checked {
            Checked::Answered(status, Verdict::Accepted) => {
                conn.verify = VerifyState {
                    due_at: Some(self.next_verify_at()),
                    failures: 0,
                    checked_at: Some(self.clock.now()),
                    status: Some(status),
                };
                Ok(())
            }
            Checked::Answered(status, Verdict::Rejected | Verdict::Unexpected) => {
                Err(ServiceError::CredentialsRejected { status })
            }
            Checked::Answered(status, Verdict::Unavailable) => {
                Err(ServiceError::VerificationUnavailable(unavailable_code(status)))
            }
            Checked::Unavailable(code) => Err(ServiceError::VerificationUnavailable(code)),
        }
    }

    /// The log line of a connect-time verification, once the connection it checked is stored
    /// (`before`: the record the PATCH changed; none for a new connection).
    pub(crate) async fn log_connect_time_verification(&self, before: Option<&Connection>, c: &Connection) {
        if let (Some(at), Some(status)) = (c.verify.checked_at, c.verify.status)
            && before.is_none_or(|b| b.verify.checked_at != Some(at))
        {
            self.log(c, LogType::Verified, format!("credentials verified (HTTP {status})")).await;
        }
    }
}
