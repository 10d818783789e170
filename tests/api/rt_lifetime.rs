//! Refresh-token lifetime (SPEC section 10): `refresh_token_expires_in` in a token answer (or
//! the member the definition names, or the definition's `oauth.refresh_token_lifetime_secs`, or
//! an import's) gives `refresh_token_expires_at` in reads; a rotated refresh token restarts it,
//! a kept one does not. `Refresh Token Expiring` fires once, `LATCHKEY_RT_WARNING_DAYS` before
//! the lapse, found by the sweep in the due index, and again for the next refresh token; after
//! the lapse the connection is red `token_expired` and the provider never sees the token again.
//! Small lifetimes and a warning window of a few seconds; the scripted provider
//! `tests/oauth/quirks.mjs`; either backend.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::harness::eventually;
use crate::reconnect::{Lab, SUCCESS, answer};
use support::quirks::QuirkServer;

/// 0.0001 days: a warning window of 8.64 s.
const WARNING_DAYS: &str = "0.0001";
const WARNING: Duration = Duration::from_millis(8_640);
const EXPIRING: &str = "Refresh Token Expiring";

fn at(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("a date-time: {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// Asserts `t` is `secs` after a moment between `before` and now, give or take a second.
fn about(t: OffsetDateTime, before: OffsetDateTime, secs: i64) {
    let span = time::Duration::seconds(secs);
    assert!(t >= before + span - time::Duration::seconds(1), "{t} is {secs} s after {before}");
    assert!(t <= OffsetDateTime::now_utc() + span + time::Duration::seconds(1), "{t} is {secs} s from about now");
}

/// The scripted provider answering code exchanges and refreshes with `code` and `refresh`, and
/// definition `key` against it with `oauth`.
async fn provider(lab: &Lab, key: &str, code: Value, refresh: Value, oauth: Value) -> QuirkServer {
    let q = QuirkServer::start(json!({"token": {"authorization_code": code, "refresh_token": refresh}})).await;
    lab.define(key, (&q.authorize_endpoint(), &q.token_endpoint()), ("quirk-client", "quirk-secret"), "read", oauth)
        .await;
    q
}

/// A connection of `key` authorized at `q`.
async fn authorized(lab: &Lab, q: &QuirkServer, key: &str) -> String {
    let id = lab.create(key).await;
    let location = lab.authorize_at(q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    id
}

/// The warning fires once, however many sweeps meet the connection; at the lapse the sweep
/// turns it red `token_expired` without sending the refresh token anywhere.
#[tokio::test]
async fn the_warning_fires_once_across_sweeps_and_the_lapse_turns_red_without_a_provider_call() {
    let lab = Lab::start(&[("LATCHKEY_REFRESH_INTERVAL_SECS", "1"), ("LATCHKEY_RT_WARNING_DAYS", WARNING_DAYS)]).await;
    let rt = json!({"refresh_token": "{{refresh_token}}", "refresh_token_expires_in": 14});
    let q = provider(&lab, "scripted", answer("read", rt.clone()), answer("read", rt), json!({})).await;
    let before = OffsetDateTime::now_utc();
    let id = authorized(&lab, &q, "scripted").await;
    let read = lab.read(&id).await;
    let lapse = at(&read["refresh_token_expires_at"]);
    about(lapse, before, 14);
    assert!(lab.messages(&id, "refresh_token_expiring").await.is_empty(), "not yet: the warning is 8.64 s before");

    eventually(Duration::from_secs(20), "the refresh token warning", || async {
        !lab.messages(&id, "refresh_token_expiring").await.is_empty()
    })
    .await;
    let warned_at = OffsetDateTime::now_utc();
    assert!(warned_at >= lapse - WARNING, "not before the window: {warned_at} vs lapse {lapse}");
    lab.app.sweeps_run(3).await;
    let warnings = lab.messages(&id, "refresh_token_expiring").await;
    assert_eq!(warnings.len(), 1, "once, whatever the sweeps: {warnings:?}");
    assert!(warnings[0].contains(read["refresh_token_expires_at"].as_str().unwrap()), "{warnings:?}");
    let app = &lab.app;
    assert_eq!(lab.events.count_at_least(app, &id, EXPIRING, 1).await, 1);
    if let Some(detail) = lab.events.detail(&id, EXPIRING) {
        assert_eq!(at(&detail["refresh_token_expires_at"]), lapse, "{detail}");
    }
    assert_eq!(lab.read(&id).await["status"], "configured", "a warning changes nothing else");

    eventually(Duration::from_secs(20), "red at the lapse", || async { lab.read(&id).await["status"] == "error" })
        .await;
    let red = lab.read(&id).await;
    assert_eq!(red["error"]["code"], "token_expired", "{red}");
    assert!(red["error"]["message"].as_str().unwrap().contains("refresh token expired"), "{red}");
    assert!(OffsetDateTime::now_utc() >= lapse, "not before the lapse");
    assert_eq!(q.token_calls("refresh_token").await, 0, "a lapsed refresh token is never sent");
    let found = lab.lookup(&id).await;
    found.assert_problem(StatusCode::CONFLICT);
    lab.force_refresh(&id).await;
    assert_eq!(q.token_calls("refresh_token").await, 0, "not even when forced");
    let app = &lab.app;
    assert_eq!(lab.events.count(app, &id, EXPIRING).await, 1, "still once");
}

/// A lookup that meets a lapsed refresh token first (no sweep in between) answers the
/// `token-expired` problem and turns the connection red; the lifetime is the definition's
/// `refresh_token_lifetime_secs` (the answer states none).
#[tokio::test]
async fn a_lookup_after_the_lapse_answers_token_expired_without_a_provider_call() {
    let lab = Lab::start(&[("LATCHKEY_REFRESH_INTERVAL_SECS", "3600")]).await;
    let code = answer("read", json!({"refresh_token": "{{refresh_token}}", "expires_in": 1}));
    let q =
        provider(&lab, "scripted", code, answer("read", json!({})), json!({"refresh_token_lifetime_secs": 3})).await;
    let before = OffsetDateTime::now_utc();
    let id = authorized(&lab, &q, "scripted").await;
    let lapse = at(&lab.read(&id).await["refresh_token_expires_at"]);
    about(lapse, before, 3);
    // Time passing is the behaviour: polled, not slept.
    eventually(Duration::from_secs(10), "the lapse", || async { OffsetDateTime::now_utc() > lapse }).await;
    let found = lab.lookup(&id).await;
    found.assert_problem(StatusCode::CONFLICT);
    assert_eq!(found.problem_type(), "urn:latchkey:problem:token-expired", "{}", found.text);
    let red = lab.read(&id).await;
    assert_eq!((red["status"].as_str(), red["error"]["code"].as_str()), (Some("error"), Some("token_expired")));
    assert_eq!(q.token_calls("refresh_token").await, 0);
}

/// A rotated refresh token restarts its lifetime (the answer's, the member the definition
/// names, else the definition's); a refresh answer without one keeps the lapse time. A new
/// refresh token re-arms the warning: it fires again, once.
#[tokio::test]
async fn a_rotated_refresh_token_restarts_its_lifetime_and_re_arms_the_warning_a_kept_one_does_not() {
    let lab = Lab::start(&[("LATCHKEY_REFRESH_INTERVAL_SECS", "1"), ("LATCHKEY_RT_WARNING_DAYS", WARNING_DAYS)]).await;
    let oauth = json!({"refresh_token_lifetime_secs": 1000});
    let code = answer("read", json!({"refresh_token": "{{refresh_token}}"}));
    let q = provider(&lab, "scripted", code, answer("read", json!({})), oauth).await;
    let before = OffsetDateTime::now_utc();
    let id = authorized(&lab, &q, "scripted").await;
    let first = lab.read(&id).await["refresh_token_expires_at"].clone();
    about(at(&first), before, 1000);

    // Kept: the lapse time stays.
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    assert_eq!(q.token_calls("refresh_token").await, 1);
    assert_eq!(lab.read(&id).await["refresh_token_expires_at"], first, "a kept refresh token keeps its lapse");

    // Rotated with a stated lifetime within the warning window: restarted, and warned about.
    let rotated = answer("read", json!({"refresh_token": "{{refresh_token}}", "refresh_token_expires_in": 9}));
    q.set_config(json!({"token": {"refresh_token": rotated}})).await;
    let before = OffsetDateTime::now_utc();
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    about(at(&lab.read(&id).await["refresh_token_expires_at"]), before, 9);
    eventually(Duration::from_secs(20), "the first warning", || async {
        lab.messages(&id, "refresh_token_expiring").await.len() == 1
    })
    .await;
    // Another new refresh token: re-armed, warned about again.
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    eventually(Duration::from_secs(20), "the second warning", || async {
        lab.messages(&id, "refresh_token_expiring").await.len() == 2
    })
    .await;
    lab.app.sweeps_run(2).await;
    let app = &lab.app;
    assert_eq!(lab.events.count_at_least(app, &id, "Refresh Token Expiring", 2).await, 2, "once per refresh token");

    // QuickBooks names it x_refresh_token_expires_in: read through the definition's member.
    let quickbooks =
        answer("read", json!({"refresh_token": "{{refresh_token}}", "x_refresh_token_expires_in": 8_726_400}));
    q.set_config(json!({"token": {"refresh_token": quickbooks}})).await;
    let member =
        json!({"refresh_token_lifetime_secs": 1000, "refresh_token_expires_in_member": "x_refresh_token_expires_in"});
    lab.define(
        "scripted",
        (&q.authorize_endpoint(), &q.token_endpoint()),
        ("quirk-client", "quirk-secret"),
        "read",
        member,
    )
    .await;
    let before = OffsetDateTime::now_utc();
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    about(at(&lab.read(&id).await["refresh_token_expires_at"]), before, 8_726_400);
    // Rotated without a stated lifetime: the definition's, from now.
    q.set_config(json!({"token": {"refresh_token": answer("read", json!({"refresh_token": "{{refresh_token}}"}))}}))
        .await;
    let before = OffsetDateTime::now_utc();
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    about(at(&lab.read(&id).await["refresh_token_expires_at"]), before, 1000);
}

/// An import may state the refresh token's lifetime (`refresh_token_expires_in` or
/// `refresh_token_expires_at`): reads show it; a lapsed one is refused (422).
#[tokio::test]
async fn an_imported_refresh_token_lifetime_is_shown_and_a_lapsed_one_refused() {
    let lab = Lab::start(&[]).await;
    lab.define(
        "acme",
        ("https://auth.acme.example/authorize", "https://auth.acme.example/token"),
        ("cid", "cs"),
        "read",
        json!({}),
    )
    .await;
    let import = |tokens: Value| {
        let body = json!({"definition": "acme", "customer": "c-1", "tokens": tokens});
        let (app, org) = (&lab.app, &lab.org);
        async move { app.create_connection(org, &body).await }
    };
    let before = OffsetDateTime::now_utc();
    let created =
        import(json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_in": 7_776_000})).await;
    created.assert_status(StatusCode::CREATED);
    about(at(&created.body["refresh_token_expires_at"]), before, 7_776_000);
    let stated = "2030-01-01T00:00:00Z";
    let created = import(json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_at": stated})).await;
    created.assert_status(StatusCode::CREATED);
    let shown = at(&created.body["refresh_token_expires_at"]);
    let wanted = OffsetDateTime::parse(stated, &Rfc3339).unwrap();
    assert!((shown - wanted).abs() <= time::Duration::seconds(1), "{shown} vs {stated}");
    let none = import(json!({"access_token": "a", "refresh_token": "r"})).await;
    assert!(none.body["refresh_token_expires_at"].is_null(), "{}", none.text);
    let lapsed =
        import(json!({"access_token": "a", "refresh_token": "r", "refresh_token_expires_at": "2020-01-01T00:00:00Z"}))
            .await;
    lapsed.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(lapsed.error_fields(), ["tokens.refresh_token_expires_at"]);
}
