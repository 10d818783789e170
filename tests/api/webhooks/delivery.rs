//! Deliveries through `latchkey serve`'s worker (retry schedule `1,1`: three attempts a second
//! apart), to a loopback receiver that verifies each with the `standardwebhooks` crate.

use std::collections::BTreeSet;
use std::time::Duration;

use latchkey::service::webhooks::WebhookMessage;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::receiver::Receiver;
use super::{WebhookApp, service_on, service_with};
use crate::harness::{Backend, eventually, random_hex};

/// Three attempts in all, a second apart.
const SCHEDULE: (&str, &str) = ("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "1,1");

/// Polls the webhook's deliveries until one satisfies `done` (30 s at most); that one.
async fn delivery_when(app: &WebhookApp, hook: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let found = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(30), what, || async {
        let hit = app.deliveries(hook).await.into_iter().find(|d| done(d));
        let ok = hit.is_some();
        *found.lock().unwrap() = hit;
        ok
    })
    .await;
    found.into_inner().unwrap().unwrap()
}

/// Asserts that endpoint `hook` is disabled for `deliveries_failing`. The delivery is stored
/// `failed` first and the endpoint disabled right after (two writes): polled for 10 s.
async fn assert_disabled_for_failing_deliveries(app: &WebhookApp, hook: &str) {
    let path = format!("/v1/webhooks/{hook}");
    eventually(Duration::from_secs(10), "the endpoint disabled", || async {
        app.get(&path, &app.org).await.body["enabled"] == json!(false)
    })
    .await;
    let got = app.get(&path, &app.org).await;
    assert_eq!((&got.body["enabled"], &got.body["disabled_reason"]), (&json!(false), &json!("deliveries_failing")));
}

fn statuses(delivery: &Value) -> Vec<Value> {
    delivery["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect()
}

#[tokio::test]
async fn a_receiver_answering_429_then_500_then_200_gets_the_event_on_the_third_attempt_under_one_id() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let receiver = Receiver::start(&[(429, None), (500, None)]).await;
    let secret = app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    let connection = app.emit_connection_created().await;

    let got = receiver.wait_for(3).await;
    let ids: BTreeSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "one id for every attempt: {ids:?}");
    let id = *ids.iter().next().unwrap();
    assert!(id.starts_with("msg_"), "{id}");
    for r in &got {
        r.verify(&secret).unwrap_or_else(|e| panic!("a delivery does not verify: {e}"));
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("user-agent"), "Latchkey-Webhooks/1");
        assert_eq!(r.body, got[0].body, "every attempt sends the same body");
        assert!(!r.body.contains(&secret) && !r.body.contains("k-1"), "no secret in a body: {}", r.body);
    }
    let body = got[0].json();
    assert_eq!(body["type"], "Connection Created");
    assert!(body["timestamp"].is_string());
    assert_eq!(body["data"]["connection_id"], connection.as_str());
    assert_eq!(body["data"]["org"], app.org_id.as_str());

    let delivered =
        delivery_when(&app, "ops", "the delivery recorded as delivered", |d| d["status"] == "delivered").await;
    assert_eq!(delivered["id"], id);
    assert_eq!(statuses(&delivered), [json!(429), json!(500), json!(200)]);
    assert_eq!(delivered["payload"], body);
    assert!(delivered.get("next_attempt_at").is_none());
    // Nothing more for it: the next event is delivered (at once) while the first is not sent
    // again, and each event has one delivery.
    app.emit_connection_created().await;
    let got = receiver.wait_for(4).await;
    let second = got[3].header("webhook-id");
    assert_ne!(second, id);
    assert_eq!(got.iter().filter(|r| r.header("webhook-id") == id).count(), 3);
    delivery_when(&app, "ops", "the second delivered", |d| d["id"] == second && d["status"] == "delivered").await;
    assert_eq!(app.deliveries("ops").await.len(), 2, "one delivery per event");
    assert!(!app.logs().contains(&secret), "the secret is in the server's logs");
}

#[tokio::test]
async fn retry_after_postpones_the_next_attempt() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let receiver = Receiver::start(&[(503, Some("3"))]).await;
    let secret = app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    app.emit_connection_created().await;

    let got = receiver.wait_for(2).await;
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(2900), "Retry-After: 3 was honoured over the 1 s schedule: {waited:?}");
    got[1].verify(&secret).unwrap();
    assert_ne!(got[0].header("webhook-timestamp"), "", "each attempt is timestamped");
    delivery_when(&app, "ops", "delivered", |d| d["status"] == "delivered").await;
}

#[tokio::test]
async fn a_delivery_that_fails_its_whole_schedule_fails_disables_the_endpoint_and_says_so() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let failing = Receiver::start(&[]).await;
    failing.answer(500);
    let watcher = Receiver::start(&[]).await;
    app.create_webhook("ops", &failing.url, &["Connection Created"]).await;
    let watcher_secret = app.create_webhook("watch", &watcher.url, &["Webhook Disabled"]).await;
    app.emit_connection_created().await;

    let failed = delivery_when(&app, "ops", "the delivery failed", |d| d["status"] == "failed").await;
    assert_eq!(statuses(&failed), vec![json!(500); 3], "three attempts (schedule 1,1), then no more");
    assert_disabled_for_failing_deliveries(&app, "ops").await;

    // The Webhook Disabled event, delivered to the endpoint that subscribed to it.
    let got = watcher.wait_for(1).await;
    got[0].verify(&watcher_secret).unwrap();
    let event = got[0].json();
    assert_eq!(event["type"], "Webhook Disabled");
    assert_eq!(event["data"]["webhook_id"], "ops");
    assert_eq!(event["data"]["reason"], "deliveries_failing");
    assert_eq!(event["data"]["org"], app.org_id.as_str());

    // A manual retry needs the endpoint enabled again.
    let retry = format!("/v1/webhooks/ops/deliveries/{}/retry", failed["id"].as_str().unwrap());
    let refused = app.request(Method::POST, &retry, Some(&app.org), None).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:webhook-disabled");
    let enable = json!({"url": failing.url, "events": ["Connection Created"], "enabled": true});
    let enabled = app.put_webhook("ops", &enable).await;
    enabled.assert_status(StatusCode::OK);
    assert!(enabled.body.get("disabled_reason").is_none(), "{}", enabled.text);

    // Still failing: one more attempt, still failed, no new schedule.
    let again = app.request(Method::POST, &retry, Some(&app.org), None).await;
    again.assert_status(StatusCode::OK);
    assert_eq!((again.body["status"].clone(), statuses(&again.body).len()), (json!("failed"), 4));
    // Fixed: the retry delivers it, under the same id.
    failing.answer(200);
    let fixed = app.request(Method::POST, &retry, Some(&app.org), None).await;
    fixed.assert_status(StatusCode::OK);
    assert_eq!(fixed.body["status"], "delivered");
    assert_eq!(statuses(&fixed.body).last(), Some(&json!(200)));
    let received = failing.received();
    let ids: BTreeSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!((ids.len(), received.len()), (1, 5), "five attempts of one delivery");
    let unknown = "/v1/webhooks/ops/deliveries/msg_aaaaaaaaaaaaaaaaaaaaaaaaaa/retry";
    app.request(Method::POST, unknown, Some(&app.org), None).await.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn during_a_rotation_every_delivery_carries_signatures_by_the_old_and_the_new_secret() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let receiver = Receiver::start(&[]).await;
    let old = app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    let rotated = app.request(Method::POST, "/v1/webhooks/ops/rotate-secret", Some(&app.org), None).await;
    rotated.assert_status(StatusCode::OK);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    app.emit_connection_created().await;

    let got = receiver.wait_for(1).await;
    let signatures: Vec<&str> = got[0].header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    got[0].verify(&new).expect("verifies with the new secret");
    got[0].verify(&old).expect("verifies with the old secret");
    let stranger = "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGwh";
    assert!(got[0].verify(stranger).is_err(), "a signature check that can fail");
}

/// The outbox is rows in the store: a server killed while a delivery is pending (its receiver
/// down) delivers it after a restart, under the same id.
#[tokio::test]
async fn a_pending_delivery_survives_a_crash_of_the_server() {
    let mut app = WebhookApp::spawn(&[("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "2,2,2")]).await;
    let receiver = Receiver::start(&[]).await;
    receiver.answer(503);
    let secret = app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    app.emit_connection_created().await;
    receiver.wait_for(1).await;
    let pending = delivery_when(&app, "ops", "the failed attempt recorded", |d| !statuses(d).is_empty()).await;
    assert_eq!(pending["status"], "pending", "{pending}");

    app.crash_and_restart().await;
    receiver.answer(200);
    let delivered = delivery_when(&app, "ops", "delivered after the restart", |d| d["status"] == "delivered").await;
    let got = receiver.received();
    assert!(got.len() >= 2);
    assert!(got.iter().all(|r| r.header("webhook-id") == delivered["id"]), "one id across the restart");
    got.last().unwrap().verify(&secret).unwrap();
}

fn manual_flags(delivery: &Value) -> Vec<Value> {
    delivery["attempts"].as_array().unwrap().iter().map(|a| a["manual"].clone()).collect()
}

/// The EventBridge envelope of a `Connection Created` of the app's organization that occurred
/// at `at`, as the `webhook-deliver` function receives it.
fn envelope(org: &str, event_id: &str, at: OffsetDateTime) -> Value {
    let at = at.format(&Rfc3339).unwrap();
    json!({
        "id": event_id,
        "detail-type": "Connection Created",
        "source": "latchkey",
        "time": at,
        "detail": {"event_id": event_id, "occurred_at": at, "org": org, "connection_id": "c-late"}
    })
}

/// A redelivered or late message (SQS redelivers for up to days) carries an event older than a
/// webhook created since: that webhook never receives it, while an event after its creation
/// reaches it.
#[tokio::test]
async fn an_event_never_reaches_a_webhook_created_after_it_occurred() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let receiver = Receiver::start(&[]).await;
    let service = app.service().await;
    let before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;

    let late = WebhookMessage::from_eventbridge(&envelope(&app.org_id, "01JLATEEVENT", before)).unwrap();
    let enqueued = service.enqueue_deliveries(&late).await.unwrap();
    assert!(enqueued.is_empty(), "an event older than the webhook: {enqueued:?}");
    let after = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let current = WebhookMessage::from_eventbridge(&envelope(&app.org_id, "01JCURRENTEVENT", after)).unwrap();
    assert_eq!(service.enqueue_deliveries(&current).await.unwrap().len(), 1, "an event after it");

    let delivered = delivery_when(&app, "ops", "the current event delivered", |d| d["status"] == "delivered").await;
    assert_eq!(delivered["event_id"], "01JCURRENTEVENT");
    let ids: Vec<Value> = app.deliveries("ops").await.iter().map(|d| d["event_id"].clone()).collect();
    assert_eq!(ids, [json!("01JCURRENTEVENT")]);
    assert!(receiver.received().iter().all(|r| r.json()["data"]["event_id"] == "01JCURRENTEVENT"));
}

/// Manual retries are marked `manual` and do not count against the schedule: with a schedule
/// of two attempts, two failed manual retries of a pending delivery leave it pending on its
/// schedule with the endpoint enabled; the second scheduled attempt is what fails it.
#[tokio::test]
async fn manual_retries_do_not_count_against_the_schedule_nor_disable_the_endpoint() {
    let app = WebhookApp::spawn(&[("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "6")]).await;
    let receiver = Receiver::start(&[]).await;
    receiver.answer(500);
    app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    app.emit_connection_created().await;

    let first = delivery_when(&app, "ops", "the first attempt recorded", |d| statuses(d).len() == 1).await;
    assert_eq!(first["status"], "pending");
    let due = first["next_attempt_at"].clone();
    assert!(due.is_string(), "{first}");
    let retry = format!("/v1/webhooks/ops/deliveries/{}/retry", first["id"].as_str().unwrap());
    for n in [2, 3] {
        let retried = app.request(Method::POST, &retry, Some(&app.org), None).await;
        retried.assert_status(StatusCode::OK);
        assert_eq!(retried.body["status"], "pending", "{}", retried.text);
        assert_eq!(retried.body["next_attempt_at"], due, "the schedule goes on as it was");
        assert_eq!(statuses(&retried.body).len(), n);
    }
    let hook = app.get("/v1/webhooks/ops", &app.org).await;
    assert_eq!(hook.body["enabled"], true, "{}", hook.text);

    let failed =
        delivery_when(&app, "ops", "failed by its second scheduled attempt", |d| d["status"] == "failed").await;
    assert_eq!(manual_flags(&failed), [json!(false), json!(true), json!(true), json!(false)]);
    assert_eq!(statuses(&failed), vec![json!(500); 4]);
    assert_disabled_for_failing_deliveries(&app, "ops").await;
}

/// One event the endpoint keeps refusing does not disable it while it takes the others: only a
/// delivery failing its whole schedule with nothing delivered to the endpoint since its first
/// attempt does (the other side: `a_delivery_that_fails_its_whole_schedule_…`).
#[tokio::test]
async fn a_failing_event_does_not_disable_an_endpoint_that_received_others_meanwhile() {
    let app = WebhookApp::spawn(&[SCHEDULE]).await;
    let receiver = Receiver::start(&[]).await;
    receiver.answer_when(r#""type":"Connection Created""#, 500);
    app.create_webhook("ops", &receiver.url, &["Connection Created", "Connection Deleted"]).await;
    let connection = app.emit_connection_created().await;
    receiver.wait_for(1).await;
    app.delete_connection(&app.org, &connection).await.assert_status(StatusCode::NO_CONTENT);

    let deleted = |d: &Value| d["event_type"] == "Connection Deleted" && d["status"] == "delivered";
    delivery_when(&app, "ops", "the deletion delivered", deleted).await;
    let created = |d: &Value| d["event_type"] == "Connection Created" && d["status"] == "failed";
    let failed = delivery_when(&app, "ops", "the creation failed", created).await;
    assert_eq!(statuses(&failed), vec![json!(500); 3], "its whole schedule");
    let hook = app.get("/v1/webhooks/ops", &app.org).await;
    assert_eq!(hook.body["enabled"], true, "{}", hook.text);
    assert!(hook.body.get("disabled_reason").is_none(), "{}", hook.text);
}

/// What a scheduled run of bounded length calls: every due delivery is attempted before its
/// deadline, and none is started when the deadline is closer than an attempt's timeout.
#[tokio::test]
async fn deliver_due_until_attempts_what_is_due_and_starts_nothing_past_its_deadline() {
    let backend = Backend::fresh().await;
    let service = service_on(&backend).await;
    let receiver = Receiver::start(&[]).await;
    let org = format!("acme-{}", &random_hex()[..12]);
    let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse(&org).unwrap());
    let body = json!({"url": receiver.url, "events": ["Connection Created"]});
    service.put_webhook(&p, "ops", &body).await.unwrap();
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    for event in ["01JEVENTA", "01JEVENTB", "01JEVENTC"] {
        let message = WebhookMessage::from_eventbridge(&envelope(&org, event, at)).unwrap();
        assert_eq!(service.enqueue_deliveries(&message).await.unwrap().len(), 1);
    }

    let soon = std::time::Instant::now() + Duration::from_secs(1);
    assert_eq!(service.deliver_due_until(soon).await.unwrap(), 0, "less than an attempt's timeout left");
    assert!(receiver.received().is_empty());
    let later = std::time::Instant::now() + Duration::from_secs(60);
    assert_eq!(service.deliver_due_until(later).await.unwrap(), 3);
    let ids: BTreeSet<String> = receiver.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
    assert_eq!(ids.len(), 3, "each delivered once");
    assert_eq!(service.deliver_due_until(later).await.unwrap(), 0, "nothing is due any more");
    assert_eq!(receiver.received().len(), 3);
}

/// An organization whose endpoint holds every attempt to the timeout, with a crowd of deliveries
/// due before another organization's one, does not keep that one waiting: the worker reads due
/// deliveries round by round among organizations, so the other's goes out with the first
/// attempts, not after the crowd's (which here would be two rounds of 8 attempts of 10 s).
#[tokio::test]
async fn a_held_organizations_crowd_of_deliveries_leaves_the_worker_to_the_others() {
    let backend = Backend::fresh().await;
    let options = latchkey::service::ServiceOptions {
        webhook_attempt_timeout: Duration::from_secs(10),
        webhook_retry_schedule: vec![Duration::from_secs(3_600)],
        ..latchkey::service::ServiceOptions::default()
    };
    let service = service_with(&backend, options).await;
    let (held, quick) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
    for _ in 0..12 {
        held.hold_next(Duration::from_secs(30));
    }
    let suffix = &random_hex()[..12];
    let (crowd, other) = (format!("crowd-{suffix}"), format!("other-{suffix}"));
    for (org, url) in [(&crowd, &held.url), (&other, &quick.url)] {
        let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse(org).unwrap());
        service.put_webhook(&p, "ops", &json!({"url": url, "events": ["Connection Created"]})).await.unwrap();
    }
    // The crowd's twelve are enqueued first, so they are due first.
    let at = OffsetDateTime::now_utc();
    for i in 0..12 {
        let message = WebhookMessage::from_eventbridge(&envelope(&crowd, &format!("01JCROWD{i:04}"), at)).unwrap();
        assert_eq!(service.enqueue_deliveries(&message).await.unwrap().len(), 1);
    }
    let message = WebhookMessage::from_eventbridge(&envelope(&other, "01JOTHER0000", at)).unwrap();
    assert_eq!(service.enqueue_deliveries(&message).await.unwrap().len(), 1);

    let started = std::time::Instant::now();
    let worker = tokio::spawn({
        let service = service.clone();
        async move { service.deliver_due(12).await }
    });
    eventually(Duration::from_secs(30), "the other organization's delivery arrives", || async {
        !quick.received().is_empty()
    })
    .await;
    let waited = started.elapsed();
    // Behind the crowd it would be 10 s at least (its first 8 attempts held to the timeout).
    assert!(waited < Duration::from_secs(7), "it waited {waited:?}, behind the crowd's held attempts");
    assert_eq!(worker.await.unwrap().unwrap(), 12, "a read of twelve: the other's and eleven of the crowd's");
    assert_eq!(held.received().len(), 11);
}

/// A receiver slower than the attempt timeout (1 s here, 10 s by default): the attempt is cut
/// off and recorded as `timeout` with no status, and the next attempt of the schedule delivers
/// the same event under the same `webhook-id`.
#[tokio::test]
async fn an_attempt_held_past_the_timeout_is_recorded_as_a_timeout_and_retried_under_the_same_id() {
    let backend = Backend::fresh().await;
    let options = latchkey::service::ServiceOptions {
        webhook_attempt_timeout: Duration::from_secs(1),
        webhook_retry_schedule: vec![Duration::from_secs(1)],
        ..latchkey::service::ServiceOptions::default()
    };
    let service = service_with(&backend, options).await;
    let receiver = Receiver::start(&[]).await;
    receiver.hold_next(Duration::from_secs(8));
    let org = format!("acme-{}", &random_hex()[..12]);
    let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse(&org).unwrap());
    let body = json!({"url": receiver.url, "events": ["Connection Created"]});
    let (_, secret) = service.put_webhook(&p, "ops", &body).await.unwrap();
    let secret = secrecy::ExposeSecret::expose_secret(&secret.expect("a created webhook's secret")).to_owned();
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let message = WebhookMessage::from_eventbridge(&envelope(&org, "01JSLOWEVENT", at)).unwrap();
    let enqueued = service.enqueue_deliveries(&message).await.unwrap();
    assert_eq!(enqueued.len(), 1);

    let first = service.attempt_delivery(enqueued[0].clone()).await.unwrap();
    assert_eq!(first.status, latchkey::domain::DeliveryStatus::Pending, "{first:?}");
    let attempt = &first.attempts[0];
    assert_eq!((attempt.error.as_deref(), attempt.status_code), (Some("timeout"), None), "{attempt:?}");
    assert!((1_000..8_000).contains(&attempt.duration_ms), "cut off at the timeout: {} ms", attempt.duration_ms);

    let listing = latchkey::service::webhooks::DeliveriesQuery::default();
    eventually(Duration::from_secs(30), "the second attempt delivers", || async {
        service.deliver_due(10).await.unwrap();
        let page = service.list_webhook_deliveries(&p, "ops", &listing).await.unwrap();
        page.items[0].status == latchkey::domain::DeliveryStatus::Delivered
    })
    .await;
    let delivered = service.list_webhook_deliveries(&p, "ops", &listing).await.unwrap().items.remove(0);
    let errors: Vec<Option<&str>> = delivered.attempts.iter().map(|a| a.error.as_deref()).collect();
    let codes: Vec<Option<u16>> = delivered.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!((errors, codes), (vec![Some("timeout"), None], vec![None, Some(200)]));
    let got = receiver.received();
    assert_eq!(got.len(), 2, "the held attempt and the one that delivered");
    assert!(got.iter().all(|r| r.header("webhook-id") == delivered.id), "one id for both attempts");
    for r in &got {
        r.verify(&secret).unwrap_or_else(|e| panic!("a delivery does not verify: {e}"));
    }
}
