//! A definition's `oauth` block (SPEC section 8), validated field by field.

use super::*;

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
pub(super) fn oauth_quirks_from_json(v: &Value, errors: &mut Vec<FieldError>) -> OAuthQuirks {
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
