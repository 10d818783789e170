//! `latchkey`: run every function in one local process (`serve`), create the DynamoDB table
//! (`bootstrap`), mint dev tokens (`token`). Every subcommand takes the settings of
//! `latchkey::config::Settings`, as flags or `LATCHKEY_*` variables.

mod commands;
mod serve;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use latchkey::config::{LogFormat, Settings, ignore_blank_env};
use latchkey::http::auth::{Claims, Verifier, sign_hs256};
use secrecy::SecretString;

#[derive(Parser)]
// `long_about = None`: without it clap shows the flattened `Settings` struct's rustdoc as the
// command's long description.
#[command(
    name = "latchkey",
    version,
    about = "Latchkey: credentials for your customers' integrations",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the whole API locally (embedded backend by default), configured by the settings
    /// below.
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
    /// Apply definitions from YAML/JSON files (diff, then write only what changed), list or show
    /// them, on the API at --url (LATCHKEY_URL).
    #[command(subcommand)]
    Definitions(commands::definitions::Definitions),
    /// List or show connections on the API at --url (LATCHKEY_URL).
    #[command(subcommand)]
    Connections(commands::connections::Connections),
    /// Look a connection's credentials up (token role `runtime`) and print them. PRINTS SECRETS
    /// (values and the access token) in clear on stdout.
    Lookup(commands::lookup::Lookup),
    /// Import connections with existing tokens in bulk from JSON lines or a JSON array.
    Import(commands::import::Import),
    /// Check the backend the settings name (embedded: data directory and key files; aws: table,
    /// KMS key, event bus, clock) and say ok/warn/fail for each; non-zero exit if one fails.
    Doctor,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A signed HS256 token with these claims, checked as the server would check it.
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

async fn bootstrap(settings: &Settings) -> Result<(), Box<dyn std::error::Error>> {
    use latchkey::adapters::aws::schema::{self, Bootstrap};
    let table = settings.require_table()?;
    let sdk = latchkey::adapters::aws::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    match schema::bootstrap(&client, table).await.map_err(|e| format!("bootstrap of table {table} failed: {e}"))? {
        Bootstrap::Created => println!("table {table} created"),
        Bootstrap::AlreadyExisted => println!("table {table} already exists"),
    }
    Ok(())
}

/// What `latchkey doctor` checks, from the settings.
fn doctor_target(settings: &Settings) -> commands::doctor::Target {
    match settings.backend {
        latchkey::config::BackendKind::Embedded => commands::doctor::Target::Embedded {
            data_dir: settings.data_dir.clone(),
            jwt_secret_set: settings.jwt_secret.is_some(),
        },
        latchkey::config::BackendKind::Aws => commands::doctor::Target::Aws {
            table: settings.table.clone(),
            kms_key_id: settings.kms_key_id.clone(),
            event_bus: settings.event_bus.clone(),
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // A blank LATCHKEY_* variable counts as unset, as it always has.
    let cli = ignore_blank_env(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&cli).unwrap_or_else(|e| e.exit());
    let settings = match cli.settings.check() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return ExitCode::from(2);
        }
    };
    latchkey::telemetry::init(settings.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Serve => serve::run(settings).await,
        Command::Bootstrap => bootstrap(&settings).await,
        // Never a new secret: a token signed with one no server knows would only get a bare 401.
        Command::Token { org, customer, roles, ttl } => match settings.jwt_secret_existing() {
            Ok(secret) => token(&secret, org, customer, roles, ttl).await.map(|t| println!("{t}")).map_err(Into::into),
            Err(e) => Err(e.into()),
        },
        Command::Definitions(c) => commands::definitions::run(c).await,
        Command::Connections(c) => commands::connections::run(c).await,
        Command::Lookup(c) => commands::lookup::run(c).await,
        Command::Import(c) => commands::import::run(c).await,
        Command::Doctor => commands::doctor::run(doctor_target(&settings)).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}
