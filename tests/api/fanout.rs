//! The sweep's fan-out (`service::refresh::fanout`, `lambda::refresh_worker`): a tick above the
//! inline bound enqueues every due connection instead of refreshing it, a backlog above the low
//! water holds the next tick back, the worker refreshes each entry once, a redelivered or
//! duplicate entry is a no-op (re-checked, never a second provider call), and only entries whose
//! store did not answer come back as batch item failures. The service runs in process on the
//! backend `LATCHKEY_TEST_BACKEND` names, against oauth2-mock-server; the SQS adapter runs
//! against moto's SQS.

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
use latchkey::service::{FanoutPolicy, QueueError, RefreshMessage, RefreshOutcome, RefreshQueue, RefreshTick};
use serde_json::{Value, json};
use support::oauth::MockServer;
use support::{calls, moto};

use crate::harness::{Backend, eventually};

const ORG: &str = "acme";

/// The queue of the simulation and of these tests: entries in memory, the backlog their count.
#[derive(Default)]
struct MemoryQueue(Mutex<Vec<DueEntry>>);

impl MemoryQueue {
    fn take(&self) -> Vec<DueEntry> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[async_trait]
impl RefreshQueue for MemoryQueue {
    async fn enqueue(&self, entries: &[DueEntry]) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend_from_slice(entries);
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        Ok(self.0.lock().unwrap().len() as u64)
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

/// `n` imported OAuth connections of `ORG` whose 2 s tokens are due for a refresh (after half
/// their life), refreshed at `mock`; their ids.
async fn due_connections(app: &Components, mock: &MockServer, n: usize) -> BTreeSet<String> {
    let org = OrgId::parse(ORG).unwrap();
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
    eventually(Duration::from_secs(20), "the imported tokens to be due", || async {
        let mut all = true;
        for id in &ids {
            let c = app.store.get_connection(&org, &ConnectionId::parse(id).unwrap()).await.unwrap().unwrap();
            all &= c.refresh.due_at.is_some_and(|d| d <= time::OffsetDateTime::now_utc());
        }
        all
    })
    .await;
    ids
}

/// Above `inline_max` due connections a tick enqueues them all (one entry each) and refreshes
/// none; a second tick while they wait (backlog above the low water) enqueues nothing, so no
/// entry is queued twice; the worker refreshes each once; the same entries delivered again
/// (SQS's at-least-once, or a duplicate enqueue) find nothing due and call no provider; and
/// with nothing due the tick sweeps inline.
#[tokio::test]
async fn a_tick_above_the_inline_bound_dispatches_and_each_entry_is_refreshed_once() {
    let backend = Backend::fresh().await;
    let app = components(&backend).await;
    let mock = MockServer::start(json!({})).await;
    let ids = due_connections(&app, &mock, 3).await;
    let queue = MemoryQueue::default();
    let fanout = FanoutPolicy { inline_max: 2, low_water: 0, concurrency: 2 };

    let tick = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Dispatched(summary) = tick else { panic!("3 due > 2: dispatched, not {tick:?}") };
    assert_eq!((summary.due, summary.enqueued, summary.held_back), (3, 3, false), "{summary:?}");
    assert_eq!(refreshes(&mock.stats().await), 0, "the tick refreshes nothing itself");
    let queued: Vec<String> = queue.0.lock().unwrap().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(queued.iter().cloned().collect::<BTreeSet<_>>(), ids);
    assert_eq!(queued.len(), 3, "one entry each: {queued:?}");

    let held = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Dispatched(summary) = held else { panic!("still 3 due: {held:?}") };
    assert!(summary.held_back, "{summary:?}");
    assert_eq!((summary.backlog, summary.enqueued), (3, 0), "{summary:?}");
    assert_eq!(queue.0.lock().unwrap().len(), 3, "nothing queued twice");

    let entries = queue.take();
    let outcomes = app.service.refresh_due_entries(&entries, deadline()).await;
    assert_eq!(outcomes, [RefreshOutcome::Refreshed; 3]);
    assert_eq!(refreshes(&mock.stats().await), 3, "one refresh each");

    let again = app.service.refresh_due_entries(&entries, deadline()).await;
    assert_eq!(again, [RefreshOutcome::Skipped; 3], "refreshed already: nothing to do");
    assert!(again.iter().all(|o| !o.retry()));
    assert_eq!(refreshes(&mock.stats().await), 3, "no second provider call");

    let quiet = app.service.refresh_tick(Some(&queue), &fanout, deadline()).await.unwrap();
    let RefreshTick::Inline(summary) = quiet else { panic!("nothing due: inline, not {quiet:?}") };
    assert_eq!((summary.due, summary.refreshed), (0, 0), "{summary:?}");
    assert!(queue.0.lock().unwrap().is_empty());
}

/// Entries not started before the batch's deadline come back (deferred), unrefreshed; the
/// tick without a queue is the inline sweep as before.
#[tokio::test]
async fn a_worker_past_its_deadline_hands_its_entries_back() {
    let backend = Backend::fresh().await;
    let app = components(&backend).await;
    let mock = MockServer::start(json!({})).await;
    let ids = due_connections(&app, &mock, 2).await;
    let entries: Vec<DueEntry> = ids
        .iter()
        .map(|id| DueEntry { org: OrgId::parse(ORG).unwrap(), id: ConnectionId::parse(id).unwrap(), due: 0 })
        .collect();

    let late = app.service.refresh_due_entries(&entries, Instant::now()).await;
    assert_eq!(late, [RefreshOutcome::Deferred; 2]);
    assert!(late.iter().all(|o| o.retry()), "handed back");
    assert_eq!(refreshes(&mock.stats().await), 0);

    // Through the worker's handler: each message handed back is first made visible again
    // within a minute, not at the queue's 30-minute visibility timeout (during which it would
    // also hold every tick back); and when SQS refuses that, it is still handed back.
    let event = entry_batch(&entries, QUEUE_ARN);
    let handles: BTreeSet<String> = event.records.iter().map(|r| r.receipt_handle.clone().unwrap()).collect();
    for fail in [false, true] {
        let visibility = Recording { fail, asked: Mutex::default() };
        let answer = handle_refresh_messages(&app.service, &visibility, event.clone(), Instant::now()).await;
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
    assert_eq!((summary.due, summary.refreshed), (2, 2), "{summary:?}");
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

/// A batch of `entries` as the event source mapping of `queue_arn` would hand them over:
/// message ids `m-0`, `m-1`..., receipt handles `r-0`...
fn entry_batch(entries: &[DueEntry], queue_arn: &str) -> SqsEvent {
    let records: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"messageId": format!("m-{i}"), "receiptHandle": format!("r-{i}"),
                "body": serde_json::to_string(&RefreshMessage::from(e)).unwrap(),
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

/// [`SqsRefreshQueue`] against moto's SQS: 23 entries go out in `SendMessageBatch`es of ten,
/// the backlog counts them (visible, then in flight), each arrives once as a `RefreshMessage`.
/// A worker whose DynamoDB cannot be reached hands every message back (batch item failures); one
/// whose store answers finds the entries gone (no such connections) and hands none back, and
/// drops a body that is not a refresh message. The adapters call only what token-refresh's
/// role is granted for them: `sqs:SendMessage` (the batch's IAM action),
/// `sqs:GetQueueAttributes`, and `sqs:ChangeMessageVisibility` for the messages handed back.
#[tokio::test]
async fn the_sqs_queue_carries_each_entry_once_and_failures_of_the_store_come_back() {
    use aws_sdk_sqs::types::QueueAttributeName as Attr;

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

    let org = OrgId::parse(ORG).unwrap();
    let entries: Vec<DueEntry> =
        (0..23).map(|i| DueEntry { org: org.clone(), id: ConnectionId::generate(), due: 1_795_341_600 + i }).collect();
    queue.enqueue(&entries).await.unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 23);
    let mut received = Vec::new();
    while received.len() < 23 {
        let got = sqs.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
        assert!(!got.messages().is_empty(), "only {} of 23 arrived", received.len());
        received.extend(got.messages().iter().cloned());
    }
    assert_eq!(queue.backlog().await.unwrap(), 23, "in flight still counts");
    let bodies: BTreeSet<(String, i64)> = received
        .iter()
        .map(|m| serde_json::from_str::<RefreshMessage>(m.body().unwrap()).unwrap())
        .map(|m| (m.connection_id.to_string(), m.due))
        .collect();
    let sent: BTreeSet<(String, i64)> = entries.iter().map(|e| (e.id.to_string(), e.due)).collect();
    assert_eq!(bodies, sent, "each entry once, as sent");
    assert_eq!(
        recorded.actions(),
        ["sqs:GetQueueAttributes", "sqs:SendMessage"].map(str::to_owned).into(),
        "the calls token-refresh's role is granted"
    );

    // DynamoDB unreachable: every message comes back.
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
    let answer = handle_refresh_messages(&down.service, &visibility, batch(&first, &arn), deadline()).await;
    let back: Vec<&str> = answer.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    let ids: Vec<&str> = first.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(back, ids, "the store did not answer: handed back");
    assert_eq!(
        recorded.actions(),
        ["sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"].map(str::to_owned).into(),
        "each handed back after a short visibility, as the role allows"
    );

    // A store that answers: the connections do not exist, nothing to do, nothing handed back;
    // an unreadable body is dropped.
    let dir = tempfile::tempdir().unwrap();
    let up = Components::embedded(dir.path(), options()).unwrap();
    let mut event = batch(&first, &arn);
    let mut junk = event.records[0].clone();
    junk.message_id = Some("not-a-refresh-message".into());
    junk.body = Some("{\"hello\": 1}".into());
    event.records.push(junk);
    let answer = handle_refresh_messages(&up.service, &visibility, event, deadline()).await;
    assert!(answer.batch_item_failures.is_empty(), "{:?}", answer.batch_item_failures);
}
