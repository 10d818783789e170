//! The listing indexes (docs/dynamodb.md): `by-customer-v2` and `by-definition-v2` hold keys and
//! the attributes a listing filters on, never a record's document (so never a sealed secret, and
//! a refresh writes nothing to them); listings and selector lookups read the records they find
//! from the table. A table made before them (`by-customer` and `by-definition`, projection ALL)
//! is served meanwhile, and `latchkey bootstrap` adds them to it.

use aws_sdk_dynamodb::types::{AttributeValue, ProjectionType};
use latchkey::adapters::aws::schema::{self, Bootstrap};
use latchkey::adapters::aws::{BY_CUSTOMER, BY_DEFINITION, DynamoStore, LISTING_ATTRIBUTES};
use latchkey::conformance::{connection, definition, fresh_org};
use latchkey::domain::{CustomerId, DefinitionKey, Status};
use latchkey::ports::{ConnectionFilter, Expect, Store};
use support::moto;

/// The items of `index` under `gsi1pk`/`gsi2pk` = `pk`, as the index holds them.
async fn index_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    index: &str,
    pk: &str,
) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    let key = if index.contains("customer") { "gsi1pk" } else { "gsi2pk" };
    let out = client
        .query()
        .table_name(table)
        .index_name(index)
        .key_condition_expression(format!("{key} = :pk"))
        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
        .send()
        .await
        .expect("Query");
    out.items.unwrap_or_default()
}

#[tokio::test]
async fn a_table_made_before_the_listing_indexes_is_served_then_upgraded_by_bootstrap() {
    let config = moto::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::create_legacy_table(&client).await;
    let store = DynamoStore::new(client.clone(), table.clone());
    let org = fresh_org();
    let def = definition(&org, "acme");
    store.put_definition(&def, Expect::Absent).await.unwrap();
    let mut c = connection(&def, "c-1");
    c.status = Status::Active;
    store.insert_connection(&c).await.unwrap();
    let customer = CustomerId::parse("c-1").unwrap();
    let key = DefinitionKey::parse("acme").unwrap();
    let by_customer = ConnectionFilter { customer: Some(customer.clone()), ..Default::default() };
    let by_definition =
        ConnectionFilter { definition: Some(key.clone()), status: Some(Status::Active), ..Default::default() };

    let listings = async |what: &str| {
        for filter in [&by_customer, &by_definition] {
            let page = store.list_connections(&org, filter, 10, None).await.expect(what);
            assert_eq!(page.items.iter().map(|c| &c.id).collect::<Vec<_>>(), [&c.id], "{what}: {filter:?}");
        }
        let found = store.find_for_selector(&org, &key, &customer).await.expect(what);
        assert_eq!(found.iter().map(|c| &c.id).collect::<Vec<_>>(), [&c.id], "{what}: selector");
    };
    // Without the new indexes: the Queries fall back to the ones they replace.
    listings("on the old indexes").await;

    let upgraded = schema::bootstrap(&client, &table).await.expect("bootstrap an old table");
    assert_eq!(upgraded, Bootstrap::IndexesAdded(vec![BY_CUSTOMER.to_owned(), BY_DEFINITION.to_owned()]));
    let described = client.describe_table().table_name(&table).send().await.unwrap();
    for i in described.table().unwrap().global_secondary_indexes() {
        let projection = i.projection().unwrap();
        if [BY_CUSTOMER, BY_DEFINITION].contains(&i.index_name().unwrap()) {
            assert_eq!(projection.projection_type(), Some(&ProjectionType::Include), "{i:?}");
            assert_eq!(projection.non_key_attributes(), LISTING_ATTRIBUTES, "{i:?}");
        }
    }
    listings("on the new indexes").await;
    assert_eq!(schema::bootstrap(&client, &table).await.unwrap(), Bootstrap::AlreadyExisted);

    // The new indexes hold the keys and the listing attributes, not the record's document.
    let entries = index_items(&client, &table, BY_CUSTOMER, &format!("ORG#{org}#CUS#c-1")).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut names: Vec<&str> = entries[0].keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["definition", "gsi1pk", "gsi1sk", "pk", "sk", "status"], "no doc, no sealed value");
    let entries = index_items(&client, &table, BY_DEFINITION, &format!("ORG#{org}#DEF#acme")).await;
    assert!(entries.iter().all(|e| !e.contains_key("doc")), "{entries:?}");

    // A record changed after its index entry was read is answered as it is now, and judged by
    // the filter as it is now.
    let mut changed = store.get_connection(&org, &c.id).await.unwrap().unwrap();
    changed.status = Status::Error;
    changed.version += 1;
    store.update_connection(&changed, c.version).await.unwrap();
    let page = store.list_connections(&org, &by_customer, 10, None).await.unwrap();
    assert_eq!(page.items[0].status, Status::Error);
    assert!(store.list_connections(&org, &by_definition, 10, None).await.unwrap().items.is_empty());
}

/// An index entry that lags its record (real DynamoDB's indexes are eventually consistent; moto's
/// are not, so the lag is made here by writing the projected `status` alone): the record is
/// judged as it is, and the page is filled from the entries after it, so a page is short only
/// where the listing ends.
#[tokio::test]
async fn a_record_its_index_entry_misjudged_is_left_out_and_the_page_still_fills() {
    let config = moto::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::unique("latchkey");
    schema::bootstrap(&client, &table).await.expect("bootstrap");
    let store = DynamoStore::new(client.clone(), table.clone());
    let org = fresh_org();
    let def = definition(&org, "acme");
    store.put_definition(&def, Expect::Absent).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut c = connection(&def, "c-1");
        c.status = Status::Active;
        store.insert_connection(&c).await.unwrap();
        ids.push(c);
        // Ids carry milliseconds: keep creation order visible in them.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // The newest turns red; its index entry still says active.
    let mut newest = ids[2].clone();
    newest.status = Status::Error;
    newest.version += 1;
    store.update_connection(&newest, ids[2].version).await.unwrap();
    client
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("ORG#{org}")))
        .key("sk", AttributeValue::S(format!("CON#{}", newest.id)))
        .update_expression("SET #status = :active")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":active", AttributeValue::S("active".into()))
        .send()
        .await
        .expect("UpdateItem");

    let active = ConnectionFilter {
        definition: Some(DefinitionKey::parse("acme").unwrap()),
        status: Some(Status::Active),
        ..Default::default()
    };
    let page = store.list_connections(&org, &active, 2, None).await.unwrap();
    let listed: Vec<_> = page.items.iter().map(|c| &c.id).collect();
    assert_eq!(listed, [&ids[1].id, &ids[0].id], "the red one left out, the page filled from the next entries");
    assert_eq!(page.next, None, "the listing ended");
    let page = store.list_connections(&org, &active, 1, None).await.unwrap();
    assert_eq!(page.items.iter().map(|c| &c.id).collect::<Vec<_>>(), [&ids[1].id]);
    assert_eq!(page.next.as_ref(), Some(&ids[1].id), "a full page, more to come");
}
