//! The table's schema, read from `infra/dynamodb-table.json` (the one source of truth), and
//! `latchkey bootstrap`: create the table if it is missing, idempotently.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use serde::Deserialize;

use crate::ports::BackendError;

/// The schema document, embedded at build time.
pub const TABLE_JSON: &str = include_str!("../../../../infra/dynamodb-table.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableSchema {
    pub attribute_definitions: Vec<Attr>,
    pub key_schema: Vec<Key>,
    pub global_secondary_indexes: Vec<Index>,
    pub billing_mode: String,
    pub time_to_live_attribute: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attr {
    pub attribute_name: String,
    pub attribute_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Key {
    pub attribute_name: String,
    pub key_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Index {
    pub index_name: String,
    pub key_schema: Vec<Key>,
    pub projection: IndexProjection,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexProjection {
    pub projection_type: String,
}

/// The parsed schema. The file is part of the build, so a parse failure is a build defect
/// (and the unit test below catches it).
pub fn schema() -> TableSchema {
    serde_json::from_str(TABLE_JSON).expect("infra/dynamodb-table.json is a valid table schema")
}

fn key_elements(keys: &[Key]) -> Result<Vec<KeySchemaElement>, BackendError> {
    keys.iter()
        .map(|k| {
            Ok(KeySchemaElement::builder()
                .attribute_name(&k.attribute_name)
                .key_type(KeyType::from(k.key_type.as_str()))
                .build()?)
        })
        .collect()
}

/// What bootstrap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    Created,
    AlreadyExisted,
}

/// Creates `table` as the schema declares (indexes, on-demand billing, TTL) unless it exists;
/// on an existing table only makes sure TTL is enabled.
pub async fn bootstrap(client: &Client, table: &str) -> Result<Bootstrap, BackendError> {
    let s = schema();
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => false,
        Err(e) => return Err(Box::new(e)),
    };
    let outcome = if exists {
        Bootstrap::AlreadyExisted
    } else {
        let mut req = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::from(s.billing_mode.as_str()))
            .set_key_schema(Some(key_elements(&s.key_schema)?));
        for a in &s.attribute_definitions {
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&a.attribute_name)
                    .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                    .build()?,
            );
        }
        for i in &s.global_secondary_indexes {
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(&i.index_name)
                    .set_key_schema(Some(key_elements(&i.key_schema)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::from(i.projection.projection_type.as_str()))
                            .build(),
                    )
                    .build()?,
            );
        }
        match req.send().await {
            Ok(_) => Bootstrap::Created,
            // Another bootstrap won the race: fine.
            Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => {
                Bootstrap::AlreadyExisted
            }
            Err(e) => return Err(Box::new(e)),
        }
    };
    wait_active(client, table).await?;
    let ttl = client.describe_time_to_live().table_name(table).send().await?;
    let enabled = ttl
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status())
        .is_some_and(|st| matches!(st, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling));
    if !enabled {
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().enabled(true).attribute_name(&s.time_to_live_attribute).build()?,
            )
            .send()
            .await?;
    }
    Ok(outcome)
}

async fn wait_active(client: &Client, table: &str) -> Result<(), BackendError> {
    for _ in 0..120 {
        let d = client.describe_table().table_name(table).send().await?;
        if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("table {table} did not become ACTIVE within a minute").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_declares_every_index_the_adapter_queries() {
        let s = schema();
        let names: Vec<_> = s.global_secondary_indexes.iter().map(|i| i.index_name.as_str()).collect();
        assert_eq!(names, [super::super::dynamodb::BY_CUSTOMER, super::super::dynamodb::BY_DEFINITION, "refresh-due"]);
        let declared: Vec<_> = s.attribute_definitions.iter().map(|a| a.attribute_name.as_str()).collect();
        for i in &s.global_secondary_indexes {
            for k in &i.key_schema {
                assert!(declared.contains(&k.attribute_name.as_str()), "{} is declared", k.attribute_name);
            }
        }
        assert_eq!(s.time_to_live_attribute, super::super::dynamodb::TTL_ATTRIBUTE);
    }
}
