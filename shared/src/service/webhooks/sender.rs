//! The outbound HTTP adapter of webhooks: one signed POST per attempt, under the outbound policy
//! of provider calls (public addresses only, resolved by the public-only resolver so DNS cannot
//! be rebound between check and call; http and loopback only where
//! `LATCHKEY_ALLOW_LOOPBACK_PROVIDERS` allows), no redirects followed, 10 s in all by default, the answer's
//! body read to at most 64 KiB and dropped.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::domain::validate::is_loopback_host;
use crate::provider::destination::{DestinationError, PublicOnlyResolver, check_public_destination};
use crate::provider::http_client_builder;

/// Bounds one delivery attempt, connection included, unless
/// [`crate::service::ServiceOptions::webhook_attempt_timeout`] says otherwise.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body is read (and thrown away) before the connection is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` honoured: a receiver cannot push a delivery further than this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = "Latchkey-Webhooks/1";

/// Sends deliveries. Built once per [`crate::service::Service`]: two clients (any address, for
/// loopback where allowed; public addresses only, for everything else).
pub struct WebhookSender {
    any: reqwest::Client,
    public_only: reqwest::Client,
}

impl Default for WebhookSender {
    /// Attempts of [`DEFAULT_ATTEMPT_TIMEOUT`].
    fn default() -> Self {
        Self::new(DEFAULT_ATTEMPT_TIMEOUT)
    }
}

/// One signed request: the delivery's id, this attempt's timestamp and signatures, its body.
pub(crate) struct Signed<'a> {
    pub url: &'a url::Url,
    /// The `webhook-id`.
    pub id: &'a str,
    /// The `webhook-timestamp`, Unix seconds.
    pub timestamp: i64,
    /// The `webhook-signature`: `v1,<base64>` per secret, space-separated.
    pub signature: String,
    pub payload: &'a str,
}

/// What one attempt gave: the answer's status, or why none came; how long it took; and the
/// answer's `Retry-After` (capped at [`MAX_RETRY_AFTER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: Option<u16>,
    /// `refused_destination`, `unresolved`, `timeout`, `connect` or `invalid_request` when no
    /// answer came.
    pub error: Option<&'static str>,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl Answer {
    fn failed(error: &'static str, started: Instant) -> Self {
        Self { status: None, error: Some(error), retry_after: None, duration: started.elapsed() }
    }

    /// A 2xx answer.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl WebhookSender {
    /// A sender whose attempts each end after `timeout` (connection, request and the answer's
    /// read together); an attempt cut off is recorded as `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let builder = || http_client_builder().timeout(timeout).user_agent(USER_AGENT);
        Self {
            any: builder().build().expect("the webhook HTTP client builds with static settings"),
            public_only: builder()
                .dns_resolver(Arc::new(PublicOnlyResolver))
                .build()
                .expect("the webhook HTTP client builds with static settings"),
        }
    }

    /// Sends `request` if the outbound policy allows its URL now (`allow_loopback`: http and
    /// loopback allowed, development only). Never fails: what happened is in the [`Answer`].
    pub(crate) async fn send(&self, request: &Signed<'_>, allow_loopback: bool) -> Answer {
        let started = Instant::now();
        match check_public_destination(request.url, allow_loopback).await {
            Ok(()) => {}
            Err(DestinationError::Refused(_)) => return Answer::failed("refused_destination", started),
            Err(DestinationError::Unresolved) => return Answer::failed("unresolved", started),
        }
        if request.url.scheme() != "https" && !(allow_loopback && is_loopback_host(request.url)) {
            return Answer::failed("refused_destination", started);
        }
        // A loopback name (`localhost`) is resolved by the system resolver, which the check
        // above allowed; every other name only ever resolves to public addresses.
        let client = if is_loopback_host(request.url) { &self.any } else { &self.public_only };
        let Ok(signature) = reqwest::header::HeaderValue::from_str(&request.signature) else {
            return Answer::failed("invalid_request", started);
        };
        let sent = client
            .post(request.url.clone())
            .header("webhook-id", request.id)
            .header("webhook-timestamp", request.timestamp.to_string())
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.payload.to_owned())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Answer::failed("timeout", started),
            Err(e) if e.is_builder() => return Answer::failed("invalid_request", started),
            Err(_) => return Answer::failed("connect", started),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        // Read a little of the body so a small answer leaves the connection reusable; never
        // more than MAX_ANSWER_BYTES, never kept.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        Answer { status: Some(status), error: None, retry_after, duration: started.elapsed() }
    }
}

/// The `webhook-signature` of one attempt: `v1,<base64 HMAC-SHA256>` by each of `secrets`
/// (the current one, then the previous one during a rotation), space-separated, made by the
/// `standardwebhooks` crate over `"{id}.{timestamp}.{payload}"`.
///
/// # Errors
/// A secret that is not `whsec_` + base64 (never one Latchkey made).
pub(crate) fn sign(
    secrets: &[&SecretString],
    id: &str,
    timestamp: i64,
    payload: &str,
) -> Result<String, standardwebhooks::WebhookError> {
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let hook = standardwebhooks::Webhook::new(secret.expose_secret())?;
        signatures.push(hook.sign(id, timestamp, payload.as_bytes())?);
    }
    Ok(signatures.join(" "))
}

/// `Retry-After` (RFC 9110 section 10.2.3) as a wait from `now`: delay-seconds or an HTTP-date,
/// capped at [`MAX_RETRY_AFTER`]; a date in the past is no wait.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_at_most_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with(&httpdate::fmt_http_date(now + Duration::from_secs(90))), Some(Duration::from_secs(90)));
        assert_eq!(with(&httpdate::fmt_http_date(now - Duration::from_secs(90))), Some(Duration::ZERO));
        assert_eq!(with("999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }

    #[test]
    fn every_secret_signs_and_each_signature_verifies_alone() {
        let (a, b) = (
            SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
        );
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign(&[&a, &b], "msg_1", ts, "{}").unwrap();
        assert_eq!(signature.split(' ').count(), 2);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        for secret in [&a, &b] {
            standardwebhooks::Webhook::new(secret.expose_secret()).unwrap().verify(b"{}", &headers).unwrap();
        }
        let other = standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGwh").unwrap();
        assert!(other.verify(b"{}", &headers).is_err());
    }
}
