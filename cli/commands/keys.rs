//! `latchkey keys rotate`: a new version of organizations' branch keys (the key hierarchy,
//! `latchkey::crypto::BranchKeyring`), on the backend the server's settings name. Nothing
//! sealed is rewritten and no credential is entered again: older versions stay readable, and
//! each record moves to the new version when it is next written.

use clap::Subcommand;
use latchkey::config::{Components, ConfigError, Settings};
use latchkey::domain::OrgId;

use super::{Failure, line};

/// The key-management commands.
#[derive(Subcommand)]
pub enum Keys {
    /// Rotate the branch key of each organization named: store its next version, which seals
    /// from then on (a running server picks it up within its 5-minute key cache). Prints
    /// `ORG branch key vN` per organization.
    #[command(long_about = None)]
    Rotate {
        /// An organization whose branch key to rotate; repeatable.
        #[arg(long = "org", required = true, value_name = "ORG")]
        orgs: Vec<String>,
        #[command(flatten)]
        settings: Settings,
    },
}

impl Keys {
    /// The command with its server settings checked ([`Settings::check`]).
    ///
    /// # Errors
    /// As [`Settings::check`].
    pub fn checked(self) -> Result<Self, ConfigError> {
        match self {
            Self::Rotate { orgs, settings } => Ok(Self::Rotate { orgs, settings: settings.check()? }),
        }
    }

    pub fn settings(&self) -> &Settings {
        match self {
            Self::Rotate { settings, .. } => settings,
        }
    }
}

/// Runs a `keys` command.
///
/// # Errors
/// An organization id that does not parse (before anything is rotated), the backend cannot be
/// wired, or a rotation fails (the ones before it stay done).
pub async fn run(command: Keys) -> Result<(), Failure> {
    match command {
        Keys::Rotate { orgs, settings } => {
            let orgs = orgs
                .iter()
                .map(|o| OrgId::parse(o).map_err(|e| format!("--org {o:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let components = Components::build(&settings).await?;
            for org in &orgs {
                let version = components
                    .keys
                    .rotate(org)
                    .await
                    .map_err(|e| format!("rotating the branch key of {org} failed: {e}"))?;
                line(format_args!("{org} branch key v{version}"))?;
            }
            Ok(())
        }
    }
}
