//! The client kept in step with the server it talks to: every `errorType` the functions answer
//! and every problem `type` the HTTP API answers is a kind the client knows (never
//! [`ErrorKind::Other`]), and a lookup's worst-case wait fits in [`DEFAULT_TIMEOUT`].
//!
//! The lists are read from the server's source as well as named here, so that a name added to
//! the server without a kind in the client fails this test rather than reaching callers as
//! `Other`.

use std::time::Duration;

use latchkey::http::problem::types as problem;
use latchkey::service::error_types as error_type;
use latchkey_client::{DEFAULT_TIMEOUT, ErrorKind};

/// Every `"..."` literal of the `pub const`s of `pub mod {module} { ... }` in the server's
/// source file `path` (relative to `shared/src/`).
fn constants_in_source(path: &str, module: &str) -> Vec<String> {
    let file = format!("{}/../../shared/src/{path}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let start = format!("pub mod {module} {{");
    let body = source.split(&start).nth(1).unwrap_or_else(|| panic!("{file} has no `{start}`"));
    let body = body.split("\n}").next().unwrap_or_default();
    body.lines()
        .filter(|l| l.trim_start().starts_with("pub const"))
        .map(|l| l.split('"').nth(1).unwrap_or_else(|| panic!("a string constant: {l}")).to_owned())
        .collect()
}

/// The server's `errorType`s, by name: renaming one on the server breaks this build.
const ERROR_TYPES: &[&str] = &[
    error_type::NOT_FOUND,
    error_type::INVALID,
    error_type::UNAUTHORIZED,
    error_type::FORBIDDEN,
    error_type::CONFLICT,
    error_type::PRECONDITION,
    error_type::PENDING,
    error_type::DISCONNECTED,
    error_type::ERRORED,
    error_type::TOKEN_EXPIRED,
    error_type::PROVIDER,
    error_type::CREDENTIALS_REJECTED,
    error_type::VERIFICATION_UNAVAILABLE,
    error_type::UNAVAILABLE,
    error_type::INTERNAL,
];

/// The server's problem `type` URIs, by name.
const PROBLEM_TYPES: &[&str] = &[
    problem::VALIDATION,
    problem::MALFORMED,
    problem::TOO_LARGE,
    problem::UNAUTHORIZED,
    problem::FORBIDDEN,
    problem::NOT_FOUND,
    problem::METHOD,
    problem::CONFLICT,
    problem::PRECONDITION,
    problem::PENDING,
    problem::DISCONNECTED,
    problem::ERRORED,
    problem::TOKEN_EXPIRED,
    problem::INTERNAL,
    problem::PROVIDER,
    problem::CREDENTIALS_REJECTED,
    problem::VERIFICATION_UNAVAILABLE,
    problem::UNAVAILABLE,
    problem::IDEMPOTENCY_KEY_REUSED,
    problem::IDEMPOTENCY_IN_PROGRESS,
    problem::WEBHOOK_DISABLED,
];

#[test]
fn every_error_type_of_the_server_is_a_kind_of_the_client_with_the_same_name() {
    let in_source = constants_in_source("service/error.rs", "error_types");
    assert_eq!(in_source.len(), ERROR_TYPES.len(), "every errorType of the server is listed here: {in_source:?}");
    for name in in_source.iter().map(String::as_str).chain(ERROR_TYPES.iter().copied()) {
        let kind = ErrorKind::from_error_type(name);
        assert!(!matches!(kind, ErrorKind::Other(_)), "errorType {name} is unknown to the client");
        assert_eq!(kind.error_type(), name, "the kind gives the server's name back");
    }
}

#[test]
fn every_problem_type_of_the_server_is_a_kind_of_the_client() {
    let in_source = constants_in_source("http/problem.rs", "types");
    assert_eq!(in_source.len(), PROBLEM_TYPES.len(), "every problem type of the server is listed here: {in_source:?}");
    for uri in in_source.iter().map(String::as_str).chain(PROBLEM_TYPES.iter().copied()) {
        let kind = ErrorKind::from_problem(Some(uri), 500);
        assert!(!matches!(kind, ErrorKind::Other(_)), "problem type {uri} is unknown to the client");
    }
}

#[test]
fn the_default_timeout_outlasts_a_lookup_that_waits_for_a_refresh() {
    // A lookup may wait for another caller's refresh lease (and the 5 s of grace the server
    // adds), read the record (a store call, 5 s at most), hold its own lease while it calls the
    // provider and writes the answer (the write retried until shortly before the lease ends),
    // and read and write once more after losing to another writer (5 s each).
    let lease = latchkey::service::RefreshPolicy::default().lease;
    let store_call = latchkey::adapters::aws::OPERATION_TIMEOUT;
    let worst = lease + Duration::from_secs(5) + store_call + lease + 2 * store_call;
    assert!(DEFAULT_TIMEOUT > worst, "DEFAULT_TIMEOUT {DEFAULT_TIMEOUT:?} cuts a {worst:?} lookup short");
}

#[test]
fn the_oauth1_member_the_server_writes_is_read_whole_and_printed_back_the_same() {
    use latchkey::service::oauth::Oauth1Credentials as Server;
    use secrecy::{ExposeSecret, SecretString};
    for (method, private_key) in [("HMAC-SHA1", None), ("RSA-SHA1", Some("-----BEGIN PRIVATE KEY-----\npk\n"))] {
        let written = serde_json::to_value(Server {
            consumer_key: "ck".into(),
            consumer_secret: SecretString::from(if private_key.is_some() { "" } else { "cs" }),
            token: SecretString::from("tok"),
            token_secret: SecretString::from("ts"),
            signature_method: method,
            private_key: private_key.map(SecretString::from),
        })
        .unwrap();
        let read: latchkey_client::Oauth1Credentials =
            serde_json::from_value(written.clone()).unwrap_or_else(|e| panic!("{method}: {e}: {written}"));
        assert_eq!(read.token_secret.expose_secret(), "ts", "{method}");
        assert_eq!(read.signature_method, method);
        assert_eq!(read.private_key.as_ref().map(|k| k.expose_secret().to_owned()).as_deref(), private_key);
        assert_eq!(read.expose_json(), written, "{method}: every member the server writes is kept");
    }
}
