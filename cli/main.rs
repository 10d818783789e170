//! `latchkey`: run every function in one local process (`serve`), create the DynamoDB table
//! (`bootstrap`), mint dev tokens (`token`), print a connect link (`connect-link`, which also
//! takes `--url`), check a backend (`doctor`): these take the server's settings
//! (`latchkey::config::Settings`, as flags or `LATCHKEY_*` variables). The commands
//! that talk to a running API (`definitions`, `connections`, `lookup`, `import`) take only
//! `--url`/`--token` (`LATCHKEY_URL`/`LATCHKEY_TOKEN`): a server setting neither shows in their
//! help nor stops them. A blank variable counts as unset everywhere.

mod commands;
mod serve;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use latchkey::config::{LogFormat, Settings, ignore_blank_env};
use latchkey::domain::RUNTIME_ROLE;
use latchkey::http::auth::{Claims, Verifier, sign_hs256};
use secrecy::SecretString;

/// The process's allocator: mimalloc rather than glibc's malloc. A token lookup through
/// `latchkey serve` makes many small allocations (the record's document, its values, the
/// answer, the log lines); under glibc, `malloc`/`free` were 12.5% of the server's samples.
/// With mimalloc a lookup costs about 2 µs less server CPU (median 27.5 against 29.9 µs), at
/// 28-30 MiB of peak resident memory against 16 (docs/performance.md, "The allocator"). The
/// Lambda functions keep the system allocator: one request at a time, and their binaries are
/// kept small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "latchkey", version, about = "Latchkey: credentials for your customers' integrations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `long_about = None` on the commands with `Settings`: without it clap shows the flattened
// struct's rustdoc as the command's long description.
#[derive(Subcommand)]
enum Command {
    /// Serve the whole API locally (embedded backend by default), configured by the server's
    /// settings (flags or LATCHKEY_* variables).
    #[command(long_about = None)]
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
    /// Create the DynamoDB table LATCHKEY_TABLE (indexes, TTL) if it is missing: for development
    /// and tests against an emulator; production uses infra/.
    #[command(long_about = None)]
    Bootstrap {
        #[command(flatten)]
        settings: Settings,
    },
    /// Print a signed HS256 development token (LATCHKEY_JWT_SECRET, or the data directory's secret).
    #[command(long_about = None)]
    Token {
        /// The organization (`org` claim).
        #[arg(long)]
        org: String,
        /// Make it a customer user's token (`customer` claim).
        #[arg(long)]
        customer: Option<String>,
        /// A role to grant: `runtime` (token lookup), the one role Latchkey reads; repeatable. A
        /// role it does not read is refused here (a misspelt `runtime` would otherwise mint a
        /// token whose lookups are 403).
        #[arg(long = "role", value_parser = [RUNTIME_ROLE])]
        roles: Vec<String>,
        /// Lifetime in seconds, 1 to 31,622,400 (366 days; the server allows 60 s of clock skew
        /// past `exp`).
        #[arg(long, default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
        ttl: u64,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print a connect session's one-time link (then its expiry) for a customer, from the API at
    /// --url (LATCHKEY_URL), signing an organization token with the server's JWT secret
    /// (LATCHKEY_JWT_SECRET, or the data directory's) as `token` does.
    #[command(long_about = None)]
    ConnectLink {
        #[command(flatten)]
        link: commands::connect_link::Link,
        #[command(flatten)]
        settings: Settings,
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
    /// KMS key and its data-key use, event bus, clock) and say ok/warn/fail for each; non-zero
    /// exit if one fails.
    #[command(long_about = None)]
    Doctor {
        #[command(flatten)]
        settings: Settings,
    },
    /// Manage the key hierarchy on the backend the settings name: `keys rotate --org ORG` stores
    /// a new version of an organization's branch key (no secret is re-entered or rewritten).
    #[command(subcommand)]
    Keys(commands::keys::Keys),
}

impl Command {
    /// The command with its server settings checked ([`Settings::check`]); the API-client
    /// commands, which take none, as they are.
    fn checked(self) -> Result<Self, latchkey::config::ConfigError> {
        Ok(match self {
            Self::Serve { settings } => Self::Serve { settings: settings.check()? },
            Self::Bootstrap { settings } => Self::Bootstrap { settings: settings.check()? },
            Self::Token { org, customer, roles, ttl, settings } => {
                Self::Token { org, customer, roles, ttl, settings: settings.check()? }
            }
            Self::Doctor { settings } => Self::Doctor { settings: settings.check()? },
            Self::ConnectLink { link, settings } => Self::ConnectLink { link, settings: settings.check()? },
            Self::Keys(keys) => Self::Keys(keys.checked()?),
            client @ (Self::Definitions(_) | Self::Connections(_) | Self::Lookup(_) | Self::Import(_)) => client,
        })
    }

    /// The server settings of the commands that take them.
    fn settings(&self) -> Option<&Settings> {
        match self {
            Self::Serve { settings }
            | Self::Bootstrap { settings }
            | Self::Token { settings, .. }
            | Self::ConnectLink { settings, .. }
            | Self::Doctor { settings } => Some(settings),
            Self::Keys(keys) => Some(keys.settings()),
            Self::Definitions(_) | Self::Connections(_) | Self::Lookup(_) | Self::Import(_) => None,
        }
    }
}

/// [`ignore_blank_env`] on `command` and every subcommand under it: the settings and
/// `--url`/`--token` are declared on the subcommands.
fn ignore_blank_env_everywhere(command: clap::Command) -> clap::Command {
    ignore_blank_env(command).mut_subcommands(ignore_blank_env_everywhere)
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
        Bootstrap::Created => commands::line(format_args!("table {table} created")),
        Bootstrap::AlreadyExisted => commands::line(format_args!("table {table} already exists")),
        Bootstrap::IndexesAdded(added) => commands::line(format_args!(
            "table {table} already exists; added its index {} (the indexes they replace can be deleted: \
             infra/README.md, Index migration)",
            added.join(", ")
        )),
    }
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
    let cli = ignore_blank_env_everywhere(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&cli).unwrap_or_else(|e| e.exit());
    // Only the commands that take the server's settings check them (and may refuse to start).
    let command = match cli.command.checked() {
        Ok(command) => command,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return ExitCode::from(2);
        }
    };
    latchkey::telemetry::init(command.settings().is_some_and(|s| s.log_format == LogFormat::Json));
    let result = match command {
        Command::Serve { settings } => serve::run(settings).await,
        Command::Bootstrap { settings } => bootstrap(&settings).await,
        // Never a new secret: a token signed with one no server knows would only get a bare 401.
        Command::Token { org, customer, roles, ttl, settings } => match settings.jwt_secret_existing() {
            Ok(secret) => match token(&secret, org, customer, roles, ttl).await {
                Ok(t) => commands::line(t),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        },
        Command::ConnectLink { link, settings } => match settings.jwt_secret_existing() {
            Ok(secret) => {
                match token(&secret, link.org.clone(), None, Vec::new(), commands::connect_link::TOKEN_TTL_SECS).await {
                    Ok(signed) => commands::connect_link::run(link, SecretString::from(signed)).await,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        },
        Command::Definitions(c) => commands::definitions::run(c).await,
        Command::Connections(c) => commands::connections::run(c).await,
        Command::Lookup(c) => commands::lookup::run(c).await,
        Command::Import(c) => commands::import::run(c).await,
        Command::Doctor { settings } => commands::doctor::run(doctor_target(&settings)).await,
        Command::Keys(c) => commands::keys::run(c).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}
