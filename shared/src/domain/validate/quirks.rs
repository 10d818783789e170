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
/// The longest `refresh_token_lifetime_secs`: ten years, the longest lifetime the answer reader
/// believes a provider states.
const MAX_REFRESH_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

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
            "refresh_token_lifetime_secs",
            "refresh_token_expires_in_member",
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
    let refresh_token_lifetime_secs = match obj.get("refresh_token_lifetime_secs") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(secs) if (1..=MAX_REFRESH_TOKEN_LIFETIME_SECS).contains(&secs) => Some(secs),
            _ => {
                errors.push(FieldError::new(
                    "oauth.refresh_token_lifetime_secs",
                    format!(
                        "must be a whole number of seconds from 1 to {MAX_REFRESH_TOKEN_LIFETIME_SECS} (ten years)"
                    ),
                ));
                None
            }
        },
    };
    let refresh_token_expires_in_member =
        optional_string(obj, "refresh_token_expires_in_member", 64, "oauth.refresh_token_expires_in_member", errors);
    if let Some(m) = &refresh_token_expires_in_member
        && !valid_param_name(m)
    {
        errors.push(FieldError::new(
            "oauth.refresh_token_expires_in_member",
            "must be a member name of 1-64 of A-Z a-z 0-9 _ . - (x_refresh_token_expires_in)",
        ));
    }
    OAuthQuirks {
        scope_separator,
        scope_param,
        authorization_params,
        token_params,
        token_path,
        capture,
        required_scopes,
        refresh_token_lifetime_secs,
        refresh_token_expires_in_member,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(v: Value) -> (OAuthQuirks, Vec<String>) {
        let mut errors = Vec::new();
        let q = oauth_quirks_from_json(&v, &mut errors);
        (q, errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn a_refresh_token_lifetime_and_its_answer_member_are_read() {
        let (q, errors) = read(json!({"refresh_token_lifetime_secs": 8_640_000,
                                      "refresh_token_expires_in_member": "x_refresh_token_expires_in"}));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(q.refresh_token_lifetime_secs, Some(8_640_000));
        assert_eq!(q.refresh_token_expires_in_member(), "x_refresh_token_expires_in");
        assert_eq!(OAuthQuirks::default().refresh_token_expires_in_member(), "refresh_token_expires_in");
    }

    #[test]
    fn bad_refresh_token_lifetimes_and_members_are_named() {
        for bad in [json!(0), json!(-1), json!(1.5), json!("3600"), json!(MAX_REFRESH_TOKEN_LIFETIME_SECS + 1)] {
            let (q, errors) = read(json!({"refresh_token_lifetime_secs": bad}));
            assert_eq!(errors, ["oauth.refresh_token_lifetime_secs"], "{bad}");
            assert_eq!(q.refresh_token_lifetime_secs, None);
        }
        for bad in [json!(""), json!("x y"), json!(5), json!("a/b")] {
            let (_, errors) = read(json!({"refresh_token_expires_in_member": bad}));
            assert_eq!(errors, ["oauth.refresh_token_expires_in_member"], "{bad}");
        }
    }

    #[test]
    fn a_definition_overrides_the_catalog_lifetime_and_member() {
        let catalog = OAuthQuirks {
            refresh_token_lifetime_secs: Some(100),
            refresh_token_expires_in_member: Some("x_refresh_token_expires_in".into()),
            ..Default::default()
        };
        let own = OAuthQuirks { refresh_token_lifetime_secs: Some(5), ..Default::default() };
        let q = own.over(&catalog);
        assert_eq!(q.refresh_token_lifetime_secs, Some(5));
        assert_eq!(q.refresh_token_expires_in_member(), "x_refresh_token_expires_in");
        assert_eq!(OAuthQuirks::default().over(&catalog).refresh_token_lifetime_secs, Some(100));
    }
}
