//! The sweep's fan-out (`service::refresh::fanout`, `lambda::refresh_worker`): a tick above the
//! inline bound enqueues every due connection instead of refreshing it, one message per
//! organization (chunked), a backlog above the low water holds the next tick back, the worker
//! refreshes each entry once, a redelivered or duplicate entry is a no-op (re-checked, never a
//! second provider call), and only entries whose store did not answer (or that the deadline left)
//! are tried again: sent as a new delayed message, or, when that fails, their message handed back
//! as a batch item failure. The service runs in process on the backend `LATCHKEY_TEST_BACKEND`
//! names, against oauth2-mock-server; the SQS adapter runs against moto's SQS.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey::config::Components;
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::lambda::{
    MessageVisibility, RETRY_VISIBILITY, SqsEvent, SqsRefreshQueue, SqsVisibility, VisibilityError,
    handle_refresh_messages,
};
use latchkey::ports::DueEntry;
use latchkey::service::ServiceOptions;
use latchkey::service::{
    FanoutPolicy, MAX_SENDS, QueueError, RefreshMessage, RefreshOutcome, RefreshQueue, RefreshTick,
};
use serde_json::{Value, json};
use support::oauth::MockServer;
use support::{calls, moto};

use crate::harness::{Backend, eventually};

const ORG: &str = "acme";
const OTHER: &str = "globex";

/// The queue of these tests: messages in memory with the delay each was sent with, the backlog
/// their count; refuses every send when `refuse`.
#[derive(Default)]
struct MemoryQueue {
    messages: Mutex<Vec<(RefreshMessage, Duration)>>,
    refuse: bool,
}

impl MemoryQueue {
    fn refusing() -> Self {
        Self { refuse: true, ..Self::default() }
    }

    fn take(&self) -> Vec<(RefreshMessage, Duration)> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }

    fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

#[async_trait]
impl RefreshQueue for MemoryQueue {
    async fn enqueue(&self, messages: &[RefreshMessage], delay: Duration) -> Result<(), QueueError> {
        if self.refuse {
            return Err(QueueError::Refused(messages.len()));
        }
        self.messages.lock().unwrap().extend(messages.iter().map(|m| (m.clone(), delay)));
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        Ok(self.len() as u64)
    }
}

fn options() -> ServiceOptions {
    ServiceOptions {
        public_url: Some("http://127.0.0.1:9".to_owned()),
        allow_loopback_providers: true,
        ..ServiceOptions::default()
    }
}

/// The service over `backend`: the embedded store in its data directory, or its table and key in
/// moto (events to moto's default bus).
async fn components(backend: &Backend) -> Components {
    match backend.aws() {
        None => Components::embedded(backend.data_dir(), options()).unwrap(),
        Some(aws) => {
            let config = moto::sdk_config_for(&aws.endpoint).await;
            Components::aws(
                aws_sdk_dynamodb::Client::new(&config),
                aws_sdk_kms::Client::new(&config),
                aws_sdk_eventbridge::Client::new(&config),
                &aws.table,
                &aws.kms_key_id,
                "default",
                options(),
            )
        }
    }
}

fn refreshes(stats: &Value) -> u64 {
    stats["token_requests"]["refresh_token"].as_u64().unwrap_or(0)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// `n` imported OAuth connections of `org` whose 2 s tokens are due for a refresh (after half
/// their life), refreshed at `mock`; their ids.
async fn due_connections(app: &Components, mock: &MockServer, org: &str, n: usize) -> BTreeSet<String> {
    let org = OrgId::parse(org).unwrap();
    let p = Principal::organization(org.clone());
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"},
        "clientSecret": {"type": "password", "default": "cs"}}});
    app.service.put_definition(&p, "idp", &def).await.unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let body = json!({"definition": "idp", "customer": format!("c-{i}"),
            "tokens": {"access_token": format!("at-{i}"), "refresh_token": format!("rt-{i}"), "expires_in": 2}});
        ids.insert(app.service.create_connection(&p, &body).await.unwrap().id.to_string());
    }
    // Due where a tick looks: the index, which files a due time under the next whole second.
    eventually(Duration::from_secs(20), "the imported tokens to be due", || async {
        let now = time::OffsetDateTime::now_utc();
        let mut indexed = BTreeSet::new();
        for shard in 0..app.store.due_shards() {
            let due = app.store.due_connections(shard, now, None, 1_000).await.unwrap();
            indexed.extend(due.into_iter().filter(|e| e.org == org).map(|e| e.id.to_string()));
        }
        ids.is_subset(&indexed)
    })
    .await;
    ids
}

/// Due entries of `org` for `ids` (due time 0: the worker re-reads the record anyway).
fn entries_of(org: &str, ids: &BTreeSet<String>) -> Vec<DueEntry> {
    ids.iter()
        .map(|id| DueEntry { org: OrgId::parse(org).unwrap(), id: ConnectionId::parse(id).unwrap(), due: 0 })
        .collect()
}

/// Above `inline_max` due connections a tick enqueues them all, one message per organization of
/// at most `message_entries`, and refreshes none; a second tick while they wait (backlog above
/// the low water) enqueues nothing, so no entry is queued twice; the worker refreshes each once;
/// the same entries delivered again (SQS's at-least-once, or a duplicate enqueue) find nothing
/// due and call no provider; and with nothing due the tick sweeps inline.
#[tokio::test]
async fn a_tick_above_the_inline_bound_dispatches_by_organization_and_each_entry_is_refreshed_once() {
    let backend = Backend::fresh().await;
    let app = components(&backend).await;
    let mock = MockServer::start(json!({})).await;
    let acme = due_connections(&app, &mock, ORG, 3).await;
    let globex = due_connections(&app, &mock, OTHER, 2).await;
    let queue = MemoryQueue::default();
    let fanout = FanoutPolicy { inline_max: 2, low_water: 0, concurrency: 2, message_entries: 2 };

    let tick = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Dispatched(summary) = tick else { panic!("5 due > 2: dispatched, not {tick:?}") };
    assert_eq!((summary.due, summary.enqueued, summary.messages, summary.held_back), (5, 5, 3, false), "{summary:?}");
    assert_eq!(refreshes(&mock.stats().await), 0, "the tick refreshes nothing itself");
    let queued = queue.messages.lock().unwrap().clone();
    let mut sizes: Vec<(String, usize)> = queued.iter().map(|(m, _)| (m.org.to_string(), m.entries.len())).collect();
    sizes.sort();
    assert_eq!(sizes, [(ORG.into(), 1), (ORG.into(), 2), (OTHER.into(), 2)], "by organization, at most 2 each");
    assert!(queued.iter().all(|(m, delay)| delay.is_zero() && m.attempt == 0), "sent at once, first send");
    let entries: Vec<DueEntry> = queued.iter().flat_map(|(m, _)| m.due_entries()).collect();
    let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids.len(), 5, "each entry once: {ids:?}");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), acme.union(&globex).cloned().collect::<BTreeSet<_>>());
    for e in &entries {
        let org = if acme.contains(e.id.as_str()) { ORG } else { OTHER };
        assert_eq!(e.org.as_str(), org, "each entry in its organization's message");
    }

    let held = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Dispatched(summary) = held else { panic!("still 5 due: {held:?}") };
    assert!(summary.held_back, "{summary:?}");
    assert_eq!((summary.backlog, summary.enqueued), (3, 0), "{summary:?}");
    assert_eq!(queue.len(), 3, "nothing queued twice");

    queue.take();
    let outcomes = app.service.refresh_due_entries(&entries, deadline()).await;
    assert_eq!(outcomes, [RefreshOutcome::Refreshed; 5]);
    assert_eq!(refreshes(&mock.stats().await), 5, "one refresh each");

    let again = app.service.refresh_due_entries(&entries, deadline()).await;
    assert_eq!(again, [RefreshOutcome::Skipped; 5], "refreshed already: nothing to do");
    assert!(again.iter().all(|o| !o.retry()));
    assert_eq!(refreshes(&mock.stats().await), 5, "no second provider call");

    let quiet = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Inline(summary) = quiet else { panic!("nothing due: inline, not {quiet:?}") };
    assert_eq!((summary.due, summary.refreshed), (0, 0), "{summary:?}");
    assert_eq!(queue.len(), 0);
}

/// The worker's handler over both body formats: entries not started before the batch's deadline
/// are sent again, only they, as one delayed message per message they came in (attempt counted),
/// and the batch hands nothing back; a message already sent `MAX_SENDS` times is left to the next
/// tick; without a queue, or when the queue refuses, the message is handed back whole, first
/// made visible again within a minute (and still handed back when SQS refuses that). Then the
/// tick without a queue sweeps inline, as before.
#[tokio::test]
async fn a_worker_past_its_deadline_sends_its_entries_again_or_hands_their_messages_back() {
    let backend = Backend::fresh().await;
    let app = components(&backend).await;
    let mock = MockServer::start(json!({})).await;
    let ids = due_connections(&app, &mock, ORG, 3).await;
    let entries = entries_of(ORG, &ids);

    let late = app.service.refresh_due_entries(&entries, Instant::now()).await;
    assert_eq!(late, [RefreshOutcome::Deferred; 3]);
    assert!(late.iter().all(|o| o.retry()), "to retry");
    assert_eq!(refreshes(&mock.stats().await), 0);

    // m-0: two entries in the grouped format; m-1: one in the single-entry format before it.
    let grouped = RefreshMessage::group(entries[..2].to_vec(), 100).remove(0);
    let single = json!({"org": ORG, "connection_id": entries[2].id, "due": 0}).to_string();
    let event = batch_of(&[serde_json::to_string(&grouped).unwrap(), single], QUEUE_ARN);
    let queue = MemoryQueue::default();
    let visibility = Recording { fail: false, asked: Mutex::default() };
    let answer = handle_refresh_messages(&app.service, Some(&queue), &visibility, event.clone(), Instant::now()).await;
    assert!(answer.batch_item_failures.is_empty(), "sent again, so acknowledged: {:?}", answer.batch_item_failures);
    assert!(visibility.asked.lock().unwrap().is_empty());
    let mut sent = queue.take();
    sent.sort_by_key(|(m, _)| m.entries.len());
    let shape: Vec<(usize, u32)> = sent.iter().map(|(m, _)| (m.entries.len(), m.attempt)).collect();
    assert_eq!(shape, [(1, 1), (2, 1)], "one message per message, their entries only, second send");
    assert_eq!(sent[1].0.entries, grouped.entries);
    for (_, delay) in &sent {
        assert!(RETRY_VISIBILITY.contains(delay), "{delay:?}");
    }

    // Sent as often as the queue allows: left to the next tick, acknowledged, nothing sent.
    let spent = RefreshMessage { attempt: MAX_SENDS - 1, ..grouped.clone() };
    let event_spent = batch_of(&[serde_json::to_string(&spent).unwrap()], QUEUE_ARN);
    let answer = handle_refresh_messages(&app.service, Some(&queue), &visibility, event_spent, Instant::now()).await;
    assert!(answer.batch_item_failures.is_empty());
    assert_eq!(queue.len(), 0, "not sent a sixth time");

    // No queue, or one that refuses: each message handed back whole, visible again within a
    // minute, not at the queue's 30-minute visibility timeout (during which it would also hold
    // every tick back); and when SQS refuses that, it is still handed back.
    let handles: BTreeSet<String> = event.records.iter().map(|r| r.receipt_handle.clone().unwrap()).collect();
    let refusing = MemoryQueue::refusing();
    for (queue, fail) in [(None, false), (Some(&refusing as &dyn RefreshQueue), false), (None, true)] {
        let visibility = Recording { fail, asked: Mutex::default() };
        let answer = handle_refresh_messages(&app.service, queue, &visibility, event.clone(), Instant::now()).await;
        let back: BTreeSet<String> = answer.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
        assert_eq!(back, ["m-0", "m-1"].map(str::to_owned).into(), "fail: {fail}");
        let asked = visibility.asked.into_inner().unwrap();
        assert_eq!(asked.iter().map(|(_, h, _)| h.clone()).collect::<BTreeSet<_>>(), handles, "fail: {fail}");
        for (arn, _, delay) in &asked {
            assert_eq!(arn, QUEUE_ARN);
            assert!(RETRY_VISIBILITY.contains(delay), "{delay:?}");
        }
    }
    assert_eq!(refreshes(&mock.stats().await), 0);

    let tick = app.service.refresh_tick(None, &FanoutPolicy::default(), deadline()).await.unwrap();
    let RefreshTick::Inline(summary) = tick else { panic!("no queue: inline, not {tick:?}") };
    assert_eq!((summary.due, summary.refreshed), (3, 3), "{summary:?}");
}

/// A batch with both formats refreshes every entry of every message once, and hands nothing
/// back; delivered again, it finds nothing due.
#[tokio::test]
async fn a_worker_refreshes_every_entry_of_its_messages_once() {
    let backend = Backend::fresh().await;
    let app = components(&backend).await;
    let mock = MockServer::start(json!({})).await;
    let acme = entries_of(ORG, &due_connections(&app, &mock, ORG, 3).await);
    let globex = entries_of(OTHER, &due_connections(&app, &mock, OTHER, 1).await);
    let mut bodies: Vec<String> =
        RefreshMessage::group(acme, 100).iter().map(|m| serde_json::to_string(m).unwrap()).collect();
    bodies.push(json!({"org": OTHER, "connection_id": globex[0].id, "due": 0}).to_string());
    let event = batch_of(&bodies, QUEUE_ARN);
    let queue = MemoryQueue::default();
    let visibility = Recording { fail: false, asked: Mutex::default() };
    for round in 0..2 {
        let answer = handle_refresh_messages(&app.service, Some(&queue), &visibility, event.clone(), deadline()).await;
        assert!(answer.batch_item_failures.is_empty(), "round {round}: {:?}", answer.batch_item_failures);
        assert_eq!(queue.len(), 0, "round {round}: nothing to retry");
        assert_eq!(refreshes(&mock.stats().await), 4, "round {round}: one refresh per entry, once");
    }
}

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:latchkey-RefreshQueue";

/// A [`MessageVisibility`] that records what it was asked (queue ARN, receipt handle, delay),
/// and refuses each request when `fail`.
struct Recording {
    fail: bool,
    asked: Mutex<Vec<(String, String, Duration)>>,
}

#[async_trait]
impl MessageVisibility for Recording {
    async fn delay(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), VisibilityError> {
        self.asked.lock().unwrap().push((queue_arn.to_owned(), receipt_handle.to_owned(), delay));
        match self.fail {
            true => Err(VisibilityError::NotAQueue(queue_arn.to_owned())),
            false => Ok(()),
        }
    }
}

/// A batch of these bodies as the event source mapping of `queue_arn` would hand them over:
/// message ids `m-0`, `m-1`..., receipt handles `r-0`...
fn batch_of(bodies: &[String], queue_arn: &str) -> SqsEvent {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            json!({"messageId": format!("m-{i}"), "receiptHandle": format!("r-{i}"), "body": body,
                "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// The batch an event source mapping hands the worker: these messages as it would pass them.
fn batch(messages: &[aws_sdk_sqs::types::Message], queue_arn: &str) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// [`SqsRefreshQueue`] against moto's SQS: 23 messages (230 entries of 23 organizations) go out
/// in `SendMessageBatch`es of ten, the backlog counts them (visible, then in flight), each
/// arrives once as sent; a delayed message counts in the backlog and is not delivered at once. A
/// worker whose DynamoDB cannot be reached sends each message's entries again as a delayed
/// message and hands none back; without a queue, it hands every message back (batch item
/// failures, after a short visibility). One whose store answers finds the entries gone (no such
/// connections) and neither sends nor hands back anything, and drops a body that is not a
/// refresh message. The adapters call only what token-refresh's role is granted for them:
/// `sqs:SendMessage` (the batch's IAM action), `sqs:GetQueueAttributes`, and
/// `sqs:ChangeMessageVisibility` for the messages handed back. Each message's `MessageGroupId`
/// is its organization (SQS fair queues).
#[tokio::test]
async fn the_sqs_queue_carries_each_message_once_and_failures_of_the_store_are_sent_again() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName as Attr};

    let config = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let url = sqs.create_queue().queue_name(moto::unique("refresh")).send().await.unwrap().queue_url.unwrap();
    let arn = sqs.get_queue_attributes().queue_url(&url).attribute_names(Attr::QueueArn).send().await.unwrap();
    let arn = arn.attributes().unwrap()[&Attr::QueueArn].clone();
    let recorded = calls::Calls::default();
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config).interceptor(recorded.clone()).build(),
    );
    let queue = SqsRefreshQueue::new(client.clone(), &url);

    let entries: Vec<DueEntry> = (0..230)
        .map(|i| DueEntry {
            org: OrgId::parse(&format!("org-{:02}", i % 23)).unwrap(),
            id: ConnectionId::generate(),
            due: 1_795_341_600 + i,
        })
        .collect();
    let messages = RefreshMessage::group(entries, 100);
    assert_eq!(messages.len(), 23);
    queue.enqueue(&messages, Duration::ZERO).await.unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 23);
    let mut received = Vec::new();
    while received.len() < 23 {
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        assert!(!got.messages().is_empty(), "only {} of 23 arrived", received.len());
        received.extend(got.messages().iter().cloned());
    }
    // The organization is each message's group: SQS's fair queues share the workers by it.
    for m in &received {
        let group = m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId));
        let org = RefreshMessage::parse(m.body().unwrap()).unwrap().org;
        assert_eq!(group.map(String::as_str), Some(org.as_str()), "MessageGroupId of {:?}", m.body());
    }
    assert_eq!(queue.backlog().await.unwrap(), 23, "in flight still counts");
    let bodies: Vec<RefreshMessage> =
        received.iter().map(|m| RefreshMessage::parse(m.body().unwrap()).unwrap()).collect();
    let key = |m: &RefreshMessage| (m.org.to_string(), serde_json::to_string(&m.entries).unwrap());
    assert_eq!(
        bodies.iter().map(key).collect::<BTreeSet<_>>(),
        messages.iter().map(key).collect::<BTreeSet<_>>(),
        "each message once, as sent"
    );
    assert_eq!(
        recorded.actions(),
        ["sqs:GetQueueAttributes", "sqs:SendMessage"].map(str::to_owned).into(),
        "the calls token-refresh's role is granted"
    );
    for m in &received {
        sqs.delete_message().queue_url(&url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
    }
    assert_eq!(queue.backlog().await.unwrap(), 0);

    // DynamoDB unreachable: each message's entries go out again, delayed; nothing handed back.
    let first: Vec<_> = received[..4].to_vec();
    let nowhere = moto::sdk_config_for("http://127.0.0.1:9").await;
    let down = Components::aws(
        aws_sdk_dynamodb::Client::new(&nowhere),
        aws_sdk_kms::Client::new(&nowhere),
        aws_sdk_eventbridge::Client::new(&nowhere),
        "latchkey",
        "key",
        "default",
        options(),
    );
    let visibility = SqsVisibility::new(client);
    let answer =
        handle_refresh_messages(&down.service, Some(&queue), &visibility, batch(&first, &arn), deadline()).await;
    assert!(answer.batch_item_failures.is_empty(), "sent again: {:?}", answer.batch_item_failures);
    assert_eq!(queue.backlog().await.unwrap(), 4, "one delayed message each");
    let now = sqs.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
    assert!(now.messages().is_empty(), "delayed, not delivered at once: {:?}", now.messages());
    assert_eq!(
        recorded.actions(),
        ["sqs:GetQueueAttributes", "sqs:SendMessage"].map(str::to_owned).into(),
        "a send, no visibility change"
    );

    // Without a queue to send them to: every message comes back.
    let answer = handle_refresh_messages(&down.service, None, &visibility, batch(&first, &arn), deadline()).await;
    let back: Vec<&str> = answer.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    let ids: Vec<&str> = first.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(back, ids, "the store did not answer: handed back");
    assert_eq!(
        recorded.actions(),
        ["sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"].map(str::to_owned).into(),
        "each handed back after a short visibility, as the role allows"
    );

    // A store that answers: the connections do not exist, nothing to do, nothing sent or handed
    // back; an unreadable body is dropped.
    let dir = tempfile::tempdir().unwrap();
    let up = Components::embedded(dir.path(), options()).unwrap();
    let mut event = batch(&first, &arn);
    let mut junk = event.records[0].clone();
    junk.message_id = Some("not-a-refresh-message".into());
    junk.body = Some("{\"hello\": 1}".into());
    event.records.push(junk);
    let answer = handle_refresh_messages(&up.service, Some(&queue), &visibility, event, deadline()).await;
    assert!(answer.batch_item_failures.is_empty(), "{:?}", answer.batch_item_failures);
    assert_eq!(queue.backlog().await.unwrap(), 4, "nothing more sent");
}
