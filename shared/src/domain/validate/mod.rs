//! Validation of definition drafts and connection values, with an error per bad field.
//!
//! Bodies are checked from `serde_json::Value` by hand rather than by serde derive so that every
//! problem is reported at once, each naming its field (`inputs.apiKey.type`, `values.endpoint`).
//!
//! - this module: field errors, limits, the URL rules, value types, shared helpers;
//! - [`definition`]: `PUT /v1/definitions/{key}` bodies (inputs, redirects, OAuth inputs);
//! - [`quirks`]: a definition's `oauth` block (SPEC section 8);
//! - [`values`]: a connection's values against its definition (`POST`/`PATCH`);
//! - [`tokens`]: tokens imported with a new connection (SPEC section 10, "Import").

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    ACCESS_TOKEN, AuthKind, Capture, Input, InputType, OAuthQuirks, Provider, RESERVED_TOKEN_PARAMS, Redirects, Verify,
    Visibility, verify_from_json,
};

mod definition;
mod jwt_bearer;
mod oauth1;
mod quirks;
mod tokens;
mod values;

pub use definition::{DefinitionSpec, definition_from_json};
pub use jwt_bearer::{ALGORITHM_INPUT, AssertionAlgorithm, PRIVATE_KEY_INPUT, check_assertion_values};
pub use oauth1::{
    CONSUMER_SECRET_INPUT, SIGNATURE_METHOD_INPUT, SignatureMethod, check_consumer_values, rsa_signing_key,
};
pub use tokens::{ImportedExpiry, ImportedTokens, MAX_IMPORT_LIFETIME_SECS, imported_tokens};
pub use values::{Setter, Values, apply_values};

/// One invalid field of a request, named by its JSON path.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

const MAX_LABEL: usize = 200;
const MAX_DESCRIPTION: usize = 2_000;
const MAX_STRING: usize = 8_192;
const MAX_TEXT: usize = 32_768;
/// The longest value of a `url` input, in bytes.
const MAX_URL: usize = 2_048;
const MAX_INPUTS: usize = 100;
/// The most a connection's values may total (names and values, plain and secret, as JSON), so a
/// record stays far below DynamoDB's 400 KB item limit whatever PATCHes accumulate.
pub const MAX_VALUES_BYTES: usize = 64 * 1024;

/// Inputs whose values are provider endpoints Latchkey itself calls: https only, except loopback.
pub const ENDPOINT_INPUTS: [&str; 6] =
    ["authorizeUrl", "tokenUrl", "revokeUrl", "deviceAuthorizationUrl", "requestTokenUrl", "accessTokenUrl"];
/// Accepted values of the `clientAuth` input.
pub const CLIENT_AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

/// True for `127.0.0.1` (any of 127/8), `::1` and `localhost`.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why a URL is refused; `Display` is the message a field error shows.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum UrlError {
    #[error("must be an absolute URL")]
    NotAbsolute,
    #[error("must be an http or https URL")]
    NotWeb,
    #[error("must be https (plain http is accepted only for 127.0.0.1, ::1 and localhost)")]
    NotSecure,
}

/// An absolute `http(s)` URL.
fn parse_web_url(s: &str) -> Result<url::Url, UrlError> {
    let url = url::Url::parse(s).map_err(|_| UrlError::NotAbsolute)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(UrlError::NotWeb);
    }
    Ok(url)
}

/// A URL Latchkey sends a browser or a request to: https, or plain http on a loopback host.
///
/// # Errors
/// [`UrlError`] for a string that is not an absolute `http(s)` URL, or plain http elsewhere.
pub fn check_secure_url(s: &str) -> Result<url::Url, UrlError> {
    let url = parse_web_url(s)?;
    if url.scheme() == "https" || is_loopback_host(&url) { Ok(url) } else { Err(UrlError::NotSecure) }
}

/// Why a value does not fit its input; `Display` is the message a field error shows.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum ValueError {
    #[error("must be a string")]
    NotString,
    /// Longer than the type allows, in bytes.
    #[error("must be at most {0} bytes")]
    TooLong(usize),
    #[error("must be a number")]
    NotNumber,
    #[error("must be a boolean")]
    NotBoolean,
    #[error("must be a URL string")]
    NotUrlString,
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A `clientAuth` that is not one of [`CLIENT_AUTH_METHODS`].
    #[error("must be one of {}", CLIENT_AUTH_METHODS.join(", "))]
    ClientAuth,
    /// A `signatureMethod` (OAuth 1.0a) that is not one of [`SignatureMethod::NAMES`].
    #[error("must be one of {}", SignatureMethod::NAMES.join(", "))]
    SignatureMethod,
}

fn reject_unknown(obj: &Map<String, Value>, allowed: &[&str], prefix: &str, errors: &mut Vec<FieldError>) {
    for k in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.push(FieldError::new(format!("{prefix}{k}"), "unknown field"));
    }
}

fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    max: usize,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(field, format!("must be at most {max} characters")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// Checks a value against an input type.
///
/// # Errors
/// [`ValueError`] naming what the value should have been.
pub fn check_type(kind: InputType, v: &Value) -> Result<(), ValueError> {
    let bounded = |max: usize, missing: ValueError| match v.as_str() {
        Some(s) if s.len() <= max => Ok(s),
        Some(_) => Err(ValueError::TooLong(max)),
        None => Err(missing),
    };
    match kind {
        InputType::String | InputType::Password => bounded(MAX_STRING, ValueError::NotString).map(|_| ()),
        InputType::Text => bounded(MAX_TEXT, ValueError::NotString).map(|_| ()),
        InputType::Number => v.is_number().then_some(()).ok_or(ValueError::NotNumber),
        InputType::Boolean => v.is_boolean().then_some(()).ok_or(ValueError::NotBoolean),
        InputType::Url => Ok(parse_web_url(bounded(MAX_URL, ValueError::NotUrlString)?).map(|_| ())?),
    }
}

/// Rules of the well-known OAuth inputs on top of their type.
fn check_special_input(name: &str, v: &Value) -> Result<(), ValueError> {
    match (name, v.as_str()) {
        (n, Some(s)) if ENDPOINT_INPUTS.contains(&n) => Ok(check_secure_url(s).map(|_| ())?),
        ("clientAuth", Some(s)) if !CLIENT_AUTH_METHODS.contains(&s) => Err(ValueError::ClientAuth),
        (SIGNATURE_METHOD_INPUT, Some(s)) if !s.is_empty() && SignatureMethod::parse(s).is_none() => {
            Err(ValueError::SignatureMethod)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn no_catalog(_: &str) -> Option<&'static Provider> {
        None
    }

    fn inputs() -> IndexMap<String, Input> {
        let spec = definition_from_json(
            "acme",
            &json!({
                "auth": "api_key",
                "inputs": {
                    "apiKey": {"type": "password", "required": true},
                    "endpoint": {"type": "url", "default": "https://api.acme.com"},
                    "retries": {"type": "number"},
                    "sandbox": {"type": "boolean", "visibility": "embedded"},
                    "plan": {"type": "string", "visibility": "organization", "default": "gold"}
                }
            }),
            no_catalog,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        spec.inputs
    }

    fn defaults(inputs: &IndexMap<String, Input>) -> Values {
        Values {
            plain: inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect(),
            secret: BTreeMap::new(),
        }
    }

    #[test]
    fn every_bad_value_is_named() {
        let inputs = inputs();
        let errs = apply_values(
            &inputs,
            &defaults(&inputs),
            &BTreeSet::new(),
            defaults(&inputs),
            &json!({"endpoint": "not a url", "retries": "3", "sandbox": "yes", "nope": 1}),
            Setter::Organization,
        )
        .err()
        .unwrap();
        let fields: BTreeSet<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            BTreeSet::from(["values.endpoint", "values.retries", "values.sandbox", "values.nope", "values.apiKey"])
        );
    }

    #[test]
    fn customers_cannot_set_organization_inputs_and_defaults_apply() {
        let inputs = inputs();
        let errs = apply_values(
            &inputs,
            &defaults(&inputs),
            &BTreeSet::new(),
            defaults(&inputs),
            &json!({"apiKey": "k", "plan": "free"}),
            Setter::Customer,
        )
        .err()
        .unwrap();
        assert_eq!(errs, vec![FieldError::new("values.plan", "unknown input")]);
        let ok = apply_values(
            &inputs,
            &defaults(&inputs),
            &BTreeSet::new(),
            defaults(&inputs),
            &json!({"apiKey": "k", "sandbox": true}),
            Setter::Customer,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(ok.plain["plan"], json!("gold"));
        assert_eq!(ok.plain["endpoint"], json!("https://api.acme.com"));
        assert_eq!(ok.secret_names(), BTreeSet::from(["apiKey".to_owned()]));
    }

    #[test]
    fn customers_do_not_learn_the_names_of_organization_inputs_from_errors() {
        let spec = definition_from_json(
            "acme",
            &json!({"auth": "api_key", "inputs": {
                "apiKey": {"type": "password", "required": true},
                "tenantSecret": {"type": "password", "required": true, "visibility": "organization"}}}),
            no_catalog,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        let none = Values::default();
        let errs = apply_values(&spec.inputs, &none, &BTreeSet::new(), none.clone(), &json!({}), Setter::Customer)
            .err()
            .unwrap();
        assert!(errs.iter().any(|e| e.field == "values.apiKey"));
        assert!(
            errs.iter().all(|e| !e.field.contains("tenantSecret") && !e.message.contains("tenantSecret")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.field == "values"));
        let errs = apply_values(&spec.inputs, &none, &BTreeSet::new(), none.clone(), &json!({}), Setter::Organization)
            .err()
            .unwrap();
        assert!(errs.iter().any(|e| e.field == "values.tenantSecret"), "the organization is told");
    }

    #[test]
    fn the_values_of_a_connection_are_bounded_in_total() {
        let spec = definition_from_json(
            "acme",
            &json!({"auth": "custom", "inputs": {"a": {"type": "text"}, "b": {"type": "text"}, "c": {"type": "text"}}}),
            no_catalog,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        let none = Values::default();
        let big = "x".repeat(30_000);
        let two = apply_values(
            &spec.inputs,
            &none,
            &BTreeSet::new(),
            none.clone(),
            &json!({"a": big, "b": big}),
            Setter::Organization,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        // Each PATCH is small enough; what they accumulate is not.
        let errs = apply_values(&spec.inputs, &none, &BTreeSet::new(), two, &json!({"c": big}), Setter::Organization)
            .err()
            .unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "values");
    }

    #[test]
    fn oauth_definitions_get_well_known_inputs_and_secure_endpoints() {
        let errs = definition_from_json(
            "x",
            &json!({"auth": "oauth2_authorization_code", "inputs": {"tokenUrl": {"type": "url", "default": "http://example.com/token"}}}), no_catalog)
        .err()
        .unwrap();
        assert_eq!(errs[0].field, "inputs.tokenUrl.default");
        let spec = definition_from_json(
            "x",
            &json!({"auth": "oauth2_authorization_code", "inputs": {"tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"}}}), no_catalog)
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(spec.inputs["pkce"].default, Some(json!(true)));
        assert_eq!(spec.inputs["clientSecret"].kind, InputType::Password);
    }

    #[test]
    fn declared_oauth_settings_default_to_organization_visibility() {
        let spec = definition_from_json(
            "x",
            &json!({"auth": "oauth2_client_credentials", "inputs": {
                "tokenUrl": {"type": "url", "default": "https://idp.example.com/token"},
                "clientId": {"type": "string", "visibility": "embedded"},
                "tenant": {"type": "string"}
            }}),
            no_catalog,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(spec.inputs["tokenUrl"].visibility, Visibility::Organization);
        assert_eq!(spec.inputs["clientId"].visibility, Visibility::Embedded, "an explicit choice stands");
        assert_eq!(spec.inputs["tenant"].visibility, Visibility::Customer);
    }

    #[test]
    fn redirect_urls_must_be_https_or_loopback() {
        for (url, ok) in [
            ("https://app.example.com/done", true),
            ("http://localhost:3000/done", true),
            ("http://[::1]/done", true),
            ("http://app.example.com/done", false),
            ("javascript:alert(1)", false),
        ] {
            let r =
                definition_from_json("x", &json!({"auth": "custom", "redirects": {"success_url": url}}), no_catalog);
            assert_eq!(r.is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn value_errors_read_as_the_field_messages_clients_see() {
        let message = |kind, v: Value| check_type(kind, &v).err().map(|e| e.to_string());
        assert_eq!(message(InputType::Number, json!("3")).as_deref(), Some("must be a number"));
        assert_eq!(
            message(InputType::Text, json!("x".repeat(MAX_TEXT + 1))).as_deref(),
            Some("must be at most 32768 bytes")
        );
        assert_eq!(message(InputType::Url, json!("nope")).as_deref(), Some("must be an absolute URL"));
        assert_eq!(message(InputType::Url, json!("ftp://a.example")).as_deref(), Some("must be an http or https URL"));
        assert_eq!(message(InputType::Url, json!("https://a.example")), None);
        assert_eq!(
            check_special_input("tokenUrl", &json!("http://a.example/t")).map_err(|e| e.to_string()),
            Err("must be https (plain http is accepted only for 127.0.0.1, ::1 and localhost)".to_owned())
        );
        assert_eq!(
            check_special_input("clientAuth", &json!("private_key_jwt")).map_err(|e| e.to_string()),
            Err("must be one of client_secret_basic, client_secret_post".to_owned())
        );
    }

    #[test]
    fn password_defaults_are_split_out_as_secrets() {
        let spec = definition_from_json(
            "x",
            &json!({"auth": "api_key", "inputs": {"k": {"type": "password", "default": "s3cret"}}}),
            no_catalog,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(spec.inputs["k"].default, None);
        assert_eq!(spec.secret_defaults["k"].expose_secret(), "s3cret");
    }
}
