//! The `token-lookup` function invoked directly (`lambda:InvokeFunction`, RequestResponse), as
//! integration code running in AWS calls it (SPEC section 5).

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, Error};
use crate::selector::Selector;
use crate::types::{Credentials, ReportedError};

/// A client of the `token-lookup` function for one organization.
///
/// With the function's default `LATCHKEY_LOOKUP_AUTH=iam` the caller's IAM permission to invoke
/// is the authorization; with `token`, give [`LambdaClient::with_token`] a JWT with the
/// `runtime` role.
#[derive(Clone)]
pub struct LambdaClient {
    lambda: aws_sdk_lambda::Client,
    function: String,
    org: String,
    token: Option<SecretString>,
}

impl std::fmt::Debug for LambdaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaClient").field("function", &self.function).field("org", &self.org).finish_non_exhaustive()
    }
}

impl LambdaClient {
    /// `function` is the function's name or ARN (e.g. the stack's `TokenLookupFunctionArn`
    /// output); `org` the organization whose connections are looked up.
    pub fn new(lambda: aws_sdk_lambda::Client, function: impl Into<String>, org: impl Into<String>) -> Self {
        Self { lambda, function: function.into(), org: org.into(), token: None }
    }

    /// Sends `token` (a JWT with the `runtime` role) in every payload, for a function running
    /// with `LATCHKEY_LOOKUP_AUTH=token`.
    pub fn with_token(mut self, token: SecretString) -> Self {
        self.token = Some(token);
        self
    }

    /// Fresh credentials of `connection_id`, the access token refreshed first if it expires
    /// within `min_valid_seconds`.
    ///
    /// # Errors
    /// [`Error::Api`] with the function's `errorType` as [`ErrorKind`](crate::ErrorKind)
    /// (`NotFound`, `ConnectionPending`, `Unavailable`...); [`Error::Invoke`] when the invoke
    /// call itself failed; [`Error::Decode`] for an answer of another shape.
    pub async fn lookup(&self, connection_id: &str, min_valid_seconds: Option<u64>) -> Result<Credentials, Error> {
        let payload = lookup_payload(&self.org, connection_id, min_valid_seconds, self.token.as_ref());
        self.invoke(&payload, "lookup").await
    }

    /// Marks `connection_id` red with `message` (never put a secret in it).
    ///
    /// # Errors
    /// As [`LambdaClient::lookup`].
    pub async fn report_error(&self, connection_id: &str, message: &str) -> Result<ReportedError, Error> {
        let payload = report_error_payload(&self.org, connection_id, message, self.token.as_ref());
        self.invoke(&payload, "report_error").await
    }

    /// Fresh credentials of the connection `selector` resolves to (see [`Selector`]): no id
    /// needed. `Credentials::connection_id` says which connection answered.
    ///
    /// # Errors
    /// As [`LambdaClient::lookup`] (`NotFound` when nothing matches).
    pub async fn lookup_by_selector(
        &self,
        selector: &Selector,
        min_valid_seconds: Option<u64>,
    ) -> Result<Credentials, Error> {
        let payload = selector_payload(&self.org, selector, min_valid_seconds, self.token.as_ref());
        self.invoke(&payload, "lookup").await
    }

    /// Marks the connection `selector` resolves to red with `message`.
    ///
    /// # Errors
    /// As [`LambdaClient::lookup_by_selector`].
    pub async fn report_error_by_selector(&self, selector: &Selector, message: &str) -> Result<ReportedError, Error> {
        let mut payload = selector_payload(&self.org, selector, None, self.token.as_ref());
        payload["action"] = "report_error".into();
        payload["message"] = message.into();
        self.invoke(&payload, "report_error").await
    }

    async fn invoke<T: DeserializeOwned>(&self, payload: &Value, what: &'static str) -> Result<T, Error> {
        let bytes = serde_json::to_vec(payload).map_err(|source| Error::Decode { what, source })?;
        let out = self
            .lambda
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(bytes))
            .send()
            .await
            // The SDK error's own Display is terse ("service error"); its context names the cause.
            .map_err(|e| Error::Invoke(aws_sdk_lambda::error::DisplayErrorContext(e).to_string().into()))?;
        read_answer(out.function_error(), out.payload().map_or(&[][..], Blob::as_ref), what)
    }
}

/// The lookup payload: `{"org", "connection_id", "min_valid_seconds"?, "token"?}`.
pub fn lookup_payload(
    org: &str,
    connection_id: &str,
    min_valid_seconds: Option<u64>,
    token: Option<&SecretString>,
) -> Value {
    let mut p = json!({"org": org, "connection_id": connection_id});
    if let Some(s) = min_valid_seconds {
        p["min_valid_seconds"] = s.into();
    }
    if let Some(t) = token {
        p["token"] = t.expose_secret().into();
    }
    p
}

/// The lookup payload by selector: `{"org", "definition", "customer"?, "instance_id"?, "user"?,
/// "min_valid_seconds"?, "token"?}`.
pub fn selector_payload(
    org: &str,
    selector: &Selector,
    min_valid_seconds: Option<u64>,
    token: Option<&SecretString>,
) -> Value {
    let mut p = Value::Object(selector.members());
    p["org"] = org.into();
    if let Some(s) = min_valid_seconds {
        p["min_valid_seconds"] = s.into();
    }
    if let Some(t) = token {
        p["token"] = t.expose_secret().into();
    }
    p
}

/// The error report payload: `{"action": "report_error", "org", "connection_id", "message",
/// "token"?}`.
pub fn report_error_payload(org: &str, connection_id: &str, message: &str, token: Option<&SecretString>) -> Value {
    let mut p = json!({"action": "report_error", "org": org, "connection_id": connection_id, "message": message});
    if let Some(t) = token {
        p["token"] = t.expose_secret().into();
    }
    p
}

/// Reads an invoke answer: with a `FunctionError` (`Handled`/`Unhandled`) the payload is
/// `{"errorType", "errorMessage"}`, else the function's result as `T`.
///
/// # Errors
/// [`Error::Api`] for a function error, [`Error::Decode`] for a result of another shape.
pub fn read_answer<T: DeserializeOwned>(
    function_error: Option<&str>,
    payload: &[u8],
    what: &'static str,
) -> Result<T, Error> {
    if let Some(kind) = function_error {
        return Err(ApiError::from_lambda_payload(kind, payload).into());
    }
    serde_json::from_slice(payload).map_err(|source| Error::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn payloads_have_the_shape_the_function_reads() {
        assert_eq!(
            lookup_payload("acme", "con_1", Some(60), None),
            json!({"org": "acme", "connection_id": "con_1", "min_valid_seconds": 60})
        );
        assert_eq!(
            lookup_payload("acme", "con_1", None, Some(&SecretString::from("jwt"))),
            json!({"org": "acme", "connection_id": "con_1", "token": "jwt"})
        );
        assert_eq!(
            report_error_payload("acme", "con_1", "401 from Acme", None),
            json!({"action": "report_error", "org": "acme", "connection_id": "con_1", "message": "401 from Acme"})
        );
    }

    #[test]
    fn a_selector_payload_names_no_connection_id() {
        let s = Selector::new("acme-api", "c-1").instance("inst-9").user("u-42");
        assert_eq!(
            selector_payload("acme", &s, Some(60), None),
            json!({"org": "acme", "definition": "acme-api", "customer": "c-1", "instance_id": "inst-9",
                   "user": "u-42", "min_valid_seconds": 60})
        );
        let own = Selector::own_customer("acme-api");
        assert_eq!(
            selector_payload("acme", &own, None, Some(&SecretString::from("jwt"))),
            json!({"org": "acme", "definition": "acme-api", "token": "jwt"})
        );
    }

    #[test]
    fn a_function_error_is_an_api_error_of_its_error_type() {
        let payload = serde_json::to_vec(&lambda_runtime::Diagnostic {
            error_type: "Unavailable".into(),
            error_message: "a storage or key service did not answer in time; retry shortly".into(),
        })
        .unwrap();
        let err = read_answer::<Credentials>(Some("Handled"), &payload, "lookup").unwrap_err();
        assert_eq!(err.kind(), Some(&ErrorKind::Unavailable));
        assert!(err.is_retryable());
    }

    #[test]
    fn a_result_is_read_as_credentials_and_another_shape_is_a_decode_error() {
        let ok =
            br#"{"connection_id":"con_1","definition":"acme","status":"active","fields":{"apiKey":"k"},"token":null}"#;
        let c: Credentials = read_answer(None, ok, "lookup").unwrap();
        assert_eq!(c.connection_id, "con_1");
        assert!(c.token.is_none() && c.oauth1.is_none());
        assert!(matches!(read_answer::<Credentials>(None, b"{}", "lookup"), Err(Error::Decode { what: "lookup", .. })));

        // token-lookup's answer for an `oauth1` connection: what signing needs, kept whole.
        let oauth1 = br#"{"connection_id":"con_2","definition":"x1","status":"active","fields":{},
            "token":{"access_token":"tok","token_type":"OAuth1","expires_at":null,"scopes":[]},
            "oauth1":{"consumerKey":"ck","consumerSecret":"cs","token":"tok","tokenSecret":"ts","signatureMethod":"HMAC-SHA1"}}"#;
        let c: Credentials = read_answer(None, oauth1, "lookup").unwrap();
        let o = c.oauth1.expect("the oauth1 member");
        assert_eq!((o.consumer_secret.expose_secret(), o.token_secret.expose_secret()), ("cs", "ts"));
    }
}
