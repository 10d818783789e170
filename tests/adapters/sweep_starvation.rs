//! The refresh sweep cannot be starved (issue 12, item 1), on both backends: the embedded one
//! (SQLite, local key) and the aws one (DynamoDB, KMS, EventBridge in moto), through the
//! library's service with a real OAuth server on loopback.
//!
//! - Every write that makes a connection unusable (a reported error, a disconnect, a delete)
//!   takes it out of the due index.
//! - 1,000 due entries the sweep must leave in place (leased by another worker), all due
//!   before a healthy connection and in its shard, do not keep one sweep from refreshing the
//!   healthy one: they are paged past.
//! - `report_error` racing a refresh (from the sweep, or from a lookup) keeps the reported
//!   reason and leaves the connection out of the index, while the refresh's rotated tokens are
//!   still stored.
//! - A refresh its provider holds past the sweep's deadline does not keep the same sweep from
//!   revoking a disconnected connection's tokens: due revocations run beside the index.
//! - Nor does a held refresh keep the sweep from the next page of the index: the sweep reads
//!   on and refreshes up to its bound at once, whatever page or shard the entries came from.
//! - Nor does a revocation endpoint that holds its answers keep the sweep from the next due
//!   revocation job: they run side by side.
//! - Nor does one organization whose token endpoint holds every refresh keep the sweep from
//!   the other organizations' refreshes: it holds at most all but an eighth of the places.
//! - Nor do one or several organizations' many due revocation jobs keep the sweep from another
//!   organization's: a sweep reads due jobs round by round (each organization's oldest first)
//!   and runs a share of each organization's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{moto, oauth};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use latchkey::config::Components;
use latchkey::crypto::Sealed;
use latchkey::domain::{Connection, ConnectionId, Lease, OrgId, Principal, Status};
use latchkey::ports::{DueEntry, Store};
use latchkey::service::ServiceOptions;
use latchkey::service::{LookupRequest, Service, ServiceError, SweepSummary};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How many stuck entries the starvation case plants.
const STUCK: usize = 1_000;

/// The service of every backend under test: OAuth callbacks to a closed port, providers on
/// loopback allowed.
fn options() -> ServiceOptions {
    ServiceOptions {
        public_url: Some("http://127.0.0.1:9".to_owned()),
        allow_loopback_providers: true,
        ..ServiceOptions::default()
    }
}

/// One backend under test, and what keeps it alive.
struct Backend {
    app: Components,
    /// The aws backend's table and a client of it, to plant and inspect raw items.
    aws: Option<(aws_sdk_dynamodb::Client, String)>,
    _dir: TempDir,
}

impl Backend {
    async fn embedded() -> Self {
        Self::embedded_with(options()).await
    }

    async fn embedded_with(options: ServiceOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = Components::embedded(dir.path(), options).expect("open the embedded backend");
        Self::configured(app, None, dir)
    }

    async fn aws() -> Self {
        Self::aws_with(options()).await
    }

    async fn aws_with(options: ServiceOptions) -> Self {
        tokio::task::spawn_blocking(moto::endpoint).await.expect("start moto");
        // As `latchkey serve` and the functions build them: with Latchkey's timeouts.
        let config =
            moto::sdk_config().await.to_builder().timeout_config(latchkey::adapters::aws::timeout_config()).build();
        let ddb = aws_sdk_dynamodb::Client::new(&config);
        let table = moto::unique("latchkey-sweep");
        latchkey::adapters::aws::schema::bootstrap(&ddb, &table).await.expect("bootstrap the table");
        let key = moto::create_kms_key(&config).await;
        let app = Components::aws(
            ddb.clone(),
            aws_sdk_kms::Client::new(&config),
            aws_sdk_eventbridge::Client::new(&config),
            &table,
            &key,
            "default",
            options,
        );
        Self::configured(app, Some((ddb, table)), tempfile::tempdir().expect("temp dir"))
    }

    fn configured(app: Components, aws: Option<(aws_sdk_dynamodb::Client, String)>, dir: TempDir) -> Self {
        Self { app, aws, _dir: dir }
    }

    fn service(&self) -> &Arc<Service> {
        &self.app.service
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.app.store
    }

    async fn connection(&self, org: &OrgId, id: &ConnectionId) -> Connection {
        self.store().get_connection(org, id).await.unwrap().expect("the connection exists")
    }

    /// Every entry of the due index up to `until`, all shards, paging with the cursor.
    async fn due(&self, until: time::OffsetDateTime) -> Vec<DueEntry> {
        let mut all = Vec::new();
        for shard in 0..self.store().due_shards() {
            let mut after: Option<DueEntry> = None;
            loop {
                let page = self.store().due_connections(shard, until, after.as_ref(), 500).await.unwrap();
                let full = page.len() == 500;
                after = page.last().cloned();
                all.extend(page);
                if !full {
                    break;
                }
            }
        }
        all
    }

    async fn due_ids(&self, until: time::OffsetDateTime) -> Vec<ConnectionId> {
        self.due(until).await.into_iter().map(|e| e.id).collect()
    }

    /// Stores `count` connections like `template` (with new ids in `template`'s due-index
    /// shard), as a version of Latchkey that left such entries in the index wrote them. On
    /// DynamoDB the template goes through the store and the others are copies of its item (one
    /// BatchWriteItem per 25; the emulator's transactions take tens of milliseconds each on a
    /// table this size).
    async fn plant(&self, template: &Connection, count: usize) -> Vec<ConnectionId> {
        let shard = latchkey::adapters::aws::dynamodb::due_shard(&template.id);
        let ids: Vec<ConnectionId> = std::iter::repeat_with(ConnectionId::generate)
            .filter(|id| self.aws.is_none() || latchkey::adapters::aws::dynamodb::due_shard(id) == shard)
            .take(count)
            .collect();
        let Some((client, table)) = &self.aws else {
            for id in &ids {
                let mut c = template.clone();
                c.id = id.clone();
                self.store().insert_connection(&c).await.expect("plant a connection");
            }
            return ids;
        };
        let mut template = template.clone();
        template.id = ids[0].clone();
        self.store().insert_connection(&template).await.expect("plant the template");
        let item = client
            .get_item()
            .table_name(table)
            .key("pk", AttributeValue::S(format!("ORG#{}", template.org)))
            .key("sk", AttributeValue::S(format!("CON#{}", template.id)))
            .consistent_read(true)
            .send()
            .await
            .expect("read the template item")
            .item
            .expect("the template item exists");
        let copies: Vec<WriteRequest> = ids[1..]
            .iter()
            .map(|id| {
                let mut copy = item.clone();
                for value in copy.values_mut() {
                    if let AttributeValue::S(s) = value {
                        *s = s.replace(template.id.as_str(), id.as_str());
                    }
                }
                let put = PutRequest::builder().set_item(Some(copy)).build().expect("an item");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        for chunk in copies.chunks(25) {
            let mut pending = chunk.to_vec();
            while !pending.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .expect("dynamodb BatchWriteItem");
                pending = out.unprocessed_items.and_then(|mut m| m.remove(table)).unwrap_or_default();
            }
        }
        ids
    }

    /// DynamoDB: the connection items that carry due-index attributes (`gsi3pk`) though they
    /// have no due time: stale index entries. Always empty on the embedded backend, whose
    /// index column is written from the record on every write.
    async fn stale_index_items(&self) -> Vec<String> {
        let Some((client, table)) = &self.aws else {
            return Vec::new();
        };
        let mut stale = Vec::new();
        let mut start = None;
        loop {
            // Pages of 100 items: a whole 1 MB page of these documents once took moto longer
            // than the client's 5 s operation timeout on a loaded CI machine.
            let out = client
                .scan()
                .table_name(table)
                .limit(100)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("dynamodb Scan");
            for item in out.items() {
                let is_connection = item.get("kind").and_then(|k| k.as_s().ok()).is_some_and(|k| k == "connection");
                if !is_connection || !item.contains_key("gsi3pk") {
                    continue;
                }
                let doc: Value = serde_json::from_str(item["doc"].as_s().unwrap()).unwrap();
                if doc["refresh"]["due_at"].is_null() {
                    stale.push(item["sk"].as_s().unwrap().clone());
                }
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return stale,
            }
        }
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Defines `idp` (authorization code) against `authorize`/`token`, and `revoke` (RFC 7009) when
/// given, for a fresh organization.
async fn define(service: &Service, authorize: &str, token: &str, revoke: Option<&str>) -> (OrgId, Principal) {
    let org = latchkey::conformance::fresh_org();
    let p = Principal::organization(org.clone());
    let mut def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": authorize},
        "tokenUrl": {"type": "url", "default": token},
        "clientId": {"type": "string", "default": "client"},
        "clientSecret": {"type": "password", "default": "client-secret"}}});
    if let Some(revoke) = revoke {
        def["inputs"]["revokeUrl"] = json!({"type": "url", "default": revoke});
    }
    service.put_definition(&p, "idp", &def).await.expect("define idp");
    (org, p)
}

/// Creates an `idp` connection and starts its authorization; the authorize URL.
async fn start_authorization(service: &Service, p: &Principal, customer: &str) -> (ConnectionId, String) {
    let created = service
        .create_connection(p, &json!({"definition": "idp", "customer": customer}))
        .await
        .expect("create a connection");
    let started = service.authorize(p, created.id.as_str()).await.expect("start the authorization");
    (created.id, started.authorize_url)
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// An `idp` connection authorized at the mock provider.
async fn authorized(backend: &Backend, mock: &oauth::MockServer, p: &Principal, customer: &str) -> ConnectionId {
    let (id, url) = start_authorization(backend.service(), p, customer).await;
    let back = mock.authorize(&url).await;
    backend.service().callback(&query(&back), &Default::default()).await;
    let c = backend.connection(&p.org, &id).await;
    assert!(c.oauth.as_ref().is_some_and(|t| t.has_refresh_token), "authorized with a refresh token");
    id
}

fn report(id: &ConnectionId, message: &str) -> LookupRequest {
    LookupRequest {
        connection_id: Some(id.to_string()),
        action: Some("report_error".into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// Waits (polling the store) until `id`'s refresh is due where the sweep looks: in the due
/// index, which files it under the next whole second (`latchkey::domain::due_second`), so its
/// record is due by then too.
async fn until_due(backend: &Backend, org: &OrgId, id: &ConnectionId) {
    let limit = Instant::now() + Duration::from_secs(20);
    loop {
        if backend.due_ids(now()).await.contains(id) {
            let c = backend.connection(org, id).await;
            assert!(c.refresh.due_at.is_some_and(|d| d <= now()), "the index is never early: {:?}", c.refresh);
            return;
        }
        assert!(Instant::now() < limit, "{id} never became due: {:?}", backend.connection(org, id).await.refresh);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_thousand_stuck_entries_do_not_keep_one_sweep_from_a_healthy_connection(backend: Backend) {
    // Tokens from the authorization live 2 s (due after 1 s); refreshed ones an hour.
    let mock = oauth::MockServer::start(json!({"rewrites": [
        {"grant_type": "authorization_code", "set": {"expires_in": 2}}]}))
    .await;
    let service = backend.service().clone();
    let (org, p) = define(&service, &mock.authorize_endpoint(), &mock.token_endpoint(), None).await;
    let healthy = authorized(&backend, &mock, &p, "c-healthy").await;

    // What the API can do to a connection takes it out of the index: a reported error (the
    // issue's reproduction), a disconnect, a delete.
    let mut gone = Vec::new();
    for i in 0..10 {
        let id = authorized(&backend, &mock, &p, &format!("c-red-{i}")).await;
        let red = service.report_error(&org, None, &report(&id, "Acme answered 401")).await.expect("report");
        assert_eq!(red.status, Status::Error);
        gone.push(id);
    }
    let disconnected = authorized(&backend, &mock, &p, "c-disconnected").await;
    service.disconnect(&p, disconnected.as_str()).await.expect("disconnect");
    let deleted = authorized(&backend, &mock, &p, "c-deleted").await;
    service.delete_connection(&p, deleted.as_str()).await.expect("delete");
    gone.extend([disconnected, deleted]);
    let indexed = backend.due_ids(now() + time::Duration::days(2)).await;
    for id in &gone {
        assert!(!indexed.contains(id), "{id} left the due index");
    }
    assert!(indexed.contains(&healthy), "the healthy connection is in the index");

    // 1,000 connections whose refresh another worker holds, all due an hour before the healthy
    // one and in its shard: the first page of the sweep holds nothing else.
    let mut leased = backend.connection(&org, &healthy).await;
    leased.customer = Some(latchkey::domain::CustomerId::parse("c-stuck").unwrap());
    leased.refresh.due_at = Some(now() - time::Duration::hours(1));
    leased.refresh.lease = Some(Lease { owner: "another-worker".into(), until: now() + time::Duration::minutes(10) });
    leased.oauth.as_mut().unwrap().sealed =
        Sealed { key_id: "stale".into(), wrapped_key: vec![7; 40], ciphertext: vec![7; 40] };
    leased.version = 1;
    let started = Instant::now();
    let mut leased_ids = backend.plant(&leased, STUCK).await;
    eprintln!("planted {STUCK} stuck entries in {:?}", started.elapsed());
    until_due(&backend, &org, &healthy).await;
    let due_now = backend.due(now()).await;
    assert_eq!(due_now.len(), STUCK + 1, "the stuck entries and the healthy one are due");
    assert_eq!(due_now.last().map(|e| &e.id), Some(&healthy), "the healthy one is due last");

    // One sweep reaches it.
    let before = backend.connection(&org, &healthy).await.oauth.unwrap().obtained_at;
    let summary: SweepSummary =
        service.refresh_sweep(Instant::now() + Duration::from_secs(120)).await.expect("the sweep runs");
    eprintln!("first sweep: {summary:?}");
    assert_eq!(summary.refreshed, 1, "the healthy connection is refreshed: {summary:?}");
    assert_eq!((summary.due, summary.failed, summary.skipped), (STUCK + 1, 0, STUCK), "{summary:?}");
    let refreshes = mock.stats().await["token_requests"]["refresh_token"].as_u64();
    assert_eq!(refreshes, Some(1), "one refresh at the provider");
    let after = backend.connection(&org, &healthy).await;
    assert!(after.oauth.as_ref().unwrap().obtained_at > before, "new tokens stored");
    assert!(after.refresh.due_at.is_some_and(|d| d > now() + time::Duration::minutes(30)), "{:?}", after.refresh);

    // What is left in the index: the leased entries, until their lease runs out.
    let mut left = backend.due_ids(now()).await;
    left.sort();
    leased_ids.sort();
    assert_eq!(left, leased_ids);
    assert_eq!(backend.stale_index_items().await, Vec::<String>::new(), "no item keeps a stale index entry");
    let again = service.refresh_sweep(Instant::now() + Duration::from_secs(60)).await.expect("the next sweep runs");
    assert_eq!((again.due, again.refreshed, again.failed, again.skipped), (STUCK, 0, 0, STUCK), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_stuck_entries_do_not_keep_one_sweep_from_a_healthy_connection_embedded() {
    a_thousand_stuck_entries_do_not_keep_one_sweep_from_a_healthy_connection(Backend::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_stuck_entries_do_not_keep_one_sweep_from_a_healthy_connection_aws() {
    a_thousand_stuck_entries_do_not_keep_one_sweep_from_a_healthy_connection(Backend::aws().await).await;
}

/// A token endpoint that holds each refresh until the test lets it go: the window in which
/// `report_error` races the refresh. Authorization codes get a 2 s token, refreshes a rotated
/// refresh token and an hour. Its revocation endpoint (`/revoke`, RFC 7009) answers 200 at once;
/// `/revoke-held` holds each revocation like a refresh.
struct GatedProvider {
    url: String,
    /// One message per refresh request that arrived and is now held.
    arrived: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>,
    /// The `token` of each revocation request, as it arrives.
    revoked: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    /// One permit lets one held refresh answer.
    release: Arc<tokio::sync::Semaphore>,
    _server: tokio::task::JoinHandle<()>,
}

impl GatedProvider {
    async fn start() -> Self {
        use axum::extract::State;
        use axum::routing::post;

        #[derive(Clone)]
        struct Gate {
            arrived: tokio::sync::mpsc::UnboundedSender<()>,
            release: Arc<tokio::sync::Semaphore>,
            revoked: tokio::sync::mpsc::UnboundedSender<String>,
        }
        fn form(body: &str) -> BTreeMap<String, String> {
            reqwest::Url::parse(&format!("http://x/?{body}"))
                .unwrap()
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        }
        async fn token(State(gate): State<Gate>, body: String) -> axum::Json<Value> {
            let form = form(&body);
            if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
                let _ = gate.arrived.send(());
                gate.release.acquire().await.expect("the gate is open").forget();
                return axum::Json(json!({"access_token": "access-2", "token_type": "Bearer",
                    "refresh_token": "refresh-2", "expires_in": 3600}));
            }
            axum::Json(json!({"access_token": "access-1", "token_type": "Bearer",
                "refresh_token": "refresh-1", "expires_in": 2}))
        }
        async fn revoke(State(gate): State<Gate>, body: String) {
            let _ = gate.revoked.send(form(&body).remove("token").unwrap_or_default());
        }
        async fn revoke_held(State(gate): State<Gate>, body: String) {
            let _ = gate.revoked.send(form(&body).remove("token").unwrap_or_default());
            gate.release.acquire().await.expect("the gate is open").forget();
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (revoked_tx, revoked) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let gate = Gate { arrived: tx, release: release.clone(), revoked: revoked_tx };
        let router = axum::Router::new()
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/revoke-held", post(revoke_held))
            .with_state(gate);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            arrived: tokio::sync::Mutex::new(rx),
            revoked: tokio::sync::Mutex::new(revoked),
            release,
            _server: server,
        }
    }

    /// Waits until a refresh request is held.
    async fn held(&self) {
        let waited = tokio::time::timeout(Duration::from_secs(20), self.arrived.lock().await.recv()).await;
        assert!(matches!(waited, Ok(Some(()))), "a refresh reached the provider");
    }
}

/// Authorizes an `idp` connection at `provider` (the code is exchanged at its token endpoint).
async fn authorized_at(backend: &Backend, p: &Principal, customer: &str) -> ConnectionId {
    let (id, url) = start_authorization(backend.service(), p, customer).await;
    let state = query(&url).remove("state").expect("a state");
    let params = BTreeMap::from([("code".to_owned(), "any-code".to_owned()), ("state".to_owned(), state)]);
    backend.service().callback(&params, &Default::default()).await;
    assert!(backend.connection(&p.org, &id).await.oauth.is_some(), "authorized");
    id
}

/// After the race: red with the reported reason, out of the index, no lease, and the tokens the
/// raced refresh obtained are stored (newer than `before`).
async fn assert_reported_and_kept(backend: &Backend, org: &OrgId, id: &ConnectionId, before: time::OffsetDateTime) {
    let c = backend.connection(org, id).await;
    assert_eq!(c.status, Status::Error);
    let error = c.error.as_ref().expect("a red connection says why (never `error: null`)");
    assert_eq!((error.code.as_str(), error.message.as_str()), ("reported", "the app refused the token"));
    assert_eq!(c.refresh.due_at, None, "a red connection is not due");
    assert_eq!(c.refresh.lease, None, "the refresh let its lease go");
    let tokens = c.oauth.as_ref().expect("tokens kept");
    assert!(tokens.obtained_at > before && tokens.has_refresh_token, "the rotated tokens were stored");
    assert!(!backend.due_ids(now() + time::Duration::days(2)).await.contains(id), "out of the due index");
}

async fn a_report_racing_a_refresh_keeps_its_reason_and_stays_out_of_the_index(backend: Backend) {
    let provider = GatedProvider::start().await;
    let service = backend.service().clone();
    let (org, p) =
        define(&service, &format!("{}/authorize", provider.url), &format!("{}/token", provider.url), None).await;

    // The sweep's refresh is in flight (lease held) when the integration reports the error.
    let swept = authorized_at(&backend, &p, "c-sweep").await;
    let before = backend.connection(&org, &swept).await.oauth.unwrap().obtained_at;
    until_due(&backend, &org, &swept).await;
    let sweeper = service.clone();
    let sweep = tokio::spawn(async move { sweeper.refresh_sweep(Instant::now() + Duration::from_secs(60)).await });
    provider.held().await;
    let leased = backend.connection(&org, &swept).await;
    assert!(leased.refresh.lease.is_some(), "the sweep holds the lease");
    service.report_error(&org, None, &report(&swept, "the app refused the token")).await.expect("report");
    provider.release.add_permits(1);
    sweep.await.unwrap().expect("the sweep ends");
    assert_reported_and_kept(&backend, &org, &swept, before).await;

    // The same with a lookup's refresh: the lookup that raced the report fails, red.
    let looked = authorized_at(&backend, &p, "c-lookup").await;
    let before = backend.connection(&org, &looked).await.oauth.unwrap().obtained_at;
    until_due(&backend, &org, &looked).await;
    let (looker, owner) = (service.clone(), org.clone());
    let req =
        LookupRequest { connection_id: Some(looked.to_string()), min_valid_seconds: Some(60), ..Default::default() };
    let lookup = tokio::spawn(async move { looker.lookup(&owner, None, &req, &origin()).await.map(|_| ()) });
    provider.held().await;
    service.report_error(&org, None, &report(&looked, "the app refused the token")).await.expect("report");
    provider.release.add_permits(1);
    let outcome = lookup.await.unwrap();
    assert!(
        matches!(outcome, Err(ServiceError::Unusable(latchkey::service::Unusable::Error))),
        "the raced lookup hands out nothing: {outcome:?}"
    );
    assert_reported_and_kept(&backend, &org, &looked, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_racing_a_refresh_keeps_its_reason_and_stays_out_of_the_index_embedded() {
    a_report_racing_a_refresh_keeps_its_reason_and_stays_out_of_the_index(Backend::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_racing_a_refresh_keeps_its_reason_and_stays_out_of_the_index_aws() {
    a_report_racing_a_refresh_keeps_its_reason_and_stays_out_of_the_index(Backend::aws().await).await;
}

async fn a_refresh_held_past_the_deadline_does_not_keep_the_sweep_from_revoking(backend: Backend) {
    let provider = GatedProvider::start().await;
    let service = backend.service().clone();
    let url = &provider.url;
    let (authorize, token, revoke) = (format!("{url}/authorize"), format!("{url}/token"), format!("{url}/revoke"));
    let (org, p) = define(&service, &authorize, &token, Some(&revoke)).await;
    let held = authorized_at(&backend, &p, "c-held").await;
    let gone = authorized_at(&backend, &p, "c-gone").await;
    // No revoker runs here (`latchkey serve` has one, on its own events): the job waits for the
    // sweep.
    service.disconnect(&p, gone.as_str()).await.expect("disconnect");
    until_due(&backend, &org, &held).await;

    // The sweep's refresh is held at the provider until past the sweep's deadline; the
    // revocation comes meanwhile. 5 s: the revocation must start before it, after the due jobs'
    // index reads (16 shards, 4 at a time) and the job's own read, which a loaded moto has taken
    // seconds to answer.
    let (sweeper, deadline) = (service.clone(), Instant::now() + Duration::from_secs(5));
    let sweep = tokio::spawn(async move { sweeper.refresh_sweep(deadline).await });
    provider.held().await;
    let revoked = tokio::time::timeout(Duration::from_secs(15), provider.revoked.lock().await.recv()).await;
    tokio::time::sleep_until(deadline.into()).await;
    provider.release.add_permits(1);
    let summary = sweep.await.unwrap().expect("the sweep ends");
    let revoked = revoked.expect("the sweep revoked while its refresh was held").expect("a revocation request");
    assert!(["access-1", "refresh-1"].contains(&revoked.as_str()), "the disconnected grant's token: {revoked}");
    assert_eq!((summary.refreshed, summary.revocations), (1, 1), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_held_past_the_deadline_does_not_keep_the_sweep_from_revoking_embedded() {
    a_refresh_held_past_the_deadline_does_not_keep_the_sweep_from_revoking(Backend::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_held_past_the_deadline_does_not_keep_the_sweep_from_revoking_aws() {
    a_refresh_held_past_the_deadline_does_not_keep_the_sweep_from_revoking(Backend::aws().await).await;
}

/// The sweep as a pipeline: with pages of one entry and two due connections, the second
/// connection's refresh reaches the provider while the first one's is still held there. A sweep
/// that refreshed page after page (or shard after shard) would wait for the first.
async fn a_held_refresh_does_not_keep_the_sweep_from_the_next_page(backend: Backend) {
    let provider = GatedProvider::start().await;
    let service = backend.service().clone();
    let url = &provider.url;
    let (org, p) = define(&service, &format!("{url}/authorize"), &format!("{url}/token"), None).await;
    let first = authorized_at(&backend, &p, "c-first").await;
    let second = authorized_at(&backend, &p, "c-second").await;
    until_due(&backend, &org, &first).await;
    until_due(&backend, &org, &second).await;

    let sweeper = service.clone();
    let sweep = tokio::spawn(async move { sweeper.refresh_sweep(Instant::now() + Duration::from_secs(60)).await });
    provider.held().await;
    let both = tokio::time::timeout(Duration::from_secs(15), provider.arrived.lock().await.recv()).await;
    provider.release.add_permits(2);
    assert!(matches!(both, Ok(Some(()))), "the second refresh started while the first was held");
    let summary = sweep.await.unwrap().expect("the sweep ends");
    assert_eq!((summary.due, summary.refreshed, summary.skipped), (2, 2, 0), "{summary:?}");
}

/// Pages of one entry: every due connection on a page of its own.
fn one_entry_pages() -> ServiceOptions {
    let mut options = options();
    options.refresh.page = 1;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_refresh_does_not_keep_the_sweep_from_the_next_page_embedded() {
    a_held_refresh_does_not_keep_the_sweep_from_the_next_page(Backend::embedded_with(one_entry_pages()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_refresh_does_not_keep_the_sweep_from_the_next_page_aws() {
    a_held_refresh_does_not_keep_the_sweep_from_the_next_page(Backend::aws_with(one_entry_pages()).await).await;
}

/// One organization whose token endpoint holds every refresh leaves a sweep's places to the
/// others: 12 due connections of it, every one due before 4 of another organization, and a
/// sweep of 8 places. The held organization takes at most all but the reserve (an eighth: 7),
/// and the other's refreshes all run meanwhile. A sweep that started its entries in due order
/// gave all 8 places to the held ones until the provider call timeout (15 s) freed them.
/// `worker`: the same entries as one fan-out worker's batch (`Service::refresh_due_entries`),
/// the held organization's first, instead of a sweep.
/// `held`: how many connections of the held organization.
async fn held_refreshes_leave_the_sweep_to_the_others(backend: Backend, worker: bool, held_count: usize) {
    let (held, quick) = (GatedProvider::start().await, GatedProvider::start().await);
    quick.release.add_permits(1_000);
    let service = backend.service().clone();
    let endpoints = |url: &str| (format!("{url}/authorize"), format!("{url}/token"));
    let (authorize, token) = endpoints(&held.url);
    let (held_org, held_p) = define(&service, &authorize, &token, None).await;
    let (authorize, token) = endpoints(&quick.url);
    let (other_org, other_p) = define(&service, &authorize, &token, None).await;
    let mut crowd = Vec::new();
    for i in 0..held_count {
        crowd.push(authorized_at(&backend, &held_p, &format!("c-held-{i}")).await);
    }
    for id in &crowd {
        until_due(&backend, &held_org, id).await;
    }
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(authorized_at(&backend, &other_p, &format!("c-other-{i}")).await);
    }
    for id in &others {
        until_due(&backend, &other_org, id).await;
    }

    let sweeper = service.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let batch: Vec<DueEntry> = (crowd.iter().map(|id| (&held_org, id)))
        .chain(others.iter().map(|id| (&other_org, id)))
        .map(|(org, id)| DueEntry { org: org.clone(), id: id.clone(), due: now().unix_timestamp() })
        .collect();
    let sweep = tokio::spawn(async move {
        if !worker {
            return sweeper.refresh_sweep(deadline).await.map(|s| (s.due, s.refreshed));
        }
        let outcomes = sweeper.refresh_due_entries(&batch, deadline).await;
        let refreshed = outcomes.iter().filter(|o| **o == latchkey::service::RefreshOutcome::Refreshed).count();
        Ok((outcomes.len(), refreshed))
    });
    let mut refreshed = 0;
    // Under the 15 s provider call timeout that would free the places anyway; past a full aside,
    // well under it (the held ones hang from 2 s on).
    let window = Duration::from_secs(if held_count <= 12 { 15 } else { 10 });
    let all_others = tokio::time::timeout(window, async {
        let mut arrivals = quick.arrived.lock().await;
        while refreshed < others.len() && arrivals.recv().await.is_some() {
            refreshed += 1;
        }
    })
    .await;
    let mut held_at_once = 0;
    {
        let mut arrivals = held.arrived.lock().await;
        while arrivals.try_recv().is_ok() {
            held_at_once += 1;
        }
    }
    held.release.add_permits(1_000);
    assert!(
        all_others.is_ok(),
        "{refreshed} of the other organization's 4 refreshes ran while the first one's were held"
    );
    assert!(
        held_at_once <= 7,
        "{held_at_once} of the held organization's refreshes at once: more than all but the reserve"
    );
    let (due, refreshed) = sweep.await.unwrap().expect("the sweep ends");
    assert_eq!(due, held_count + 4, "entries");
    if held_count <= 12 {
        assert_eq!(refreshed, due, "every entry refreshed once the held ones were released");
    } else {
        // Past a full aside the held organization's entries were passed over (still due).
        assert!(refreshed >= 4, "{refreshed} refreshed");
    }
}

/// A sweep of 8 places, reading pages of one entry: the held organization's entries, read
/// first, have taken what they may before the other organization's are read (the reserve's
/// case), not only when both are queued at once.
fn eight_places() -> ServiceOptions {
    let mut options = one_entry_pages();
    options.refresh.concurrency = 8;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_refreshes_leave_the_sweep_to_the_others_embedded() {
    held_refreshes_leave_the_sweep_to_the_others(Backend::embedded_with(eight_places()).await, false, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_refreshes_leave_the_sweep_to_the_others_aws() {
    held_refreshes_leave_the_sweep_to_the_others(Backend::aws_with(eight_places()).await, false, 12).await;
}

/// 48 held connections in one page (SQLite's one shard): more than the 8 places and the 32
/// set aside. The rest wait at the head of the shard until the held ones have hung 2 s; then
/// they are passed over, and the sweep must wake for that: no refresh ends and no page is read
/// before the provider timeout (15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_refreshes_past_a_full_aside_leave_the_sweep_to_the_others_embedded() {
    let mut options = options();
    options.refresh.concurrency = 8;
    held_refreshes_leave_the_sweep_to_the_others(Backend::embedded_with(options).await, false, 48).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_refreshes_leave_a_workers_batch_to_the_others_embedded() {
    held_refreshes_leave_the_sweep_to_the_others(Backend::embedded_with(eight_places()).await, true, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_refreshes_leave_a_workers_batch_to_the_others_aws() {
    held_refreshes_leave_the_sweep_to_the_others(Backend::aws_with(eight_places()).await, true, 12).await;
}

/// Revocation jobs run side by side: three disconnected grants whose revocation endpoint holds
/// its answers all reach it at once. One job after another, a held endpoint (one organization's,
/// until the HTTP client's 15 s timeout) kept every job queued after its own waiting, other
/// organizations' included.
async fn a_held_revocation_does_not_keep_the_sweep_from_the_next_job(backend: Backend) {
    let provider = GatedProvider::start().await;
    let service = backend.service().clone();
    let url = &provider.url;
    let (authorize, token, revoke) = (format!("{url}/authorize"), format!("{url}/token"), format!("{url}/revoke-held"));
    let (_, p) = define(&service, &authorize, &token, Some(&revoke)).await;
    for customer in ["c-1", "c-2", "c-3"] {
        let id = authorized_at(&backend, &p, customer).await;
        service.disconnect(&p, id.as_str()).await.expect("disconnect");
    }
    // Polled: the due index may lag the job.
    let store = backend.store().clone();
    let due = |until| {
        let store = store.clone();
        async move { store.due_revocations(until, 10, usize::MAX).await.expect("due jobs").len() }
    };
    support::eventually(Duration::from_secs(20), "the three revocation jobs are due", || async {
        due(now()).await == 3
    })
    .await;

    let sweeper = service.clone();
    let sweep = tokio::spawn(async move { sweeper.refresh_sweep(Instant::now() + Duration::from_secs(60)).await });
    let mut revoked = provider.revoked.lock().await;
    // The first one may wait for a loaded moto's index reads; the others come beside it, well
    // before the 15 s provider call timeout that would end a held one.
    let first = tokio::time::timeout(Duration::from_secs(30), revoked.recv()).await;
    let others =
        tokio::time::timeout(Duration::from_secs(10), async { [revoked.recv().await, revoked.recv().await] }).await;
    // Each job's refresh token, then its access token.
    provider.release.add_permits(6);
    let first = first.expect("a revocation reached the provider");
    let others = others.expect("the other two jobs' revocations were held at the provider beside the first");
    for token in std::iter::once(first).chain(others) {
        assert_eq!(token.as_deref(), Some("refresh-1"), "the refresh token first");
    }
    let summary = sweep.await.unwrap().expect("the sweep ends");
    assert_eq!(summary.revocations, 3, "{summary:?}");
    let later = now() + time::Duration::days(1);
    assert_eq!(due(later).await, 0, "the three jobs are done, not retrying");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_revocation_does_not_keep_the_sweep_from_the_next_job_embedded() {
    a_held_revocation_does_not_keep_the_sweep_from_the_next_job(Backend::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_revocation_does_not_keep_the_sweep_from_the_next_job_aws() {
    a_held_revocation_does_not_keep_the_sweep_from_the_next_job(Backend::aws().await).await;
}

/// Organizations' due revocation jobs, however many and however stuck, leave a sweep's run to
/// the other organizations: `crowds` crowds of `copies` due jobs each, every crowd's endpoint
/// holding its answers and every job older than another organization's, do not keep that job
/// from its endpoint, nor does any crowd hold more than its places at once. A sweep that read
/// the 100 oldest due jobs read only the crowds'; one that ran its 16 places in order gave them
/// all to the crowds, until the provider call timeout (15 s) freed them; one that read 25 of
/// each organization oldest first read four crowds' 25 and nothing of the others.
async fn held_revocations_leave_the_sweep_to_the_others(backend: Backend, crowds: usize, copies: usize) {
    use latchkey::service::{DUE_REVOCATIONS, DUE_REVOCATIONS_PER_ORGANIZATION, REVOKE_PER_ORGANIZATION};

    let service = backend.service().clone();
    let store = backend.store().clone();
    let endpoints =
        |url: &str, revoke: &str| (format!("{url}/authorize"), format!("{url}/token"), format!("{url}/{revoke}"));
    // The crowds: each one disconnected grant's job of its own organization and endpoint,
    // copied (same connection, so the copies' seals open), every copy due an hour before the
    // other's job.
    let hour_ago = now() - time::Duration::hours(1);
    let mut held = Vec::new();
    for c in 0..crowds {
        let provider = GatedProvider::start().await;
        let (authorize, token, revoke) = endpoints(&provider.url, "revoke-held");
        let (crowd_org, crowd) = define(&service, &authorize, &token, Some(&revoke)).await;
        let crowded = authorized_at(&backend, &crowd, &format!("c-crowd-{c}")).await;
        service.disconnect(&crowd, crowded.as_str()).await.expect("disconnect");
        let job = store.revocations_of(&crowd_org, &crowded).await.expect("jobs").pop().expect("a revocation job");
        for i in 0..copies {
            let mut copy = job.clone();
            copy.id = format!("{}-{i:04}", job.id);
            copy.next_attempt_at = hour_ago + time::Duration::seconds((c * copies + i) as i64);
            store.put_revocation(&copy).await.expect("a copy");
        }
        held.push((crowd_org, provider));
    }
    let quick = GatedProvider::start().await;
    let (authorize, token, revoke) = endpoints(&quick.url, "revoke");
    let (_, other) = define(&service, &authorize, &token, Some(&revoke)).await;
    let id = authorized_at(&backend, &other, "c-other").await;
    service.disconnect(&other, id.as_str()).await.expect("disconnect");
    // Polled: the due index may lag the jobs. Each crowd's own job is due too.
    let all = crowds * (copies + 1) + 1;
    support::eventually(Duration::from_secs(30), "every job is due", || async {
        store.due_revocations(now(), 10_000, usize::MAX).await.expect("due jobs").len() == all
    })
    .await;

    let sweeper = service.clone();
    let sweep = tokio::spawn(async move { sweeper.refresh_sweep(Instant::now() + Duration::from_secs(60)).await });
    // The first may wait for a loaded moto's index reads; the other organization's job starts
    // beside the crowds', well before the 15 s provider call timeout would free a place.
    let first =
        tokio::time::timeout(Duration::from_secs(30), async { held[0].1.revoked.lock().await.recv().await }).await;
    let others = tokio::time::timeout(Duration::from_secs(10), async { quick.revoked.lock().await.recv().await }).await;
    let mut held_at_once = Vec::new();
    for (_, provider) in &held {
        let mut arrivals = provider.revoked.lock().await;
        let mut n = 0;
        while arrivals.try_recv().is_ok() {
            n += 1;
        }
        held_at_once.push(n);
    }
    held_at_once[0] += usize::from(matches!(first, Ok(Some(_))));
    for (_, provider) in &held {
        provider.release.add_permits(1_000);
    }
    first.expect("a crowd's revocation reached its endpoint");
    assert_eq!(others.expect("the other organization's revocation reached its endpoint").as_deref(), Some("refresh-1"));
    assert!(
        held_at_once.iter().all(|&n| n <= REVOKE_PER_ORGANIZATION),
        "{held_at_once:?} of the crowds' revocations held at once, more than their {REVOKE_PER_ORGANIZATION} places"
    );
    let summary = sweep.await.unwrap().expect("the sweep ends");
    let read = (crowds * DUE_REVOCATIONS_PER_ORGANIZATION.min(copies + 1) + 1).min(DUE_REVOCATIONS);
    assert_eq!(summary.revocations, read, "the crowds' shares and the other's, round by round: {summary:?}");
    let left = store.due_revocations(now() + time::Duration::days(1), 10_000, usize::MAX).await.expect("due jobs");
    assert!(left.iter().all(|j| held.iter().any(|(org, _)| &j.org == org)), "the other's job is done");
    assert_eq!(left.len(), all - read, "the rest of the crowds wait for the next sweeps");
}

/// One organization with more due jobs than a sweep reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_organizations_held_revocations_leave_the_sweep_to_the_others_embedded() {
    let copies = latchkey::service::DUE_REVOCATIONS + 20;
    held_revocations_leave_the_sweep_to_the_others(Backend::embedded().await, 1, copies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_organizations_held_revocations_leave_the_sweep_to_the_others_aws() {
    let copies = latchkey::service::DUE_REVOCATIONS + 20;
    held_revocations_leave_the_sweep_to_the_others(Backend::aws().await, 1, copies).await;
}

/// Five organizations, each with more due jobs than its share of a sweep's read: four of those
/// shares fill it in due order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_organizations_held_revocations_leave_the_sweep_to_the_others_embedded() {
    held_revocations_leave_the_sweep_to_the_others(Backend::embedded().await, 5, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_organizations_held_revocations_leave_the_sweep_to_the_others_aws() {
    held_revocations_leave_the_sweep_to_the_others(Backend::aws().await, 5, 30).await;
}

/// The audit origin of this file's service-level lookups (as a runtime token over HTTP).
fn origin() -> latchkey::service::ReadOrigin {
    latchkey::service::ReadOrigin::http(latchkey::service::PrincipalKind::Runtime, "test")
}
