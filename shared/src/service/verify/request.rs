//! The verify request itself: rendered with a connection's values (and access token), checked
//! against the outbound policy, sent through the [`VerifyGate`](super::VerifyGate), and what
//! its answer came to ([`Checked`]).

use secrecy::SecretString;
use serde_json::Value;

use super::super::{Result, Service, ServiceError};
use crate::domain::validate::{FieldError, Values};
use crate::domain::{ACCESS_TOKEN, RenderError, Verdict, Verify, VerifyMethod};
use crate::provider::destination::{DestinationError, check_literal_destination, check_public_destination};
use crate::provider::{ApiMethod, ApiRequest, Reach};

/// What one verify request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checked {
    /// The provider answered this status.
    Answered(u16, Verdict),
    /// No answer: the transport's code (`timeout`, `unreachable`...), or `origin_backing_off`
    /// when the gate did not let the request go.
    Unavailable(&'static str),
}

/// The code of a status that means the provider cannot answer now.
pub(super) fn unavailable_code(status: u16) -> &'static str {
    match status {
        429 => "throttled",
        408 => "timeout",
        _ => "provider_error",
    }
}

/// A template value as text: strings as they are, numbers and booleans as JSON writes them.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// The values a verify template may name: `own` over the definition's `defaults` (inputs read
/// by reference are in the defaults only), and the access token.
pub(super) fn template_source(
    defaults: Values,
    own: &Values,
    access_token: Option<SecretString>,
) -> impl Fn(&str) -> Option<SecretString> {
    let mut all = defaults;
    all.plain.extend(own.plain.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.secret.extend(own.secret.iter().map(|(k, v)| (k.clone(), v.clone())));
    move |name: &str| {
        if name == ACCESS_TOKEN {
            return access_token.clone();
        }
        all.secret.get(name).cloned().or_else(|| all.plain.get(name).and_then(text_of).map(SecretString::from))
    }
}

impl Service {
    /// Sends `verify` rendered with `value`, through the gate: the in-flight limit always, the
    /// origin's breaker only when `periodic` (the sweep's checks). A template naming a value the
    /// connection lacks, or a value that cannot go into a header, is the caller's to fix: a
    /// validation error naming `values.{name}`.
    pub(super) async fn send_verify(
        &self,
        verify: &Verify,
        value: impl Fn(&str) -> Option<SecretString>,
        periodic: bool,
    ) -> Result<Checked> {
        let rendered = verify.render(value).map_err(|e| match e {
            RenderError::Missing(ref name) | RenderError::ControlCharacter(ref name) => {
                ServiceError::Invalid(vec![FieldError::new(format!("values.{name}"), e.to_string())])
            }
            // Checked when the definition was stored: a stored block that no longer renders is
            // Latchkey's failure.
            RenderError::Url | RenderError::Template(_) => {
                ServiceError::unexpected("a stored verify request did not render")
            }
        })?;
        let origin = rendered.url.origin().ascii_serialization();
        let now = self.clock.now();
        if periodic && !self.verify_gate.admit(&origin, now) {
            return Ok(Checked::Unavailable("origin_backing_off"));
        }
        let allow_loopback = self.allow_loopback_providers();
        match check_public_destination(&rendered.url, allow_loopback).await {
            Ok(()) => {}
            Err(DestinationError::Refused(_)) => return Ok(Checked::Unavailable("destination_refused")),
            Err(DestinationError::Unresolved) => {
                self.verify_gate.record(&origin, true, now);
                return Ok(Checked::Unavailable("unresolved"));
            }
        }
        let reach =
            if crate::domain::validate::is_loopback_host(&rendered.url) { Reach::Any } else { Reach::PublicOnly };
        let request = ApiRequest {
            method: match rendered.method {
                VerifyMethod::Get => ApiMethod::Get,
                VerifyMethod::Head => ApiMethod::Head,
                VerifyMethod::Post => ApiMethod::Post,
            },
            url: rendered.url,
            reach,
            headers: rendered.headers,
            json_body: rendered.body,
        };
        let answer = {
            let _permit = self.verify_gate.permits.acquire().await.map_err(ServiceError::unexpected)?;
            self.provider.send(&request).await
        };
        let checked = match answer {
            Ok(a) => Checked::Answered(a.status, verify.verdict(a.status)),
            Err(e) => Checked::Unavailable(e.code()),
        };
        let transient = matches!(checked, Checked::Unavailable(_) | Checked::Answered(_, Verdict::Unavailable));
        self.verify_gate.record(&origin, transient, self.clock.now());
        Ok(checked)
    }

    /// The verify URL of a definition being stored passes the outbound policy as far as it can
    /// be told without DNS (a literal private address, or loopback where not allowed, is
    /// refused at once; every address again at each request), like the token endpoints.
    ///
    /// # Errors
    /// A validation error naming `verify.url`.
    pub(crate) fn check_verify_destination(&self, verify: Option<&Verify>) -> Result<()> {
        let Some(url) = verify.and_then(|v| v.origin_url()) else {
            return Ok(());
        };
        check_literal_destination(&url, self.allow_loopback_providers())
            .map_err(|e| ServiceError::invalid("verify.url", &format!("the verify URL {e}")))
    }
}
