//! Idempotency records as items: `pk` = `IDEM#{org}#{id}`, `sk` = `IDEM`, the record as `doc`,
//! `claim` (the claimant's ULID), `claimed_until` (Unix seconds), `done` once it holds a
//! response, and the table's TTL attribute at the record's expiry. A claim is one conditional
//! PutItem, so of concurrent claims exactly one succeeds; the loser reads the winner's record
//! from the failed condition (`ALL_OLD`), with no second read.

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use time::OffsetDateTime;

use super::item::{Item, doc_of, key, n, s};
use super::write::{backend, conditional, sdk};
use super::{DynamoStore, TTL_ATTRIBUTE};
use crate::domain::IdempotencyRecord;
use crate::ports::StoreError;

const SK: &str = "IDEM";

fn pk(r: &IdempotencyRecord) -> String {
    format!("IDEM#{}#{}", r.org, r.id)
}

impl TryFrom<&IdempotencyRecord> for Item {
    type Error = StoreError;

    fn try_from(r: &IdempotencyRecord) -> Result<Self, StoreError> {
        let mut item = key(pk(r), SK.to_owned());
        item.insert("kind".into(), s("idempotency"));
        item.insert("doc".into(), s(serde_json::to_string(r).map_err(backend)?));
        item.insert("claim".into(), s(r.claim.as_str()));
        item.insert("claimed_until".into(), n(r.claimed_until.unix_timestamp()));
        item.insert(TTL_ATTRIBUTE.into(), n(r.expires_at.unix_timestamp()));
        if r.response.is_some() {
            item.insert("done".into(), AttributeValue::Bool(true));
        }
        Ok(item)
    }
}

impl DynamoStore {
    pub(super) async fn claim_idempotency_item(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        // TTL deletes late (up to days), so an expired item is claimable whatever is left of it.
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Item::try_from(claim)?))
            .condition_expression(
                "attribute_not_exists(pk) OR #ttl <= :now OR (attribute_not_exists(done) AND claimed_until <= :now)",
            )
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", n(now.unix_timestamp()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) if super::super::is_unavailable(&e) => Err(sdk(e)),
            Err(e) => match e.into_service_error() {
                PutItemError::ConditionalCheckFailedException(c) => {
                    let item = c.item.ok_or_else(|| backend("a failed claim returned no item"))?;
                    Ok(Some(doc_of(&item)?))
                }
                other => Err(backend(other)),
            },
        }
    }

    pub(super) async fn complete_idempotency_item(&self, done: &IdempotencyRecord) -> Result<(), StoreError> {
        self.put_if(Item::try_from(done)?, "claim = :claim", &[(":claim", s(done.claim.as_str()))]).await
    }

    pub(super) async fn release_idempotency_item(&self, claim: &IdempotencyRecord) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk(claim), SK.to_owned())))
            .condition_expression("claim = :claim AND attribute_not_exists(done)")
            .expression_attribute_values(":claim", s(claim.claim.as_str()))
            .send()
            .await;
        match res.map_err(conditional) {
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
