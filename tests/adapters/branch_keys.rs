//! The key hierarchy (`latchkey::crypto::BranchKeyring`) on both backends: the branch-key store
//! conformance suite and the key-provider suite through the keyring (SQLite + local master key;
//! DynamoDB + KMS against moto), how many KMS calls a cold container makes (one Decrypt per
//! organization, not per connection), records sealed before the hierarchy, and rotation.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use latchkey::adapters::aws::{DynamoStore, EventBridgeSink, KmsKeyProvider, schema};
use latchkey::adapters::{LocalKeyProvider, SqliteStore};
use latchkey::config::Components;
use latchkey::crypto::{BranchKeyring, Envelope, KeyProvider};
use latchkey::domain::{OrgId, Principal};
use latchkey::ports::{BranchKeyStore, SystemClock};
use latchkey::service::{LookupRequest, Service, ServiceOptions};
use serde_json::{Value, json};
use support::calls::Calls;
use support::moto;
use tempfile::TempDir;

async fn sqlite_branch_store() -> (Arc<dyn BranchKeyStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("latchkey.db")).expect("open store");
    (Arc::new(store), dir)
}

async fn local_keyring() -> (Arc<dyn KeyProvider>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let master = Arc::new(LocalKeyProvider::open_or_create(dir.path()).expect("master key"));
    let store = Arc::new(SqliteStore::open(&dir.path().join("latchkey.db")).expect("open store"));
    (Arc::new(BranchKeyring::new(master, store)), dir)
}

async fn fresh_table(config: &aws_config::SdkConfig) -> String {
    let table = moto::unique("latchkey");
    schema::bootstrap(&aws_sdk_dynamodb::Client::new(config), &table).await.expect("bootstrap the table");
    table
}

async fn dynamo_branch_store() -> (Arc<dyn BranchKeyStore>, ()) {
    let config = moto::sdk_config().await;
    let table = fresh_table(&config).await;
    (Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table)), ())
}

async fn kms_keyring() -> (Arc<dyn KeyProvider>, ()) {
    let config = moto::sdk_config().await;
    let table = fresh_table(&config).await;
    let key = moto::create_kms_key(&config).await;
    let master = Arc::new(KmsKeyProvider::new(aws_sdk_kms::Client::new(&config), key));
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table));
    (Arc::new(BranchKeyring::new(master, store)), ())
}

mod embedded {
    latchkey::branch_keys_conformance_tests!(super::sqlite_branch_store());

    mod keyring {
        latchkey::keys_conformance_tests!(super::super::local_keyring());
    }
}

mod aws {
    latchkey::branch_keys_conformance_tests!(super::dynamo_branch_store());

    mod keyring {
        latchkey::keys_conformance_tests!(super::super::kms_keyring());
    }
}

/// A table, KMS key and bus on moto, and a way to start "containers" (components) on them,
/// each with its own caches, recording their AWS calls.
struct Account {
    config: aws_config::SdkConfig,
    table: String,
    key: String,
    bus: String,
}

impl Account {
    async fn new() -> Self {
        let config = moto::sdk_config().await;
        let table = fresh_table(&config).await;
        let key = moto::create_kms_key(&config).await;
        let bus = moto::unique("bus");
        aws_sdk_eventbridge::Client::new(&config).create_event_bus().name(&bus).send().await.expect("create the bus");
        Self { config, table, key, bus }
    }

    /// A new container: empty caches, its AWS calls recorded in the returned `Calls`.
    fn container(&self) -> (Components, Calls) {
        let calls = Calls::default();
        let (ddb, kms, eb) = calls.clients(&self.config);
        (Components::aws(ddb, kms, eb, &self.table, &self.key, &self.bus, ServiceOptions::default()), calls)
    }

    /// A service sealing as Latchkey did before the key hierarchy: a KMS data key per record.
    fn service_before_branch_keys(&self) -> Service {
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.config), &self.table));
        let kms = Arc::new(KmsKeyProvider::new(aws_sdk_kms::Client::new(&self.config), &self.key));
        let events = Arc::new(EventBridgeSink::new(aws_sdk_eventbridge::Client::new(&self.config), self.bus.clone()));
        Service::new(store, Arc::new(Envelope::new(kms)), events, Arc::new(SystemClock), ServiceOptions::default())
    }

    /// The key id beside a connection's sealed secrets in its item.
    async fn secrets_key_id(&self, org: &OrgId, id: &str) -> String {
        let item = aws_sdk_dynamodb::Client::new(&self.config)
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("ORG#{org}")))
            .key("sk", AttributeValue::S(format!("CON#{id}")))
            .send()
            .await
            .unwrap()
            .item
            .expect("the connection's item");
        let doc: Value = serde_json::from_str(item["doc"].as_s().unwrap()).unwrap();
        doc["secrets"]["key_id"].as_str().expect("sealed secrets").to_owned()
    }
}

fn definition() -> Value {
    json!({"label": "Acme", "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "clientSecret": {"type": "password", "visibility": "organization", "default": "cs_default"}}})
}

fn new_org() -> (OrgId, Principal) {
    let org = latchkey::conformance::fresh_org();
    (org.clone(), Principal::organization(org))
}

fn origin() -> latchkey::service::ReadOrigin {
    latchkey::service::ReadOrigin::http(latchkey::service::PrincipalKind::Runtime, "test")
}

fn by_id(id: &str) -> LookupRequest {
    LookupRequest { connection_id: Some(id.to_owned()), ..Default::default() }
}

fn count(calls: &[String], name: &str) -> usize {
    calls.iter().filter(|c| *c == name).count()
}

fn summary(calls: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in calls {
        *counts.entry(c).or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{v} × {k}")).collect::<Vec<_>>().join(", ")
}

async fn api_key(service: &Service, org: &OrgId, id: &str) -> Value {
    let answer = service.lookup(org, None, &by_id(id), &origin()).await.expect("the lookup");
    serde_json::to_value(&answer.fields).unwrap()["apiKey"].clone()
}

/// The figures of docs/aws-calls.md's cold-container notes and docs/scale.md "Key hierarchy":
/// `cargo test --test adapters cold_container -- --nocapture` prints them.
#[tokio::test]
async fn a_cold_container_makes_one_kms_decrypt_per_organization_not_per_connection() {
    let account = Account::new().await;
    let (first, first_calls) = account.container();
    let mut orgs = Vec::new();
    for connections in [3, 2] {
        let (org, p) = new_org();
        first.service.put_definition(&p, "acme", &definition()).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..connections {
            let body =
                json!({"definition": "acme", "customer": format!("c-{i}"), "values": {"apiKey": format!("sk_{i}")}});
            ids.push(first.service.create_connection(&p, &body).await.unwrap().id.to_string());
        }
        orgs.push((org, p, ids));
    }
    let created = first_calls.take();
    // One branch key per org, made by the first seal (the definition's default): no data key
    // from KMS per record any more.
    assert_eq!(count(&created, "KMS.GenerateDataKey"), 2, "{}", summary(&created));
    assert_eq!(count(&created, "KMS.Decrypt"), 0, "{}", summary(&created));

    let (cold, calls) = account.container();
    for (org, _, ids) in &orgs {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(api_key(&cold.service, org, id).await, json!(format!("sk_{i}")));
        }
    }
    let lookups = calls.take();
    println!("| 5 lookups, 2 orgs, cold container | {} |", summary(&lookups));
    assert_eq!(count(&lookups, "KMS.Decrypt"), 2, "one Decrypt per org: {}", summary(&lookups));
    assert_eq!(count(&lookups, "KMS.GenerateDataKey"), 0, "{}", summary(&lookups));

    let (org, _, ids) = &orgs[0];
    api_key(&cold.service, org, &ids[0]).await;
    assert_eq!(calls.take(), ["DynamoDB.GetItem"], "a warm lookup is still one read and no KMS call");

    // Writes in a cold container: the org's branch key is unwrapped once, then no KMS call.
    let (writer, calls) = account.container();
    let (_, p, _) = &orgs[1];
    let body = |k: &str| json!({"definition": "acme", "customer": "c-9", "values": {"apiKey": k}});
    writer.service.create_connection(p, &body("sk_a")).await.unwrap();
    let write = calls.take();
    println!("| POST connection, cold container, known org | {} |", summary(&write));
    assert_eq!(count(&write, "KMS.Decrypt"), 1, "{}", summary(&write));
    assert_eq!(count(&write, "KMS.GenerateDataKey"), 0, "{}", summary(&write));
    writer.service.create_connection(p, &body("sk_b")).await.unwrap();
    let write = calls.take();
    println!("| POST connection, warm | {} |", summary(&write));
    assert!(write.iter().all(|c| !c.starts_with("KMS.")), "{}", summary(&write));
}

#[tokio::test]
async fn records_sealed_before_the_hierarchy_open_and_are_rewrapped_when_written() {
    let account = Account::new().await;
    let before = account.service_before_branch_keys();
    let (org, p) = new_org();
    before.put_definition(&p, "acme", &definition()).await.unwrap();
    let body = json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": "sk_old"}});
    let id = before.create_connection(&p, &body).await.unwrap().id.to_string();
    assert!(!account.secrets_key_id(&org, &id).await.starts_with("branch:"), "sealed by a KMS data key");

    let (now, calls) = account.container();
    assert_eq!(api_key(&now.service, &org, &id).await, json!("sk_old"), "an old record opens");
    assert!(count(&calls.take(), "KMS.Decrypt") >= 1, "through KMS, as before");
    now.service.update_connection(&p, &id, &json!({"values": {"apiKey": "sk_new"}}), None).await.unwrap();
    assert_eq!(account.secrets_key_id(&org, &id).await, "branch:v1", "written again: under the branch key");
    let (cold, _) = account.container();
    assert_eq!(api_key(&cold.service, &org, &id).await, json!("sk_new"));
}

#[tokio::test]
async fn rotation_seals_under_the_new_version_and_every_version_stays_readable() {
    let account = Account::new().await;
    let (app, _) = account.container();
    let (org, p) = new_org();
    app.service.put_definition(&p, "acme", &definition()).await.unwrap();
    let body = |c: &str, k: &str| json!({"definition": "acme", "customer": c, "values": {"apiKey": k}});
    let old = app.service.create_connection(&p, &body("c-1", "sk_v1")).await.unwrap().id.to_string();
    assert_eq!(account.secrets_key_id(&org, &old).await, "branch:v1");

    assert_eq!(app.keys.rotate(&org).await.unwrap(), 2);
    let new = app.service.create_connection(&p, &body("c-2", "sk_v2")).await.unwrap().id.to_string();
    assert_eq!(account.secrets_key_id(&org, &new).await, "branch:v2", "the rotating process seals under v2 at once");

    let (cold, calls) = account.container();
    assert_eq!(api_key(&cold.service, &org, &old).await, json!("sk_v1"), "v1 stays readable");
    assert_eq!(api_key(&cold.service, &org, &new).await, json!("sk_v2"));
    assert_eq!(count(&calls.take(), "KMS.Decrypt"), 2, "one Decrypt per version in use");
    cold.service.update_connection(&p, &old, &json!({"values": {"apiKey": "sk_again"}}), None).await.unwrap();
    assert_eq!(account.secrets_key_id(&org, &old).await, "branch:v2", "re-wrapped under the active version");
    assert_eq!(api_key(&app.service, &org, &old).await, json!("sk_again"));
}
