//! The OAuth test servers themselves, without Latchkey: proves that the harness (`support::oauth`) can
//! drive oidc-provider's login and consent pages and that both servers behave as the Latchkey
//! tests assume (rotation, reuse detection, revocation, introspection, fault injection).

use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use support::oauth::{MockServer, OidcServer, query_param};

const REDIRECT_URI: &str = "http://127.0.0.1:9/cb";

async fn oidc() -> OidcServer {
    OidcServer::start(json!({ "redirect_uris": [REDIRECT_URI] })).await
}

/// An authorization-code request with S256 PKCE, as a client would build it.
fn authorize_url(oidc: &OidcServer, state: &str, challenge: &str) -> String {
    let params = [
        ("response_type", "code"),
        ("client_id", oidc.client.client_id.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid offline_access api:read"),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    Url::parse_with_params(&oidc.authorize_endpoint(), &params).expect("authorize URL").to_string()
}

fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name].as_str().unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// A verifier may start with `-` (the unreserved set has it): one did, and node took it for an
/// option.
#[test]
fn pkce_s256_takes_a_verifier_that_starts_with_a_dash() {
    let verifier = "-wUWJ5hIl~Cr5OI1CR01v4qHL-iWRBlkRWrmVtzsCESMHH-P2FRvAr9_qWtN2nN2";
    assert_eq!(support::oauth::pkce_s256(verifier), "haVamXBUv3zV6bsHe8aZ04awX5oUzpLHC55tm_83Cgc");
}

#[tokio::test]
async fn oidc_code_flow_rotates_refresh_tokens_detects_reuse_and_revokes() {
    let oidc = oidc().await;
    let verifier = support::oauth::pkce_verifier();
    let url = authorize_url(&oidc, "state-1", &support::oauth::pkce_s256(&verifier));

    let callback = oidc.login_and_consent(&url).await;
    assert!(callback.starts_with(&format!("{REDIRECT_URI}?")), "{callback}");
    assert_eq!(query_param(&callback, "state").as_deref(), Some("state-1"));
    assert_eq!(query_param(&callback, "iss").as_deref(), Some(oidc.issuer.as_str()));
    let code = query_param(&callback, "code").expect("code in the callback");

    let (status, tokens) = oidc
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(field(&tokens, "scope").split(' ').any(|s| s == "api:read"), "{tokens}");
    assert_eq!(tokens["expires_in"], 3600);
    let first_refresh = field(&tokens, "refresh_token").to_owned();

    let (status, refreshed) = oidc.token(&[("grant_type", "refresh_token"), ("refresh_token", &first_refresh)]).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let second_refresh = field(&refreshed, "refresh_token");
    assert_ne!(second_refresh, first_refresh, "the refresh token is rotated");
    let access = field(&refreshed, "access_token");
    assert_eq!(oidc.introspect(access).await["active"], true);

    // Replaying the consumed refresh token fails and kills the grant, new tokens included.
    let (status, replay) = oidc.token(&[("grant_type", "refresh_token"), ("refresh_token", &first_refresh)]).await;
    assert_eq!((status, field(&replay, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(oidc.introspect(access).await["active"], false);
    assert_eq!(oidc.introspect(second_refresh).await["active"], false);

    let stats = oidc.stats().await;
    assert_eq!(stats["token_requests"]["authorization_code"], 1, "{stats}");
    assert_eq!(stats["token_requests"]["refresh_token"], 2, "{stats}");
    assert_eq!(stats["reused_refresh_tokens"], 1, "{stats}");
    assert_eq!(stats["events"][0]["client_auth"], "client_secret_basic", "{stats}");
}

#[tokio::test]
async fn oidc_revoked_access_token_is_inactive() {
    let oidc = OidcServer::start(json!({
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "client_secret_post",
        "access_token_ttl": 5,
    }))
    .await;
    let (status, tokens) = oidc.token(&[("grant_type", "client_credentials"), ("scope", "api:read")]).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(field(&tokens, "scope"), "api:read");
    assert_eq!(tokens["expires_in"], 5);
    let access = field(&tokens, "access_token");

    let introspection = oidc.introspect(access).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["scope"], "api:read", "{introspection}");
    assert_eq!(oidc.revoke(access).await, StatusCode::OK);
    assert_eq!(oidc.introspect(access).await["active"], false);
    let stats = oidc.stats().await;
    assert_eq!(stats["revocations"], 1, "{stats}");
    assert!(stats["events"].as_array().unwrap().iter().all(|e| e["client_auth"] == "client_secret_post"), "{stats}");
}

#[tokio::test]
async fn oidc_denied_consent_redirects_with_access_denied() {
    let oidc = oidc().await;
    let url = authorize_url(&oidc, "state-2", &support::oauth::pkce_s256(&support::oauth::pkce_verifier()));
    let callback = oidc.deny_consent(&url).await;
    assert_eq!(query_param(&callback, "error").as_deref(), Some("access_denied"), "{callback}");
    assert_eq!(query_param(&callback, "state").as_deref(), Some("state-2"));
    assert_eq!(query_param(&callback, "code"), None);
}

#[tokio::test]
async fn mock_serves_configured_faults_then_rewritten_tokens() {
    let mock = MockServer::start(json!({
        "faults": [{"grant_type": "refresh_token", "times": 1, "status": 503,
                    "body": {"error": "temporarily_unavailable"}, "headers": {"Retry-After": "2"}}],
        "rewrites": [{"nest": {"under": "authed_user"}, "set": {"expires_in": "3600", "id_token": null}}]
    }))
    .await;

    let refresh = [("grant_type", "refresh_token"), ("refresh_token", "anything")];
    let (status, body) = mock.token(&refresh).await;
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "temporarily_unavailable"})));

    let (status, body) = mock.token(&refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["authed_user"]["access_token"].is_string(), "{body}");
    assert_eq!(body["access_token"], Value::Null);
    assert_eq!(body["expires_in"], "3600");
    assert_eq!(body["id_token"], Value::Null);

    mock.configure(json!({"faults": [{"status": 400, "body": {"error": "invalid_grant"}}]})).await;
    let (status, body) = mock.token(&refresh).await;
    assert_eq!((status, body), (StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})));

    let callback = mock
        .authorize(&format!("{}?response_type=code&redirect_uri={REDIRECT_URI}&state=s", mock.authorize_endpoint()))
        .await;
    assert!(query_param(&callback, "code").is_some(), "{callback}");

    let stats = mock.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 3, "{stats}");
    assert_eq!(stats["faults_served"], 2, "{stats}");
    assert_eq!(stats["authorize_requests"], 1, "{stats}");
}
