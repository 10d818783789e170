//! RFC 8628 section 3.2: reading a device authorization endpoint's answer, in the same lenient
//! way as token answers (JSON whatever the `Content-Type`, or a form-encoded body as GitHub
//! sends by default) and with the same refusal classes.

use std::fmt;

use secrecy::SecretString;
use serde_json::Value;

use super::RawAnswer;
use super::answer::{Grant, TokenFailure, class_of, error_code, parse_body};
use crate::domain::validate::check_secure_url;

/// The interval between polls when the answer states none (RFC 8628 section 3.2).
pub const DEFAULT_INTERVAL_SECS: u64 = 5;
/// The longest interval taken at its word; a longer one is this.
pub const MAX_INTERVAL_SECS: u64 = 300;
/// How long a device code lives when the answer does not say readably.
pub const DEFAULT_EXPIRES_IN_SECS: u64 = 900;
/// The longest device code lifetime taken at its word: a day.
pub const MAX_EXPIRES_IN_SECS: u64 = 86_400;
/// The longest user code shown to a user.
pub const MAX_USER_CODE: usize = 64;

/// A device authorization answer (RFC 8628 section 3.2). `Debug` never prints the device code.
pub struct DeviceAuthorizationAnswer {
    /// The credential the token requests present: sealed as soon as it is read.
    pub device_code: SecretString,
    /// What the user enters at `verification_uri`: printable ASCII, at most 64 characters.
    pub user_code: String,
    /// Where the user goes (https, or http on loopback).
    pub verification_uri: String,
    /// The same page with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    /// Seconds the device code lives (1..=86400; 900 when the answer does not say readably).
    pub expires_in: u64,
    /// Seconds between polls (1..=300; 5 when the answer does not say).
    pub interval: u64,
}

impl fmt::Debug for DeviceAuthorizationAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorizationAnswer")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete.is_some())
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A positive number of seconds (a number or a numeric string), at most `max`.
fn seconds(v: Option<&Value>, max: u64) -> Option<u64> {
    let secs = match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (secs >= 1).then_some(secs.min(max))
}

/// A URL the user is sent to: https, or http on loopback; nothing else is ever shown as a link.
fn link(v: Option<&Value>) -> Option<String> {
    check_secure_url(v?.as_str()?).ok().map(String::from)
}

/// Reads a device authorization endpoint's answer: 429 and 5xx are transient; a body with an
/// `error` is a refusal classed like a token endpoint's (`invalid_client`: the organization's
/// settings; `invalid_scope`: scopes); a 2xx without a device code, user code and usable
/// verification URI is an answer Latchkey could not read.
pub fn read_device_authorization_answer(raw: &RawAnswer) -> Result<DeviceAuthorizationAnswer, TokenFailure> {
    let status = raw.status;
    let body = parse_body(raw, "device_code");
    let code = body.as_ref().and_then(error_code);
    if status == 429 || status >= 500 {
        return Err(TokenFailure::Transient {
            code: code.unwrap_or_else(|| format!("http_{status}")),
            retry_after: raw.retry_after,
        });
    }
    if let Some(code) = code {
        return Err(match class_of(&code, Grant::ClientCredentials) {
            Some(class) => TokenFailure::Refused { class, provider_code: Some(code), status },
            None => TokenFailure::Transient { code, retry_after: raw.retry_after },
        });
    }
    let unreadable = TokenFailure::Unreadable { code: "unreadable_answer", status };
    if !(200..300).contains(&status) {
        return Err(match status {
            400 | 401 | 404 | 405 | 410 => {
                TokenFailure::Refused { class: crate::domain::Refusal::ClientRejected, provider_code: None, status }
            }
            _ => unreadable,
        });
    }
    let Some(obj) = body else {
        return Err(unreadable);
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let device_code = text("device_code").map(|s| SecretString::from(s.to_owned()));
    let user_code = text("user_code")
        .filter(|c| c.len() <= MAX_USER_CODE && c.chars().all(|ch| ch.is_ascii_graphic() || ch == ' '))
        .map(str::to_owned);
    // Google's older answers say `verification_url`.
    let verification_uri = link(obj.get("verification_uri")).or_else(|| link(obj.get("verification_url")));
    let (Some(device_code), Some(user_code), Some(verification_uri)) = (device_code, user_code, verification_uri)
    else {
        return Err(unreadable);
    };
    Ok(DeviceAuthorizationAnswer {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete: link(obj.get("verification_uri_complete")),
        expires_in: seconds(obj.get("expires_in"), MAX_EXPIRES_IN_SECS).unwrap_or(DEFAULT_EXPIRES_IN_SECS),
        interval: seconds(obj.get("interval"), MAX_INTERVAL_SECS).unwrap_or(DEFAULT_INTERVAL_SECS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Refusal;

    fn raw(status: u16, body: &str) -> RawAnswer {
        RawAnswer { status, content_type: None, retry_after: None, body: body.as_bytes().to_vec() }
    }

    #[test]
    fn json_and_form_answers_are_read_with_defaults() {
        let a = read_device_authorization_answer(&raw(
            200,
            r#"{"device_code":"dc","user_code":"ABCD-EFGH","verification_uri":"https://idp.example/device",
               "verification_uri_complete":"https://idp.example/device?user_code=ABCD-EFGH","expires_in":600,"interval":2}"#,
        ))
        .unwrap();
        assert_eq!((a.user_code.as_str(), a.expires_in, a.interval), ("ABCD-EFGH", 600, 2));
        assert!(a.verification_uri_complete.is_some());
        assert!(!format!("{a:?}").contains("dc\""), "Debug never shows the device code");
        let github = read_device_authorization_answer(&raw(
            200,
            "device_code=dc&user_code=WDJB-MJHT&verification_uri=https%3A%2F%2Fgithub.com%2Flogin%2Fdevice&expires_in=900",
        ))
        .unwrap();
        assert_eq!((github.interval, github.expires_in), (DEFAULT_INTERVAL_SECS, 900));
        assert_eq!(github.verification_uri, "https://github.com/login/device");
    }

    #[test]
    fn unsafe_links_and_missing_members_are_unreadable_and_errors_are_classed() {
        let js = r#"{"device_code":"dc","user_code":"A","verification_uri":"javascript:alert(1)"}"#;
        assert!(matches!(read_device_authorization_answer(&raw(200, js)), Err(TokenFailure::Unreadable { .. })));
        assert!(matches!(
            read_device_authorization_answer(&raw(200, r#"{"user_code":"A"}"#)),
            Err(TokenFailure::Unreadable { .. })
        ));
        assert!(matches!(
            read_device_authorization_answer(&raw(401, r#"{"error":"invalid_client"}"#)),
            Err(TokenFailure::Refused { class: Refusal::ClientRejected, .. })
        ));
        assert!(matches!(
            read_device_authorization_answer(&raw(400, r#"{"error":"invalid_scope"}"#)),
            Err(TokenFailure::Refused { class: Refusal::ScopesMissing, .. })
        ));
        assert!(matches!(read_device_authorization_answer(&raw(503, "")), Err(TokenFailure::Transient { .. })));
    }
}
