//! `latchkey`: run every function in one local process (`serve`), mint dev tokens (`token`).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use latchkey::config::{App, Config, DEV_ORG};
use latchkey::http::auth::{Claims, Verifier, sign_hs256};
use secrecy::SecretString;

#[derive(Parser)]
#[command(name = "latchkey", version, about = "Latchkey: credentials for your customers' integrations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the whole API locally (embedded backend by default). Configured by LATCHKEY_* variables.
    Serve,
    /// Create the DynamoDB table LATCHKEY_TABLE (indexes, TTL) if it is missing: for development
    /// and tests against an emulator; production uses infra/.
    Bootstrap,
    /// Print a signed HS256 development token (LATCHKEY_JWT_SECRET, or the data directory's secret).
    Token {
        /// The organization (`org` claim).
        #[arg(long)]
        org: String,
        /// Make it a customer user's token (`customer` claim).
        #[arg(long)]
        customer: Option<String>,
        /// A role to grant (`runtime` allows token lookup); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 12 * 3600)]
        ttl: u64,
    },
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

async fn token(
    secret: &SecretString,
    org: String,
    customer: Option<String>,
    roles: Vec<String>,
    ttl: u64,
) -> Result<String, String> {
    let claims = Claims { org, customer, roles, exp: unix_now() + ttl };
    // Refuse what the server would refuse, instead of printing a token that never works.
    let verifier = Verifier::hs256(secret).map_err(|e| e.to_string())?;
    let signed = sign_hs256(secret, &claims).map_err(|e| format!("signing failed: {e}"))?;
    verifier.verify(&signed).await.map_err(|p| p.detail)?;
    Ok(signed)
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let (secret, generated) = config.jwt_secret_or_generate()?;
    // HS256 tokens of the local secret, and RS256/ES256 tokens of LATCHKEY_JWT_ISSUER if set.
    let verifier = config.verifier(Some(&secret))?;
    let app = App::build(&config).await?;
    let state = app.http_state(verifier);
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let bound = listener.local_addr()?;
    app.service.set_public_url(&config.public_url(bound));
    // Stdout is for people and the test harness; logs go to stderr.
    println!("latchkey listening on http://{bound}");
    println!("OAuth redirect URI: {}/v1/oauth/callback", config.public_url(bound));
    if generated {
        let t = token(&secret, DEV_ORG.to_owned(), None, Vec::new(), 12 * 3600).await?;
        println!("LATCHKEY_JWT_SECRET is not set: using the secret in {}", config.data_dir.display());
        println!("organization token (org \"{DEV_ORG}\", 12 h): {t}");
    }
    // The revoker, as the EventBridge rule runs token-revoke in AWS: on our own disconnect and
    // delete events (in-process, embedded backend), and by the sweep for retries.
    if let Some(events) = &app.events {
        let mut rx = events.subscribe();
        let revoker = app.service.clone();
        tokio::spawn(async move {
            use latchkey::domain::EventType;
            loop {
                match rx.recv().await {
                    Ok(e) if matches!(e.kind, EventType::ConnectionDisconnected | EventType::ConnectionDeleted) => {
                        if let Err(err) = revoker.revoke_pending(&e.org, &e.connection_id).await {
                            tracing::warn!(connection_id = %e.connection_id, error = %err, "revocation failed");
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the revoker fell behind; the sweep picks up what it missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    // The refresh sweep, as the EventBridge schedule runs it in AWS.
    let sweeper = app.service.clone();
    let every = config.refresh_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweeper.refresh_sweep(std::time::Instant::now() + every).await {
                tracing::warn!(error = %e, "refresh sweep failed");
            }
        }
    });
    tracing::info!(addr = %bound, "latchkey serve ready");
    axum::serve(listener, latchkey::http::router(state)).with_graceful_shutdown(shutdown()).await?;
    tracing::info!("latchkey serve stopped");
    Ok(())
}

async fn bootstrap(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    use latchkey::adapters::aws::schema::{self, Bootstrap};
    let table = config.require_table()?;
    let sdk = latchkey::adapters::aws::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    match schema::bootstrap(&client, table).await.map_err(|e| format!("bootstrap of table {table} failed: {e}"))? {
        Bootstrap::Created => println!("table {table} created"),
        Bootstrap::AlreadyExisted => println!("table {table} already exists"),
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    latchkey::telemetry::init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => serve(config).await,
        Command::Bootstrap => bootstrap(&config).await,
        // Never a new secret: a token signed with one no server knows would only get a bare 401.
        Command::Token { org, customer, roles, ttl } => match config.jwt_secret_existing() {
            Ok(secret) => token(&secret, org, customer, roles, ttl).await.map(|t| println!("{t}")).map_err(Into::into),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}
