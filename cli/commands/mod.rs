//! The commands that talk to a running Latchkey API (`definitions`, `connections`, `lookup`,
//! `import`) through the `latchkey-client` crate, and `doctor`, which checks the local settings.
//! Results go to stdout, progress and summaries to stderr.

pub mod connect_link;
pub mod connections;
pub mod definitions;
pub mod doctor;
pub mod import;
pub mod keys;
pub mod lookup;

use clap::Args;
use latchkey_client::Client;
use secrecy::SecretString;

/// What a command's failure is: its message is printed after `latchkey: `.
pub type Failure = Box<dyn std::error::Error>;

/// The API `--url` names when it is unset or blank: `latchkey serve`'s default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the API is and who calls it: `--url`/`LATCHKEY_URL`, `--token`/`LATCHKEY_TOKEN`, the
/// only settings of the commands that talk to an API (the server's settings are `serve`'s).
/// Blank counts as unset: the default URL, and "no token".
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "API")]
pub struct Remote {
    /// Base URL of the Latchkey API (`latchkey serve`'s address, or the deployed API's URL).
    #[arg(long, env = "LATCHKEY_URL", default_value = DEFAULT_URL, value_name = "URL")]
    pub url: String,
    /// Bearer token (a JWT): an organization user's for definitions, connections and import, one
    /// with the `runtime` role for lookup. `latchkey token --org ORG [--role runtime]` mints one
    /// locally.
    #[arg(long, env = "LATCHKEY_TOKEN", hide_env_values = true, value_name = "JWT", value_parser = secret)]
    pub token: Option<SecretString>,
}

impl Remote {
    /// The API client.
    ///
    /// # Errors
    /// No token, or a URL that is not http(s).
    pub fn client(&self) -> Result<Client, Failure> {
        use secrecy::ExposeSecret;
        let token = self.token.clone().filter(|t| !t.expose_secret().trim().is_empty()).ok_or(
            "no token: set LATCHKEY_TOKEN or --token (locally: `latchkey token --org ORG`, with \
             `--role runtime` for lookup)",
        )?;
        Ok(Client::new(self.base_url(), token)?)
    }

    /// The base URL the client is given: `--url`, or [`DEFAULT_URL`] when blank.
    fn base_url(&self) -> &str {
        if self.url.trim().is_empty() { DEFAULT_URL } else { self.url.trim() }
    }

    /// A listing's failure, said plainly when it is a 404: a list exists for every caller, so a
    /// 404 means the URL does not lead to the API (a base URL ending in `/v1`, say), which the
    /// client's `ConnectionNotFound` alone does not tell.
    pub fn listing_failure(&self, e: latchkey_client::Error) -> Failure {
        if e.kind() == Some(&latchkey_client::ErrorKind::NotFound) {
            // Shown without any user name or password the URL may carry.
            let shown = reqwest::Url::parse(self.base_url()).map_or_else(
                |_| self.base_url().to_owned(),
                |mut u| {
                    let _ = (u.set_username(""), u.set_password(None));
                    u.to_string().trim_end_matches('/').to_owned()
                },
            );
            return format!(
                "{e}: the list itself was not found at {shown}; --url (LATCHKEY_URL) is the API's base URL, \
                 the server's root without /v1 (locally {DEFAULT_URL})"
            )
            .into();
        }
        e.into()
    }
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// Prints `value` as indented JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    line(serde_json::to_string_pretty(value)?)
}

/// Writes `text` and a newline on stdout: every command's output goes through here (or
/// [`text`]). A reader that closed the pipe (`latchkey connect-link ... | head -1`) is not a
/// failure: it has what it wanted, and the rest is dropped (where `println!` would panic).
///
/// # Errors
/// Any other write error of stdout.
pub fn line(text: impl std::fmt::Display) -> Result<(), Failure> {
    write_stdout(format_args!("{text}\n"))
}

/// Writes `text` as it is on stdout, as [`line`] does.
///
/// # Errors
/// Any write error of stdout but a closed pipe.
pub fn text(text: impl std::fmt::Display) -> Result<(), Failure> {
    write_stdout(format_args!("{text}"))
}

fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing to stdout failed: {e}").into()),
        _ => Ok(()),
    }
}
