//! `latchkey lookup ID`: a connection's credentials, in clear, as integration code gets them.

use clap::Args;

use super::{Failure, Remote, print_json};

/// `latchkey lookup`.
#[derive(Debug, Args)]
pub struct Lookup {
    /// The connection's id (`con_...`).
    pub id: String,
    /// Refresh the access token first if it expires within this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub min_valid_seconds: Option<u64>,
    #[command(flatten)]
    pub remote: Remote,
}

/// Looks the connection up (`POST /v1/connections/{id}/token`, role `runtime`) and prints the
/// answer as JSON, secrets included: the caller asked for them. Marks the connection `active`.
///
/// # Errors
/// The lookup's refusal (pending, disconnected, red, not found...) or no answer.
pub async fn run(args: Lookup) -> Result<(), Failure> {
    let client = args.remote.client()?;
    let creds = client.lookup(&args.id, args.min_valid_seconds).await?;
    print_json(&creds.expose_json())
}
