//! Tokens imported with a new connection (SPEC section 10, "Import"): the `tokens` member of a
//! `POST /v1/connections` body, as another platform exported them.
//!
//! ```json
//! "tokens": { "access_token": "…", "refresh_token": "…",
//!             "expires_at": "2026-12-01T10:00:00Z" | "expires_in": 3600,
//!             "scopes": ["read", "write"] | "read write", "token_type": "Bearer",
//!             "refresh_token_expires_at": "2027-03-01T10:00:00Z" | "refresh_token_expires_in": 7776000 }
//! ```
//!
//! Only `access_token` is required. Error messages name the member and never repeat a value.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::*;

/// The longest lifetime an import may state (ten years), as the answer reader's
/// `MAX_EXPIRES_IN_SECS`: beyond it a provider's `expires_in` is not believed either.
pub const MAX_IMPORT_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// The longest `token_type` (the answer reader keeps at most this much of a provider's).
const MAX_TOKEN_TYPE: usize = 64;

/// When imported tokens expire, as the import stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportedExpiry {
    /// Neither `expires_at` nor `expires_in`: an unknown lifetime (SPEC section 8).
    Unknown,
    /// `expires_in`: seconds from now, `1..=`[`MAX_IMPORT_LIFETIME_SECS`].
    In(u64),
    /// `expires_at`: at most [`MAX_IMPORT_LIFETIME_SECS`] ahead; in the past only when a
    /// refresh token can renew it.
    At(OffsetDateTime),
}

/// A validated `tokens` member. `Debug` never prints a token.
pub struct ImportedTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Visible ASCII without spaces, at most 64 characters; `None`: `Bearer`.
    pub token_type: Option<String>,
    pub expiry: ImportedExpiry,
    /// The granted scopes as given: each entry may itself hold several, joined by the
    /// definition's separator, white space or commas (read like a provider's `scope`). `None`
    /// when the import names none: the definition's requested scopes are taken.
    pub scopes: Option<Vec<String>>,
    /// When the refresh token lapses (SPEC section 10): `refresh_token_expires_at` (in the
    /// future) or `refresh_token_expires_in`, only with a `refresh_token`. `Unknown`: the
    /// definition's `oauth.refresh_token_lifetime_secs` applies, if it has one.
    pub refresh_expiry: ImportedExpiry,
}

impl std::fmt::Debug for ImportedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedTokens")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("token_type", &self.token_type)
            .field("expiry", &self.expiry)
            .field("scopes", &self.scopes)
            .field("refresh_expiry", &self.refresh_expiry)
            .finish_non_exhaustive()
    }
}

/// A token as RFC 6749 allows it (appendix A.12, A.17: `VSCHAR`, printable ASCII), non-empty
/// and at most `MAX_STRING` bytes. `None` when absent or `null`.
fn token(obj: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<SecretString> {
    let field = format!("tokens.{key}");
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.len() > MAX_STRING => {
            errors.push(FieldError::new(field, format!("must be at most {MAX_STRING} bytes")));
            None
        }
        Some(Value::String(s)) if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) => {
            errors.push(FieldError::new(field, "must be printable ASCII (RFC 6749 appendix A)"));
            None
        }
        Some(Value::String(s)) => Some(SecretString::from(s.clone())),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn token_type(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let t = optional_string(obj, "token_type", MAX_TOKEN_TYPE, "tokens.token_type", errors)?;
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_graphic()) {
        errors.push(FieldError::new("tokens.token_type", "must be a token type name such as Bearer"));
        return None;
    }
    Some(t)
}

fn scopes(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let list = match obj.get("scopes") {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => {
            errors.push(FieldError::new("tokens.scopes", "must be an array of strings or a space-separated string"));
            return None;
        }
    };
    if list.iter().map(String::len).sum::<usize>() > MAX_STRING {
        errors.push(FieldError::new("tokens.scopes", format!("must be at most {MAX_STRING} bytes in all")));
        return None;
    }
    Some(list)
}

/// A lifetime given as `{prefix}expires_at` or `{prefix}expires_in` (`prefix` is `""` for the
/// access token, `refresh_token_` for the refresh token). A time in the past is refused with
/// the message `past_refused` when it is given, else taken.
fn expiry(
    obj: &Map<String, Value>,
    now: OffsetDateTime,
    prefix: &str,
    past_refused: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> ImportedExpiry {
    let (at_key, in_key) = (format!("{prefix}expires_at"), format!("{prefix}expires_in"));
    let (at_field, in_field) = (format!("tokens.{at_key}"), format!("tokens.{in_key}"));
    let given = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let longest = time::Duration::seconds(MAX_IMPORT_LIFETIME_SECS as i64);
    match (given(&at_key), given(&in_key)) {
        (true, true) => {
            errors.push(FieldError::new("tokens", format!("give {at_key} or {in_key}, not both")));
            ImportedExpiry::Unknown
        }
        (false, false) => ImportedExpiry::Unknown,
        (false, true) => match obj[&in_key].as_u64() {
            Some(secs) if (1..=MAX_IMPORT_LIFETIME_SECS).contains(&secs) => ImportedExpiry::In(secs),
            Some(secs) if secs > 0 => {
                errors.push(FieldError::new(
                    in_field,
                    format!("must be at most {MAX_IMPORT_LIFETIME_SECS} seconds (ten years)"),
                ));
                ImportedExpiry::Unknown
            }
            _ => {
                errors.push(FieldError::new(in_field, "must be a positive integer (seconds)"));
                ImportedExpiry::Unknown
            }
        },
        (true, false) => {
            let at = obj[&at_key].as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
            match at {
                None => {
                    errors.push(FieldError::new(at_field, "must be an RFC 3339 date-time"));
                    ImportedExpiry::Unknown
                }
                Some(at) if at > now + longest => {
                    errors.push(FieldError::new(at_field, "must be at most ten years ahead"));
                    ImportedExpiry::Unknown
                }
                Some(at) if at <= now && past_refused.is_some() => {
                    errors.push(FieldError::new(at_field, past_refused.unwrap_or_default()));
                    ImportedExpiry::Unknown
                }
                Some(at) => ImportedExpiry::At(at),
            }
        }
    }
}

/// The refresh token's lifetime: given only with a refresh token, never already lapsed.
fn expiry_of_refresh(
    obj: &Map<String, Value>,
    now: OffsetDateTime,
    renewable: bool,
    lapsed: &str,
    errors: &mut Vec<FieldError>,
) -> ImportedExpiry {
    let stated = expiry(obj, now, "refresh_token_", Some(lapsed), errors);
    if stated != ImportedExpiry::Unknown && !renewable {
        errors.push(FieldError::new("tokens", "a refresh token lifetime needs a refresh_token"));
        return ImportedExpiry::Unknown;
    }
    stated
}

/// Reads the `tokens` member of a new connection at `now`: every problem at once, each naming
/// its member (`tokens.expires_in`), none repeating a value.
pub fn imported_tokens(v: &Value, now: OffsetDateTime) -> Result<ImportedTokens, Vec<FieldError>> {
    let Some(obj) = v.as_object() else {
        return Err(vec![FieldError::new("tokens", "must be an object")]);
    };
    let mut errors = Vec::new();
    reject_unknown(
        obj,
        &[
            "access_token",
            "refresh_token",
            "expires_at",
            "expires_in",
            "scopes",
            "token_type",
            "refresh_token_expires_at",
            "refresh_token_expires_in",
        ],
        "tokens.",
        &mut errors,
    );
    let access_token = token(obj, "access_token", &mut errors);
    if access_token.is_none() && obj.get("access_token").is_none_or(Value::is_null) {
        errors.push(FieldError::new("tokens.access_token", "is required"));
    }
    let refresh_token = token(obj, "refresh_token", &mut errors);
    let renewable = refresh_token.is_some() || obj.get("refresh_token").is_some_and(|r| !r.is_null());
    let token_type = token_type(obj, &mut errors);
    let dead = "is in the past and there is no refresh_token to renew the access token";
    let expiry = expiry(obj, now, "", (!renewable).then_some(dead), &mut errors);
    let lapsed = "is in the past: the refresh token has lapsed and cannot renew anything";
    let refresh_expiry = expiry_of_refresh(obj, now, renewable, lapsed, &mut errors);
    let scopes = scopes(obj, &mut errors);
    match (access_token, errors.is_empty()) {
        (Some(access_token), true) => {
            Ok(ImportedTokens { access_token, refresh_token, token_type, expiry, scopes, refresh_expiry })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-06-01T12:00:00Z", &Rfc3339).unwrap()
    }

    fn fields(v: Value) -> Vec<String> {
        imported_tokens(&v, now()).err().unwrap().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_full_import_is_read() {
        let t = imported_tokens(
            &json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600,
                    "scopes": ["read write", "admin"], "token_type": "bearer"}),
            now(),
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "at-1");
        assert_eq!(t.refresh_token.as_ref().map(|r| r.expose_secret()), Some("rt-1"));
        assert_eq!(t.expiry, ImportedExpiry::In(3600));
        assert_eq!(t.scopes, Some(vec!["read write".to_owned(), "admin".to_owned()]));
        assert_eq!(t.token_type.as_deref(), Some("bearer"));
        let debug = format!("{t:?}");
        assert!(!debug.contains("at-1") && !debug.contains("rt-1"), "{debug}");
    }

    #[test]
    fn only_the_access_token_is_required() {
        let t = imported_tokens(&json!({"access_token": "at"}), now()).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(t.expiry, ImportedExpiry::Unknown);
        assert!(t.refresh_token.is_none() && t.scopes.is_none() && t.token_type.is_none());
        assert_eq!(fields(json!({})), ["tokens.access_token"]);
        assert_eq!(fields(json!({"access_token": ""})), ["tokens.access_token"]);
        assert_eq!(fields(json!({"access_token": 5})), ["tokens.access_token"]);
        assert_eq!(fields(json!("at")), ["tokens"]);
    }

    #[test]
    fn lifetimes_are_one_of_two_forms_and_sane() {
        assert_eq!(
            fields(json!({"access_token": "a", "expires_in": 60, "expires_at": "2026-06-01T13:00:00Z"})),
            ["tokens"]
        );
        for bad in [json!(0), json!(-5), json!(1.5), json!("3600"), json!(MAX_IMPORT_LIFETIME_SECS + 1)] {
            assert_eq!(fields(json!({"access_token": "a", "expires_in": bad})), ["tokens.expires_in"], "{bad}");
        }
        for bad in ["tomorrow", "2026-06-01", "2037-01-01T00:00:00Z"] {
            assert_eq!(fields(json!({"access_token": "a", "expires_at": bad})), ["tokens.expires_at"], "{bad}");
        }
        let at = imported_tokens(&json!({"access_token": "a", "expires_at": "2026-06-01T14:00:00+01:00"}), now())
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(at.expiry, ImportedExpiry::At(now() + time::Duration::hours(1)));
    }

    #[test]
    fn an_expired_token_is_taken_only_with_a_refresh_token() {
        let past = "2026-05-31T12:00:00Z";
        assert_eq!(fields(json!({"access_token": "a", "expires_at": past})), ["tokens.expires_at"]);
        let t = imported_tokens(&json!({"access_token": "a", "refresh_token": "r", "expires_at": past}), now())
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert!(matches!(t.expiry, ImportedExpiry::At(at) if at < now()));
    }

    #[test]
    fn a_refresh_token_lifetime_is_taken_with_a_refresh_token_and_never_lapsed() {
        let t = imported_tokens(
            &json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_in": 86_400}),
            now(),
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        assert_eq!(t.refresh_expiry, ImportedExpiry::In(86_400));
        let at = "2026-09-01T12:00:00Z";
        let t =
            imported_tokens(&json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_at": at}), now())
                .map_err(|e| format!("{e:?}"))
                .unwrap();
        assert_eq!(t.refresh_expiry, ImportedExpiry::At(OffsetDateTime::parse(at, &Rfc3339).unwrap()));
        let unknown = imported_tokens(&json!({"access_token": "a", "refresh_token": "r"}), now()).ok().unwrap();
        assert_eq!(unknown.refresh_expiry, ImportedExpiry::Unknown);
        let rt = |extra: Value| {
            let mut v = json!({"access_token": "a", "refresh_token": "r"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            fields(v)
        };
        assert_eq!(
            rt(json!({"refresh_token_expires_at": "2026-05-01T00:00:00Z"})),
            ["tokens.refresh_token_expires_at"]
        );
        assert_eq!(rt(json!({"refresh_token_expires_at": "soon"})), ["tokens.refresh_token_expires_at"]);
        assert_eq!(rt(json!({"refresh_token_expires_in": 0})), ["tokens.refresh_token_expires_in"]);
        assert_eq!(
            rt(json!({"refresh_token_expires_in": 5, "refresh_token_expires_at": "2026-09-01T12:00:00Z"})),
            ["tokens"]
        );
        assert_eq!(
            fields(json!({"access_token": "a", "refresh_token_expires_in": 60})),
            ["tokens"],
            "no refresh token"
        );
    }

    #[test]
    fn unknown_members_oversize_values_and_bad_shapes_are_named_without_their_values() {
        let secret = "s3cret-value";
        let errs = imported_tokens(
            &json!({"access_token": "x".repeat(MAX_STRING + 1), "refresh_token": format!("{secret}\n"),
                    "id_token": secret, "token_type": "Bearer token", "scopes": [1]}),
            now(),
        )
        .err()
        .unwrap();
        let named: BTreeSet<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            named,
            BTreeSet::from([
                "tokens.access_token",
                "tokens.refresh_token",
                "tokens.id_token",
                "tokens.token_type",
                "tokens.scopes"
            ])
        );
        assert!(errs.iter().all(|e| !e.message.contains(secret)), "{errs:?}");
        assert_eq!(fields(json!({"access_token": "a", "scopes": "x".repeat(MAX_STRING + 1)})), ["tokens.scopes"]);
        assert_eq!(fields(json!({"access_token": "a", "token_type": "x".repeat(65)})), ["tokens.token_type"]);
    }
}
