//! [`Settings`]: every `LATCHKEY_*` variable, each also a `--flag` of the `latchkey` command, so
//! `latchkey serve --help` documents them all. Each value is checked by its parser, whose error
//! names the variable (`LATCHKEY_ADDR is invalid: ...`); settings that depend on each other are
//! checked by [`Settings::check`]. The Lambda functions read the same settings from their
//! environment only ([`Settings::from_env`]).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Args, Command, FromArgMatches};
use secrecy::SecretString;

use super::ConfigError;
use crate::http::auth::{JwtIssuer, MIN_HS256_SECRET_BYTES, Verifier};
use crate::service::{RefreshPolicy, ServiceOptions, VerifyPolicy};

/// Which adapters back the service (`LATCHKEY_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `embedded`: SQLite + local master key + log events, under `LATCHKEY_DATA_DIR`.
    Embedded,
    /// `aws`: DynamoDB + KMS + EventBridge.
    Aws,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Aws => "aws",
        }
    }
}

/// How the `token-lookup` function authorizes a payload (`LATCHKEY_LOOKUP_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupAuth {
    /// `iam` (default): whoever may invoke the function (IAM `lambda:InvokeFunction`) may look
    /// up any organization's connections; a payload's `token` is ignored.
    Iam,
    /// `token`: every payload carries a runtime JWT (`"token"`), verified like HTTP bearer
    /// tokens; its `org` must be the payload's and its `customer`, if any, restricts the lookup.
    Token,
}

/// The format of log lines on stderr (`LATCHKEY_LOG_FORMAT`); on Lambda they are JSON whatever
/// it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `text` (default): one human-readable line per event.
    Text,
    /// `json`: one JSON object per line.
    Json,
}

/// Latchkey's settings. Each field is a `--flag` of the `latchkey` command and a `LATCHKEY_*`
/// variable (the flag's name in capitals, `-` as `_`); a flag wins over its variable, and a
/// variable set to blank counts as unset. The README's configuration table lists the same.
///
/// Build it with [`Settings::from_env`] (the Lambda functions), [`Settings::from_vars`], or as
/// part of a clap command followed by [`Settings::check`] (`latchkey`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Settings (each also read from its LATCHKEY_* variable)")]
pub struct Settings {
    /// Which adapters back the service: `embedded` (SQLite, local key) or `aws` (DynamoDB, KMS,
    /// EventBridge). The Lambda functions default to `aws`.
    #[arg(long, env = "LATCHKEY_BACKEND", global = true, value_name = "embedded|aws")]
    #[arg(default_value = "embedded", value_parser = Checked(parse_backend))]
    pub backend: BackendKind,

    /// Where `latchkey serve` listens, host:port; port 0 picks a free one.
    #[arg(long, env = "LATCHKEY_ADDR", global = true, value_name = "HOST:PORT")]
    #[arg(default_value = "127.0.0.1:8080", value_parser = Checked(parse_addr))]
    pub addr: SocketAddr,

    /// Base of the OAuth redirect URI `{public-url}/v1/oauth/callback` (https, or http on
    /// loopback); `latchkey serve` defaults to `http://<the address it listens on>`, the HTTP
    /// functions to the request's API Gateway domain. Stored without a trailing `/`.
    #[arg(long, env = "LATCHKEY_PUBLIC_URL", global = true, value_name = "URL")]
    #[arg(value_parser = Checked(parse_public_url))]
    pub public_url: Option<String>,

    /// The embedded backend's directory (mode 0700): `latchkey.db`, `master.key`, `jwt.secret`.
    #[arg(long, env = "LATCHKEY_DATA_DIR", global = true, value_name = "DIR", default_value = "./.latchkey")]
    pub data_dir: PathBuf,

    /// HS256 secret of bearer tokens, at least 32 bytes (`openssl rand -hex 32`). Unset,
    /// `latchkey serve` generates one into the data directory and the functions accept no
    /// HS256 token.
    #[arg(long, env = "LATCHKEY_JWT_SECRET", global = true, value_name = "SECRET", hide_env_values = true)]
    #[arg(value_parser = Checked(parse_jwt_secret))]
    pub jwt_secret: Option<SecretString>,

    /// Issuer (`iss`) of RS256/ES256 bearer tokens, whose keys are read from
    /// `<issuer>/.well-known/openid-configuration` (https, or http on loopback).
    #[arg(long, env = "LATCHKEY_JWT_ISSUER", global = true, value_name = "URL")]
    #[arg(value_parser = Checked(parse_trimmed))]
    pub jwt_issuer: Option<String>,

    /// The accepted `aud` values of the issuer's tokens, comma-separated; required with the
    /// issuer.
    #[arg(long, env = "LATCHKEY_JWT_AUDIENCE", global = true, value_name = "AUD,...")]
    #[arg(value_delimiter = ',', value_parser = Checked(parse_trimmed))]
    pub jwt_audience: Vec<String>,

    /// How `token-lookup` authorizes a payload: `iam` (the invoke permission) or `token` (a
    /// runtime JWT in every payload).
    #[arg(long, env = "LATCHKEY_LOOKUP_AUTH", global = true, value_name = "iam|token")]
    #[arg(default_value = "iam", value_parser = Checked(parse_lookup_auth))]
    pub lookup_auth: LookupAuth,

    /// How often `latchkey serve` sweeps the due index for tokens to refresh, in seconds.
    #[arg(long = "refresh-interval-secs", env = "LATCHKEY_REFRESH_INTERVAL_SECS", global = true)]
    #[arg(value_name = "SECS", default_value = "60", value_parser = Checked(parse_positive_secs))]
    pub refresh_interval: Duration,

    /// Refresh a token this many seconds before it expires, capped at half its lifetime.
    #[arg(long = "refresh-lookahead-secs", env = "LATCHKEY_REFRESH_LOOKAHEAD_SECS", global = true)]
    #[arg(value_name = "SECS", default_value = "600", value_parser = Checked(parse_secs))]
    pub refresh_lookahead: Duration,

    /// token-refresh: the SQS queue URL its scheduled invocation hands due connections to when
    /// more are due than it refreshes inline (its workers read the same queue). Unset, it
    /// always sweeps inline.
    #[arg(long = "refresh-queue-url", env = "LATCHKEY_REFRESH_QUEUE_URL", global = true, value_name = "URL")]
    #[arg(value_parser = Checked(parse_trimmed))]
    pub refresh_queue_url: Option<String>,

    /// Days before a refresh token lapses that `Refresh Token Expiring` fires (once per refresh
    /// token); a decimal number of days (0.5 is 12 hours), at most 365.
    #[arg(long = "rt-warning-days", env = "LATCHKEY_RT_WARNING_DAYS", global = true)]
    #[arg(value_name = "DAYS", default_value = "7", value_parser = Checked(parse_days))]
    pub rt_warning: Duration,

    /// How often a connection whose definition has a `verify` request is verified, in seconds.
    #[arg(long = "verify-interval-secs", env = "LATCHKEY_VERIFY_INTERVAL_SECS", global = true)]
    #[arg(value_name = "SECS", default_value = "86400", value_parser = Checked(parse_positive_secs))]
    pub verify_interval: Duration,

    /// Whether provider endpoints Latchkey calls may be on loopback; default `true` on the
    /// embedded backend, `false` on aws.
    #[arg(long, env = "LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", global = true, value_name = "true|false")]
    #[arg(value_parser = Checked(parse_bool))]
    pub allow_loopback_providers: Option<bool>,

    /// Who may show the connect page in a frame: a space-separated CSP `frame-ancestors` list
    /// of origins (`https://app.example.com`, `https://*.example.com`) and `'self'`, or
    /// `'none'` (default: no one).
    #[arg(long, env = "LATCHKEY_CONNECT_FRAME_ANCESTORS", global = true, value_name = "SOURCES")]
    #[arg(default_value = "'none'", value_parser = Checked(crate::http::connect::parse_frame_ancestors))]
    pub connect_frame_ancestors: String,

    /// Seconds between webhook delivery attempts, comma-separated, one entry per retry (blank:
    /// `5,300,1800,7200,18000,36000,36000`, about 27.5 h); after the last the delivery fails
    /// and its endpoint is disabled.
    #[arg(long = "webhook-retry-schedule", env = "LATCHKEY_WEBHOOK_RETRY_SCHEDULE", global = true)]
    #[arg(value_name = "SECS,...", value_parser = Checked(parse_retry_schedule))]
    pub webhook_retry_schedule: Option<RetrySchedule>,

    /// aws backend: the DynamoDB table.
    #[arg(long, env = "LATCHKEY_TABLE", global = true, value_name = "NAME")]
    pub table: Option<String>,

    /// aws backend: the KMS key (id, ARN or `alias/...`) that generates the data keys.
    #[arg(long, env = "LATCHKEY_KMS_KEY_ID", global = true, value_name = "KEY")]
    pub kms_key_id: Option<String>,

    /// aws backend: the EventBridge bus lifecycle events go to.
    #[arg(long, env = "LATCHKEY_EVENT_BUS", global = true, value_name = "NAME", default_value = "default")]
    pub event_bus: String,

    /// Log lines on stderr: `text` or `json` (always JSON on Lambda).
    #[arg(long, env = "LATCHKEY_LOG_FORMAT", global = true, value_name = "text|json")]
    #[arg(default_value = "text", value_parser = Checked(parse_log_format))]
    pub log_format: LogFormat,
}

impl Settings {
    /// The settings of a Lambda function: the `LATCHKEY_*` variables of the process
    /// environment (never its arguments), with `default_backend` when `LATCHKEY_BACKEND` is
    /// unset. Blank variables count as unset.
    ///
    /// # Errors
    /// A value its parser refuses, or settings that do not go together ([`Settings::check`]).
    pub fn from_env(default_backend: BackendKind) -> Result<Self, ConfigError> {
        let command = ignore_blank_env(Self::command(default_backend));
        Self::parse(command, ["latchkey"])
    }

    /// The settings from `vars` (a variable's value by name, `None` when unset) instead of the
    /// process environment, parsed exactly as [`Settings::from_env`] parses it.
    ///
    /// # Errors
    /// As [`Settings::from_env`].
    pub fn from_vars(default_backend: BackendKind, vars: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut args = vec!["latchkey".to_owned()];
        let command = Self::command(default_backend).mut_args(|arg| {
            let value = arg.get_env().and_then(OsStr::to_str).and_then(&vars);
            if let (Some(value), Some(long)) = (value.filter(|v| !v.trim().is_empty()), arg.get_long()) {
                args.push(format!("--{long}={value}"));
            }
            // The process environment plays no part.
            arg.env(None)
        });
        Self::parse(command, args)
    }

    fn command(default_backend: BackendKind) -> Command {
        Self::augment_args(Command::new("latchkey")).mut_arg("backend", |a| a.default_value(default_backend.name()))
    }

    fn parse<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
        command: Command,
        args: I,
    ) -> Result<Self, ConfigError> {
        let unparsed = |e: clap::Error| {
            let message = e.render().to_string();
            let first = message.lines().next().unwrap_or_default();
            ConfigError::Unparsed(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        };
        let matches = command.try_get_matches_from(args).map_err(unparsed)?;
        Self::from_arg_matches(&matches).map_err(unparsed)?.check()
    }

    /// Checks the settings that depend on each other (an issuer needs an audience, an audience
    /// an issuer, the issuer must be https or loopback) and drops empty audience entries.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable at fault.
    pub fn check(mut self) -> Result<Self, ConfigError> {
        self.jwt_audience.retain(|a| !a.is_empty());
        match &self.jwt_issuer {
            Some(issuer) => JwtIssuer::check(issuer, &self.jwt_audience)
                .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_ISSUER", why: e.to_string() })?,
            None if !self.jwt_audience.is_empty() => {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_JWT_AUDIENCE",
                    why: "is set without LATCHKEY_JWT_ISSUER".into(),
                });
            }
            None => {}
        }
        Ok(self)
    }

    /// `LATCHKEY_ALLOW_LOOPBACK_PROVIDERS`, by default `true` on the embedded backend only.
    pub fn loopback_providers_allowed(&self) -> bool {
        self.allow_loopback_providers.unwrap_or(self.backend == BackendKind::Embedded)
    }

    /// What the service is built with: the public URL, the loopback rule, the refresh lookahead.
    pub fn service_options(&self) -> ServiceOptions {
        ServiceOptions {
            public_url: self.public_url.clone(),
            allow_loopback_providers: self.loopback_providers_allowed(),
            refresh: RefreshPolicy {
                lookahead: self.refresh_lookahead,
                rt_warning: self.rt_warning,
                ..RefreshPolicy::default()
            },
            verify: VerifyPolicy { interval: self.verify_interval, ..VerifyPolicy::default() },
            connect_frame_ancestors: self.connect_frame_ancestors.clone(),
            webhook_outbox: self.backend == BackendKind::Embedded,
            webhook_retry_schedule: self
                .webhook_retry_schedule
                .as_ref()
                .map_or_else(crate::service::webhooks::default_retry_schedule, |s| s.0.clone()),
            webhook_attempt_timeout: crate::service::webhooks::DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// The bearer-token verifier: RS256/ES256 tokens of `LATCHKEY_JWT_ISSUER` if set, and HS256
    /// tokens signed with `hs256_secret` if given (`LATCHKEY_JWT_SECRET`, or the secret
    /// `latchkey serve` generated). With neither it refuses every token. Fetches nothing yet.
    ///
    /// # Errors
    /// An HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`], an invalid issuer or no
    /// audience.
    pub fn verifier(&self, hs256_secret: Option<&SecretString>) -> Result<Verifier, ConfigError> {
        let mut verifier = Verifier::refuse_all();
        if let Some(issuer) = &self.jwt_issuer {
            let issuer = JwtIssuer::new(issuer, self.jwt_audience.clone())
                .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_ISSUER", why: e.to_string() })?;
            verifier = verifier.with_issuer(issuer);
        }
        if let Some(secret) = hs256_secret {
            verifier = verifier
                .with_hs256(secret)
                .map_err(|e| ConfigError::Invalid { name: "LATCHKEY_JWT_SECRET", why: e.to_string() })?;
        }
        Ok(verifier)
    }

    /// `LATCHKEY_TABLE`, required by the aws backend and `latchkey bootstrap`.
    pub fn require_table(&self) -> Result<&str, ConfigError> {
        self.table.as_deref().ok_or(ConfigError::Missing("LATCHKEY_TABLE"))
    }

    /// `LATCHKEY_KMS_KEY_ID`, required by the aws backend.
    pub fn require_kms_key_id(&self) -> Result<&str, ConfigError> {
        self.kms_key_id.as_deref().ok_or(ConfigError::Missing("LATCHKEY_KMS_KEY_ID"))
    }
}

/// `LATCHKEY_WEBHOOK_RETRY_SCHEDULE`: the waits between webhook delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

/// Clap reads a variable set to `""` (or to spaces) as that value; Latchkey has always read a
/// blank variable as unset (a template or compose file often sets one empty). This drops the
/// variable of every argument of `command` whose variable is blank in the process environment,
/// so that its default applies (and its `--help` line names no variable). Call it on a command
/// before parsing with it.
pub fn ignore_blank_env(command: Command) -> Command {
    command.mut_args(|arg| {
        let value = arg.get_env().and_then(std::env::var_os);
        let blank = value.is_some_and(|v| v.to_str().is_some_and(|v| v.trim().is_empty()));
        if blank { arg.env(None) } else { arg }
    })
}

/// A value parser whose error reads `LATCHKEY_X is invalid: <why>`, naming the variable (the
/// flag's name in capitals) and quoting nothing but what `why` quotes: clap's own message would
/// quote the value, and the secret's must appear in no error.
struct Checked<T, E>(fn(&str) -> Result<T, E>);

// Not derived: a derive would require `T: Clone, E: Clone`, and a function pointer is always
// copied.
impl<T, E> Clone for Checked<T, E> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<T: Clone + Send + Sync + 'static, E: std::fmt::Display + 'static> TypedValueParser for Checked<T, E> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let why = match value.to_str() {
            None => ValueError::NotUtf8.to_string(),
            Some(text) => match (self.0)(text) {
                Ok(parsed) => return Ok(parsed),
                Err(e) => e.to_string(),
            },
        };
        let name = arg.and_then(Arg::get_long).map(variable).unwrap_or_default();
        Err(clap::Error::raw(ErrorKind::ValueValidation, format!("{name} is invalid: {why}\n")).with_cmd(cmd))
    }
}

/// Why a setting's value is refused: the `<why>` of `LATCHKEY_X is invalid: <why>`. Quotes a
/// value only where it cannot be a secret.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("is not UTF-8")]
    NotUtf8,
    #[error("{0:?} is not one of {1}")]
    NotOneOf(String, &'static str),
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error(transparent)]
    Url(#[from] crate::domain::validate::UrlError),
    /// The secret's length only, never the secret.
    #[error(
        "an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} bytes (256 bits), this one has {0}; \
         generate one with `openssl rand -hex 32`"
    )]
    ShortSecret(usize),
    #[error("must be a positive integer")]
    NotPositive,
    #[error("must be a non-negative integer")]
    NotNonNegative,
    #[error("must be a number of days from 0 to 365")]
    NotDays,
    #[error("{0:?} is not true or false")]
    NotBool(String),
    #[error("must be comma-separated whole seconds, 1 to 20 entries of at most 86400")]
    NotSchedule,
}

/// The variable of the flag `--long`: `LATCHKEY_` and the name in capitals, `-` as `_`.
fn variable(long: &str) -> String {
    format!("LATCHKEY_{}", long.to_ascii_uppercase().replace('-', "_"))
}

fn parse_backend(s: &str) -> Result<BackendKind, ValueError> {
    match s {
        "embedded" => Ok(BackendKind::Embedded),
        "aws" => Ok(BackendKind::Aws),
        other => Err(ValueError::NotOneOf(other.to_owned(), "embedded, aws")),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(|_| ValueError::NotHostPort(s.to_owned()))
}

fn parse_public_url(s: &str) -> Result<String, ValueError> {
    crate::domain::validate::check_secure_url(s)?;
    Ok(s.trim_end_matches('/').to_owned())
}

fn parse_jwt_secret(s: &str) -> Result<SecretString, ValueError> {
    if s.len() < MIN_HS256_SECRET_BYTES {
        return Err(ValueError::ShortSecret(s.len()));
    }
    Ok(SecretString::from(s.to_owned()))
}

fn parse_trimmed(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_owned())
}

fn parse_lookup_auth(s: &str) -> Result<LookupAuth, ValueError> {
    match s {
        "iam" => Ok(LookupAuth::Iam),
        "token" => Ok(LookupAuth::Token),
        other => Err(ValueError::NotOneOf(other.to_owned(), "iam, token")),
    }
}

fn parse_positive_secs(s: &str) -> Result<Duration, ValueError> {
    s.parse::<u64>().ok().filter(|n| *n > 0).map(Duration::from_secs).ok_or(ValueError::NotPositive)
}

fn parse_secs(s: &str) -> Result<Duration, ValueError> {
    s.parse::<u64>().map(Duration::from_secs).map_err(|_| ValueError::NotNonNegative)
}

/// A decimal number of days, `0..=365`, as a duration (whole milliseconds).
fn parse_days(s: &str) -> Result<Duration, ValueError> {
    let days = s.trim().parse::<f64>().ok().filter(|d| (0.0..=365.0).contains(d));
    days.map(|d| Duration::from_millis((d * 86_400_000.0).round() as u64)).ok_or(ValueError::NotDays)
}

fn parse_bool(s: &str) -> Result<bool, ValueError> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ValueError::NotBool(other.to_owned())),
    }
}

/// `5,300,1800`: 1-20 entries of 0-86400 seconds each.
fn parse_retry_schedule(s: &str) -> Result<RetrySchedule, ValueError> {
    let entries: Option<Vec<Duration>> =
        s.split(',').map(|e| e.trim().parse::<u64>().ok().filter(|n| *n <= 86_400).map(Duration::from_secs)).collect();
    entries.filter(|e| (1..=20).contains(&e.len())).map(RetrySchedule).ok_or(ValueError::NotSchedule)
}

fn parse_log_format(s: &str) -> Result<LogFormat, ValueError> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(ValueError::NotOneOf(other.to_owned(), "text, json")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(BackendKind::Aws, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        })
    }

    fn refused(vars: &[(&str, &str)]) -> String {
        match settings(vars) {
            Ok(_) => panic!("{vars:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_setting_has_a_flag_and_the_variable_named_after_it() {
        let command = Settings::command(BackendKind::Embedded);
        let args: Vec<&Arg> = command.get_arguments().collect();
        assert_eq!(args.len(), 20, "a new setting: add it to the README's configuration table");
        for arg in args {
            let long = arg.get_long().unwrap_or_else(|| panic!("{} has no flag", arg.get_id()));
            let env = arg.get_env().and_then(OsStr::to_str);
            assert_eq!(env, Some(variable(long).as_str()), "--{long}");
            assert!(arg.is_global_set(), "--{long} is accepted after any subcommand");
        }
    }

    #[test]
    fn defaults_depend_on_the_backend() {
        let aws = settings(&[]).unwrap();
        assert_eq!(aws.backend, BackendKind::Aws);
        assert!(!aws.loopback_providers_allowed());
        let embedded = Settings::from_vars(BackendKind::Embedded, |_| None).unwrap();
        assert_eq!(embedded.backend, BackendKind::Embedded);
        assert!(embedded.loopback_providers_allowed());
        assert_eq!(embedded.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(embedded.data_dir, PathBuf::from("./.latchkey"));
        assert_eq!(embedded.refresh_interval, Duration::from_secs(60));
        assert_eq!(embedded.refresh_lookahead, Duration::from_secs(600));
        assert_eq!(embedded.rt_warning, Duration::from_secs(7 * 86_400));
        assert_eq!(settings(&[("LATCHKEY_RT_WARNING_DAYS", "0.5")]).unwrap().rt_warning, Duration::from_secs(43_200));
        for bad in ["-1", "366", "soon", "NaN"] {
            assert!(settings(&[("LATCHKEY_RT_WARNING_DAYS", bad)]).is_err(), "{bad}");
        }
        assert_eq!(embedded.event_bus, "default");
        assert_eq!(embedded.log_format, LogFormat::Text);
        assert!(embedded.public_url.is_none() && embedded.jwt_secret.is_none() && embedded.table.is_none());
        let chosen = settings(&[("LATCHKEY_BACKEND", "embedded"), ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "0")]);
        let chosen = chosen.unwrap();
        assert_eq!(chosen.backend, BackendKind::Embedded);
        assert!(!chosen.loopback_providers_allowed());
    }

    #[test]
    fn empty_and_blank_values_count_as_unset() {
        let names = Settings::command(BackendKind::Aws)
            .get_arguments()
            .filter_map(|a| a.get_env().and_then(OsStr::to_str).map(str::to_owned))
            .collect::<Vec<_>>();
        for blank in ["", "  "] {
            let vars: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), blank)).collect();
            let s = settings(&vars).unwrap_or_else(|e| panic!("{blank:?} everywhere: {e}"));
            assert_eq!(s.backend, BackendKind::Aws, "the default backend");
            assert_eq!(s.refresh_interval, Duration::from_secs(60));
            assert!(s.public_url.is_none() && s.jwt_secret.is_none() && s.jwt_audience.is_empty());
        }
    }

    #[test]
    fn each_value_is_checked_with_a_message_naming_its_variable() {
        for (name, value, why) in [
            ("LATCHKEY_BACKEND", "gcp", "is not one of embedded, aws"),
            ("LATCHKEY_ADDR", "localhost", "is not host:port"),
            ("LATCHKEY_PUBLIC_URL", "http://example.com", "https"),
            ("LATCHKEY_REFRESH_INTERVAL_SECS", "0", "must be a positive integer"),
            ("LATCHKEY_REFRESH_LOOKAHEAD_SECS", "-1", "must be a non-negative integer"),
            ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "yes", "is not true or false"),
            ("LATCHKEY_LOOKUP_AUTH", "none", "is not one of iam, token"),
            ("LATCHKEY_LOG_FORMAT", "xml", "is not one of text, json"),
            ("LATCHKEY_CONNECT_FRAME_ANCESTORS", "https://app.example.com/path", "is neither an origin"),
            ("LATCHKEY_CONNECT_FRAME_ANCESTORS", "'none' 'self'", "cannot be combined"),
            ("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "5,soon", "comma-separated whole seconds"),
            ("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "5,,6", "comma-separated whole seconds"),
        ] {
            let message = refused(&[(name, value)]);
            assert!(message.starts_with(&format!("{name} is invalid: ")), "{message}");
            assert!(message.contains(why), "{message}");
        }
        let s = settings(&[
            ("LATCHKEY_PUBLIC_URL", "https://latchkey.example.com/"),
            ("LATCHKEY_REFRESH_LOOKAHEAD_SECS", "0"),
            ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "true"),
            ("LATCHKEY_ADDR", "0.0.0.0:0"),
        ])
        .unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://latchkey.example.com"));
        let options = s.service_options();
        assert_eq!(options.public_url.as_deref(), Some("https://latchkey.example.com"));
        assert!(options.allow_loopback_providers);
        assert_eq!(options.refresh.lookahead, Duration::ZERO);
        assert_eq!(options.connect_frame_ancestors, "'none'");
        assert!(!options.webhook_outbox, "aws: the EventBridge rule feeds webhook-deliver");
        assert_eq!(options.webhook_retry_schedule, crate::service::webhooks::default_retry_schedule());
        let scheduled = settings(&[("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "1, 1")]).unwrap().service_options();
        assert_eq!(scheduled.webhook_retry_schedule, [Duration::from_secs(1); 2]);
        let embedded = Settings::from_vars(BackendKind::Embedded, |_| None).unwrap();
        assert!(embedded.service_options().webhook_outbox);
        let framed = settings(&[("LATCHKEY_CONNECT_FRAME_ANCESTORS", " 'self'  https://app.example.com ")]).unwrap();
        assert_eq!(framed.service_options().connect_frame_ancestors, "'self' https://app.example.com");
    }

    #[test]
    fn bearer_token_settings_are_checked_at_start() {
        let why = refused(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcde")]);
        assert!(why.contains("LATCHKEY_JWT_SECRET") && why.contains("at least 32 bytes"), "{why}");
        assert!(!why.contains("0123456789abcdef"), "the secret is not quoted: {why}");
        assert!(settings(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcdef")]).is_ok());

        assert!(refused(&[("LATCHKEY_JWT_ISSUER", "https://idp.example.com/")]).contains("audience"));
        assert!(refused(&[("LATCHKEY_JWT_AUDIENCE", "api")]).contains("LATCHKEY_JWT_ISSUER"));
        let plain = [("LATCHKEY_JWT_ISSUER", "http://idp.example.com"), ("LATCHKEY_JWT_AUDIENCE", "api")];
        assert!(refused(&plain).contains("LATCHKEY_JWT_ISSUER"));
        let ok = settings(&[("LATCHKEY_JWT_ISSUER", " https://idp.example.com/ "), ("LATCHKEY_JWT_AUDIENCE", "a, b,")]);
        let ok = ok.unwrap();
        assert_eq!(ok.jwt_issuer.as_deref(), Some("https://idp.example.com/"));
        assert_eq!(ok.jwt_audience, ["a", "b"]);
        assert!(ok.verifier(None).unwrap().accepts_any());
        assert!(!settings(&[]).unwrap().verifier(None).unwrap().accepts_any(), "nothing configured: refuse all");

        assert_eq!(settings(&[]).unwrap().lookup_auth, LookupAuth::Iam);
        assert_eq!(settings(&[("LATCHKEY_LOOKUP_AUTH", "token")]).unwrap().lookup_auth, LookupAuth::Token);
    }

    #[test]
    fn a_value_starting_with_a_dash_is_a_value() {
        let secret = "-0123456789abcdef0123456789abcdef";
        let s = settings(&[("LATCHKEY_JWT_SECRET", secret), ("LATCHKEY_TABLE", "--kms-key-id=x")]).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(s.jwt_secret.as_ref().unwrap()), secret);
        assert_eq!(s.table.as_deref(), Some("--kms-key-id=x"));
        assert!(s.kms_key_id.is_none());
    }
}
