//! The table's schema, read from `infra/dynamodb-table.json` (the one source of truth), and
//! `latchkey bootstrap`: create the table if it is missing, idempotently.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexDescription, GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
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
    /// The attributes an `INCLUDE` projection carries beside the keys.
    #[serde(default)]
    pub non_key_attributes: Vec<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    Created,
    AlreadyExisted,
    /// The table existed without these indexes of the schema (made by an older release), and
    /// bootstrap created them, in this order.
    IndexesAdded(Vec<String>),
}

/// How long bootstrap waits for one index it added to be built (backfilled) before adding the
/// next: DynamoDB takes one index change at a time.
const INDEX_BUILD_WAIT: Duration = Duration::from_secs(15 * 60);

fn index_of(i: &Index) -> Result<GlobalSecondaryIndex, BackendError> {
    let projection = Projection::builder()
        .projection_type(ProjectionType::from(i.projection.projection_type.as_str()))
        .set_non_key_attributes(
            (!i.projection.non_key_attributes.is_empty()).then(|| i.projection.non_key_attributes.clone()),
        )
        .build();
    Ok(GlobalSecondaryIndex::builder()
        .index_name(&i.index_name)
        .set_key_schema(Some(key_elements(&i.key_schema)?))
        .projection(projection)
        .build()?)
}

/// Creates `table` as the schema declares (indexes, on-demand billing, TTL) unless it exists.
/// On an existing table: creates the schema's indexes it lacks (one UpdateTable each, the next
/// once the last is built; the indexes an older release made are left for the operator to
/// delete, infra/README.md "Index migration"), and makes sure TTL is enabled.
///
/// # Errors
/// Any DynamoDB call failing, or an added index still being built after 15 minutes (its
/// creation goes on; running bootstrap again adds the rest once it is built).
pub async fn bootstrap(client: &Client, table: &str) -> Result<Bootstrap, BackendError> {
    let s = schema();
    let existing = match client.describe_table().table_name(table).send().await {
        Ok(d) => Some(index_names(d.table())),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => None,
        Err(e) => return Err(Box::new(e)),
    };
    let outcome = if let Some(existing) = existing {
        let mut added = Vec::new();
        for i in s.global_secondary_indexes.iter().filter(|i| !existing.contains(&i.index_name)) {
            wait_built(client, table, INDEX_BUILD_WAIT).await?;
            let create = CreateGlobalSecondaryIndexAction::builder()
                .index_name(&i.index_name)
                .set_key_schema(Some(key_elements(&i.key_schema)?))
                .set_projection(index_of(i)?.projection)
                .build()?;
            let created = client
                .update_table()
                .table_name(table)
                .set_attribute_definitions(Some(attribute_definitions(&s)?))
                .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
                .send()
                .await;
            if let Err(e) = created {
                // Another bootstrap may have added it (or be adding another one) meanwhile.
                let now = client.describe_table().table_name(table).send().await?;
                if !index_names(now.table()).contains(&i.index_name) {
                    return Err(Box::new(e));
                }
                continue;
            }
            added.push(i.index_name.clone());
        }
        wait_built(client, table, INDEX_BUILD_WAIT).await?;
        if added.is_empty() { Bootstrap::AlreadyExisted } else { Bootstrap::IndexesAdded(added) }
    } else {
        let mut req = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::from(s.billing_mode.as_str()))
            .set_key_schema(Some(key_elements(&s.key_schema)?));
        req = req.set_attribute_definitions(Some(attribute_definitions(&s)?));
        for i in &s.global_secondary_indexes {
            req = req.global_secondary_indexes(index_of(i)?);
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
    wait_built(client, table, Duration::from_secs(60)).await?;
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

fn attribute_definitions(s: &TableSchema) -> Result<Vec<AttributeDefinition>, BackendError> {
    s.attribute_definitions
        .iter()
        .map(|a| {
            Ok(AttributeDefinition::builder()
                .attribute_name(&a.attribute_name)
                .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                .build()?)
        })
        .collect()
}

fn index_names(t: Option<&TableDescription>) -> Vec<String> {
    let indexes = t.map(TableDescription::global_secondary_indexes).unwrap_or_default();
    indexes.iter().filter_map(|i| i.index_name().map(str::to_owned)).collect()
}

/// Whether an index can serve reads: `ACTIVE` and not backfilling (DynamoDB refuses a Query of
/// an index it is still building).
pub fn is_built(i: &GlobalSecondaryIndexDescription) -> bool {
    i.index_status() == Some(&IndexStatus::Active) && i.backfilling() != Some(true)
}

/// Waits until the table and every index of it are `ACTIVE` and none is backfilling, polling
/// every 2 seconds, for at most `limit`.
async fn wait_built(client: &Client, table: &str, limit: Duration) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let d = client.describe_table().table_name(table).send().await?;
        let t = d.table();
        let table_active = t.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let building: Vec<&str> = t
            .map(TableDescription::global_secondary_indexes)
            .unwrap_or_default()
            .iter()
            .filter(|i| !is_built(i))
            .filter_map(|i| i.index_name())
            .collect();
        if table_active && building.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "table {table}: index {} still being built after {} s; run bootstrap again once it is ACTIVE",
                building.join(", "),
                limit.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
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
        // The listing indexes carry what a listing's FilterExpression tests, and nothing that a
        // refresh changes (a refresh then writes nothing to them).
        for i in &s.global_secondary_indexes[..2] {
            assert_eq!(i.projection.projection_type, "INCLUDE");
            assert_eq!(i.projection.non_key_attributes, super::super::dynamodb::LISTING_ATTRIBUTES);
        }
    }
}
