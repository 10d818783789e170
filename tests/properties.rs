//! Property tests (issue 12): the definition and connection-value parsers and the provider answer
//! reader (SPEC section 8) on generated input, through the library's public API.
//!
//! Each property runs a bounded number of cases from a fixed seed, so `cargo test` stays short
//! and repeatable. `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override both, for a longer or
//! different run: `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=7 cargo test --test properties`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use latchkey::domain::validate::{
    DefinitionSpec, FieldError, MAX_VALUES_BYTES, Setter, Values, apply_values, definition_from_json,
};
use latchkey::domain::{Definition, DefinitionKey, OAuthQuirks, OrgId, provider_code};
use latchkey::provider::answer::MAX_EXPIRES_IN_SECS;
use latchkey::provider::{Grant, RawAnswer, RevokeAnswer, TokenFailure, read_revoke_answer, read_token_answer};
use latchkey::service::DefinitionView;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

const DEFAULT_CASES: u32 = 256;
const DEFAULT_SEED: u64 = 0x1a7c_4b3e_0012;

/// 256 cases from a fixed seed unless `PROPTEST_CASES` / `PROPTEST_RNG_SEED` say otherwise; no
/// regression files written into the tree (the seed reproduces a failure).
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(DEFAULT_SEED);
    }
    config.failure_persistence = None;
    config.max_shrink_time = 30_000;
    config
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Strings the parsers give meaning to, so that generated input reaches past the first check.
const WORDS: &[&str] = &[
    "",
    " ",
    "label",
    "description",
    "auth",
    "provider",
    "inputs",
    "redirects",
    "oauth",
    "type",
    "required",
    "default",
    "visibility",
    "api_key",
    "basic",
    "oauth2_authorization_code",
    "oauth2_client_credentials",
    "custom",
    "string",
    "password",
    "number",
    "boolean",
    "url",
    "text",
    "customer",
    "embedded",
    "organization",
    "slack",
    "github",
    "shopify",
    "nope",
    "https://api.example.com/token",
    "http://127.0.0.1:9/token",
    "http://example.com/x",
    "javascript:alert(1)",
    "client_secret_basic",
    "client_secret_post",
    "authed_user",
    "access_token",
    "refresh_token",
    "error",
    "invalid_grant",
    "temporarily_unavailable",
    "é",
    "a.b",
    "inputs.x",
    "{\"set\":true}",
];
const INPUT_NAMES: &[&str] = &[
    "apiKey",
    "endpoint",
    "retries",
    "sandbox",
    "plan",
    "notes",
    "shop",
    "authorizeUrl",
    "tokenUrl",
    "revokeUrl",
    "scopes",
    "clientId",
    "clientSecret",
    "clientAuth",
    "pkce",
    "issuer",
];
const TYPES: &[&str] = &["string", "password", "number", "boolean", "url", "text"];
const VISIBILITIES: &[&str] = &["customer", "embedded", "organization"];
const AUTH_KINDS: &[&str] = &["api_key", "basic", "oauth2_authorization_code", "oauth2_client_credentials", "custom"];
const PROVIDERS: &[&str] = &["slack", "slack-user", "github", "google", "shopify", "zendesk", "stripe", "nope"];
const SECURE_URLS: &[&str] =
    &["https://api.example.com/oauth/token", "https://idp.example.com/authorize?x=1", "http://127.0.0.1:9/token"];
const URLS: &[&str] = &[
    "https://api.example.com/oauth/token",
    "http://localhost:3000/done",
    "http://[::1]/done",
    "http://app.example.com/done",
    "javascript:alert(1)",
    "not a url",
    "",
];

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_]{0,12}",
        2 => "\\PC{0,16}",
        1 => "(?s).{0,16}",
        2 => select(WORDS).prop_map(str::to_owned),
    ]
    .boxed()
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text().prop_map(Value::String),
        text().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value, at most 4 levels deep and about 64 nodes.
fn arb_json() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

fn object(members: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Value {
    Value::Object(members.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect())
}

/// The type of a well-known input, or any type for the others.
fn kind_for(name: &'static str) -> BoxedStrategy<&'static str> {
    match name {
        "authorizeUrl" | "tokenUrl" | "revokeUrl" | "issuer" => Just("url").boxed(),
        "scopes" | "clientId" | "clientAuth" => Just("string").boxed(),
        "clientSecret" => Just("password").boxed(),
        "pkce" => Just("boolean").boxed(),
        _ => select(TYPES).boxed(),
    }
}

/// A default an input of that name and type accepts.
fn default_for(name: &'static str, kind: &'static str) -> BoxedStrategy<Value> {
    match (name, kind) {
        ("clientAuth", _) => select(&["client_secret_basic", "client_secret_post"][..]).prop_map(Value::from).boxed(),
        (_, "url") => select(SECURE_URLS).prop_map(Value::from).boxed(),
        (_, "password") => prop_oneof!["[a-z0-9]{1,12}".prop_map(Value::from), Just(json!({"set": true}))].boxed(),
        // Decimals of a few digits: serde_json reads back exactly what it wrote for these (not
        // for every double: its default number parsing is not exact, see the round trip below).
        (_, "number") => prop_oneof![
            (-1_000i64..1_000).prop_map(Value::from),
            (-10_000_000i64..10_000_000).prop_map(|n| Value::from(n as f64 / 1_000.0)),
        ]
        .boxed(),
        (_, "boolean") => any::<bool>().prop_map(Value::from).boxed(),
        _ => "[a-z0-9:._ ]{0,12}".prop_map(Value::from).boxed(),
    }
}

/// A valid input of a name the parser knows, or of any name.
fn valid_input(name: &'static str) -> BoxedStrategy<(String, Value)> {
    kind_for(name)
        .prop_flat_map(move |kind| {
            (
                Just(kind),
                prop::option::of(any::<bool>()),
                prop::option::of(select(VISIBILITIES)),
                prop::option::of("[A-Za-z ]{1,12}"),
                prop::option::of("[A-Za-z ]{0,20}"),
                prop::option::weighted(0.6, default_for(name, kind)),
            )
        })
        .prop_map(move |(kind, required, visibility, label, description, default)| {
            let spec = object([
                ("type", Some(Value::from(kind))),
                ("required", required.map(Value::from)),
                ("visibility", visibility.map(Value::from)),
                ("label", label.map(Value::from)),
                ("description", description.map(Value::from)),
                ("default", default),
            ]);
            (name.to_owned(), spec)
        })
        .boxed()
}

fn input_entry() -> BoxedStrategy<(String, Value)> {
    let noisy = prop::collection::vec(
        (
            prop_oneof![
                select(&["label", "type", "required", "default", "visibility", "description"][..])
                    .prop_map(str::to_owned),
                text()
            ],
            prop_oneof![leaf(), select(TYPES).prop_map(Value::from), select(VISIBILITIES).prop_map(Value::from)],
        ),
        0..5,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect()));
    prop_oneof![
        8 => select(INPUT_NAMES).prop_flat_map(valid_input),
        1 => ("[a-zA-Z][a-zA-Z0-9_]{0,8}", noisy),
        1 => (text(), arb_json()),
    ]
    .boxed()
}

fn string_list() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => prop::collection::vec(
            prop_oneof![
                12 => select(&["read", "id_token", "team.id", "realmId", "api_domain"][..]).prop_map(Value::from),
                1 => select(&["", "has space"][..]).prop_map(Value::from),
                1 => leaf(),
            ],
            0..4,
        )
        .prop_map(Value::Array),
        1 => arb_json(),
    ]
    .boxed()
}

fn param_map() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => prop::collection::vec(
            (
                prop_oneof![
                    12 => select(&["access_type", "prompt", "expires_in", "audience"][..]).prop_map(str::to_owned),
                    1 => select(&["state", "grant_type", "client_secret", "scope", "bad name"][..]).prop_map(str::to_owned),
                    1 => text(),
                ],
                prop_oneof![12 => "[a-z0-9]{0,8}".prop_map(Value::from), 1 => leaf()],
            ),
            0..4,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        1 => arb_json(),
    ]
    .boxed()
}

fn oauth_block() -> BoxedStrategy<Value> {
    let block = (
        prop::option::of(prop_oneof![
            12 => select(&[",", " ", "+", ";"][..]).prop_map(Value::from),
            1 => text().prop_map(Value::from),
            1 => leaf(),
        ]),
        prop::option::of(prop_oneof![
            12 => select(&["user_scope", "scope", "scopes"][..]).prop_map(Value::from),
            1 => select(&["state", "bad name", ""][..]).prop_map(Value::from),
            1 => leaf(),
        ]),
        prop::option::of(param_map()),
        prop::option::of(param_map()),
        prop::option::of(prop_oneof![
            12 => select(&["", "authed_user", "data.token"][..]).prop_map(Value::from),
            1 => select(&["a..b", "bad path", "."][..]).prop_map(Value::from),
            1 => leaf(),
        ]),
        prop::option::of(prop_oneof![
            12 => (prop::option::of(string_list()), prop::option::of(string_list()))
                .prop_map(|(token, callback)| object([("token", token), ("callback", callback)])),
            1 => arb_json(),
        ]),
        prop::option::of(string_list()),
        prop::option::weighted(0.05, (text(), leaf())),
    )
        .prop_map(|(separator, param, authorize, token, path, capture, required, extra)| {
            let mut block = object([
                ("scope_separator", separator),
                ("scope_param", param),
                ("authorization_params", authorize),
                ("token_params", token),
                ("token_path", path),
                ("capture", capture),
                ("required_scopes", required),
            ]);
            if let (Some((k, v)), Some(obj)) = (extra, block.as_object_mut()) {
                obj.insert(k, v);
            }
            block
        });
    prop_oneof![12 => block, 1 => arb_json()].boxed()
}

/// A `PUT /v1/definitions/{key}` body: mostly well formed, with a wrong member here and there;
/// half of them OAuth definitions with a quirks block.
fn definition_body() -> BoxedStrategy<Value> {
    let any_auth = prop_oneof![8 => select(AUTH_KINDS).prop_map(Value::from), 1 => leaf()].boxed();
    let oauth_auth = select(&["oauth2_authorization_code", "oauth2_client_credentials"][..]).prop_map(Value::from);
    prop_oneof![definition_body_with(any_auth, 0.05), definition_body_with(oauth_auth.boxed(), 0.8),].boxed()
}

fn definition_body_with(auth: BoxedStrategy<Value>, oauth_weight: f64) -> BoxedStrategy<Value> {
    (
        prop::option::of(prop_oneof![6 => "[A-Za-z ]{0,20}".prop_map(Value::from), 1 => leaf()]),
        prop::option::weighted(0.3, prop_oneof![6 => "[A-Za-z .]{0,40}".prop_map(Value::from), 1 => leaf()]),
        prop::option::weighted(0.9, auth),
        prop::option::weighted(0.25, prop_oneof![6 => select(PROVIDERS).prop_map(Value::from), 1 => leaf()]),
        prop::option::weighted(
            0.8,
            prop_oneof![
                8 => prop::collection::vec(input_entry(), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                1 => arb_json(),
            ],
        ),
        prop::option::weighted(
            0.3,
            prop_oneof![
                4 => (prop::option::of(select(URLS)), prop::option::of(select(URLS))).prop_map(|(s, f)| object([
                    ("success_url", s.map(Value::from)),
                    ("failure_url", f.map(Value::from))
                ])),
                1 => arb_json(),
            ],
        ),
        prop::option::weighted(oauth_weight, oauth_block()),
        prop::option::weighted(0.05, (text(), arb_json())),
    )
        .prop_map(|(label, description, auth, provider, inputs, redirects, oauth, extra)| {
            let mut body = object([
                ("label", label),
                ("description", description),
                ("auth", auth),
                ("provider", provider),
                ("inputs", inputs),
                ("redirects", redirects),
                ("oauth", oauth),
            ]);
            if let (Some((k, v)), Some(obj)) = (extra, body.as_object_mut()) {
                obj.insert(k, v);
            }
            body
        })
        .boxed()
}

/// A valid definition key (`DefinitionKey`).
fn definition_key() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,12}"
}

// ---------------------------------------------------------------------------------------------
// Oracles for definitions
// ---------------------------------------------------------------------------------------------

const TOP_LEVEL_FIELDS: [&str; 8] = ["", "label", "description", "auth", "provider", "inputs", "redirects", "oauth"];

/// Whether `path` (`inputs.apiKey.type`, `oauth.capture.token[2]`) names a member of `v`. Member
/// names may themselves hold dots or brackets: every way of reading the path is tried.
fn path_in(v: &Value, path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    match v {
        Value::Object(members) => members.iter().any(|(k, child)| {
            path.strip_prefix(k.as_str()).is_some_and(|rest| {
                rest.is_empty()
                    || rest.strip_prefix('.').is_some_and(|r| path_in(child, r))
                    || (rest.starts_with('[') && path_in(child, rest))
            })
        }),
        Value::Array(items) => {
            let Some((index, rest)) = path.strip_prefix('[').and_then(|r| r.split_once(']')) else {
                return false;
            };
            let Some(child) = index.parse::<usize>().ok().and_then(|i| items.get(i)) else {
                return false;
            };
            rest.is_empty()
                || rest.strip_prefix('.').is_some_and(|r| path_in(child, r))
                || (rest.starts_with('[') && path_in(child, rest))
        }
        _ => false,
    }
}

/// An error names a member of the body, a top-level field, or the missing `type` of an input.
fn names_a_field(body: &Value, field: &str) -> bool {
    TOP_LEVEL_FIELDS.contains(&field)
        || path_in(body, field)
        || field.rsplit_once('.').is_some_and(|(parent, last)| last == "type" && path_in(body, parent))
}

fn check_errors(body: &Value, errors: &[FieldError]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "a refusal without a reason");
    for e in errors {
        prop_assert!(names_a_field(body, &e.field), "error {e:?} names no field of {body}");
        prop_assert!(!e.message.trim().is_empty(), "error {e:?} has no message");
    }
    Ok(())
}

/// The body a client sends back after reading the definition (`GET` then `PUT`): the view as
/// serialized, less the members the server sets.
fn view_body(key: &str, spec: &DefinitionSpec) -> Value {
    let now = OffsetDateTime::UNIX_EPOCH;
    let definition = Definition {
        org: OrgId::parse("acme").expect("org id"),
        key: DefinitionKey::parse(key).expect("definition key"),
        label: spec.label.clone(),
        description: spec.description.clone(),
        auth: spec.auth,
        provider: spec.provider.clone(),
        inputs: spec.inputs.clone(),
        redirects: spec.redirects.clone(),
        oauth: spec.oauth.clone(),
        verify: spec.verify.clone(),
        secret_default_names: spec.secret_defaults.keys().chain(&spec.keep_secret_defaults).cloned().collect(),
        secret_defaults: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let shown = serde_json::to_string(&DefinitionView::from(&definition)).expect("a view serializes");
    let mut body: Map<String, Value> = serde_json::from_str(&shown).expect("a view is a JSON object");
    for server_set in ["key", "version", "created_at", "updated_at"] {
        body.remove(server_set);
    }
    Value::Object(body)
}

fn check_round_trip(key: &str, first: &DefinitionSpec) -> Result<(), TestCaseError> {
    let body = view_body(key, first);
    let again = match definition_from_json(key, &body, latchkey::catalog::provider) {
        Ok(spec) => spec,
        Err(errors) => return Err(TestCaseError::fail(format!("the view {body} is refused: {errors:?}"))),
    };
    prop_assert_eq!(&again.label, &first.label);
    prop_assert_eq!(&again.description, &first.description);
    prop_assert_eq!(again.auth, first.auth);
    prop_assert_eq!(&again.provider, &first.provider);
    prop_assert_eq!(&again.inputs, &first.inputs, "inputs changed through {}", body);
    prop_assert_eq!(&again.redirects, &first.redirects);
    prop_assert_eq!(&again.oauth, &first.oauth);
    prop_assert!(again.secret_defaults.is_empty(), "a view carries no secret");
    let kept: BTreeSet<String> = first.secret_defaults.keys().chain(&first.keep_secret_defaults).cloned().collect();
    prop_assert_eq!(again.keep_secret_defaults, kept, "the secret defaults kept");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generators and oracles for provider answers
// ---------------------------------------------------------------------------------------------

/// What may come before and after a JSON answer: white space, and a byte order mark first.
const LEADS: &[&str] = &["", " ", "\n", "\r\n\t", "\u{feff}", "\u{feff}\n"];
const TRAILS: &[&str] = &["", " ", "\n", "\r\n"];

const ACCESS_PREFIX: &str = "atk_";
const REFRESH_PREFIX: &str = "rtk_";

fn token(prefix: &'static str) -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{16,24}".prop_map(move |s| format!("{prefix}{s}"))
}

/// `expires_in` as providers send it, sane or not.
fn lifetime_value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (1i64..100_000).prop_map(Value::from),
        2 => (-100_000i64..=0).prop_map(Value::from),
        1 => finite_f64().prop_map(Value::from),
        2 => (-100_000i64..100_000).prop_map(|n| Value::from(n.to_string())),
        1 => select(&["", " 3600 ", "-0.5", "0.4", "1e3", "NaN", "inf", "-inf", "soon", "3600s"][..])
            .prop_map(Value::from),
        1 => leaf(),
    ]
    .boxed()
}

fn error_value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => select(&["invalid_grant", "invalid_client", "invalid_scope", "temporarily_unavailable", "slow_down",
            "bad_refresh_token", "server_error", "unsupported_grant_type"][..])
            .prop_map(Value::from),
        2 => text().prop_map(Value::from),
        1 => "[^A-Za-z0-9_.-]{1,4}".prop_map(Value::from),
        1 => (prop::option::of(leaf()), prop::option::of(leaf()))
            .prop_map(|(code, kind)| object([("code", code), ("type", kind)])),
        1 => leaf(),
    ]
    .boxed()
}

/// The members of a token answer (RFC 6749 section 5.1 and 5.2, as providers bend them).
fn token_members(nested: bool) -> BoxedStrategy<Map<String, Value>> {
    let secret = |prefix| {
        prop_oneof![
            6 => token(prefix).prop_map(Value::from),
            1 => Just(Value::from("")),
            1 => leaf(),
        ]
    };
    let inner = if nested { prop::option::weighted(0.3, token_members(false)).boxed() } else { Just(None).boxed() };
    (
        prop::option::weighted(0.8, secret(ACCESS_PREFIX)),
        prop::option::weighted(0.5, secret(REFRESH_PREFIX)),
        prop::option::weighted(0.6, lifetime_value()),
        prop::option::weighted(
            0.5,
            prop_oneof![
                3 => "[a-z:, ]{0,20}".prop_map(Value::from),
                1 => prop::collection::vec("[a-z: ,]{0,8}".prop_map(Value::from), 0..4).prop_map(Value::Array),
                1 => leaf(),
            ],
        ),
        prop::option::weighted(
            0.5,
            prop_oneof![3 => select(&["bearer", "Bearer", "mac", "bot"][..]).prop_map(Value::from), 1 => leaf()],
        ),
        prop::option::weighted(0.25, error_value()),
        prop::option::weighted(0.2, prop_oneof![3 => "[ -~]{0,40}".prop_map(Value::from), 1 => leaf()]),
        prop::option::weighted(0.2, any::<bool>()),
        prop::collection::vec((text(), arb_json()), 0..3),
        inner,
    )
        .prop_map(|(access, refresh, expires_in, scope, token_type, error, description, ok, extra, nested)| {
            let mut members: Map<String, Value> = extra.into_iter().collect();
            for (k, v) in [
                ("access_token", access),
                ("refresh_token", refresh),
                ("expires_in", expires_in),
                ("scope", scope),
                ("token_type", token_type),
                ("error", error),
                ("error_description", description),
                ("ok", ok.map(Value::from)),
                ("authed_user", nested.map(Value::Object)),
            ] {
                if let Some(v) = v {
                    members.insert(k.to_owned(), v);
                }
            }
            members
        })
        .boxed()
}

fn form_encoded(members: &Map<String, Value>) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in members {
        match v {
            Value::String(s) => form.append_pair(k, s),
            Value::Object(_) | Value::Array(_) => continue,
            other => form.append_pair(k, &other.to_string()),
        };
    }
    form.finish()
}

/// A body as a token or revocation endpoint may answer: a token answer as JSON (with white space
/// around it or not) or form-encoded, any JSON, an HTML page, or any bytes.
fn answer_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => (token_members(true), select(LEADS), select(TRAILS))
            .prop_map(|(m, lead, trail)| format!("{lead}{}{trail}", Value::Object(m)).into_bytes()),
        2 => token_members(false).prop_map(|m| form_encoded(&m).into_bytes()),
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => select(&["", " ", "<html>down</html>", "null", "[]", "{", "{}", "access_token", "error=", "ok=false"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..96),
    ]
    .boxed()
}

fn content_type() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        1 => Just(None),
        4 => select(&[
            "application/json",
            "application/json; charset=utf-8",
            "text/plain; charset=utf-8",
            "text/javascript",
            "text/html",
            "application/x-www-form-urlencoded",
            "",
        ][..])
        .prop_map(|s| Some(s.to_owned())),
        1 => text().prop_map(Some),
    ]
    .boxed()
}

fn grant() -> impl Strategy<Value = Grant> {
    select(&[Grant::AuthorizationCode, Grant::RefreshToken, Grant::ClientCredentials][..])
}

fn token_path() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        4 => Just(None),
        2 => select(&["authed_user", "authed_user.x", "data"][..]).prop_map(|s| Some(s.to_owned())),
        1 => text().prop_map(Some),
    ]
    .boxed()
}

fn separator() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        2 => Just(None),
        3 => select(&[",", " ", "+", ";", "|"][..]).prop_map(|s| Some(s.to_owned())),
        1 => "\\PC".prop_map(Some),
    ]
    .boxed()
}

fn retry_after() -> impl Strategy<Value = Option<Duration>> {
    prop::option::weighted(0.2, (0u64..100_000).prop_map(Duration::from_secs))
}

fn raw(status: u16, content_type: Option<String>, retry_after: Option<Duration>, body: &[u8]) -> RawAnswer {
    RawAnswer { status, content_type, retry_after, body: body.to_vec() }
}

fn split_with(separator: Option<String>) -> impl Fn(&str) -> Vec<String> {
    let quirks = OAuthQuirks { scope_separator: separator, ..Default::default() };
    move |s| quirks.split_scopes(s)
}

/// The body as an independent reader sees it: a JSON object if it is one, else the pairs of what
/// could be a form-encoded body (no white space, no markup, no JSON).
fn body_members(body: &[u8]) -> Option<Map<String, Value>> {
    let text = std::str::from_utf8(body).ok()?;
    if let Ok(obj) = serde_json::from_str::<Map<String, Value>>(text.trim_start_matches('\u{feff}').trim()) {
        return Some(obj);
    }
    if text.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '{' | '"')) {
        return None;
    }
    Some(
        url::form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
            .collect(),
    )
}

fn at_path<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Map<String, Value>> {
    let mut parts = path.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    cur.as_object()
}

/// The objects of the body an access token may be read from: the top level and the object at the
/// token path.
fn holders<'a>(members: &'a Map<String, Value>, path: Option<&str>) -> Vec<&'a Map<String, Value>> {
    let mut all = vec![members];
    all.extend(path.and_then(|p| at_path(members, p)));
    all
}

/// Whether the body refuses at its top level: a non-empty string `error`, or `"ok": false`.
fn says_no(members: &Map<String, Value>) -> bool {
    matches!(members.get("error"), Some(Value::String(s)) if !s.is_empty())
        || members.get("ok") == Some(&Value::Bool(false))
}

fn is_provider_code(code: &str) -> bool {
    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_scope(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == ',')
}

/// Every generated access and refresh token of the body (top level and nested token answers):
/// distinctive enough never to turn up in a `Debug` by chance.
fn token_strings(members: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in members {
        match v {
            Value::String(s)
                if (k == "access_token" || k == "refresh_token")
                    && (s.starts_with(ACCESS_PREFIX) || s.starts_with(REFRESH_PREFIX)) =>
            {
                out.push(s.clone())
            }
            Value::Object(inner) => out.extend(token_strings(inner)),
            _ => {}
        }
    }
    out
}

fn check_failure(failure: &TokenFailure) -> Result<(), TestCaseError> {
    prop_assert!(is_provider_code(&failure.code()), "code {:?} of {failure:?}", failure.code());
    match failure {
        TokenFailure::Refused { provider_code: Some(code), .. } | TokenFailure::Transient { code, .. } => {
            prop_assert!(is_provider_code(code), "kept code {code:?}");
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Definitions: any JSON at all is answered, never with a panic, and every error names a
    /// field of the body (or a top-level field, or an input's missing `type`).
    #[test]
    fn definitions_from_any_json_are_answered_field_by_field(key in text(), body in arb_json()) {
        if let Err(errors) = definition_from_json(&key, &body, latchkey::catalog::provider) {
            check_errors(&body, &errors)?;
        }
    }

    /// Definitions shaped like real ones: errors name fields of the body, and a definition
    /// accepted, shown as `GET` shows it and sent back, is accepted again unchanged.
    #[test]
    fn accepted_definitions_round_trip_through_their_view(key in definition_key(), body in definition_body()) {
        match definition_from_json(&key, &body, latchkey::catalog::provider) {
            Err(errors) => check_errors(&body, &errors)?,
            Ok(spec) => check_round_trip(&key, &spec)?,
        }
    }

    /// Connection values: any change set against any inputs is answered without a panic; errors
    /// name the input changed or a required one (for a customer, never an input only the
    /// organization sees); an accepted set holds exactly what was asked and every required input.
    #[test]
    fn connection_values_are_checked_against_the_definition(
        auth in select(AUTH_KINDS),
        inputs in prop::collection::vec(select(INPUT_NAMES).prop_flat_map(valid_input), 0..6),
        base_plain in prop::collection::btree_map(select(INPUT_NAMES).prop_map(str::to_owned), arb_json(), 0..4),
        base_secret in prop::collection::btree_map(select(INPUT_NAMES).prop_map(str::to_owned), "[a-z0-9]{0,8}", 0..3),
        inherited in prop::collection::btree_set(select(INPUT_NAMES).prop_map(str::to_owned), 0..4),
        changes in prop_oneof![
            6 => prop::collection::vec(
                (
                    prop_oneof![5 => select(INPUT_NAMES).prop_map(str::to_owned), 1 => text()],
                    prop_oneof![
                        3 => select(INPUT_NAMES).prop_flat_map(|n| kind_for(n).prop_flat_map(move |k| default_for(n, k))),
                        1 => Just(Value::Null),
                        1 => Just(Value::from("")),
                        1 => arb_json(),
                    ],
                ),
                0..6,
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            1 => arb_json(),
        ],
        customer in any::<bool>(),
    ) {
        let definition = json!({"auth": auth, "inputs": Value::Object(inputs.into_iter().collect())});
        let spec = match definition_from_json("acme", &definition, latchkey::catalog::provider) {
            Ok(spec) => spec,
            Err(errors) => return Err(TestCaseError::fail(format!("valid inputs refused: {errors:?} {definition}"))),
        };
        let defaults = Values {
            plain: spec.inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect(),
            secret: spec.secret_defaults.clone(),
        };
        let base = Values {
            plain: base_plain,
            secret: base_secret.into_iter().map(|(k, v)| (k, SecretString::from(v))).collect(),
        };
        let setter = if customer { Setter::Customer } else { Setter::Organization };
        let result = apply_values(&spec.inputs, &defaults, &inherited, base, &changes, setter);
        let changed: BTreeMap<&str, &Value> =
            changes.as_object().map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect()).unwrap_or_default();
        let visible = |name: &str| spec.inputs.get(name).is_some_and(|i| !customer || i.visibility.customer_can_set());
        match result {
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    let named = e.field.strip_prefix("values.");
                    prop_assert!(
                        e.field == "values" || named.is_some_and(|n| changed.contains_key(n) || visible(n)),
                        "{e:?} for {changes} ({setter:?})"
                    );
                }
            }
            Ok(values) => {
                let has = |n: &str| values.plain.contains_key(n) || values.secret.contains_key(n);
                for name in values.plain.keys().chain(values.secret.keys()) {
                    prop_assert!(spec.inputs.contains_key(name), "{name} kept without an input");
                }
                for (name, input) in &spec.inputs {
                    let from_definition = inherited.contains(name)
                        && (defaults.plain.contains_key(name) || defaults.secret.contains_key(name));
                    prop_assert!(!input.required || has(name) || from_definition, "required {name} missing");
                }
                for (name, v) in &changed {
                    prop_assert!(visible(name), "{setter:?} set {name}");
                    let input = &spec.inputs[*name];
                    match v {
                        Value::Null if inherited.contains(*name) => prop_assert!(!has(name)),
                        Value::Null => {
                            prop_assert_eq!(values.plain.get(*name), defaults.plain.get(*name));
                            prop_assert_eq!(
                                values.secret.get(*name).map(|s| s.expose_secret().to_owned()),
                                defaults.secret.get(*name).map(|s| s.expose_secret().to_owned())
                            );
                        }
                        Value::String(s) if s.is_empty() => prop_assert!(!has(name), "an empty {name} is kept"),
                        v if input.kind.is_secret() => {
                            prop_assert_eq!(values.secret.get(*name).map(|s| s.expose_secret()), v.as_str());
                            prop_assert!(!values.plain.contains_key(*name), "secret {name} kept in clear");
                        }
                        v => prop_assert_eq!(values.plain.get(*name), Some(*v)),
                    }
                }
                let total = values.plain.iter().map(|(k, v)| k.len() + v.to_string().len()).sum::<usize>()
                    + values.secret.iter().map(|(k, v)| k.len() + v.expose_secret().len()).sum::<usize>();
                prop_assert!(total <= MAX_VALUES_BYTES);
            }
        }
    }

    /// The answer reader on anything a provider may send: no panic; a success only with an
    /// `access_token` string of the body; no success when the body says no; 429 and 5xx are
    /// transient; lifetimes in range; codes reduced; no token in any `Debug`.
    #[test]
    fn the_answer_reader_reads_anything(
        status in 100u16..600,
        content_type in content_type(),
        retry_after in retry_after(),
        body in answer_body(),
        grant in grant(),
        path in token_path(),
        separator in separator(),
    ) {
        let raw = raw(status, content_type, retry_after, &body);
        let shown = String::from_utf8_lossy(&body);
        let split = split_with(separator);
        let read = read_token_answer(&raw, grant, path.as_deref(), &split);
        let revoked = read_revoke_answer(&raw);
        let members = body_members(&body).unwrap_or_default();
        let tokens = token_strings(&members);
        for shown_debug in [format!("{read:?}"), format!("{revoked:?}"), format!("{raw:?}")] {
            for t in &tokens {
                prop_assert!(!shown_debug.contains(t.as_str()), "{shown_debug} shows a token");
            }
        }
        if status == 429 || status >= 500 {
            prop_assert!(matches!(read, Err(TokenFailure::Transient { .. })), "{status}: {read:?}");
            prop_assert!(matches!(revoked, RevokeAnswer::Transient { .. }), "{status}: {revoked:?}");
        }
        if says_no(&members) {
            prop_assert!(read.is_err(), "{status} {shown}: a refusal read as a success");
            prop_assert!(revoked != RevokeAnswer::Revoked, "{status} {shown}: a refusal read as revoked");
        }
        match &revoked {
            RevokeAnswer::Refused(code) | RevokeAnswer::Transient { code, .. } => {
                prop_assert!(is_provider_code(code), "revocation code {code:?}");
            }
            RevokeAnswer::Revoked => prop_assert!((200..300).contains(&status)),
        }
        match &read {
            Err(failure) => check_failure(failure)?,
            Ok(answer) => {
                prop_assert!((200..300).contains(&status), "{status}: a success");
                let access = answer.access_token.expose_secret();
                // A code exchange or client-credentials answer is read from the token path only (a
                // bot token is never stored for a user token); a refresh answer from it or the top.
                let mut candidates = holders(&members, path.as_deref());
                if path.is_some() && grant != Grant::RefreshToken {
                    candidates.remove(0);
                }
                let holder =
                    candidates.into_iter().find(|h| h.get("access_token").and_then(Value::as_str) == Some(access));
                let Some(holder) = holder else {
                    return Err(TestCaseError::fail(format!("{shown}: the token {access:?} is not in the body")));
                };
                prop_assert!(!access.is_empty());
                let refresh = holder.get("refresh_token").and_then(Value::as_str).filter(|s| !s.is_empty());
                prop_assert_eq!(answer.refresh_token.as_ref().map(|r| r.expose_secret()), refresh);
                if let Some(secs) = answer.expires_in {
                    prop_assert!((1..=MAX_EXPIRES_IN_SECS).contains(&secs), "lifetime {secs}");
                }
                prop_assert!(
                    !answer.token_type.is_empty()
                        && answer.token_type.len() <= 64
                        && answer.token_type.bytes().all(|b| b.is_ascii_graphic()),
                    "token type {:?} of {}", answer.token_type, shown
                );
                for scope in answer.scopes.iter().flatten() {
                    prop_assert!(is_scope(scope), "scope {scope:?}");
                }
            }
        }
    }

    /// Any 2xx JSON object with a non-empty string `access_token`, no `error` and no
    /// `"ok": false` is a success, whatever the content type says and whatever else it holds.
    #[test]
    fn json_token_answers_are_successes_whatever_the_content_type(
        status in 200u16..300,
        content_type in content_type(),
        retry_after in retry_after(),
        access in prop_oneof![4 => token(ACCESS_PREFIX), 1 => "\\PC{1,8}"],
        others in token_members(true),
        ok_true in any::<bool>(),
        lead in select(LEADS),
        trail in select(TRAILS),
        grant in grant(),
        separator in separator(),
    ) {
        let mut members = others;
        members.remove("error");
        members.remove("ok");
        if ok_true {
            members.insert("ok".into(), Value::Bool(true));
        }
        members.insert("access_token".into(), Value::from(access.clone()));
        let body = format!("{lead}{}{trail}", Value::Object(members.clone()));
        let split = split_with(separator);
        match read_token_answer(&raw(status, content_type, retry_after, body.as_bytes()), grant, None, &split) {
            Ok(answer) => {
                prop_assert_eq!(answer.access_token.expose_secret(), access.as_str());
                let refresh = members.get("refresh_token").and_then(Value::as_str).filter(|s| !s.is_empty());
                prop_assert_eq!(answer.refresh_token.as_ref().map(|r| r.expose_secret()), refresh);
            }
            Err(failure) => return Err(TestCaseError::fail(format!("{status} {body}: {failure:?}"))),
        }
    }

    /// A body with a non-empty string `error` (or an `error` object with a `code`), or
    /// `"ok": false`, is never a success nor a revocation, whatever the status and whatever else
    /// it holds.
    #[test]
    fn refusals_are_never_successes(
        status in 100u16..600,
        content_type in content_type(),
        others in token_members(true),
        error in prop_oneof![
            3 => "\\PC{1,12}".prop_map(Value::from),
            1 => select(&["invalid_grant", "temporarily_unavailable", "é", " "][..]).prop_map(Value::from),
            1 => "\\PC{1,12}".prop_map(|code| json!({"code": code})),
            1 => Just(Value::Null),
        ],
        ok_false in any::<bool>(),
        form in any::<bool>(),
        grant in grant(),
    ) {
        let mut members = others;
        members.remove("ok");
        members.insert("error".into(), error.clone());
        if ok_false || error.is_null() {
            members.insert("ok".into(), Value::Bool(false));
        }
        let body = if form && error.is_string() { form_encoded(&members) } else { Value::Object(members).to_string() };
        let raw = raw(status, content_type, None, body.as_bytes());
        let read = read_token_answer(&raw, grant, None, &split_with(None));
        prop_assert!(read.is_err(), "{status} {body}: a success");
        if let Err(failure) = &read {
            check_failure(failure)?;
        }
        prop_assert!(read_revoke_answer(&raw) != RevokeAnswer::Revoked, "{status} {body}: revoked");
    }

    /// 429 and 5xx are outages, never refusals, whatever the body says.
    #[test]
    fn busy_answers_are_never_refusals(
        status in prop_oneof![Just(429u16), 500u16..600],
        retry_after in retry_after(),
        body in answer_body(),
        grant in grant(),
        path in token_path(),
    ) {
        let raw = raw(status, None, retry_after, &body);
        match read_token_answer(&raw, grant, path.as_deref(), &split_with(None)) {
            Err(TokenFailure::Transient { retry_after: kept, .. }) => prop_assert_eq!(kept, retry_after),
            other => return Err(TestCaseError::fail(format!("{status}: {other:?}"))),
        }
        let revoked = read_revoke_answer(&raw);
        prop_assert!(matches!(revoked, RevokeAnswer::Transient { .. }), "{status}: {revoked:?}");
    }

    /// `expires_in` zero or negative (as a number or a numeric string) is an unknown lifetime.
    #[test]
    fn non_positive_lifetimes_are_unknown(
        lifetime in prop_oneof![
            (i64::MIN..=0).prop_map(Value::from),
            (-1e300f64..=0.0).prop_map(Value::from),
            (-1e9f64..=0.0).prop_map(|f| Value::from(f.to_string())),
            (i64::MIN..=0).prop_map(|n| Value::from(format!(" {n} "))),
        ],
        grant in grant(),
        content_type in content_type(),
    ) {
        let body = json!({"access_token": "atk_0123456789abcdef", "expires_in": lifetime}).to_string();
        let answer = read_token_answer(&raw(200, content_type, None, body.as_bytes()), grant, None, &split_with(None));
        match answer {
            Ok(a) => prop_assert_eq!(a.expires_in, None, "{}", body),
            Err(e) => return Err(TestCaseError::fail(format!("{body}: {e:?}"))),
        }
    }

    /// A provider's code as kept: `[A-Za-z0-9_.-]{1,64}`, what the input held of it, in order.
    #[test]
    fn provider_codes_are_reduced(raw in prop_oneof![text(), any::<String>(), "[A-Za-z0-9_.-]{60,80}"]) {
        let expected: String =
            raw.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(64).collect();
        match provider_code(&raw) {
            Some(code) => {
                prop_assert!(is_provider_code(&code), "{code:?}");
                prop_assert_eq!(&code, &expected);
                prop_assert_eq!(provider_code(&code), Some(code.clone()), "reducing twice changes nothing");
            }
            None => prop_assert!(expected.is_empty(), "{raw:?} has a code"),
        }
    }

    /// Scopes split on the separator, commas and white space: never an empty scope nor one that
    /// holds a separator; scopes joined with the separator split back into themselves.
    #[test]
    fn scopes_split_into_scopes(
        separator in prop_oneof![
            1 => Just(None),
            3 => select(&[",", " ", "+", ";", "|", ", "][..]).prop_map(|s| Some(s.to_owned())),
            1 => "\\PC".prop_map(Some),
        ],
        text in prop_oneof![text(), "[a-z:,+; |\t]{0,30}"],
        scopes in prop::collection::vec("[a-z:._/]{1,10}", 0..5),
    ) {
        check_split(separator, &text, scopes)?;
    }

    /// The same with a separator of several characters (a definition's `scope_separator` may
    /// have up to 8).
    #[test]
    fn scopes_split_on_a_separator_of_several_characters(
        separator in prop_oneof![select(&["||", "%20", " + "][..]).prop_map(str::to_owned), "\\PC{2,8}"],
        text in prop_oneof![text(), "[a-z|%20+ ]{0,30}"],
        scopes in prop::collection::vec("[a-z:._/]{1,10}", 0..5),
    ) {
        check_split(Some(separator), &text, scopes)?;
    }
}

fn check_split(separator: Option<String>, text: &str, scopes: Vec<String>) -> Result<(), TestCaseError> {
    let quirks = OAuthQuirks { scope_separator: separator, ..Default::default() };
    let sep = quirks.separator().to_owned();
    for scope in quirks.split_scopes(text) {
        prop_assert!(is_scope(&scope), "{scope:?} from {text:?}");
        prop_assert!(!scope.contains(sep.as_str()), "{scope:?} holds the separator {sep:?} ({text:?})");
    }
    let scopes: Vec<String> = scopes.into_iter().filter(|s| !s.contains(sep.as_str())).collect();
    prop_assert_eq!(quirks.split_scopes(&scopes.join(&sep)), scopes.clone(), "joined with {:?}", sep);
    Ok(())
}

/// A token type with nothing printable in it is `Bearer` (found by the answer property: a
/// `token_type` of `é` was kept as an empty string).
#[test]
fn a_token_type_without_printable_characters_is_bearer() {
    for (body, expected) in [
        ("access_token=atk&token_type=%C3%A9", "Bearer"),
        (r#"{"access_token":"atk","token_type":" \t"}"#, "Bearer"),
        (r#"{"access_token":"atk","token_type":"BEARER"}"#, "Bearer"),
        (r#"{"access_token":"atk","token_type":"mac"}"#, "mac"),
    ] {
        let answer =
            read_token_answer(&raw(200, None, None, body.as_bytes()), Grant::RefreshToken, None, &split_with(None))
                .unwrap_or_else(|e| panic!("{body}: {e:?}"));
        assert_eq!(answer.token_type, expected, "{body}");
    }
}

/// A JSON token answer opened by a byte order mark is still a token answer (found by probing the
/// reader: it was read as unreadable, and the spent code's tokens lost).
#[test]
fn a_byte_order_mark_does_not_hide_a_token_answer() {
    let body = "\u{feff}{\"access_token\":\"atk\",\"refresh_token\":\"rtk\"}";
    let answer = read_token_answer(
        &raw(200, Some("application/json; charset=utf-8".into()), None, body.as_bytes()),
        Grant::AuthorizationCode,
        None,
        &split_with(None),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(answer.access_token.expose_secret(), "atk");
    let refused = read_token_answer(
        &raw(400, None, None, "\u{feff}{\"error\":\"invalid_client\"}".as_bytes()),
        Grant::RefreshToken,
        None,
        &split_with(None),
    );
    assert!(matches!(refused, Err(TokenFailure::Refused { provider_code: Some(ref c), .. }) if c == "invalid_client"));
}

/// The definition generator reaches past validation often enough that the round trip above is
/// not vacuous (about one body in five is accepted).
#[test]
fn the_definition_generator_reaches_accepted_definitions() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::new(Config { rng_seed: RngSeed::Fixed(DEFAULT_SEED), ..config() });
    let strategy = (definition_key(), definition_body());
    let mut accepted = 0;
    let mut oauth = 0;
    for _ in 0..400 {
        let (key, body) = strategy.new_tree(&mut runner).expect("a body").current();
        if let Ok(spec) = definition_from_json(&key, &body, latchkey::catalog::provider) {
            accepted += 1;
            oauth += usize::from(spec.auth.is_oauth() && spec.oauth != OAuthQuirks::default());
        }
    }
    assert!(accepted >= 40, "only {accepted} of 400 generated definitions accepted");
    assert!(oauth >= 10, "only {oauth} accepted OAuth definitions with quirks");
}
