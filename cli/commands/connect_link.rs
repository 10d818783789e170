//! `latchkey connect-link --org O --customer C [--definition D]...`: a connect session's
//! one-time link (SPEC section 9) from the running API at `--url`, for an organization user
//! whose token this command signs itself with the server's JWT secret (as `latchkey token`
//! does), so a local developer needs nothing else to hand a customer the connect page.

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{DEFAULT_URL, Failure};

/// How long the token this command signs lives: it is used once, at once.
pub const TOKEN_TTL_SECS: u64 = 300;

/// `latchkey connect-link`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connect link")]
pub struct Link {
    /// The organization (the token's `org` claim).
    #[arg(long)]
    pub org: String,
    /// The customer the page is for.
    #[arg(long)]
    pub customer: String,
    /// A definition the page offers; repeatable. None: every definition of the organization.
    #[arg(long = "definition", value_name = "KEY")]
    pub definitions: Vec<String>,
    /// Reconnect this connection of the customer (`con_...`): the page shows only it.
    #[arg(long, value_name = "ID")]
    pub connection_id: Option<String>,
    /// Base URL of the running Latchkey API (`latchkey serve`'s address).
    #[arg(long, env = "LATCHKEY_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,
}

impl Link {
    /// The `POST /v1/connect/sessions` body.
    pub fn body(&self) -> Value {
        let mut body = json!({"customer": self.customer});
        if !self.definitions.is_empty() {
            body["definitions"] = json!(self.definitions);
        }
        if let Some(id) = &self.connection_id {
            body["connection_id"] = json!(id);
        }
        body
    }
}

/// The message of a refusal: a problem's `detail` and the fields it names, never the body as
/// it came.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = problem["detail"].as_str().unwrap_or("no problem details");
    let fields: Vec<String> = problem["errors"]
        .as_array()
        .map(|errs| {
            errs.iter().filter_map(|e| Some(format!("{}: {}", e["field"].as_str()?, e["message"].as_str()?))).collect()
        })
        .unwrap_or_default();
    if fields.is_empty() {
        format!("the API refused the connect session (HTTP {status}): {detail}")
    } else {
        format!("the API refused the connect session (HTTP {status}): {}", fields.join("; "))
    }
}

/// Creates the session with `token` (an organization user's) and prints its link, then its
/// expiry (RFC 3339), one per line.
///
/// # Errors
/// No answer from the API, or its refusal (an unknown definition or customer's connection,
/// a token the server does not accept...).
pub async fn run(args: Link, token: SecretString) -> Result<(), Failure> {
    let base = if args.url.trim().is_empty() { DEFAULT_URL } else { args.url.trim() };
    let endpoint = format!("{}/v1/connect/sessions", base.trim_end_matches('/'));
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let res = http
        .post(&endpoint)
        .bearer_auth(token.expose_secret())
        .json(&args.body())
        .send()
        .await
        .map_err(|e| format!("no answer from {endpoint}: {e}"))?;
    let status = res.status();
    let bytes = res.bytes().await?;
    if !status.is_success() {
        return Err(refusal(status, &bytes).into());
    }
    let link: Value = serde_json::from_slice(&bytes)?;
    let (Some(url), Some(expires_at)) = (link["url"].as_str(), link["expires_at"].as_str()) else {
        return Err("the API's answer has no url and expires_at".into());
    };
    super::line(url)?;
    super::line(expires_at)
}
