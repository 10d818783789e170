//! The reader against every dialect providers answer in.

use secrecy::ExposeSecret;
use serde_json::json;

use super::*;

fn answer(status: u16, content_type: &str, body: &str) -> RawAnswer {
    RawAnswer { status, content_type: Some(content_type.into()), retry_after: None, body: body.as_bytes().to_vec() }
}

fn split(s: &str) -> Vec<String> {
    s.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn read(raw: &RawAnswer, grant: Grant, path: Option<&str>) -> Result<TokenAnswer, TokenFailure> {
    read_token_answer(raw, grant, path, &split)
}

fn refused(class: Refusal, code: &str) -> (Refusal, String) {
    (class, code.to_owned())
}

/// A refusal's class and code.
fn refusal(f: Option<TokenFailure>) -> Option<(Refusal, String)> {
    match f {
        Some(f @ TokenFailure::Refused { class, .. }) => Some((class, f.code())),
        _ => None,
    }
}

const TOKEN: &str =
    r#"{"access_token":"at","token_type":"bearer","expires_in":3600,"refresh_token":"rt","scope":"a b"}"#;

#[test]
fn any_2xx_token_answer_is_a_success_whatever_its_content_type() {
    for ct in ["application/json", "text/plain; charset=utf-8", "text/javascript", "text/html", ""] {
        for status in [200, 201, 203] {
            let a = read(&answer(status, ct, TOKEN), Grant::AuthorizationCode, None)
                .unwrap_or_else(|e| panic!("{status} {ct}: {e:?}"));
            assert_eq!(a.access_token.expose_secret(), "at");
            assert_eq!(a.token_type, "Bearer");
            assert_eq!(a.expires_in, Some(3600));
            assert_eq!(a.refresh_token.as_ref().map(|r| r.expose_secret().to_owned()), Some("rt".into()));
            assert_eq!(a.scopes, Some(vec!["a".into(), "b".into()]));
        }
    }
}

#[test]
fn form_encoded_answers_are_token_answers() {
    let a = read(
        &answer(200, "application/x-www-form-urlencoded", "access_token=gho_x&scope=repo%2Cgist&token_type=bearer"),
        Grant::AuthorizationCode,
        None,
    )
    .unwrap();
    assert_eq!(a.access_token.expose_secret(), "gho_x");
    assert_eq!(a.scopes, Some(vec!["repo".into(), "gist".into()]));
    assert_eq!(a.expires_in, None);
    let e = read(
        &answer(200, "application/x-www-form-urlencoded", "error=bad_verification_code"),
        Grant::AuthorizationCode,
        None,
    );
    assert_eq!(refusal(e.err()), Some(refused(Refusal::GrantRefused, "bad_verification_code")));
}

#[test]
fn an_error_member_is_a_refusal_whatever_the_status() {
    let cases = [
        (
            200,
            r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect"}"#,
            Grant::RefreshToken,
            Refusal::GrantRefused,
            "bad_refresh_token",
        ),
        (
            200,
            r#"{"ok":false,"error":"invalid_refresh_token"}"#,
            Grant::RefreshToken,
            Refusal::GrantRefused,
            "invalid_refresh_token",
        ),
        (
            200,
            r#"{"ok":false,"error":"invalid_code"}"#,
            Grant::AuthorizationCode,
            Refusal::GrantRefused,
            "invalid_code",
        ),
        (200, r#"{"ok":false}"#, Grant::RefreshToken, Refusal::GrantRefused, "ok_false"),
        (200, r#"{"access_token":"a","error":{}}"#, Grant::RefreshToken, Refusal::GrantRefused, "error"),
        (200, r#"{"access_token":"a","error":5}"#, Grant::RefreshToken, Refusal::GrantRefused, "error"),
        (400, r#"{"error":"invalid_grant"}"#, Grant::RefreshToken, Refusal::GrantRefused, "invalid_grant"),
        (400, r#"{"error":"invalid_request"}"#, Grant::RefreshToken, Refusal::GrantRefused, "invalid_request"),
        (401, r#"{"error":"invalid_client"}"#, Grant::RefreshToken, Refusal::ClientRejected, "invalid_client"),
        (
            400,
            r#"{"error":"unauthorized_client"}"#,
            Grant::RefreshToken,
            Refusal::ClientRejected,
            "unauthorized_client",
        ),
        (
            200,
            r#"{"error":"incorrect_client_credentials"}"#,
            Grant::AuthorizationCode,
            Refusal::ClientRejected,
            "incorrect_client_credentials",
        ),
        (
            200,
            r#"{"ok":false,"error":"invalid_client_id"}"#,
            Grant::AuthorizationCode,
            Refusal::ClientRejected,
            "invalid_client_id",
        ),
        (400, r#"{"error":"invalid_scope"}"#, Grant::ClientCredentials, Refusal::ScopesMissing, "invalid_scope"),
        (400, r#"{"error":"invalid_grant"}"#, Grant::ClientCredentials, Refusal::ClientRejected, "invalid_grant"),
        (
            400,
            r#"{"error":{"code":"InvalidAuthenticationToken","message":"x"}}"#,
            Grant::RefreshToken,
            Refusal::GrantRefused,
            "InvalidAuthenticationToken",
        ),
    ];
    for (status, body, grant, class, code) in cases {
        let got = read(&answer(status, "application/json", body), grant, None).err();
        match got {
            Some(f @ TokenFailure::Refused { class: c, .. }) => {
                assert_eq!((c, f.code().as_str()), (class, code), "{status} {body}");
            }
            other => panic!("{status} {body}: {other:?}"),
        }
    }
}

#[test]
fn outages_and_rate_limits_are_transient() {
    let mut limited = answer(429, "application/json", r#"{"error":"invalid_grant"}"#);
    limited.retry_after = Some(Duration::from_secs(7));
    assert_eq!(
        read(&limited, Grant::RefreshToken, None).err(),
        Some(TokenFailure::Transient { code: "invalid_grant".into(), retry_after: Some(Duration::from_secs(7)) })
    );
    for (status, body, code) in [
        (503, "<html>down</html>", "http_503"),
        (500, "", "http_500"),
        (200, r#"{"error":"temporarily_unavailable"}"#, "temporarily_unavailable"),
        (200, r#"{"ok":false,"error":"ratelimited"}"#, "ratelimited"),
        (400, r#"{"error":"slow_down"}"#, "slow_down"),
        (408, "", "http_408"),
    ] {
        match read(&answer(status, "text/html", body), Grant::RefreshToken, None) {
            Err(TokenFailure::Transient { code: c, .. }) => assert_eq!(c, code, "{status} {body}"),
            other => panic!("{status} {body}: {other:?}"),
        }
    }
    let mut waf = answer(403, "text/html", "<html>slow down</html>");
    waf.retry_after = Some(Duration::from_secs(60));
    assert!(matches!(read(&waf, Grant::RefreshToken, None), Err(TokenFailure::Transient { .. })));
}

#[test]
fn unexplained_refusals_of_a_refresh_are_dead_grants_and_unreadable_answers_are_not_refusals() {
    for status in [400, 401] {
        assert_eq!(
            refusal(read(&answer(status, "text/html", "<html>no</html>"), Grant::RefreshToken, None).err()),
            Some(refused(Refusal::GrantRefused, &format!("http_{status}")))
        );
        assert_eq!(
            refusal(read(&answer(status, "text/html", ""), Grant::ClientCredentials, None).err()),
            Some(refused(Refusal::ClientRejected, &format!("http_{status}")))
        );
    }
    assert_eq!(
        refusal(read(&answer(404, "text/html", "not found"), Grant::RefreshToken, None).err()),
        Some(refused(Refusal::ClientRejected, "http_404"))
    );
    for (status, body) in
        [(200, "<html>oops</html>"), (200, "{not json"), (200, r#"{"token":"x"}"#), (302, ""), (403, "")]
    {
        assert_eq!(
            read(&answer(status, "text/html", body), Grant::AuthorizationCode, None).err(),
            Some(TokenFailure::Unreadable { code: "unreadable_answer", status }),
            "{status} {body}"
        );
    }
}

#[test]
fn the_token_path_names_the_object_read_and_is_never_replaced_by_another_token() {
    let bot_only =
        answer(200, "application/json", r#"{"ok":true,"access_token":"xoxb","token_type":"bot","scope":"chat:write"}"#);
    assert_eq!(
        read(&bot_only, Grant::AuthorizationCode, Some("authed_user")).err(),
        Some(TokenFailure::Unreadable { code: "invalid_token_response", status: 200 })
    );
    let both = answer(
        200,
        "application/json",
        r#"{"ok":true,"access_token":"xoxb","token_type":"bot","scope":"chat:write","authed_user":{"id":"U1","access_token":"xoxp","token_type":"user","scope":"search:read,users:read","refresh_token":"xoxe","expires_in":43200}}"#,
    );
    let a = read(&both, Grant::AuthorizationCode, Some("authed_user")).unwrap();
    assert_eq!(a.access_token.expose_secret(), "xoxp");
    assert_eq!(a.token_type, "user");
    assert_eq!(a.scopes, Some(vec!["search:read".into(), "users:read".into()]));
    assert_eq!(a.expires_in, Some(43200));
    assert_eq!(a.captured("authed_user.id"), Some(&json!("U1")));
    // A refresh answers for the token it renewed, at the top level.
    let refreshed = answer(200, "application/json", r#"{"ok":true,"access_token":"xoxp2","token_type":"user"}"#);
    assert_eq!(
        read(&refreshed, Grant::RefreshToken, Some("authed_user")).unwrap().access_token.expose_secret(),
        "xoxp2"
    );
}

#[test]
fn lifetimes_that_are_not_positive_are_unknown() {
    for (v, expected) in [
        (json!(3600), Some(3600)),
        (json!("7200"), Some(7200)),
        (json!(3599.9), Some(3599)),
        (json!(0), None),
        (json!(-5), None),
        (json!(null), None),
        (json!("soon"), None),
        (json!(u64::MAX), None),
    ] {
        let body = json!({"access_token": "a", "expires_in": v}).to_string();
        assert_eq!(
            read(&answer(200, "application/json", &body), Grant::RefreshToken, None).unwrap().expires_in,
            expected,
            "{v}"
        );
    }
}

#[test]
fn scopes_are_read_as_strings_or_arrays() {
    for (scope, expected) in [
        (json!(["a", "b"]), Some(vec!["a", "b"])),
        (json!("a,b"), Some(vec!["a", "b"])),
        (json!("a b"), Some(vec!["a", "b"])),
        (json!(null), None),
    ] {
        let body = json!({"access_token": "a", "scope": scope}).to_string();
        let got = read(&answer(200, "application/json", &body), Grant::AuthorizationCode, None).unwrap().scopes;
        assert_eq!(got, expected.map(|v| v.into_iter().map(str::to_owned).collect()), "{scope}");
    }
}

#[test]
fn debug_never_shows_a_token() {
    let a = read(&answer(200, "application/json", TOKEN), Grant::RefreshToken, None).unwrap();
    let shown = format!("{a:?}");
    assert!(!shown.contains("\"at\"") && !shown.contains("rt"), "{shown}");
}

#[test]
fn revocation_answers() {
    assert_eq!(read_revoke_answer(&answer(200, "text/html", "")), RevokeAnswer::Revoked);
    assert_eq!(read_revoke_answer(&answer(204, "", "")), RevokeAnswer::Revoked);
    assert_eq!(
        read_revoke_answer(&answer(400, "application/json", r#"{"error":"unsupported_token_type"}"#)),
        RevokeAnswer::Refused("unsupported_token_type".into())
    );
    assert_eq!(
        read_revoke_answer(&answer(200, "application/json", r#"{"ok":false,"error":"invalid_auth"}"#)),
        RevokeAnswer::Refused("invalid_auth".into())
    );
    assert!(matches!(read_revoke_answer(&answer(503, "", "")), RevokeAnswer::Transient { .. }));
    assert!(matches!(
        read_revoke_answer(&answer(200, "application/json", r#"{"ok":false,"error":"ratelimited"}"#)),
        RevokeAnswer::Transient { .. }
    ));
    assert_eq!(read_revoke_answer(&answer(403, "text/html", "no")), RevokeAnswer::Refused("http_403".into()));
}

#[test]
fn a_refresh_token_lifetime_is_read_where_the_token_is() {
    let body = json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_in": "7776000"}).to_string();
    let a = read(&answer(200, "application/json", &body), Grant::AuthorizationCode, None).unwrap();
    assert_eq!(a.refresh_token_expires_in, Some(7_776_000));
    for unknown in [json!(0), json!(-5), json!(null), json!("soon"), json!(20 * 365 * 86_400)] {
        let body = json!({"access_token": "a", "refresh_token_expires_in": unknown}).to_string();
        let a = read(&answer(200, "text/plain", &body), Grant::RefreshToken, None).unwrap();
        assert_eq!(a.refresh_token_expires_in, None, "{unknown}");
    }
    // Slack-style: one object down, with the token.
    let body = json!({"ok": true, "authed_user": {"access_token": "u", "refresh_token_expires_in": 60},
                      "refresh_token_expires_in": 99})
    .to_string();
    let a = read(&answer(200, "application/json", &body), Grant::AuthorizationCode, Some("authed_user")).unwrap();
    assert_eq!(a.refresh_token_expires_in, Some(60));
}

#[test]
fn a_provider_that_names_the_lifetime_otherwise_is_read_by_the_definitions_member() {
    // QuickBooks answers `x_refresh_token_expires_in`; the standard name is not there.
    let body = json!({"access_token": "a", "refresh_token": "r", "expires_in": 3600,
                      "x_refresh_token_expires_in": 8_726_400})
    .to_string();
    let mut a = read(&answer(200, "application/json", &body), Grant::RefreshToken, None).unwrap();
    assert_eq!(a.refresh_token_expires_in, None);
    a.read_refresh_token_lifetime("x_refresh_token_expires_in", None);
    assert_eq!(a.refresh_token_expires_in, Some(8_726_400));
    // A refresh answer without the token path's object is read at the top level.
    a.read_refresh_token_lifetime("x_refresh_token_expires_in", Some("authed_user"));
    assert_eq!(a.refresh_token_expires_in, Some(8_726_400));
}
