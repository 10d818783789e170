//! The AWS adapters through the real AWS SDK against moto (started by `support::moto`):
//! the port conformance suites, what a table scan and a copied ciphertext reveal, events
//! delivered to SQS, and how many AWS calls each operation makes.

use std::collections::BTreeMap;
use std::sync::Arc;
use support::{calls, moto};

use calls::Calls;

use aws_sdk_dynamodb::types::AttributeValue;
use latchkey::adapters::aws::schema;
use latchkey::adapters::aws::{DynamoStore, KmsKeyProvider};
use latchkey::config::Components;
use latchkey::crypto::KeyProvider;
use latchkey::domain::{OrgId, Principal};
use latchkey::ports::Store;
use latchkey::service::LookupRequest;
use latchkey::service::ServiceOptions;
use serde_json::{Value, json};

async fn fresh_table(config: &aws_config::SdkConfig) -> String {
    let table = moto::unique("latchkey");
    let client = aws_sdk_dynamodb::Client::new(config);
    schema::bootstrap(&client, &table).await.expect("bootstrap the table");
    table
}

async fn dynamo_store() -> (Arc<dyn Store>, ()) {
    let config = moto::sdk_config().await;
    let table = fresh_table(&config).await;
    (Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table)), ())
}

async fn kms_keys() -> (Arc<dyn KeyProvider>, ()) {
    let config = moto::sdk_config().await;
    let key = moto::create_kms_key(&config).await;
    (Arc::new(KmsKeyProvider::new(aws_sdk_kms::Client::new(&config), key)), ())
}

mod store {
    latchkey::store_conformance_tests!(super::dynamo_store());
}

mod keys {
    latchkey::keys_conformance_tests!(super::kms_keys());
}

#[tokio::test]
async fn bootstrap_is_idempotent() {
    let config = moto::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::unique("latchkey");
    assert_eq!(schema::bootstrap(&client, &table).await.unwrap(), schema::Bootstrap::Created);
    assert_eq!(schema::bootstrap(&client, &table).await.unwrap(), schema::Bootstrap::AlreadyExisted);
    let described = client.describe_table().table_name(&table).send().await.unwrap();
    let indexes: Vec<_> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name().map(str::to_owned))
        .collect();
    assert_eq!(indexes.len(), 3, "{indexes:?}");
    let ttl = client.describe_time_to_live().table_name(&table).send().await.unwrap();
    assert_eq!(ttl.time_to_live_description().and_then(|d| d.attribute_name()), Some("expires_at"));
}

struct AwsApp {
    app: Components,
    config: aws_config::SdkConfig,
    table: String,
    bus: String,
    calls: Calls,
}

/// The aws backend on a fresh table, key and bus, with every AWS call recorded.
async fn aws_app() -> AwsApp {
    let config = moto::sdk_config().await;
    let table = fresh_table(&config).await;
    let key = moto::create_kms_key(&config).await;
    let bus = moto::unique("bus");
    aws_sdk_eventbridge::Client::new(&config).create_event_bus().name(&bus).send().await.expect("create the bus");
    let calls = Calls::default();
    let (ddb, kms, eb) = calls.clients(&config);
    let app = Components::aws(ddb, kms, eb, &table, &key, &bus, ServiceOptions::default());
    AwsApp { app, config, table, bus, calls }
}

fn acme_definition(default_canary: &str) -> Value {
    json!({"label": "Acme", "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "endpoint": {"type": "url", "default": "https://api.acme.com"},
        "clientSecret": {"type": "password", "visibility": "organization", "default": default_canary}}})
}

fn org() -> (OrgId, Principal) {
    let org = latchkey::conformance::fresh_org();
    (org.clone(), Principal::organization(org))
}

async fn scan_all(config: &aws_config::SdkConfig, table: &str) -> Vec<BTreeMap<String, AttributeValue>> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client.scan().table_name(table).set_exclusive_start_key(start).send().await.unwrap();
        items.extend(out.items.unwrap_or_default().into_iter().map(|i| i.into_iter().collect()));
        match out.last_evaluated_key {
            Some(k) => start = Some(k),
            None => return items,
        }
    }
}

#[tokio::test]
async fn a_table_scan_finds_no_plaintext_secret() {
    let aws = aws_app().await;
    let service = &aws.app.service;
    let (_, p) = org();
    let value_canary = format!("sk_live_CANARY_{}", moto::unique("v"));
    let default_canary = format!("cs_CANARY_{}", moto::unique("d"));
    service.put_definition(&p, "acme", &acme_definition(&default_canary)).await.unwrap();
    let conn = service
        .create_connection(
            &p,
            &json!({"definition": "acme", "customer": "c-1", "label": "scan-me",
            "values": {"apiKey": value_canary}}),
        )
        .await
        .unwrap();

    let dump = format!("{:?}", scan_all(&aws.config, &aws.table).await);
    assert!(dump.contains(conn.id.as_str()) && dump.contains("scan-me"), "the scan sees the records");
    for canary in [&value_canary, &default_canary] {
        assert!(!dump.contains(canary.as_str()), "a secret is stored in clear");
    }
}

#[tokio::test]
async fn sealed_values_copied_onto_another_connection_never_open() {
    let aws = aws_app().await;
    let service = &aws.app.service;
    let (org, p) = org();
    service.put_definition(&p, "acme", &acme_definition("cs")).await.unwrap();
    let create = |key: &str| json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": key}});
    let victim = service.create_connection(&p, &create("sk_victim_secret")).await.unwrap();
    let attacker = service.create_connection(&p, &create("sk_attacker")).await.unwrap();

    // Move the victim's sealed secrets into the attacker's item, as someone with table write
    // access could.
    let ddb = aws_sdk_dynamodb::Client::new(&aws.config);
    let item = |id: &str| {
        let ddb = ddb.clone();
        let (table, key) = (aws.table.clone(), (format!("ORG#{org}"), format!("CON#{id}")));
        async move {
            ddb.get_item()
                .table_name(table)
                .key("pk", AttributeValue::S(key.0))
                .key("sk", AttributeValue::S(key.1))
                .send()
                .await
                .unwrap()
                .item
                .expect("the item exists")
        }
    };
    let doc = |i: &std::collections::HashMap<String, AttributeValue>| -> Value {
        serde_json::from_str(i["doc"].as_s().unwrap()).unwrap()
    };
    let victim_item = item(victim.id.as_str()).await;
    let mut attacker_item = item(attacker.id.as_str()).await;
    let mut attacker_doc = doc(&attacker_item);
    attacker_doc["secrets"] = doc(&victim_item)["secrets"].clone();
    attacker_item.insert("doc".into(), AttributeValue::S(attacker_doc.to_string()));
    ddb.put_item().table_name(&aws.table).set_item(Some(attacker_item)).send().await.unwrap();

    let lookup = |id: &str| LookupRequest { connection_id: Some(id.to_owned()), ..Default::default() };
    let stolen = service.lookup(&org, None, &lookup(attacker.id.as_str()), &origin()).await;
    let err = stolen.expect_err("a ciphertext bound to another connection must not open");
    assert!(!format!("{err:?} {err}").contains("sk_victim_secret"));

    // A cold process (no cached data keys) is refused by KMS itself: the context differs.
    let cold = Components::aws(
        ddb.clone(),
        aws_sdk_kms::Client::new(&aws.config),
        aws_sdk_eventbridge::Client::new(&aws.config),
        &aws.table,
        "unused-for-decrypt",
        &aws.bus,
        ServiceOptions::default(),
    );
    assert!(cold.service.lookup(&org, None, &lookup(attacker.id.as_str()), &origin()).await.is_err());
    let own = cold.service.lookup(&org, None, &lookup(victim.id.as_str()), &origin()).await.unwrap();
    let fields = serde_json::to_value(&own.fields).unwrap();
    assert_eq!(fields["apiKey"], json!("sk_victim_secret"), "the victim's own record still opens");
}

#[tokio::test]
async fn lifecycle_events_reach_a_subscribed_queue_without_secrets() {
    let aws = aws_app().await;
    let (queue, _rule) = moto::sqs_queue_for_latchkey_events(&aws.config, &aws.bus).await;
    let service = &aws.app.service;
    let (org, p) = org();
    service.put_definition(&p, "acme", &acme_definition("cs_EVENT_CANARY")).await.unwrap();
    let conn = service
        .create_connection(
            &p,
            &json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": "sk_EVENT_CANARY"}}),
        )
        .await
        .unwrap();
    let id = conn.id.to_string();
    service.update_connection(&p, &id, &json!({"values": {"apiKey": "sk_EVENT_CANARY_2"}}), None).await.unwrap();
    service.delete_connection(&p, &id).await.unwrap();

    let messages = moto::receive_all(&aws.config, &queue, 3).await;
    let mine: Vec<&Value> = messages.iter().filter(|m| m["detail"]["connection_id"] == id.as_str()).collect();
    let kinds: Vec<&str> = mine.iter().filter_map(|m| m["detail-type"].as_str()).collect();
    assert_eq!(kinds, ["Connection Created", "Connection Updated", "Connection Deleted"], "{messages:?}");
    for m in &mine {
        assert_eq!(m["source"], "latchkey");
        assert_eq!(m["detail"]["org"], org.as_str());
        assert_eq!(m["detail"]["definition"], "acme");
        assert!(!m.to_string().contains("CANARY"), "an event carries a secret: {m}");
    }
}

/// How many AWS calls each operation makes. The table is printed (see docs/aws-calls.md); the
/// hot path is asserted: a warm lookup is exactly one DynamoDB GetItem and no KMS call.
#[tokio::test]
async fn aws_calls_per_operation() {
    let aws = aws_app().await;
    let service = &aws.app.service;
    let (org, p) = org();
    let mut table = Vec::new();
    let mut record = |op: &str, calls: Vec<String>| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in &calls {
            *counts.entry(c.clone()).or_default() += 1;
        }
        let text = counts.iter().map(|(k, v)| format!("{v} × {k}")).collect::<Vec<_>>().join(", ");
        table.push(format!("| {op} | {} | {text} |", calls.len()));
        calls
    };

    service.put_definition(&p, "acme", &acme_definition("cs")).await.unwrap();
    record("PUT definition (with a password default)", aws.calls.take());
    let conn = service
        .create_connection(&p, &json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": "sk"}}))
        .await
        .unwrap();
    record("POST connection", aws.calls.take());
    let id = conn.id.to_string();
    service.get_connection(&p, &id).await.unwrap();
    record("GET connection", aws.calls.take());
    service.list_connections(&p, &Default::default()).await.unwrap();
    record("GET connections (one page)", aws.calls.take());
    let of_customer = latchkey::service::ListQuery { customer: Some("c-1".into()), ..Default::default() };
    service.list_connections(&p, &of_customer).await.unwrap();
    let listed = record("GET connections?customer= (one page)", aws.calls.take());
    let req = LookupRequest { connection_id: Some(id.clone()), ..Default::default() };
    service.lookup(&org, None, &req, &origin()).await.unwrap();
    record("lookup, first use (configured -> active)", aws.calls.take());
    service.lookup(&org, None, &req, &origin()).await.unwrap();
    let warm = record("lookup, warm", aws.calls.take());
    let by_selector =
        LookupRequest { definition: Some("acme".into()), customer: Some("c-1".into()), ..Default::default() };
    service.lookup(&org, None, &by_selector, &origin()).await.unwrap();
    let selected = record("lookup by selector, warm", aws.calls.take());
    service.update_connection(&p, &id, &json!({"label": "x"}), None).await.unwrap();
    record("PATCH connection (label)", aws.calls.take());
    service.update_connection(&p, &id, &json!({"values": {"apiKey": "sk2"}}), None).await.unwrap();
    record("PATCH connection (values)", aws.calls.take());
    service.connection_logs(&p, &id, 100).await.unwrap();
    record("GET connection logs", aws.calls.take());
    let report = LookupRequest { action: Some("report_error".into()), message: Some("401".into()), ..req.clone() };
    service.report_error(&org, None, &report).await.unwrap();
    record("report_error", aws.calls.take());
    service.delete_connection(&p, &id).await.unwrap();
    record("DELETE connection", aws.calls.take());

    println!("| operation | AWS calls | which |\n|---|---|---|\n{}", table.join("\n"));
    assert_eq!(warm, ["DynamoDB.GetItem"], "a warm lookup is one read and no KMS call");
    // A selector: the index query that finds the customer's connections, then one batch read of
    // them from the table (the index holds keys and listing attributes only), and nothing else.
    assert_eq!(selected, ["DynamoDB.Query", "DynamoDB.BatchGetItem"], "a warm selector lookup: one Query, one read");
    // The same for a listing of the customer's (then its definition read, for the views).
    assert_eq!(listed, ["DynamoDB.Query", "DynamoDB.BatchGetItem", "DynamoDB.GetItem"], "a listing by index");
}

/// The audit origin of this file's service-level lookups (as a runtime token over HTTP).
fn origin() -> latchkey::service::ReadOrigin {
    latchkey::service::ReadOrigin::http(latchkey::service::PrincipalKind::Runtime, "test")
}
