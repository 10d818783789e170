//! How each setting's value is read: one parser per kind of value, wrapped in [`Checked`] so
//! that a refusal reads `LATCHKEY_X is invalid: <why>` ([`ValueError`]) and quotes no secret.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Command};
use secrecy::SecretString;

use super::{BackendKind, LogFormat, LookupAuth, RetrySchedule};
use crate::http::auth::MIN_HS256_SECRET_BYTES;

/// A value parser whose error reads `LATCHKEY_X is invalid: <why>`, naming the variable (the
/// flag's name in capitals) and quoting nothing but what `why` quotes: clap's own message would
/// quote the value, and the secret's must appear in no error.
pub(super) struct Checked<T, E>(pub(super) fn(&str) -> Result<T, E>);

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
pub(super) enum ValueError {
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
    #[error("must be a whole number from 1 to {MAX_REFRESH_CONCURRENCY}")]
    NotConcurrency,
}

/// The variable of the flag `--long`: `LATCHKEY_` and the name in capitals, `-` as `_`.
pub(super) fn variable(long: &str) -> String {
    format!("LATCHKEY_{}", long.to_ascii_uppercase().replace('-', "_"))
}

pub(super) fn parse_backend(s: &str) -> Result<BackendKind, ValueError> {
    match s {
        "embedded" => Ok(BackendKind::Embedded),
        "aws" => Ok(BackendKind::Aws),
        other => Err(ValueError::NotOneOf(other.to_owned(), "embedded, aws")),
    }
}

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(|_| ValueError::NotHostPort(s.to_owned()))
}

pub(super) fn parse_public_url(s: &str) -> Result<String, ValueError> {
    crate::domain::validate::check_secure_url(s)?;
    Ok(s.trim_end_matches('/').to_owned())
}

pub(super) fn parse_jwt_secret(s: &str) -> Result<SecretString, ValueError> {
    if s.len() < MIN_HS256_SECRET_BYTES {
        return Err(ValueError::ShortSecret(s.len()));
    }
    Ok(SecretString::from(s.to_owned()))
}

pub(super) fn parse_trimmed(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_owned())
}

pub(super) fn parse_lookup_auth(s: &str) -> Result<LookupAuth, ValueError> {
    match s {
        "iam" => Ok(LookupAuth::Iam),
        "token" => Ok(LookupAuth::Token),
        other => Err(ValueError::NotOneOf(other.to_owned(), "iam, token")),
    }
}

pub(super) fn parse_positive_secs(s: &str) -> Result<Duration, ValueError> {
    s.parse::<u64>().ok().filter(|n| *n > 0).map(Duration::from_secs).ok_or(ValueError::NotPositive)
}

pub(super) fn parse_secs(s: &str) -> Result<Duration, ValueError> {
    s.parse::<u64>().map(Duration::from_secs).map_err(|_| ValueError::NotNonNegative)
}

/// A decimal number of days, `0..=365`, as a duration (whole milliseconds).
pub(super) fn parse_days(s: &str) -> Result<Duration, ValueError> {
    let days = s.trim().parse::<f64>().ok().filter(|d| (0.0..=365.0).contains(d));
    days.map(|d| Duration::from_millis((d * 86_400_000.0).round() as u64)).ok_or(ValueError::NotDays)
}

pub(super) fn parse_bool(s: &str) -> Result<bool, ValueError> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ValueError::NotBool(other.to_owned())),
    }
}

/// `5,300,1800`: 1-20 entries of 0-86400 seconds each.
pub(super) fn parse_retry_schedule(s: &str) -> Result<RetrySchedule, ValueError> {
    let entries: Option<Vec<Duration>> =
        s.split(',').map(|e| e.trim().parse::<u64>().ok().filter(|n| *n <= 86_400).map(Duration::from_secs)).collect();
    entries.filter(|e| (1..=20).contains(&e.len())).map(RetrySchedule).ok_or(ValueError::NotSchedule)
}

/// The most refreshes one process may run at once (`LATCHKEY_REFRESH_CONCURRENCY`). Each holds
/// a provider call or a store write open; more than this is taken for a mistyped value.
pub(super) const MAX_REFRESH_CONCURRENCY: usize = 1_024;

/// `LATCHKEY_REFRESH_CONCURRENCY`: a whole number, `1..=MAX_REFRESH_CONCURRENCY`.
pub(super) fn parse_concurrency(s: &str) -> Result<usize, ValueError> {
    let n = s.trim().parse::<usize>().ok();
    n.filter(|n| (1..=MAX_REFRESH_CONCURRENCY).contains(n)).ok_or(ValueError::NotConcurrency)
}

pub(super) fn parse_log_format(s: &str) -> Result<LogFormat, ValueError> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(ValueError::NotOneOf(other.to_owned(), "text, json")),
    }
}
