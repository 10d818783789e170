//! The due index's shard count (`DUE_SHARDS`, part of its partition key `DUE#{shard}`) was raised
//! from 8 to 16 without a backfill (docs/scale.md, Design): an entry written under the old count
//! is still read by readers of the new one, and its next write moves it under its new key.

use aws_sdk_dynamodb::types::AttributeValue;
use latchkey::adapters::aws::dynamodb::{DUE_SHARDS, due_shard};
use latchkey::config::Components;
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::ports::Store;
use latchkey::service::ServiceOptions;
use serde_json::json;
use support::moto;
use time::OffsetDateTime;

/// FNV-1a of the id, the due index's hash (`dynamodb::item::shard_of`), before the modulo.
fn fnv(id: &ConnectionId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Every entry of `store`'s due index up to `until`, by shard.
async fn entries(store: &dyn Store, until: OffsetDateTime) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for shard in 0..store.due_shards() {
        for e in store.due_connections(shard, until, None, 100).await.unwrap() {
            out.push((shard, e.id.to_string()));
        }
    }
    out
}

#[tokio::test]
async fn an_entry_under_its_eight_shard_key_is_still_read_and_moves_on_its_next_write() {
    assert_eq!(DUE_SHARDS, 16);
    let config = moto::sdk_config().await;
    let table = moto::unique("latchkey");
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    latchkey::adapters::aws::schema::bootstrap(&ddb, &table).await.unwrap();
    let key = moto::create_kms_key(&config).await;
    let options = ServiceOptions { allow_loopback_providers: true, ..ServiceOptions::default() };
    let app = Components::aws(
        ddb.clone(),
        aws_sdk_kms::Client::new(&config),
        aws_sdk_eventbridge::Client::new(&config),
        &table,
        &key,
        "default",
        options,
    );
    let org = OrgId::parse("acme").unwrap();
    let p = Principal::organization(org.clone());
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": "http://127.0.0.1:9/authorize"},
        "tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"},
        "clientId": {"type": "string", "default": "cid"}}});
    app.service.put_definition(&p, "idp", &def).await.unwrap();
    // A connection whose shard differs between 8 and 16 shards (half of them).
    let id = loop {
        let body = json!({"definition": "idp", "customer": "c-1",
            "tokens": {"access_token": "at", "refresh_token": "rt", "expires_in": 3600}});
        let id = app.service.create_connection(&p, &body).await.unwrap().id;
        if fnv(&id) % 16 != fnv(&id) % 8 {
            break id;
        }
    };
    let (old, new) = ((fnv(&id) % 8) as u32, (fnv(&id) % 16) as u32);
    assert_eq!(due_shard(&id), new, "the same hash as the adapter's");
    let until = OffsetDateTime::now_utc() + time::Duration::days(1);
    assert!(entries(app.store.as_ref(), until).await.contains(&(new, id.to_string())));

    // As written before the change: its entry under the 8-shard key.
    ddb.update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("ORG#{org}")))
        .key("sk", AttributeValue::S(format!("CON#{id}")))
        .update_expression("SET gsi3pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(format!("DUE#{old}")))
        .send()
        .await
        .unwrap();
    let found = entries(app.store.as_ref(), until).await;
    assert!(found.contains(&(old, id.to_string())), "still read, under its old shard: {found:?}");
    assert!(!found.contains(&(new, id.to_string())), "{found:?}");

    // Its next write (here a plain update; in production the refresh it is due for) moves it.
    let mut c = app.store.get_connection(&org, &id).await.unwrap().unwrap();
    c.version += 1;
    app.store.update_connection(&c, c.version - 1).await.unwrap();
    let found = entries(app.store.as_ref(), until).await;
    assert!(found.contains(&(new, id.to_string())), "under its new shard: {found:?}");
    assert!(!found.contains(&(old, id.to_string())), "and only there: {found:?}");
}
