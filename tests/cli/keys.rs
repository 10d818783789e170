//! `latchkey keys rotate` on both backends: a new branch-key version per organization, while a
//! running `latchkey serve` keeps answering from the old one and reads the new one's records.

use std::sync::Arc;

use latchkey::adapters::aws::DynamoStore;
use latchkey::config::Components;
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::ports::BranchKeyStore;
use latchkey::service::ServiceOptions;
use latchkey_client::NewConnection;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::process::Command;

use crate::commands::ACME;
use crate::harness::{BIN, Run, Server, latchkey};

fn new_connection(customer: &str, key: &str) -> NewConnection {
    serde_json::from_value(json!({"definition": "acme-api", "customer": customer, "values": {"apiKey": key}})).unwrap()
}

/// The key id beside a connection's sealed secrets, read from the data directory's store.
async fn key_id(app: &Components, id: &str) -> String {
    let org = OrgId::parse("acme").unwrap();
    let conn = app.store.get_connection(&org, &ConnectionId::parse(id).unwrap()).await.unwrap().expect("stored");
    conn.secrets.expect("sealed secrets").key_id
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_seals_new_records_under_the_next_version_and_old_ones_still_open() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.client(&server.token("acme", &["runtime"]).await);
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let old = server.client(&org).create_connection(&new_connection("c-1", "sk_before")).await.unwrap().id;
    let data = server.dir.path().join("data");
    let app = Components::embedded(&data, ServiceOptions::default()).unwrap();
    assert_eq!(key_id(&app, &old).await, "branch:v1", "sealed under the org's first branch key");

    let rotate = |org: &str| latchkey().env("LATCHKEY_DATA_DIR", &data).args(["keys", "rotate", "--org", org]).output();
    let run = Run::of(rotate("acme").unwrap());
    run.ok();
    assert_eq!(run.stdout, "acme branch key v2\n");

    // Another process (its caches empty) seals under v2; the running server opens both.
    let p = Principal::organization(OrgId::parse("acme").unwrap());
    let body = json!({"definition": "acme-api", "customer": "c-2", "values": {"apiKey": "sk_after"}});
    let new = app.service.create_connection(&p, &body).await.unwrap().id.to_string();
    assert_eq!(key_id(&app, &new).await, "branch:v2");
    for (id, value) in [(&old, "sk_before"), (&new, "sk_after")] {
        let creds = runtime.lookup(id, None).await.expect("the lookup");
        assert_eq!(creds.fields.secret("apiKey").unwrap().expose_secret(), value);
    }

    let run = Run::of(rotate("Not An Org!").unwrap());
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.is_empty() && run.stderr.contains("--org"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_works_on_the_aws_backend() {
    let endpoint = tokio::task::spawn_blocking(support::moto::endpoint).await.expect("moto starts");
    let table = support::moto::unique("keys");
    let sdk = support::moto::sdk_config().await;
    let key = support::moto::create_kms_key(&sdk).await;
    let on_moto = |args: &[&str]| {
        Command::new(BIN)
            .env_clear()
            .envs(support::moto::aws_env(endpoint))
            .env("LATCHKEY_BACKEND", "aws")
            .env("LATCHKEY_TABLE", &table)
            .env("LATCHKEY_KMS_KEY_ID", &key)
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
    };
    Run::of(on_moto(&["bootstrap"]).await.unwrap()).ok();
    let org = latchkey::conformance::fresh_org();
    for version in 1..=2 {
        let run = Run::of(on_moto(&["keys", "rotate", "--org", org.as_str()]).await.unwrap());
        run.ok();
        assert_eq!(run.stdout, format!("{org} branch key v{version}\n"), "a first rotation makes the first version");
    }
    let store: Arc<dyn BranchKeyStore> = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table));
    let active = store.active_branch_key(&org).await.unwrap().expect("stored");
    assert_eq!(active.version, 2);
    assert!(store.get_branch_key(&org, 1).await.unwrap().is_some(), "the first version is kept");
}
