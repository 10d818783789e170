//! [`Settings`]: every `LATCHKEY_*` variable, each also a `--flag` of the `latchkey` command, so
//! `latchkey serve --help` documents them all. Each value is checked by its parser, whose error
//! names the variable (`LATCHKEY_ADDR is invalid: ...`); settings that depend on each other are
//! checked by [`Settings::check`]. The Lambda functions read the same settings from their
//! environment only ([`Settings::from_env`]).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};
use secrecy::SecretString;

use super::ConfigError;
use crate::http::auth::{JwtIssuer, Verifier};
use crate::service::{RefreshPolicy, ServiceOptions, VerifyPolicy};

mod values;

use values::{
    Checked, parse_addr, parse_backend, parse_bool, parse_concurrency, parse_days, parse_jwt_secret, parse_log_format,
    parse_lookup_auth, parse_positive_secs, parse_public_url, parse_retry_schedule, parse_secs, parse_trimmed,
};

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

    /// Refreshes in flight at once in one process (a sweep, or a queue worker's batch), 1 to
    /// 1024: the ceiling of the adaptive limit, which backs off while the store or KMS
    /// throttles.
    #[arg(long = "refresh-concurrency", env = "LATCHKEY_REFRESH_CONCURRENCY", global = true, value_name = "N")]
    #[arg(default_value_t = RefreshPolicy::default().concurrency, value_parser = Checked(parse_concurrency))]
    pub refresh_concurrency: usize,

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

    /// What the service is built with: the public URL, the loopback rule, the refresh lookahead,
    /// warning and concurrency, the verify interval, the webhook schedule.
    pub fn service_options(&self) -> ServiceOptions {
        ServiceOptions {
            public_url: self.public_url.clone(),
            allow_loopback_providers: self.loopback_providers_allowed(),
            refresh: RefreshPolicy {
                lookahead: self.refresh_lookahead,
                rt_warning: self.rt_warning,
                concurrency: self.refresh_concurrency,
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
    /// An HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`](crate::http::auth::MIN_HS256_SECRET_BYTES), an invalid issuer or no
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

#[cfg(test)]
mod tests;
