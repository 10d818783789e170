//! `PUT /v1/definitions/{key}` bodies: labels, inputs (with the well-known OAuth inputs and a
//! catalog provider's defaults), redirects, the `oauth` block.

use strum::VariantNames;

use super::quirks::oauth_quirks_from_json;
use super::*;

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
    /// The `verify` request, its templates checked against the inputs above.
    pub verify: Option<Verify>,
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

/// The well-known inputs of OAuth 2.0 and OAuth 1.0a definitions: (name, type, required,
/// default, label), with the defaults of a catalog provider when the definition names one.
fn oauth_inputs(
    auth: AuthKind,
    provider: Option<&Provider>,
) -> Vec<(&'static str, InputType, bool, Option<Value>, &'static str)> {
    // URLs with `{param}` placeholders are resolved per connection, not stored as defaults.
    let templated = provider.is_some_and(|p| !p.url_params.is_empty());
    let url = |u: Option<&str>| u.filter(|_| !templated).map(Value::from);
    if auth == AuthKind::Oauth1 {
        return super::oauth1::consumer_inputs(provider.filter(|_| !templated));
    }
    let mut v = Vec::new();
    if auth == AuthKind::Oauth2AuthorizationCode {
        let default = url(provider.and_then(|p| p.authorize_url.as_deref()));
        v.push(("authorizeUrl", InputType::Url, !templated, default, "Authorization URL"));
    }
    if auth == AuthKind::Oauth2DeviceCode {
        let default = url(provider.and_then(|p| p.device_authorization_url.as_deref()));
        v.push(("deviceAuthorizationUrl", InputType::Url, !templated, default, "Device authorization URL"));
    }
    let scopes = provider
        .filter(|p| !p.default_scopes.is_empty())
        .map(|p| Value::from(p.default_scopes.join(p.oauth.separator())));
    v.extend([
        ("tokenUrl", InputType::Url, !templated, url(provider.and_then(|p| p.token_url.as_deref())), "Token URL"),
        ("revokeUrl", InputType::Url, false, url(provider.and_then(|p| p.revoke_url.as_deref())), "Revocation URL"),
        ("scopes", InputType::String, false, scopes, "Scopes"),
        // A JWT bearer assertion authenticates by itself (RFC 7523 section 3.1); client
        // authentication beside it is optional.
        ("clientId", InputType::String, auth != AuthKind::Oauth2JwtBearer, None, "Client ID"),
        ("clientSecret", InputType::Password, false, None, "Client secret"),
        (
            "clientAuth",
            InputType::String,
            false,
            Some(Value::from(provider.map_or("client_secret_basic", Provider::client_auth_method))),
            "Client authentication",
        ),
    ]);
    if auth == AuthKind::Oauth2AuthorizationCode {
        v.push((
            "pkce",
            InputType::Boolean,
            false,
            Some(Value::Bool(provider.is_none_or(Provider::supports_pkce))),
            "Use PKCE",
        ));
        // RFC 9207: the `iss` a callback must carry when the provider sends one.
        v.push(("issuer", InputType::Url, false, None, "Issuer"));
    }
    if auth == AuthKind::Oauth2JwtBearer {
        v.extend(super::jwt_bearer::assertion_inputs(provider));
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
    reject_unknown(
        obj,
        &["label", "description", "auth", "provider", "inputs", "redirects", "oauth", "verify"],
        "",
        &mut errors,
    );

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
            errors.push(FieldError::new("auth", format!("must be one of {}", AuthKind::VARIANTS.join(", "))));
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
                    Some(a) if a.has_app_settings() && oauth_inputs(a, None).iter().any(|(n, ..)| n == name) => {
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

    if let Some(auth) = auth.filter(|a| a.has_app_settings()) {
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
    // API-key and basic providers: the inputs their verify request names, unless the
    // organization declared its own of that name.
    for (name, input) in entry.into_iter().flat_map(|p| &p.inputs) {
        inputs.entry(name.clone()).or_insert_with(|| input.to_input());
    }
    for (name, input) in &inputs {
        if let Some(default) = &input.default
            && let Err(msg) = check_special_input(name, default)
        {
            errors.push(FieldError::new(format!("inputs.{name}.default"), msg.to_string()));
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
                        errors.push(FieldError::new(field, msg.to_string()));
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

    // Templates name the inputs above, or the access token of OAuth connections.
    let oauth_kind = auth.is_some_and(AuthKind::is_oauth);
    let known = |n: &str| inputs.contains_key(n) || (oauth_kind && n == ACCESS_TOKEN);
    let verify = match obj.get("verify") {
        // Absent: the catalog provider's, if any (and not contradicted: that is reported
        // already), checked like the definition's own; `null`: none, even where the provider
        // has one.
        None => entry.filter(|p| Some(p.auth) == auth).and_then(|p| p.verify.clone()).filter(|v| {
            let bad = v.check(known);
            let ok = bad.is_empty();
            errors.extend(bad);
            ok
        }),
        Some(Value::Null) => None,
        Some(v) => verify_from_json(v, known).map_err(|e| errors.extend(e)).ok(),
    };

    if auth == Some(AuthKind::Oauth2JwtBearer) {
        let plain = inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect();
        errors.extend(super::jwt_bearer::check_assertion_values(&plain, &secret_defaults, "inputs.", ".default"));
    }
    if auth == Some(AuthKind::Oauth1) && verify.is_some() {
        // A check of OAuth 1.0a credentials is a signed request, which a template cannot make.
        errors.push(FieldError::new("verify", "is not available for oauth1 definitions (their requests are signed)"));
    }
    if auth == Some(AuthKind::Oauth1) {
        let plain = inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect();
        errors.extend(super::oauth1::check_consumer_values(&plain, &secret_defaults, "inputs.", ".default"));
    }
    match auth {
        Some(auth) if errors.is_empty() => Ok(DefinitionSpec {
            label,
            description,
            auth,
            provider,
            inputs,
            redirects,
            oauth,
            verify,
            secret_defaults,
            keep_secret_defaults,
        }),
        _ => Err(errors),
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
        errors.push(FieldError::new(
            format!("{field}.type"),
            format!("must be one of {}", InputType::VARIANTS.join(", ")),
        ));
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
            format!("must be one of {}", Visibility::VARIANTS.join(", ")),
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
                Err(msg) => errors.push(FieldError::new(format!("{field}.default"), msg.to_string())),
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
