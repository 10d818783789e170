//! Store cases for webhooks and their deliveries (SPEC section 11).

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use super::{fresh_org, now};
use crate::crypto::Sealed;
use crate::domain::{DeliveryAttempt, DeliveryStatus, OrgId, Webhook, WebhookDelivery, WebhookId, delivery_id};
use crate::ports::{DeliveryCursor, Expect, Store, StoreError};

/// A webhook of `org` at version 1.
fn webhook(org: &OrgId, id: &str) -> Webhook {
    Webhook {
        org: org.clone(),
        id: WebhookId::parse(id).expect("valid webhook id"),
        url: format!("https://hooks.example.com/{id}"),
        events: vec!["Connection Created".into(), "Connection Expired".into()],
        enabled: true,
        disabled_reason: None,
        secrets: Sealed { key_id: "k".into(), wrapped_key: vec![1; 40], ciphertext: vec![2; 40] },
        previous_until: None,
        last_delivered_at: None,
        version: 1,
        created_at: now(),
        updated_at: now(),
    }
}

/// A new pending delivery of `event` to `hook`, due at `due`.
fn delivery(hook: &Webhook, event: &str, created_at: OffsetDateTime, due: OffsetDateTime) -> WebhookDelivery {
    WebhookDelivery {
        org: hook.org.clone(),
        webhook_id: hook.id.clone(),
        id: delivery_id(&hook.org, &hook.id, event),
        event_id: event.to_owned(),
        event_type: "Connection Created".into(),
        payload: format!(
            r#"{{"type":"Connection Created","timestamp":"2026-01-01T00:00:00Z","data":{{"e":"{event}"}}}}"#
        ),
        status: DeliveryStatus::Pending,
        version: 1,
        attempts: Vec::new(),
        next_attempt_at: Some(due),
        created_at,
        expires_at: created_at + Duration::days(30),
    }
}

/// The first page of a webhook's deliveries, every status.
async fn list(store: &Arc<dyn Store>, org: &OrgId, hook: &WebhookId, limit: usize) -> Vec<WebhookDelivery> {
    store.list_deliveries(org, hook, None, limit, None).await.expect("list deliveries").items
}

fn ids(deliveries: &[WebhookDelivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.id.as_str()).collect()
}

pub async fn webhooks_round_trip_with_conditional_puts(store: Arc<dyn Store>) {
    let org = fresh_org();
    let mut hook = webhook(&org, "ops");
    store.put_webhook(&hook, Expect::Absent).await.expect("create");
    assert!(matches!(store.put_webhook(&hook, Expect::Absent).await, Err(StoreError::Conflict)), "ids are unique");
    assert_eq!(store.get_webhook(&org, &hook.id).await.unwrap(), Some(hook.clone()), "round trip");

    hook.version = 2;
    hook.enabled = false;
    hook.disabled_reason = Some("deliveries_failing".into());
    hook.events = vec!["Webhook Disabled".into()];
    assert!(matches!(store.put_webhook(&hook, Expect::Version(7)).await, Err(StoreError::Conflict)));
    store.put_webhook(&hook, Expect::Version(1)).await.expect("conditional replace");
    assert!(
        matches!(store.put_webhook(&hook, Expect::Version(1)).await, Err(StoreError::Conflict)),
        "a stale version loses"
    );
    assert_eq!(store.get_webhook(&org, &hook.id).await.unwrap(), Some(hook.clone()));

    let ghost = webhook(&org, "ghost");
    assert!(
        matches!(store.put_webhook(&ghost, Expect::Version(1)).await, Err(StoreError::Conflict)),
        "replacing needs a stored webhook"
    );
    assert!(store.get_webhook(&org, &ghost.id).await.unwrap().is_none());

    // Ordered by id, whatever the order of creation.
    store.put_webhook(&webhook(&org, "crm"), Expect::Absent).await.unwrap();
    store.put_webhook(&webhook(&org, "audit.v2"), Expect::Absent).await.unwrap();
    let listed: Vec<_> = store.list_webhooks(&org).await.unwrap().into_iter().map(|h| h.id.to_string()).collect();
    assert_eq!(listed, ["audit.v2", "crm", "ops"]);

    // Another organization sees none of them and has its own ids.
    let other = fresh_org();
    assert!(store.get_webhook(&other, &hook.id).await.unwrap().is_none());
    assert!(store.list_webhooks(&other).await.unwrap().is_empty());
    assert!(!store.delete_webhook(&other, &hook.id).await.unwrap());
    let mut moved = hook.clone();
    moved.org = other.clone();
    moved.version = 3;
    assert!(matches!(store.put_webhook(&moved, Expect::Version(2)).await, Err(StoreError::Conflict)));
    store.put_webhook(&webhook(&other, "ops"), Expect::Absent).await.expect("the same id in another org");
    assert_eq!(store.get_webhook(&org, &hook.id).await.unwrap().map(|h| h.version), Some(2), "untouched");

    assert!(store.delete_webhook(&org, &hook.id).await.unwrap());
    assert!(!store.delete_webhook(&org, &hook.id).await.unwrap(), "second delete finds nothing");
    assert!(store.get_webhook(&org, &hook.id).await.unwrap().is_none());
    assert_eq!(store.list_webhooks(&org).await.unwrap().len(), 2);
    assert!(store.get_webhook(&other, &hook.id).await.unwrap().is_some(), "the other org's is kept");
}

pub async fn deliveries_are_inserted_once_and_listed_newest_first(store: Arc<dyn Store>) {
    let org = fresh_org();
    let hook = webhook(&org, "ops");
    store.put_webhook(&hook, Expect::Absent).await.unwrap();
    let t0 = now();
    // Created a millisecond apart, and two in the same millisecond (ordered by id then).
    let mut made = Vec::new();
    for (i, offset) in [0, 1, 2, 2, 3].into_iter().enumerate() {
        let d = delivery(&hook, &format!("evt-{i}"), t0 + Duration::milliseconds(offset), t0);
        assert!(store.insert_delivery(&d).await.unwrap(), "a new delivery is written");
        made.push(d);
    }
    let first = &made[0].clone();
    assert_eq!(store.get_delivery(&org, &hook.id, &first.id).await.unwrap().as_ref(), Some(first), "round trip");

    // Put-if-absent: a second insert of one id changes nothing.
    let mut again = first.clone();
    again.payload = "{}".into();
    again.status = DeliveryStatus::Failed;
    assert!(!store.insert_delivery(&again).await.unwrap(), "an existing id is not written");
    assert_eq!(store.get_delivery(&org, &hook.id, &first.id).await.unwrap().as_ref(), Some(first));

    // A delivery past its expiry is forgotten (purged, or left for TTL): its id is free.
    let long_ago = t0 - Duration::days(31);
    let mut stale = delivery(&hook, "evt-stale", long_ago, long_ago);
    stale.expires_at = t0 - Duration::days(1);
    assert!(store.insert_delivery(&stale).await.unwrap());
    let renewed = delivery(&hook, "evt-stale", t0 + Duration::milliseconds(4), t0);
    assert!(store.insert_delivery(&renewed).await.unwrap(), "an expired delivery does not hold its id");
    assert_eq!(store.get_delivery(&org, &hook.id, &renewed.id).await.unwrap().as_ref(), Some(&renewed));
    made.push(renewed);

    let mut expected = made.clone();
    expected.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let listed = list(&store, &org, &hook.id, 50).await;
    assert_eq!(listed, expected, "newest first, then by id");
    let top = list(&store, &org, &hook.id, 3).await;
    assert_eq!(ids(&top), ids(&expected[..3]), "the newest `limit`");

    // Another webhook, or another organization, sees none of them.
    let other_hook = webhook(&org, "crm");
    assert!(store.get_delivery(&org, &other_hook.id, &first.id).await.unwrap().is_none());
    assert!(list(&store, &org, &other_hook.id, 50).await.is_empty());
    let other = fresh_org();
    assert!(store.get_delivery(&other, &hook.id, &first.id).await.unwrap().is_none());
    assert!(list(&store, &other, &hook.id, 50).await.is_empty());
}

pub async fn concurrent_inserts_of_one_delivery_have_one_winner(store: Arc<dyn Store>) {
    let org = fresh_org();
    let hook = webhook(&org, "ops");
    let t0 = now();
    let d = delivery(&hook, "evt-race", t0, t0);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, d) = (store.clone(), d.clone());
            tokio::spawn(async move { store.insert_delivery(&d).await })
        })
        .collect();
    let mut written = 0;
    for t in tasks {
        if t.await.expect("task").expect("insert") {
            written += 1;
        }
    }
    assert_eq!(written, 1, "exactly one insert writes");
    assert_eq!(list(&store, &org, &hook.id, 10).await, vec![d]);
}

pub async fn delivery_updates_are_conditional_on_the_version(store: Arc<dyn Store>) {
    let org = fresh_org();
    let hook = webhook(&org, "ops");
    let t0 = now();
    let d = delivery(&hook, "evt-1", t0, t0);
    assert!(store.insert_delivery(&d).await.unwrap());

    // Two workers claim the same version: one wins.
    let mut claimed = d.clone();
    claimed.version = 2;
    claimed.next_attempt_at = Some(t0 + Duration::seconds(60));
    store.update_delivery(&claimed, 1).await.expect("claim");
    assert!(matches!(store.update_delivery(&claimed, 1).await, Err(StoreError::Conflict)), "a second claim loses");

    let mut done = claimed.clone();
    done.version = 3;
    done.status = DeliveryStatus::Delivered;
    done.next_attempt_at = None;
    done.attempts.push(DeliveryAttempt {
        at: t0 + Duration::milliseconds(5),
        status_code: Some(204),
        error: None,
        duration_ms: 42,
        manual: false,
    });
    assert!(matches!(store.update_delivery(&done, 7).await, Err(StoreError::Conflict)), "a wrong version");
    store.update_delivery(&done, 2).await.expect("record the attempt");
    assert_eq!(store.get_delivery(&org, &hook.id, &d.id).await.unwrap(), Some(done.clone()));

    // Nothing is updated in another organization or under another webhook, nor brought back.
    let mut moved = done.clone();
    moved.org = fresh_org();
    moved.version = 4;
    assert!(matches!(store.update_delivery(&moved, 3).await, Err(StoreError::Conflict)));
    let mut elsewhere = done.clone();
    elsewhere.webhook_id = WebhookId::parse("crm").unwrap();
    elsewhere.version = 4;
    assert!(matches!(store.update_delivery(&elsewhere, 3).await, Err(StoreError::Conflict)));
    let ghost = delivery(&hook, "evt-never-inserted", t0, t0);
    assert!(matches!(store.update_delivery(&ghost, 1).await, Err(StoreError::Conflict)), "update never creates");
    assert!(store.get_delivery(&org, &hook.id, &ghost.id).await.unwrap().is_none());
    assert!(store.get_delivery(&moved.org, &hook.id, &d.id).await.unwrap().is_none());
}

pub async fn deleting_a_webhook_deletes_its_deliveries(store: Arc<dyn Store>) {
    let org = fresh_org();
    let (ops, crm) = (webhook(&org, "ops"), webhook(&org, "crm"));
    store.put_webhook(&ops, Expect::Absent).await.unwrap();
    store.put_webhook(&crm, Expect::Absent).await.unwrap();
    // Due long ago, so that the due query finds them first whatever else the store holds.
    let due = now() - Duration::days(300);
    let t0 = now();
    let gone: Vec<_> = (0..30).map(|i| delivery(&ops, &format!("evt-{i}"), t0, due)).collect();
    for d in &gone {
        assert!(store.insert_delivery(d).await.unwrap());
    }
    let kept = delivery(&crm, "evt-0", t0, due);
    assert!(store.insert_delivery(&kept).await.unwrap());

    assert!(store.delete_webhook(&org, &ops.id).await.unwrap());
    assert!(list(&store, &org, &ops.id, 100).await.is_empty(), "its deliveries are gone");
    assert!(store.get_delivery(&org, &ops.id, &gone[0].id).await.unwrap().is_none());
    let due_now: Vec<_> =
        store.due_deliveries(due, 1_000).await.unwrap().into_iter().filter(|d| d.org == org).collect();
    assert_eq!(due_now, vec![kept.clone()], "only the other webhook's delivery is still due");
    assert_eq!(list(&store, &org, &crm.id, 100).await, vec![kept], "another webhook's are kept");

    // A webhook created again under the same id starts with no deliveries.
    store.put_webhook(&ops, Expect::Absent).await.unwrap();
    assert!(list(&store, &org, &ops.id, 100).await.is_empty());
    assert!(store.insert_delivery(&gone[0]).await.unwrap(), "the id is free again");
}

pub async fn due_deliveries_are_pending_soonest_first_across_orgs(store: Arc<dyn Store>) {
    let (a, b) = (fresh_org(), fresh_org());
    let (hook_a, hook_b) = (webhook(&a, "ops"), webhook(&b, "ops"));
    // A moment of this case's own, long ago: nothing else in a shared store is due before it.
    let until = now() - Duration::days(400) - Duration::milliseconds(i64::from(rand::random::<u16>()));
    let created = now();
    let at = |ms: i64| until + Duration::milliseconds(ms);
    let first = delivery(&hook_b, "evt-1", created, at(-3_000));
    let second = delivery(&hook_a, "evt-2", created, at(-2_000));
    let third = delivery(&hook_b, "evt-3", created, at(-1));
    let on_time = delivery(&hook_a, "evt-4", created, at(0));
    let later = delivery(&hook_a, "evt-5", created, at(1));
    let mut delivered = delivery(&hook_a, "evt-6", created, at(-5_000));
    delivered.status = DeliveryStatus::Delivered;
    delivered.next_attempt_at = None;
    let mut failed = delivery(&hook_b, "evt-7", created, at(-4_000));
    failed.status = DeliveryStatus::Failed;
    // Inserted out of order.
    for d in [&later, &third, &delivered, &on_time, &first, &failed, &second] {
        assert!(store.insert_delivery(d).await.unwrap());
    }
    let ours = |ds: Vec<WebhookDelivery>| -> Vec<WebhookDelivery> {
        ds.into_iter().filter(|d| d.org == a || d.org == b).collect()
    };
    let due = ours(store.due_deliveries(until, 1_000).await.unwrap());
    assert_eq!(
        ids(&due),
        vec![first.id.as_str(), second.id.as_str(), third.id.as_str(), on_time.id.as_str()],
        "pending only, at or before `until`, soonest first, every organization"
    );
    assert_eq!(due[0], first, "whole records");
    let two = store.due_deliveries(until, 2).await.unwrap();
    assert_eq!(ids(&two), vec![first.id.as_str(), second.id.as_str()], "at most `limit`");
    assert_eq!(ids(&ours(store.due_deliveries(at(-3_001), 1_000).await.unwrap())), Vec::<&str>::new());

    // Claiming moves a delivery later; finishing takes it out; a retry brings it back.
    let mut claimed = first.clone();
    claimed.version = 2;
    claimed.next_attempt_at = Some(at(60_000));
    store.update_delivery(&claimed, 1).await.unwrap();
    let mut done = second.clone();
    done.version = 2;
    done.status = DeliveryStatus::Delivered;
    done.next_attempt_at = None;
    store.update_delivery(&done, 1).await.unwrap();
    let mut gave_up = third.clone();
    gave_up.version = 2;
    gave_up.status = DeliveryStatus::Failed;
    store.update_delivery(&gave_up, 1).await.unwrap();
    let due = ours(store.due_deliveries(until, 1_000).await.unwrap());
    assert_eq!(ids(&due), vec![on_time.id.as_str()], "claimed, delivered and failed ones are not due");
    let due = ours(store.due_deliveries(at(60_000), 1_000).await.unwrap());
    assert_eq!(
        ids(&due),
        vec![on_time.id.as_str(), claimed.id.as_str(), later.id.as_str()],
        "the claim's lease ends (round by round: each organization's soonest, then a's second)"
    );
    assert_eq!(due[1], claimed);
    let mut retried = gave_up.clone();
    retried.version = 3;
    retried.status = DeliveryStatus::Pending;
    retried.next_attempt_at = Some(at(-10_000));
    store.update_delivery(&retried, 2).await.unwrap();
    let due = ours(store.due_deliveries(until, 1_000).await.unwrap());
    assert_eq!(ids(&due), vec![retried.id.as_str(), on_time.id.as_str()]);
}

/// Due deliveries come round by round among organizations (the port's order): one
/// organization's crowd of older deliveries (an endpoint that holds every attempt) does not fill
/// a read that another organization's later delivery waits behind.
pub async fn due_deliveries_go_round_by_round_among_organizations(store: Arc<dyn Store>) {
    let (crowd, other, third) = (fresh_org(), fresh_org(), fresh_org());
    let (hook_a, hook_b, hook_c) = (webhook(&crowd, "ops"), webhook(&other, "ops"), webhook(&third, "ops"));
    // A moment of this case's own, long ago: nothing else in a shared store is due before it.
    let until = now() - Duration::days(500) - Duration::milliseconds(i64::from(rand::random::<u16>()));
    let at = |ms: i64| until + Duration::milliseconds(ms);
    let crowded: Vec<WebhookDelivery> =
        (0..6).map(|i| delivery(&hook_a, &format!("evt-a{i}"), now(), at(-6_000 + i * 1_000))).collect();
    let late = delivery(&hook_b, "evt-b0", now(), at(-500));
    let thirds = [delivery(&hook_c, "evt-c0", now(), at(-5_500)), delivery(&hook_c, "evt-c1", now(), at(-200))];
    for d in crowded.iter().chain([&late]).chain(&thirds) {
        assert!(store.insert_delivery(d).await.unwrap());
    }
    let ours = |ds: Vec<WebhookDelivery>| -> Vec<WebhookDelivery> {
        ds.into_iter().filter(|d| [&crowd, &other, &third].contains(&&d.org)).collect()
    };
    let due = ours(store.due_deliveries(until, 1_000).await.unwrap());
    let a = |i: usize| crowded[i].id.as_str();
    assert_eq!(
        ids(&due),
        vec![a(0), thirds[0].id.as_str(), late.id.as_str(), a(1), thirds[1].id.as_str(), a(2), a(3), a(4), a(5)],
        "each organization's soonest, then each one's second..., soonest first within a round"
    );
    let three = store.due_deliveries(until, 3).await.unwrap();
    assert_eq!(
        ids(&three),
        vec![a(0), thirds[0].id.as_str(), late.id.as_str()],
        "a read of three is every organization's soonest, not the crowd's three oldest"
    );
}

/// Every page of a listing, following `next` to its end (at most 100 pages).
async fn all_pages(
    store: &Arc<dyn Store>,
    hook: &Webhook,
    status: Option<DeliveryStatus>,
    limit: usize,
) -> Vec<Vec<WebhookDelivery>> {
    let mut pages = Vec::new();
    let mut cursor: Option<DeliveryCursor> = None;
    for _ in 0..100 {
        let page = store.list_deliveries(&hook.org, &hook.id, status, limit, cursor.as_ref()).await.expect("a page");
        assert!(page.items.len() <= limit, "a page holds at most `limit`");
        let last = page.items.last().map(DeliveryCursor::after);
        pages.push(page.items);
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), last.as_ref(), "the cursor is after the page's last delivery");
                cursor = Some(next);
            }
            None => return pages,
        }
    }
    panic!("a listing that never ends");
}

pub async fn webhook_deliveries_page_by_cursor_and_filter_by_status(store: Arc<dyn Store>) {
    let org = fresh_org();
    let hook = webhook(&org, "ops");
    let t0 = now();
    // Eleven deliveries, three of them sharing one millisecond (the keyset's tie on id), every
    // third one failed and one delivered.
    let mut made = Vec::new();
    for i in 0..11 {
        let offset = if (4..7).contains(&i) { 4 } else { i };
        let mut d = delivery(&hook, &format!("evt-{i}"), t0 + Duration::milliseconds(offset), t0);
        if i % 3 == 0 {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
        } else if i == 7 {
            d.status = DeliveryStatus::Delivered;
            d.next_attempt_at = None;
        }
        assert!(store.insert_delivery(&d).await.unwrap());
        made.push(d);
    }
    made.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    // Pages of 4, then 4, then 3: every delivery once, in order, and no cursor after the last.
    let pages = all_pages(&store, &hook, None, 4).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 3]);
    assert_eq!(pages.concat(), made, "the pages are the listing, newest first");
    // A page that holds exactly the rest says no more follow.
    let whole = all_pages(&store, &hook, None, 11).await;
    assert_eq!(whole, [made.clone()]);

    // The filter: only that status, paged past the others (on DynamoDB a FilterExpression, read
    // on until the page fills).
    let failed: Vec<_> = made.iter().filter(|d| d.status == DeliveryStatus::Failed).cloned().collect();
    assert_eq!(failed.len(), 4);
    let pages = all_pages(&store, &hook, Some(DeliveryStatus::Failed), 3).await;
    assert_eq!(pages.concat(), failed, "every failed delivery, newest first, and nothing else");
    assert_eq!(pages[0].len(), 3, "a filtered page fills though others lie between");
    let delivered = all_pages(&store, &hook, Some(DeliveryStatus::Delivered), 5).await.concat();
    assert_eq!(ids(&delivered), [made.iter().find(|d| d.status == DeliveryStatus::Delivered).unwrap().id.as_str()]);
    let pending = all_pages(&store, &hook, Some(DeliveryStatus::Pending), 50).await.concat();
    assert_eq!(pending.len(), 6);
    assert!(pending.iter().all(|d| d.status == DeliveryStatus::Pending));

    // A cursor from its text form resumes where it was made; one past the oldest finds nothing.
    let first = store.list_deliveries(&org, &hook.id, None, 2, None).await.unwrap();
    let text = first.next.expect("more follow").to_string();
    let resumed = DeliveryCursor::parse(&text).expect("the cursor reads back");
    let second = store.list_deliveries(&org, &hook.id, None, 2, Some(&resumed)).await.unwrap();
    assert_eq!(second.items, made[2..4]);
    let end = DeliveryCursor::after(made.last().unwrap());
    let past = store.list_deliveries(&org, &hook.id, None, 5, Some(&end)).await.unwrap();
    assert!(past.items.is_empty() && past.next.is_none());
    // Another webhook's cursor position lists only this webhook's deliveries.
    let other = webhook(&org, "crm");
    let elsewhere = store.list_deliveries(&org, &other.id, None, 5, Some(&resumed)).await.unwrap();
    assert!(elsewhere.items.is_empty());
}
