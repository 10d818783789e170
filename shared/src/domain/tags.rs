//! Connection tags (SPEC section 10): labels on a connection, set by whoever manages it
//! (`{"env": "prod", "team": "billing"}`), shown in reads and events and filtered on by
//! `GET /v1/connections?tag=key:value`.
//!
//! A tag map holds at most [`MAX_TAGS`] entries; a key is `[a-z0-9_.-]{1,64}`, a value a string
//! of at most [`MAX_VALUE_CHARS`] characters. `POST` sets the map; `PATCH` merges into it like
//! `values` ([`TagChanges`]): a key with a string sets that tag, a key with `null` removes it, keys not named
//! stay as they are.

use std::collections::BTreeMap;

use serde_json::Value;

use super::FieldError;

/// Most tags a connection may carry.
pub const MAX_TAGS: usize = 20;
/// Longest tag key, in bytes (keys are ASCII).
pub const MAX_KEY_LEN: usize = 64;
/// Longest tag value, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// A connection's tags, ordered by key.
pub type Tags = BTreeMap<String, String>;

/// Whether `k` is a valid tag key: `[a-z0-9_.-]{1,64}`.
pub fn valid_key(k: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

fn key_error(k: &str) -> FieldError {
    FieldError::new(format!("tags.{}", printable(k)), "keys are 1-64 characters of a-z, 0-9, '_', '.', '-'")
}

/// `k` as it may appear in an error's field name: at most 64 characters, control characters
/// replaced, so that a hostile key cannot make the problem document large or odd.
fn printable(k: &str) -> String {
    k.chars().take(MAX_KEY_LEN).map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn value_error(k: &str, v: &Value) -> Option<FieldError> {
    let field = || format!("tags.{}", printable(k));
    match v {
        Value::String(s) if s.chars().count() > MAX_VALUE_CHARS => {
            Some(FieldError::new(field(), format!("must be at most {MAX_VALUE_CHARS} characters")))
        }
        Value::String(_) => None,
        _ => Some(FieldError::new(field(), "must be a string")),
    }
}

fn too_many(n: usize) -> FieldError {
    FieldError::new("tags", format!("at most {MAX_TAGS} tags, not {n}"))
}

/// The `tags` of a create body: `None`/`null` is no tags. Errors name `tags` or `tags.<key>`.
pub fn parse(v: Option<&Value>) -> Result<Tags, Vec<FieldError>> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Tags::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(vec![FieldError::new("tags", "must be an object of key to string value")]),
    };
    let mut errors = Vec::new();
    let mut tags = Tags::new();
    for (k, v) in obj {
        if !valid_key(k) {
            errors.push(key_error(k));
        } else if let Some(e) = value_error(k, v) {
            errors.push(e);
        } else if let Value::String(s) = v {
            tags.insert(k.clone(), s.clone());
        }
    }
    if obj.len() > MAX_TAGS {
        errors.push(too_many(obj.len()));
    }
    if errors.is_empty() { Ok(tags) } else { Err(errors) }
}

/// The `tags` of a `PATCH` body, checked: each named key set to a value, or removed (`None`).
#[derive(Debug, Default)]
pub struct TagChanges(BTreeMap<String, Option<String>>);

impl TagChanges {
    /// Reads a `PATCH`'s `tags`: a string sets a tag, `null` removes it; `None`/`null` changes
    /// nothing. Errors name `tags` or `tags.<key>`.
    pub fn parse(changes: Option<&Value>) -> Result<Self, Vec<FieldError>> {
        let obj = match changes {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(obj)) => obj,
            Some(_) => {
                return Err(vec![FieldError::new(
                    "tags",
                    "must be an object of key to string value (null removes a tag)",
                )]);
            }
        };
        let mut errors = Vec::new();
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            if !valid_key(k) {
                errors.push(key_error(k));
            } else if let Some(e) = value_error(k, v).filter(|_| !v.is_null()) {
                errors.push(e);
            } else {
                out.insert(k.clone(), v.as_str().map(str::to_owned));
            }
        }
        if errors.is_empty() { Ok(Self(out)) } else { Err(errors) }
    }

    /// Whether the `PATCH` named any tag.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `current` with these changes merged in; keys not named are kept. The result may hold at
    /// most [`MAX_TAGS`] (an error naming `tags` otherwise).
    pub fn apply(&self, current: &Tags) -> Result<Tags, Vec<FieldError>> {
        let mut tags = current.clone();
        for (k, v) in &self.0 {
            match v {
                Some(v) => tags.insert(k.clone(), v.clone()),
                None => tags.remove(k),
            };
        }
        if tags.len() > MAX_TAGS { Err(vec![too_many(tags.len())]) } else { Ok(tags) }
    }
}

/// Why a `tag=` filter does not parse; `Display` is the message of a problem naming the `tag`
/// parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TagFilterError {
    #[error("must be key:value")]
    NoColon,
    #[error("the key must be 1-64 characters of a-z, 0-9, '_', '.', '-'")]
    BadKey,
    #[error("the value must be at most 256 characters")]
    ValueTooLong,
}

/// One `tag=key:value` condition of a listing: the connection has tag `key` with exactly
/// `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    pub key: String,
    pub value: String,
}

impl TagFilter {
    /// Parses `key:value` (split at the first `:`, so values may contain `:`; the value may be
    /// empty).
    ///
    /// # Errors
    /// [`TagFilterError`]: what is wrong, for a problem naming the `tag` parameter.
    pub fn parse(s: &str) -> Result<Self, TagFilterError> {
        let (key, value) = s.split_once(':').ok_or(TagFilterError::NoColon)?;
        if !valid_key(key) {
            return Err(TagFilterError::BadKey);
        }
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(TagFilterError::ValueTooLong);
        }
        Ok(Self { key: key.to_owned(), value: value.to_owned() })
    }

    /// Whether `tags` satisfies this condition.
    pub fn matches(&self, tags: &Tags) -> bool {
        tags.get(&self.key).is_some_and(|v| *v == self.value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn keys_are_lowercase_digits_and_three_marks_up_to_64() {
        for ok in ["env", "a", "team.billing", "cost_center-2", &"k".repeat(64)] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", "Env", "a b", "a:b", "é", "a/b", &"k".repeat(65)] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn a_create_names_each_bad_tag() {
        assert_eq!(parse(Some(&json!({"env": "prod"}))).unwrap(), Tags::from([("env".into(), "prod".into())]));
        assert!(parse(None).unwrap().is_empty());
        let errs = parse(Some(&json!({"Env": "x", "n": 3, "long": "v".repeat(257), "ok": "v".repeat(256)})));
        assert_eq!(fields(errs.unwrap_err()), ["tags.Env", "tags.long", "tags.n"]);
        let many: serde_json::Map<_, _> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(fields(parse(Some(&Value::Object(many))).unwrap_err()), ["tags"]);
        assert_eq!(fields(parse(Some(&json!(["env"]))).unwrap_err()), ["tags"]);
    }

    fn merge(current: &Tags, changes: Option<&Value>) -> Result<Tags, Vec<FieldError>> {
        TagChanges::parse(changes)?.apply(current)
    }

    #[test]
    fn a_patch_merges_and_null_removes() {
        let current = Tags::from([("env".into(), "prod".into()), ("team".into(), "a".into())]);
        assert_eq!(fields(TagChanges::parse(Some(&json!({"Bad": null, "n": 1}))).unwrap_err()), ["tags.Bad", "tags.n"]);
        let merged = merge(&current, Some(&json!({"team": null, "tier": "gold"}))).unwrap();
        assert_eq!(merged, Tags::from([("env".into(), "prod".into()), ("tier".into(), "gold".into())]));
        assert_eq!(merge(&current, None).unwrap(), current);
        assert_eq!(merge(&current, Some(&json!({"gone": null}))).unwrap(), current, "removing an absent tag is fine");
        let full: Tags = (0..20).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(fields(merge(&full, Some(&json!({"k20": "v"}))).unwrap_err()), ["tags"]);
        assert!(merge(&full, Some(&json!({"k0": null, "k20": "v"}))).is_ok(), "the count is after the merge");
    }

    #[test]
    fn every_connection_event_carries_the_tags() {
        use crate::domain::{Event, EventType, OrgId};
        let org = OrgId::parse("acme").unwrap();
        let mut c = crate::conformance::connection(&crate::conformance::definition(&org, "acme"), "c-1");
        let detail =
            |c: &crate::domain::Connection| serde_json::to_value(Event::about(EventType::ConnectionUpdated, c));
        assert_eq!(detail(&c).unwrap()["tags"], json!({}), "present, empty, when there are none");
        c.tags.insert("env".into(), "prod".into());
        assert_eq!(detail(&c).unwrap()["tags"], json!({"env": "prod"}));
    }

    #[test]
    fn filters_split_at_the_first_colon() {
        assert_eq!(
            TagFilter::parse("url:https://x").unwrap(),
            TagFilter { key: "url".into(), value: "https://x".into() }
        );
        assert_eq!(TagFilter::parse("env:").unwrap().value, "");
        for (bad, why) in [
            ("env", TagFilterError::NoColon),
            ("", TagFilterError::NoColon),
            (":prod", TagFilterError::BadKey),
            ("Env:prod", TagFilterError::BadKey),
        ] {
            assert_eq!(TagFilter::parse(bad), Err(why), "{bad}");
        }
        let long = format!("env:{}", "v".repeat(MAX_VALUE_CHARS + 1));
        assert_eq!(TagFilter::parse(&long), Err(TagFilterError::ValueTooLong));
        assert_eq!(TagFilterError::NoColon.to_string(), "must be key:value");
        let f = TagFilter::parse("env:prod").unwrap();
        assert!(f.matches(&Tags::from([("env".into(), "prod".into())])));
        assert!(!f.matches(&Tags::from([("env".into(), "dev".into())])));
        assert!(!f.matches(&Tags::new()));
    }
}
