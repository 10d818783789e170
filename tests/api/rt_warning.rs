//! `Refresh Token Expiring` once per refresh token (SPEC section 10): a provider that sends the
//! same refresh token back with its remaining lifetime (LinkedIn's `refresh_token_expires_in`
//! counts down) keeps its lapse time, so the warning does not fire again; a rotated one re-arms
//! it (`rt_lifetime::a_rotated_refresh_token_restarts_its_lifetime_and_re_arms_the_warning_a_kept_one_does_not`).
//! The scripted provider `tests/oauth/quirks.mjs`; either backend.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::eventually;
use crate::reconnect::{Lab, SUCCESS, answer, token_request};
use support::quirks::QuirkServer;

/// 0.0001 days: a warning window of 8.64 s.
const WARNING_DAYS: &str = "0.0001";
const EXPIRING: &str = "Refresh Token Expiring";
/// The one refresh token the provider ever issues, written literally so that it comes back.
const SAME: &str = "rt-linkedin-style-unchanged";

/// Two refreshes inside the warning window, each answering the same refresh token with a
/// smaller remaining lifetime: the lapse time stays the first one, and the warning fires once.
#[tokio::test]
async fn the_same_refresh_token_sent_back_with_a_counting_down_lifetime_warns_once() {
    let lab = Lab::start(&[("LATCHKEY_REFRESH_INTERVAL_SECS", "1"), ("LATCHKEY_RT_WARNING_DAYS", WARNING_DAYS)]).await;
    let code = answer("read", json!({"refresh_token": SAME, "refresh_token_expires_in": 20}));
    // What is left of it at each refresh, as LinkedIn states it: inside the warning window.
    let refreshes = json!([
        answer("read", json!({"refresh_token": SAME, "refresh_token_expires_in": 8})),
        answer("read", json!({"refresh_token": SAME, "refresh_token_expires_in": 7})),
    ]);
    let q = QuirkServer::start(json!({"token": {"authorization_code": code, "refresh_token": refreshes}})).await;
    lab.define(
        "linkedin-like",
        (&q.authorize_endpoint(), &q.token_endpoint()),
        ("quirk-client", "quirk-secret"),
        "read",
        json!({}),
    )
    .await;
    let id = lab.create("linkedin-like").await;
    let location = lab.authorize_at(&q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    let lapse = lab.read(&id).await["refresh_token_expires_at"].clone();
    assert!(lapse.is_string(), "a stated lifetime: {lapse}");

    eventually(Duration::from_secs(20), "the refresh token warning", || async {
        !lab.messages(&id, "refresh_token_expiring").await.is_empty()
    })
    .await;
    for n in 0..2 {
        lab.force_refresh(&id).await.assert_status(StatusCode::OK);
        assert_eq!(token_request(&q, "refresh_token", n).await["form"]["refresh_token"], SAME);
        assert_eq!(lab.read(&id).await["refresh_token_expires_at"], lapse, "the same refresh token keeps its lapse");
    }
    // Without the lapse kept, the warning re-armed before now would fire at the next sweep.
    lab.app.sweeps_run(2).await;
    let warnings = lab.messages(&id, "refresh_token_expiring").await;
    assert_eq!(warnings.len(), 1, "once for the one refresh token: {warnings:?}");
    assert_eq!(lab.events.count(&lab.app, &id, EXPIRING).await, 1);
    assert_eq!(lab.read(&id).await["status"], "configured");
}
