//! Validation of definition drafts and connection values, with an error per bad field.
//!
//! Bodies are checked from `serde_json::Value` by hand rather than by serde derive so that every
//! problem is reported at once, each naming its field (`inputs.apiKey.type`, `values.endpoint`).

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{AuthKind, Capture, Input, InputType, OAuthQuirks, Provider, RESERVED_TOKEN_PARAMS, Redirects, Visibility};

/// One invalid field of a request, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
const MAX_INPUTS: usize = 100;
/// The most a connection's values may total (names and values, plain and secret, as JSON), so a
/// record stays far below DynamoDB's 400 KB item limit whatever PATCHes accumulate.
pub const MAX_VALUES_BYTES: usize = 64 * 1024;

/// Inputs whose values are provider endpoints Latchkey itself calls: https only, except loopback.
pub const ENDPOINT_INPUTS: [&str; 3] = ["authorizeUrl", "tokenUrl", "revokeUrl"];
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

/// An absolute `http(s)` URL.
fn parse_web_url(s: &str) -> Result<url::Url, &'static str> {
    let url = url::Url::parse(s).map_err(|_| "must be an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http or https URL");
    }
    Ok(url)
}

/// A URL Latchkey sends a browser or a request to: https, or plain http on a loopback host.
pub fn check_secure_url(s: &str) -> Result<url::Url, &'static str> {
    let url = parse_web_url(s)?;
    if url.scheme() == "https" || is_loopback_host(&url) {
        Ok(url)
    } else {
        Err("must be https (plain http is accepted only for 127.0.0.1, ::1 and localhost)")
    }
}

/// A definition as the organization described it, validated, before its secret defaults are
/// sealed.
pub struct DefinitionSpec {
    pub label: String,
    pub description: Option<String>,
    pub auth: AuthKind,
    pub provider: Option<String>,
    pub inputs: IndexMap<String, Input>,
    pub redirects: Option<Redirects>,
    pub oauth: OAuthQuirks,
    pub secret_defaults: BTreeMap<String, SecretString>,
    /// `password` inputs whose default was sent back as `{"set": true}` (as a read shows it):
    /// the stored secret default is kept.
    pub keep_secret_defaults: BTreeSet<String>,
}

fn valid_input_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
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

/// The well-known inputs of OAuth 2.0 definitions: (name, type, required, default, label),
/// with the defaults of a catalog provider when the definition names one.
fn oauth_inputs(
    auth: AuthKind,
    provider: Option<&Provider>,
) -> Vec<(&'static str, InputType, bool, Option<Value>, &'static str)> {
    // URLs with `{param}` placeholders are resolved per connection, not stored as defaults.
    let templated = provider.is_some_and(|p| !p.url_params.is_empty());
    let url = |u: Option<&str>| u.filter(|_| !templated).map(Value::from);
    let mut v = Vec::new();
    if auth == AuthKind::Oauth2AuthorizationCode {
        let default = url(provider.and_then(|p| p.authorize_url.as_deref()));
        v.push(("authorizeUrl", InputType::Url, !templated, default, "Authorization URL"));
    }
    let scopes = provider
        .filter(|p| !p.default_scopes.is_empty())
        .map(|p| Value::from(p.default_scopes.join(p.oauth.separator())));
    v.extend([
        ("tokenUrl", InputType::Url, !templated, url(provider.map(|p| p.token_url.as_str())), "Token URL"),
        ("revokeUrl", InputType::Url, false, url(provider.and_then(|p| p.revoke_url.as_deref())), "Revocation URL"),
        ("scopes", InputType::String, false, scopes, "Scopes"),
        ("clientId", InputType::String, true, None, "Client ID"),
        ("clientSecret", InputType::Password, false, None, "Client secret"),
        (
            "clientAuth",
            InputType::String,
            false,
            Some(Value::from(provider.map_or("client_secret_basic", |p| p.client_auth.as_str()))),
            "Client authentication",
        ),
    ]);
    if auth == AuthKind::Oauth2AuthorizationCode {
        v.push(("pkce", InputType::Boolean, false, Some(Value::Bool(provider.is_none_or(|p| p.pkce))), "Use PKCE"));
        // RFC 9207: the `iss` a callback must carry when the provider sends one.
        v.push(("issuer", InputType::Url, false, None, "Issuer"));
    }
    v
}

/// Validates a `PUT /v1/definitions/{key}` body. `catalog` finds the provider a definition
/// names (`crate::catalog::provider`; the domain reads no global catalog of its own).
pub fn definition_from_json<'c>(
    key: &str,
    body: &Value,
    catalog: impl Fn(&str) -> Option<&'c Provider>,
) -> Result<DefinitionSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("", "must be a JSON object")]);
    };
    reject_unknown(obj, &["label", "description", "auth", "provider", "inputs", "redirects", "oauth"], "", &mut errors);

    let label = optional_string(obj, "label", MAX_LABEL, "label", &mut errors).unwrap_or_else(|| key.to_owned());
    if label.trim().is_empty() {
        errors.push(FieldError::new("label", "must not be empty"));
    }
    let description = optional_string(obj, "description", MAX_DESCRIPTION, "description", &mut errors);
    let provider = optional_string(obj, "provider", 64, "provider", &mut errors);
    let entry = provider.as_deref().and_then(|k| {
        let found = catalog(k);
        if found.is_none() {
            errors.push(FieldError::new("provider", "unknown provider (GET /v1/providers lists the catalog)"));
        }
        found
    });
    let auth = match obj.get("auth") {
        Some(Value::String(s)) => AuthKind::parse(s).or_else(|| {
            errors.push(FieldError::new("auth", format!("must be one of {}", AuthKind::ALL.join(", "))));
            None
        }),
        // A provider says how it authenticates.
        // A provider says how it authenticates (an unknown one is reported already).
        None | Some(Value::Null) if provider.is_some() => entry.map(|p| p.auth),
        None | Some(Value::Null) => {
            errors.push(FieldError::new("auth", "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("auth", "must be a string"));
            None
        }
    };
    if let (Some(a), Some(p)) = (auth, entry)
        && a != p.auth
    {
        errors.push(FieldError::new(
            "auth",
            format!("the provider {} uses {}", p.key, serde_json::to_value(p.auth).unwrap_or_default()),
        ));
    }

    let mut inputs = IndexMap::new();
    let mut secret_defaults = BTreeMap::new();
    let mut keep_secret_defaults = BTreeSet::new();
    match obj.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) if map.len() > MAX_INPUTS => {
            errors.push(FieldError::new("inputs", format!("at most {MAX_INPUTS} inputs")));
        }
        Some(Value::Object(map)) => {
            for (name, spec) in map {
                let field = format!("inputs.{name}");
                if !valid_input_name(name) {
                    errors.push(FieldError::new(
                        &field,
                        "input names are 1-64 letters, digits or _ starting with a letter",
                    ));
                    continue;
                }
                // The OAuth settings steer where Latchkey sends the client secret: unless the
                // organization says otherwise, customers neither see nor set them.
                let default_visibility = match auth {
                    Some(a) if a.is_oauth() && oauth_inputs(a, None).iter().any(|(n, ..)| n == name) => {
                        Visibility::Organization
                    }
                    _ => Visibility::Customer,
                };
                if let Some((input, secret)) = input_from_json(name, spec, &field, default_visibility, &mut errors) {
                    match secret {
                        Some(SecretDefault::New(s)) => {
                            secret_defaults.insert(name.clone(), s);
                        }
                        Some(SecretDefault::Keep) => {
                            keep_secret_defaults.insert(name.clone());
                        }
                        None => {}
                    }
                    inputs.insert(name.clone(), input);
                }
            }
        }
        Some(_) => errors.push(FieldError::new("inputs", "must be an object of inputs")),
    }

    if let Some(auth) = auth.filter(|a| a.is_oauth()) {
        for (name, kind, required, default, label) in oauth_inputs(auth, entry) {
            match inputs.get_mut(name) {
                Some(existing) if existing.kind != kind => {
                    errors.push(FieldError::new(
                        format!("inputs.{name}.type"),
                        format!(
                            "the OAuth input {name} must have type {}",
                            serde_json::to_value(kind).unwrap_or_default()
                        ),
                    ));
                }
                // The organization's own default wins over the catalog's.
                Some(existing) => {
                    if existing.default.is_none() {
                        existing.default = default;
                    }
                }
                None => {
                    inputs.insert(
                        name.to_owned(),
                        Input {
                            label: label.to_owned(),
                            kind,
                            required,
                            default,
                            visibility: Visibility::Organization,
                            description: None,
                        },
                    );
                }
            }
        }
        // Per-tenant providers (Shopify's shop, Zendesk's subdomain) need the customer's value.
        for param in entry.map(|p| p.url_params.as_slice()).unwrap_or_default() {
            inputs.entry(param.clone()).or_insert_with(|| Input {
                label: param.clone(),
                kind: InputType::String,
                required: true,
                default: None,
                visibility: Visibility::Customer,
                description: Some(format!("Your {param}, as in the provider's URLs")),
            });
        }
    }
    for (name, input) in &inputs {
        if let Some(default) = &input.default
            && let Err(msg) = check_special_input(name, default)
        {
            errors.push(FieldError::new(format!("inputs.{name}.default"), msg));
        }
    }

    let redirects = match obj.get("redirects") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            reject_unknown(r, &["success_url", "failure_url"], "redirects.", &mut errors);
            let mut url_field = |k: &str| {
                let field = format!("redirects.{k}");
                let s = optional_string(r, k, 2_048, &field, &mut errors)?;
                match check_secure_url(&s) {
                    Ok(_) => Some(s),
                    Err(msg) => {
                        errors.push(FieldError::new(field, msg));
                        None
                    }
                }
            };
            Some(Redirects { success_url: url_field("success_url"), failure_url: url_field("failure_url") })
        }
        Some(_) => {
            errors.push(FieldError::new("redirects", "must be an object"));
            None
        }
    };

    let oauth = match obj.get("oauth") {
        None | Some(Value::Null) => OAuthQuirks::default(),
        Some(_) if auth.is_some_and(|a| !a.is_oauth()) => {
            errors.push(FieldError::new("oauth", "is only for OAuth 2.0 definitions"));
            OAuthQuirks::default()
        }
        Some(v) => oauth_quirks_from_json(v, &mut errors),
    };

    match auth {
        Some(auth) if errors.is_empty() => Ok(DefinitionSpec {
            label,
            description,
            auth,
            provider,
            inputs,
            redirects,
            oauth,
            secret_defaults,
            keep_secret_defaults,
        }),
        _ => Err(errors),
    }
}

/// A parameter name a definition may add to a provider request.
fn valid_param_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Authorize URL parameters Latchkey sets itself (RFC 6749 section 4.1.1, RFC 7636).
const RESERVED_AUTHORIZATION_PARAMS: [&str; 6] =
    ["response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method"];
const MAX_QUIRK_ITEMS: usize = 20;
const MAX_QUIRK_VALUE: usize = 1_024;

/// A list of short strings (`capture.token`, `required_scopes`).
fn string_list(v: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() > MAX_QUIRK_ITEMS => {
            errors.push(FieldError::new(field, format!("at most {MAX_QUIRK_ITEMS} entries")));
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_whitespace) => {
                        out.push(s.to_owned())
                    }
                    _ => errors
                        .push(FieldError::new(format!("{field}[{i}]"), "must be a non-empty string without spaces")),
                }
            }
            out
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be an array of strings"));
            Vec::new()
        }
    }
}

/// An object of extra request parameters: names `[A-Za-z0-9_.-]{1,64}`, string values.
fn param_map(
    v: Option<&Value>,
    field: &str,
    reserved: &[&str],
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.len() > MAX_QUIRK_ITEMS => {
            errors.push(FieldError::new(field, format!("at most {MAX_QUIRK_ITEMS} parameters")));
        }
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let f = format!("{field}.{k}");
                if !valid_param_name(k) {
                    errors.push(FieldError::new(f, "parameter names are 1-64 of A-Z a-z 0-9 _ . -"));
                } else if reserved.contains(&k.as_str()) {
                    errors.push(FieldError::new(f, "is set by Latchkey itself"));
                } else {
                    match v.as_str() {
                        Some(s) if s.len() <= MAX_QUIRK_VALUE => {
                            out.insert(k.clone(), s.to_owned());
                        }
                        _ => errors
                            .push(FieldError::new(f, format!("must be a string of at most {MAX_QUIRK_VALUE} bytes"))),
                    }
                }
            }
        }
        Some(_) => errors.push(FieldError::new(field, "must be an object of string parameters")),
    }
    out
}

/// Validates a definition's `oauth` block (SPEC section 8), naming each bad field.
fn oauth_quirks_from_json(v: &Value, errors: &mut Vec<FieldError>) -> OAuthQuirks {
    let Some(obj) = v.as_object() else {
        errors.push(FieldError::new("oauth", "must be an object"));
        return OAuthQuirks::default();
    };
    reject_unknown(
        obj,
        &[
            "scope_separator",
            "scope_param",
            "authorization_params",
            "token_params",
            "token_path",
            "capture",
            "required_scopes",
        ],
        "oauth.",
        errors,
    );
    let scope_separator = optional_string(obj, "scope_separator", 8, "oauth.scope_separator", errors);
    if scope_separator.as_deref() == Some("") {
        errors.push(FieldError::new("oauth.scope_separator", "must not be empty"));
    }
    let scope_param = optional_string(obj, "scope_param", 64, "oauth.scope_param", errors);
    if let Some(p) = &scope_param
        && (!valid_param_name(p) || RESERVED_AUTHORIZATION_PARAMS.contains(&p.as_str()))
    {
        errors.push(FieldError::new("oauth.scope_param", "must be a parameter name Latchkey does not set itself"));
    }
    let mut reserved_authorize: Vec<&str> = RESERVED_AUTHORIZATION_PARAMS.to_vec();
    reserved_authorize.push(scope_param.as_deref().unwrap_or(OAuthQuirks::DEFAULT_SCOPE_PARAM));
    let authorization_params =
        param_map(obj.get("authorization_params"), "oauth.authorization_params", &reserved_authorize, errors);
    let token_params = param_map(obj.get("token_params"), "oauth.token_params", &RESERVED_TOKEN_PARAMS, errors);
    let token_path = optional_string(obj, "token_path", 128, "oauth.token_path", errors);
    if let Some(p) = token_path.as_deref().filter(|p| !p.is_empty())
        && !p.split('.').all(valid_param_name)
    {
        errors.push(FieldError::new("oauth.token_path", "must be a dotted path of member names (authed_user)"));
    }
    let mut capture = Capture::default();
    match obj.get("capture") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => {
            reject_unknown(c, &["token", "callback"], "oauth.capture.", errors);
            capture.token = string_list(c.get("token"), "oauth.capture.token", errors);
            capture.callback = string_list(c.get("callback"), "oauth.capture.callback", errors);
        }
        Some(_) => errors.push(FieldError::new("oauth.capture", "must be an object {token, callback}")),
    }
    let required_scopes = string_list(obj.get("required_scopes"), "oauth.required_scopes", errors);
    OAuthQuirks {
        scope_separator,
        scope_param,
        authorization_params,
        token_params,
        token_path,
        capture,
        required_scopes,
    }
}

/// The default of a `password` input, kept apart from the plain definition.
enum SecretDefault {
    New(SecretString),
    Keep,
}

/// Parses one input; a `password` default comes back separately, as a secret.
fn input_from_json(
    name: &str,
    spec: &Value,
    field: &str,
    default_visibility: Visibility,
    errors: &mut Vec<FieldError>,
) -> Option<(Input, Option<SecretDefault>)> {
    let Some(obj) = spec.as_object() else {
        errors.push(FieldError::new(field, "must be an object"));
        return None;
    };
    let before = errors.len();
    let prefix = format!("{field}.");
    reject_unknown(obj, &["label", "type", "required", "default", "visibility", "description"], &prefix, errors);
    let label =
        optional_string(obj, "label", MAX_LABEL, &format!("{field}.label"), errors).unwrap_or_else(|| name.to_owned());
    let description = optional_string(obj, "description", MAX_DESCRIPTION, &format!("{field}.description"), errors);
    let kind = match obj.get("type") {
        Some(Value::String(s)) => InputType::parse(s),
        _ => None,
    };
    if kind.is_none() {
        errors.push(FieldError::new(format!("{field}.type"), format!("must be one of {}", InputType::ALL.join(", "))));
    }
    let required = match obj.get("required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new(format!("{field}.required"), "must be a boolean"));
            false
        }
    };
    let visibility = match obj.get("visibility") {
        None | Some(Value::Null) => Some(default_visibility),
        Some(Value::String(s)) => Visibility::parse(s),
        Some(_) => None,
    };
    if visibility.is_none() {
        errors.push(FieldError::new(
            format!("{field}.visibility"),
            format!("must be one of {}", Visibility::ALL.join(", ")),
        ));
    }
    let (kind, visibility) = (kind?, visibility?);
    let mut default = obj.get("default").filter(|v| !v.is_null()).cloned();
    let mut secret = None;
    if let Some(v) = &default {
        if kind.is_secret() && *v == serde_json::json!({"set": true}) {
            secret = Some(SecretDefault::Keep);
            default = None;
        } else {
            match check_type(kind, v) {
                Err(msg) => errors.push(FieldError::new(format!("{field}.default"), msg)),
                Ok(()) if kind.is_secret() => {
                    secret = v.as_str().map(|s| SecretDefault::New(SecretString::from(s.to_owned())));
                    default = None;
                }
                Ok(()) => {}
            }
        }
    }
    (errors.len() == before).then_some((Input { label, kind, required, default, visibility, description }, secret))
}

/// Checks a value against an input type.
pub fn check_type(kind: InputType, v: &Value) -> Result<(), String> {
    match kind {
        InputType::String | InputType::Password => match v.as_str() {
            Some(s) if s.len() <= MAX_STRING => Ok(()),
            Some(_) => Err(format!("must be at most {MAX_STRING} bytes")),
            None => Err("must be a string".into()),
        },
        InputType::Text => match v.as_str() {
            Some(s) if s.len() <= MAX_TEXT => Ok(()),
            Some(_) => Err(format!("must be at most {MAX_TEXT} bytes")),
            None => Err("must be a string".into()),
        },
        InputType::Number => v.is_number().then_some(()).ok_or_else(|| "must be a number".into()),
        InputType::Boolean => v.is_boolean().then_some(()).ok_or_else(|| "must be a boolean".into()),
        InputType::Url => match v.as_str() {
            Some(s) if s.len() <= 2_048 => parse_web_url(s).map(|_| ()).map_err(Into::into),
            Some(_) => Err("must be at most 2048 bytes".into()),
            None => Err("must be a URL string".into()),
        },
    }
}

/// Rules of the well-known OAuth inputs on top of their type.
fn check_special_input(name: &str, v: &Value) -> Result<(), String> {
    match (name, v.as_str()) {
        (n, Some(s)) if ENDPOINT_INPUTS.contains(&n) => check_secure_url(s).map(|_| ()).map_err(Into::into),
        ("clientAuth", Some(s)) if !CLIENT_AUTH_METHODS.contains(&s) => {
            Err(format!("must be one of {}", CLIENT_AUTH_METHODS.join(", ")))
        }
        _ => Ok(()),
    }
}

/// A connection's values split into the plain ones and the secrets.
#[derive(Default, Clone)]
pub struct Values {
    pub plain: BTreeMap<String, Value>,
    pub secret: BTreeMap<String, SecretString>,
}

impl Values {
    fn has(&self, name: &str) -> bool {
        self.plain.contains_key(name) || self.secret.contains_key(name)
    }

    fn remove(&mut self, name: &str) {
        self.plain.remove(name);
        self.secret.remove(name);
    }

    pub fn secret_names(&self) -> BTreeSet<String> {
        self.secret.keys().cloned().collect()
    }

    /// Moves plain values of inputs that are `password` now (the definition changed since they
    /// were stored) into the secrets. Returns whether anything moved.
    pub fn seal_secret_inputs(&mut self, inputs: &IndexMap<String, Input>) -> bool {
        let moved: Vec<String> =
            self.plain.keys().filter(|k| inputs.get(*k).is_some_and(|i| i.kind.is_secret())).cloned().collect();
        for name in &moved {
            if let Some(v) = self.plain.remove(name) {
                let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                self.secret.insert(name.clone(), SecretString::from(s));
            }
        }
        !moved.is_empty()
    }
}

/// Who is setting values: a customer may only set `customer` and `embedded` inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setter {
    Organization,
    Customer,
}

/// Applies `changes` (a JSON object; `null` resets an input to its default) on top of `base`,
/// and checks the result against the definition's inputs: types, unknown keys, visibility,
/// required. `defaults` are the definition's defaults (plain and unsealed secret ones);
/// `inherited` names the inputs read from the definition at each use rather than copied
/// ([`super::Definition::by_reference`]): `null` removes the connection's own value, and the
/// definition's default satisfies `required`.
pub fn apply_values(
    inputs: &IndexMap<String, Input>,
    defaults: &Values,
    inherited: &BTreeSet<String>,
    mut base: Values,
    changes: &Value,
    setter: Setter,
) -> Result<Values, Vec<FieldError>> {
    let mut errors = Vec::new();
    let changes = match changes {
        Value::Null => &Map::new(),
        Value::Object(m) => m,
        _ => return Err(vec![FieldError::new("values", "must be an object")]),
    };
    // Values of inputs the definition no longer has are dropped.
    base.plain.retain(|k, _| inputs.contains_key(k));
    base.secret.retain(|k, _| inputs.contains_key(k));
    base.seal_secret_inputs(inputs);

    for (name, v) in changes {
        let field = format!("values.{name}");
        let Some(input) =
            inputs.get(name).filter(|i| setter == Setter::Organization || i.visibility.customer_can_set())
        else {
            // A customer learns nothing of organization inputs: they are simply unknown.
            errors.push(FieldError::new(field, "unknown input"));
            continue;
        };
        base.remove(name);
        if v.is_null() && inherited.contains(name) {
            continue;
        }
        if v.is_null() {
            if let Some(d) = defaults.plain.get(name) {
                base.plain.insert(name.clone(), d.clone());
            }
            if let Some(d) = defaults.secret.get(name) {
                base.secret.insert(name.clone(), d.clone());
            }
            continue;
        }
        if let Err(msg) = check_type(input.kind, v).and_then(|()| check_special_input(name, v)) {
            errors.push(FieldError::new(field, msg));
            continue;
        }
        if input.kind.is_secret() {
            let s = v.as_str().unwrap_or_default();
            if !s.is_empty() {
                base.secret.insert(name.clone(), SecretString::from(s.to_owned()));
            }
        } else if v.as_str() != Some("") {
            base.plain.insert(name.clone(), v.clone());
        }
    }
    let mut incomplete = false;
    for (name, input) in inputs {
        let from_definition = inherited.contains(name) && defaults.has(name);
        if input.required
            && !base.has(name)
            && !from_definition
            && !errors.iter().any(|e| e.field == format!("values.{name}"))
        {
            if setter == Setter::Customer && !input.visibility.customer_can_set() {
                // A customer can neither set nor learn of organization inputs.
                incomplete = true;
            } else {
                errors.push(FieldError::new(format!("values.{name}"), "is required"));
            }
        }
    }
    if incomplete {
        errors.push(FieldError::new(
            "values",
            "the definition lacks values only the organization can set; ask the organization to complete it",
        ));
    }
    let total = base.plain.iter().map(|(k, v)| k.len() + v.to_string().len()).sum::<usize>()
        + base.secret.iter().map(|(k, v)| k.len() + v.expose_secret().len()).sum::<usize>();
    if total > MAX_VALUES_BYTES {
        errors.push(FieldError::new(
            "values",
            format!("the connection's values total {total} bytes; at most {MAX_VALUES_BYTES} are kept"),
        ));
    }
    if errors.is_empty() { Ok(base) } else { Err(errors) }
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
