//! Looks a connection's credentials up the way integration code does, and prints what it got
//! (names and expiry only: never the secrets).
//!
//! ```sh
//! export LATCHKEY_URL=http://127.0.0.1:8080
//! export LATCHKEY_TOKEN=$(latchkey token --org local --role runtime)
//! cargo run -p latchkey-client --example lookup -- con_01J...
//! ```

use std::process::ExitCode;

use latchkey_client::{Client, ErrorKind};

#[tokio::main]
async fn main() -> ExitCode {
    let (Some(id), Ok(url), Ok(token)) =
        (std::env::args().nth(1), std::env::var("LATCHKEY_URL"), std::env::var("LATCHKEY_TOKEN"))
    else {
        eprintln!("usage: LATCHKEY_URL=... LATCHKEY_TOKEN=<runtime token> lookup CONNECTION_ID");
        return ExitCode::from(2);
    };
    let client = match Client::new(&url, token.into()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match client.lookup(&id, Some(60)).await {
        Ok(creds) => {
            println!("{} ({}), status {}", creds.connection_id, creds.definition, creds.status);
            println!("fields: {}", creds.fields.names().collect::<Vec<_>>().join(", "));
            if let Some(t) = &creds.token {
                println!("{} token, expires {:?}, scopes {:?}", t.token_type, t.expires_at, t.scopes);
            }
            ExitCode::SUCCESS
        }
        // The connection needs a person: tell them, do not retry.
        Err(e)
            if matches!(
                e.kind(),
                Some(ErrorKind::ConnectionPending | ErrorKind::ConnectionDisconnected | ErrorKind::ConnectionError)
            ) =>
        {
            eprintln!("the connection needs attention: {e}");
            ExitCode::from(3)
        }
        Err(e) if e.is_retryable() => {
            eprintln!("try again shortly: {e}");
            ExitCode::from(75)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
