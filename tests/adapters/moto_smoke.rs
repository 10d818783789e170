//! Proves the moto harness end to end with the real AWS SDK: the behaviours the AWS adapters
//! rely on (conditional writes, GSIs, encryption context, event routing) work on the emulator.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_kms::types::DataKeySpec;
use support::moto;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn key(name: &str, key_type: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder().attribute_name(name).key_type(key_type).build().unwrap()
}

fn string_attribute(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().unwrap()
}

#[tokio::test]
async fn dynamodb_conditional_put_refuses_an_existing_item_and_the_gsi_finds_it() {
    let db = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
    let table = moto::unique("latchkey-smoke");
    db.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attribute("pk"))
        .attribute_definitions(string_attribute("sk"))
        .attribute_definitions(string_attribute("gsi1pk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("gsi1")
                .key_schema(key("gsi1pk", KeyType::Hash))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("CreateTable");

    let put = || {
        db.put_item()
            .table_name(&table)
            .item("pk", s("org#acme"))
            .item("sk", s("conn#1"))
            .item("gsi1pk", s("customer#42"))
            .condition_expression("attribute_not_exists(pk)")
    };
    put().send().await.expect("first conditional put succeeds");
    let err = put().send().await.expect_err("second conditional put must fail");
    assert!(err.into_service_error().is_conditional_check_failed_exception());

    let item = db
        .get_item()
        .table_name(&table)
        .key("pk", s("org#acme"))
        .key("sk", s("conn#1"))
        .send()
        .await
        .expect("GetItem")
        .item
        .expect("the item exists");
    assert_eq!(item.get("gsi1pk"), Some(&s("customer#42")));

    let by_customer = db
        .query()
        .table_name(&table)
        .index_name("gsi1")
        .key_condition_expression("gsi1pk = :c")
        .expression_attribute_values(":c", s("customer#42"))
        .send()
        .await
        .expect("Query on the GSI");
    assert_eq!(by_customer.count(), 1);
}

#[tokio::test]
async fn kms_data_key_decrypts_only_with_its_encryption_context() {
    let config = moto::sdk_config().await;
    let key_id = moto::create_kms_key(&config).await;
    let kms = aws_sdk_kms::Client::new(&config);

    let data_key = kms
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("org", "acme")
        .send()
        .await
        .expect("GenerateDataKey");
    let plaintext = data_key.plaintext().expect("plaintext key").clone();
    let wrapped = data_key.ciphertext_blob().expect("wrapped key").clone();
    assert_eq!(plaintext.as_ref().len(), 32);

    let decrypt = |org: &str| kms.decrypt().ciphertext_blob(wrapped.clone()).encryption_context("org", org).send();
    let unwrapped = decrypt("acme").await.expect("Decrypt with the right context");
    assert_eq!(unwrapped.plaintext(), Some(&plaintext));
    assert_eq!(unwrapped.key_id().map(|arn| arn.ends_with(&key_id)), Some(true));

    let err = decrypt("other-org").await.expect_err("Decrypt with the wrong context must fail");
    assert!(err.into_service_error().is_invalid_ciphertext_exception());
}

#[tokio::test]
async fn eventbridge_routes_latchkey_events_to_the_sqs_queue() {
    let config = moto::sdk_config().await;
    let bus = moto::unique("latchkey-bus");
    let (queue_url, _rule) = moto::sqs_queue_for_latchkey_events(&config, &bus).await;

    let entry = |source: &str, n: u32| {
        PutEventsRequestEntry::builder()
            .event_bus_name(&bus)
            .source(source)
            .detail_type("connection.connected")
            .detail(serde_json::json!({ "n": n }).to_string())
            .build()
    };
    let out = aws_sdk_eventbridge::Client::new(&config)
        .put_events()
        .entries(entry("latchkey", 1))
        .entries(entry("someone-else", 2))
        .entries(entry("latchkey", 3))
        .send()
        .await
        .expect("PutEvents");
    assert_eq!(out.failed_entry_count(), 0);

    let mut events = moto::receive_all(&config, &queue_url, 2).await;
    events.sort_by_key(|e| e["detail"]["n"].as_u64());
    assert_eq!(events.len(), 2, "only the rule's events arrive: {events:?}");
    for (event, n) in events.iter().zip([1, 3]) {
        assert_eq!(event["source"], "latchkey");
        assert_eq!(event["detail-type"], "connection.connected");
        assert_eq!(event["detail"]["n"], n);
    }
}
