//! The connect page's form posts: an `application/x-www-form-urlencoded` body of at most
//! [`MAX_BODY_BYTES`](crate::http::MAX_BODY_BYTES), and its `value.{input}` fields turned into
//! the JSON values the API takes, by each input's type.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use serde_json::{Map, Number, Value};

use crate::domain::InputType;
use crate::http::MAX_BODY_BYTES;

/// The prefix of the fields that carry an input's value: `value.api_key`.
pub const VALUE_PREFIX: &str = "value.";

/// A posted form: each field's last value by name (a name sent twice counts once).
#[derive(Debug, Default)]
pub struct Form(pub BTreeMap<String, String>);

/// Why a form could not be read: its body is larger than [`MAX_BODY_BYTES`].
#[derive(Debug)]
pub struct TooLarge;

/// Handlers take `Result<Form, TooLarge>` and answer with a page; this plain 413 is what an
/// extractor's rejection needs to be.
impl axum::response::IntoResponse for TooLarge {
    fn into_response(self) -> axum::response::Response {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = TooLarge;

    async fn from_request(req: Request, _: &S) -> Result<Self, TooLarge> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|_| TooLarge)?;
        Ok(Form::parse(&bytes))
    }
}

impl Form {
    /// The fields of an urlencoded body (whatever its declared type: a browser's form posts
    /// this, and anything else reads as fields that do not match).
    pub fn parse(body: &[u8]) -> Self {
        Form(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// The field `name`, `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The raw `value.{input}` of `input` (untrimmed: a secret may hold spaces), `None` when absent.
    pub fn raw_value(&self, input: &str) -> Option<&str> {
        self.0.get(&format!("{VALUE_PREFIX}{input}")).map(String::as_str)
    }
}

/// One input of a form as the page describes it: its name and type.
pub struct FormInput<'a> {
    pub name: &'a str,
    pub kind: InputType,
}

/// The JSON values of `inputs` in `form`, or the error of each field that does not convert
/// (`input name -> message`, shown next to it):
/// - `number`: a JSON number (`"must be a number"` otherwise);
/// - `boolean` (a checkbox): `true` when sent as `true`/`on`, else `false`;
/// - every other type: the string as typed (`string`, `url` and `text` trimmed, `password`
///   kept exactly);
/// - an empty value is left out (an optional input unset, or on an update: kept as it is); the
///   service says which required ones are missing.
///
/// Fields of inputs not in `inputs` (organization-only or unknown ones) are ignored.
pub fn values<'a>(
    form: &Form,
    inputs: impl IntoIterator<Item = FormInput<'a>>,
) -> Result<Map<String, Value>, BTreeMap<String, String>> {
    let mut values = Map::new();
    let mut errors = BTreeMap::new();
    for input in inputs {
        let raw = form.raw_value(input.name);
        let value = match input.kind {
            InputType::Boolean => Some(Value::Bool(raw.is_some_and(|v| matches!(v.trim(), "true" | "on")))),
            InputType::Password => raw.filter(|v| !v.is_empty()).map(|v| Value::String(v.to_owned())),
            InputType::Number => match raw.map(str::trim).filter(|v| !v.is_empty()) {
                None => None,
                Some(text) => match number(text) {
                    Some(n) => Some(Value::Number(n)),
                    None => {
                        errors.insert(input.name.to_owned(), "must be a number".to_owned());
                        None
                    }
                },
            },
            InputType::String | InputType::Url | InputType::Text => {
                raw.map(str::trim).filter(|v| !v.is_empty()).map(|v| Value::String(v.to_owned()))
            }
        };
        if let Some(value) = value {
            values.insert(input.name.to_owned(), value);
        }
    }
    if errors.is_empty() { Ok(values) } else { Err(errors) }
}

/// `text` as a JSON number: an integer when it is one, else a finite decimal.
fn number(text: &str) -> Option<Number> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Number::from(i));
    }
    // Rust's float syntax accepts "inf", "NaN" and "1e5"; only finite plain decimals are numbers here.
    let plain = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    text.parse::<f64>().ok().filter(|f| plain && f.is_finite()).and_then(Number::from_f64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inputs() -> Vec<FormInput<'static>> {
        vec![
            FormInput { name: "api_key", kind: InputType::Password },
            FormInput { name: "region", kind: InputType::String },
            FormInput { name: "limit", kind: InputType::Number },
            FormInput { name: "sandbox", kind: InputType::Boolean },
            FormInput { name: "base_url", kind: InputType::Url },
            FormInput { name: "notes", kind: InputType::Text },
        ]
    }

    #[test]
    fn values_convert_by_input_type() {
        let form = Form::parse(
            b"csrf=x&value.api_key=+k%20ey+&value.region=+eu+&value.limit=12.5&value.sandbox=true&value.base_url=&value.org_only=planted",
        );
        let values = values(&form, inputs()).unwrap();
        assert_eq!(
            Value::Object(values),
            json!({"api_key": " k ey ", "region": "eu", "limit": 12.5, "sandbox": true}),
            "empty optional omitted, unknown ignored, a password kept exactly"
        );
        let form = Form::parse(b"value.limit=7");
        assert_eq!(Value::Object(super::values(&form, inputs()).unwrap()), json!({"limit": 7, "sandbox": false}));
    }

    #[test]
    fn a_number_that_is_not_one_is_an_error_of_its_field() {
        for bad in ["twelve", "NaN", "inf", "1,5", "0x10"] {
            let body = format!("value.limit={bad}&value.region=eu");
            let errors = values(&Form::parse(body.as_bytes()), inputs()).unwrap_err();
            assert_eq!(errors.get("limit").map(String::as_str), Some("must be a number"), "{bad}");
            assert_eq!(errors.len(), 1);
        }
    }

    #[test]
    fn fields_read_their_last_value_and_blank_is_absent() {
        let form = Form::parse(b"definition=a&definition=b&connection_id=+");
        assert_eq!(form.get("definition"), Some("b"));
        assert_eq!(form.get("connection_id"), None);
        assert_eq!(form.get("csrf"), None);
    }
}
