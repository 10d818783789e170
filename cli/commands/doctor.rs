//! `latchkey doctor`: checks what `latchkey serve` (or a function) would run on, with the same
//! `LATCHKEY_*` settings, and says per check `ok`, `warn` or `fail` and why. Exits non-zero
//! when a check fails.
//!
//! - embedded: the data directory, the master key, the JWT secret and the database files
//!   (present, private, the right size);
//! - aws: the DynamoDB table (DescribeTable: active, the indexes of `infra/`), the KMS key
//!   (DescribeKey: there, enabled, symmetric), its data-key use (a GenerateDataKey/Decrypt round
//!   trip with an encryption context the key policy of `infra/` allows: what sealing needs), the
//!   EventBridge bus (DescribeEventBus), and the clock against the `Date` of an AWS answer.
//!
//! The deployed key policy lets only the function roles use the key for data, so run by anyone
//! else (an operator's credentials) the round trip is refused: that is a `warn` saying so, not
//! a failure, when DescribeKey showed the key is usable.

mod aws;
mod embedded;

use std::fmt;
use std::path::PathBuf;

use super::Failure;

/// What to check, from the settings `latchkey serve` reads.
#[derive(Debug, Clone)]
pub enum Target {
    /// `LATCHKEY_BACKEND=embedded`.
    Embedded {
        /// `LATCHKEY_DATA_DIR`.
        data_dir: PathBuf,
        /// Whether `LATCHKEY_JWT_SECRET` is set (then no secret file is needed).
        jwt_secret_set: bool,
    },
    /// `LATCHKEY_BACKEND=aws`.
    Aws {
        /// `LATCHKEY_TABLE`.
        table: Option<String>,
        /// `LATCHKEY_KMS_KEY_ID`.
        kms_key_id: Option<String>,
        /// `LATCHKEY_EVENT_BUS`.
        event_bus: String,
    },
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub why: String,
}

fn check(name: impl Into<String>, verdict: Verdict, why: impl Into<String>) -> Check {
    Check { name: name.into(), verdict, why: why.into() }
}

/// Runs every check of `target`, prints one line per check, and fails if any check failed.
///
/// # Errors
/// The count of failed checks.
pub async fn run(target: Target) -> Result<(), Failure> {
    let checks = match target {
        Target::Embedded { data_dir, jwt_secret_set } => embedded::checks(&data_dir, jwt_secret_set),
        Target::Aws { table, kms_key_id, event_bus } => {
            aws::checks(table.as_deref(), kms_key_id.as_deref(), &event_bus).await
        }
    };
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &checks {
        super::line(format_args!("{:<4}  {:<width$}  {}", c.verdict.to_string(), c.name, c.why))?;
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    if failed > 0 {
        return Err(format!("{failed} check(s) failed, {warned} warning(s)").into());
    }
    eprintln!("all checks passed{}", if warned > 0 { format!(", {warned} warning(s)") } else { String::new() });
    Ok(())
}
