//! `GET /v1/webhooks/{id}/deliveries`: pages by `cursor`/`next_cursor` and the `status` filter,
//! and the README's recovery: re-enable the endpoint, list its failed deliveries, retry each.

use std::collections::BTreeSet;
use std::time::Duration;

use latchkey::service::webhooks::WebhookMessage;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::WebhookApp;
use super::receiver::Receiver;
use crate::harness::eventually;

/// A `Connection Created` of `org` as the bus carries it, with its own event id.
fn envelope(org: &str, event_id: &str, at: OffsetDateTime) -> Value {
    let at = at.format(&Rfc3339).unwrap();
    json!({
        "id": event_id,
        "detail-type": "Connection Created",
        "source": "latchkey",
        "time": at,
        "detail": {"event_id": event_id, "occurred_at": at, "org": org, "connection_id": "c-listed"}
    })
}

/// `GET …/deliveries{query}`: the answer's body, after checking it is a 200.
async fn page(app: &WebhookApp, query: &str) -> Value {
    let listed = app.get(&format!("/v1/webhooks/ops/deliveries{query}"), &app.org).await;
    listed.assert_status(StatusCode::OK);
    listed.body
}

/// Follows `next_cursor` from the first page of `query` (which has a `?`) to the end: the pages.
async fn pages(app: &WebhookApp, query: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut body = page(app, query).await;
    for _ in 0..20 {
        out.push(body["items"].as_array().unwrap().clone());
        match body["next_cursor"].as_str() {
            Some(cursor) => body = page(app, &format!("{query}&cursor={cursor}")).await,
            None => {
                assert_eq!(body["next_cursor"], Value::Null, "the last page says so");
                return out;
            }
        }
    }
    panic!("a listing that never ends");
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn deliveries_page_by_cursor_filter_by_status_and_failed_ones_are_retried_after_re_enabling() {
    let app = WebhookApp::spawn(&[("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "1")]).await;
    let receiver = Receiver::start(&[]).await;
    receiver.answer_when("FAIL", 500);
    let secret = app.create_webhook("ops", &receiver.url, &["Connection Created"]).await;
    let service = app.service().await;
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let events = ["01JOKEVENTA", "01JFAILEVENTB", "01JOKEVENTC", "01JFAILEVENTD", "01JOKEVENTE"];
    for event in events {
        let message = WebhookMessage::from_eventbridge(&envelope(&app.org_id, event, at)).unwrap();
        assert_eq!(service.enqueue_deliveries(&message).await.unwrap().len(), 1);
    }
    // The server's worker delivers three and fails two (two attempts each, a second apart).
    eventually(Duration::from_secs(30), "every delivery settled", || async {
        let all = app.deliveries("ops").await;
        all.len() == 5 && all.iter().all(|d| d["status"] != "pending")
    })
    .await;
    let all = page(&app, "?limit=100").await["items"].as_array().unwrap().clone();

    // Pages of two: every delivery once, in the listing's order, and no cursor after the last.
    let by_two = pages(&app, "?limit=2").await;
    assert_eq!(by_two.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(ids(&by_two.concat()), ids(&all), "the pages are the listing, newest first");

    // The filter, paged past what does not match.
    let failed = pages(&app, "?status=failed&limit=1").await.concat();
    let failed_events: BTreeSet<&str> = failed.iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(failed_events, BTreeSet::from(["01JFAILEVENTB", "01JFAILEVENTD"]));
    assert!(failed.iter().all(|d| d["status"] == "failed"));
    let delivered = pages(&app, "?status=delivered").await.concat();
    assert_eq!(delivered.len(), 3);
    assert!(delivered.iter().all(|d| d["status"] == "delivered"));
    assert!(pages(&app, "?status=pending").await.concat().is_empty());

    for (query, field) in [("?status=lost", "status"), ("?cursor=not-a-cursor", "cursor"), ("?limit=0", "limit")] {
        let refused = app.get(&format!("/v1/webhooks/ops/deliveries{query}"), &app.org).await;
        refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.error_fields(), [field], "{query}");
    }

    // The README's recovery: enable the endpoint again (it may have been disabled), list the
    // failed deliveries and retry each, under its own id.
    receiver.forget_rules();
    let enable = json!({"url": receiver.url, "events": ["Connection Created"], "enabled": true});
    app.put_webhook("ops", &enable).await.assert_status(StatusCode::OK);
    for d in &failed {
        let retry = format!("/v1/webhooks/ops/deliveries/{}/retry", d["id"].as_str().unwrap());
        let retried = app.request(Method::POST, &retry, Some(&app.org), None).await;
        retried.assert_status(StatusCode::OK);
        assert_eq!(retried.body["status"], "delivered", "{}", retried.text);
    }
    assert!(pages(&app, "?status=failed").await.concat().is_empty(), "no failed delivery left");
    for d in &failed {
        let id = d["id"].as_str().unwrap();
        let last = receiver.received().into_iter().rev().find(|r| r.header("webhook-id") == id).unwrap();
        last.verify(&secret).unwrap();
    }
}
