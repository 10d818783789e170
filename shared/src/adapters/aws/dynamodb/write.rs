//! Writes that can race, and what their failures mean: conditional `PutItem`, the counted
//! transaction of connection inserts and deletes, batch deletes; an SDK error as a
//! [`StoreError`] (`Conflict` for a failed condition, `Unavailable` for a DynamoDB that did not
//! answer).

use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, DeleteRequest, TransactWriteItem, Update, WriteRequest,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use backon::{BackoffBuilder, ExponentialBuilder};

use super::DynamoStore;
use super::item::{Item, def_sk, key, n, org_pk};
use crate::domain::{DefinitionKey, OrgId};
use crate::ports::{BackendError, StoreError};

pub(super) fn backend(e: impl Into<BackendError>) -> StoreError {
    StoreError::Backend(e.into())
}

/// A failed DynamoDB call: [`StoreError::Unavailable`] when it timed out, could not reach
/// DynamoDB or was throttled (the caller may retry shortly), [`StoreError::Backend`] otherwise.
pub(super) fn sdk<E>(e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if super::super::is_unavailable(&e) { StoreError::Unavailable(e.into()) } else { backend(e) }
}

/// A transaction DynamoDB cancelled: the code of each item's reason, in order (`None` for items
/// that did not fail).
pub(super) struct Cancelled(Vec<String>);

impl Cancelled {
    fn new(reasons: &[CancellationReason]) -> Self {
        Self(reasons.iter().map(|r| r.code().unwrap_or("None").to_owned()).collect())
    }

    /// Whether item `i`'s condition failed.
    pub(super) fn condition_failed(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|c| c == "ConditionalCheckFailed")
    }

    pub(super) fn into_error(self) -> StoreError {
        let message = format!("transaction cancelled: {}", self.0.join(", "));
        // Throttled or in conflict with another transaction: worth retrying shortly.
        let transient = ["ThrottlingError", "ProvisionedThroughputExceeded", "TransactionConflict"];
        if self.0.iter().any(|c| transient.contains(&c.as_str())) {
            StoreError::Unavailable(message.into())
        } else {
            backend(message)
        }
    }
}

/// How a batch write or read waits for DynamoDB to take the items it left unprocessed: 25 ms, doubling,
/// with jitter; eight tries in all.
pub(super) fn unprocessed_retries() -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(Duration::from_millis(25)).with_max_times(7).with_jitter()
}

impl DynamoStore {
    /// Writes `write` and adds `delta` to the connection count of its definition, in one
    /// transaction. `Some` when DynamoDB cancelled it: item 0 is `write`, item 1 the count (its
    /// condition: the definition exists).
    pub(super) async fn write_counting(
        &self,
        write: TransactWriteItem,
        org: &OrgId,
        definition: &DefinitionKey,
        delta: i64,
    ) -> Result<Option<Cancelled>, StoreError> {
        let count = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), def_sk(definition))))
            .update_expression("ADD conn_count :delta")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":delta", n(delta))
            .build()
            .map_err(backend)?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(write)
            .transact_items(TransactWriteItem::builder().update(count).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) if super::super::is_unavailable(&e) => Err(sdk(e)),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(t) => {
                    Ok(Some(Cancelled::new(t.cancellation_reasons())))
                }
                other => Err(backend(other)),
            },
        }
    }

    /// PutItem under `condition` (with `values` for its placeholders, and `#version` naming
    /// `version`); a failed condition is `Conflict`.
    pub(super) async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<(), StoreError> {
        let mut req =
            self.client.put_item().table_name(&self.table).set_item(Some(item)).condition_expression(condition);
        if condition.contains("#version") {
            req = req.expression_attribute_names("#version", "version");
        }
        for (k, v) in values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        req.send().await.map(drop).map_err(conditional)
    }

    /// Deletes `keys` in batches of 25, retrying the items DynamoDB leaves unprocessed.
    pub(super) async fn delete_batch(&self, keys: &[Item]) -> Result<(), StoreError> {
        for chunk in keys.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    let req = DeleteRequest::builder().set_key(Some(k.clone())).build().map_err(backend)?;
                    Ok(WriteRequest::builder().delete_request(req).build())
                })
                .collect::<Result<_, StoreError>>()?;
            let mut waits = unprocessed_retries().build();
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(sdk)?;
                pending = out.unprocessed_items.and_then(|mut m| m.remove(&self.table)).unwrap_or_default();
                if !pending.is_empty() {
                    let wait =
                        waits.next().ok_or_else(|| backend("a batch delete was throttled; TTL removes the rest"))?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(())
    }
}

/// A failed conditional write: `Conflict` when its condition failed, else as [`sdk`].
pub(super) fn conditional<E>(e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if e.as_service_error().and_then(ProvideErrorMetadata::code) == Some("ConditionalCheckFailedException") {
        StoreError::Conflict
    } else {
        sdk(e)
    }
}
