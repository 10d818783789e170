//! Webhooks and their deliveries as items (SPEC section 11; docs/dynamodb.md).
//!
//! - A webhook: `pk` = `ORG#{org}`, `sk` = `WHK#{id}`, `version`, `doc`. Written with PutItem
//!   under `attribute_not_exists(pk)` or `version = :expected`; listed by one Query of the
//!   organization's partition (`begins_with(sk, WHK#)`), which sorts by id.
//! - A delivery: `pk` = `WHD#{org}#{webhook}`, `sk` = `DLV#{id}`, `version`, `status`, `doc`, the
//!   table's TTL attribute at its `expires_at` (Unix seconds); in the `by-customer-v2` index under
//!   `gsi1pk` = its `pk`, `gsi1sk` = `{created_at, Unix ms, 15 digits}#{id}`, so the newest of a
//!   webhook are one Query read backwards (keys and `status`; the page's deliveries are then
//!   read from the table); and, only while `pending`, in the `refresh-due` index
//!   under `gsi3pk` = `WDUE#{shard}`, `gsi3sk` = `{next_attempt_at, Unix ms, 15 digits}#{org}#{webhook}#{id}`.
//!   Every write replaces the whole item (PutItem), so a delivery that stops being pending
//!   leaves the due index with that write.
//!
//! A webhook's deliveries share one partition, so deleting the webhook deletes them with a
//! Query of keys and batch deletes (what a crash leaves behind, TTL removes within 30 days).

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use time::OffsetDateTime;

use super::item::{Item, doc_of, key, n, org_pk, s, shard_of, table_key};
use super::write::{backend, conditional, sdk};
use super::{BY_CUSTOMER, DynamoStore, TTL_ATTRIBUTE};
use crate::domain::{DeliveryStatus, OrgId, Webhook, WebhookDelivery, WebhookId};
use crate::ports::{DeliveryCursor, Expect, Page, StoreError};

/// Due deliveries read from the table at once (GetItem) by [`DynamoStore::due_delivery_items`].
const DELIVERY_READS: usize = 8;

fn webhook_sk(id: &WebhookId) -> String {
    format!("WHK#{id}")
}

/// The partition of a webhook's deliveries (and their `by-customer-v2` index partition).
fn deliveries_pk(org: &OrgId, webhook: &WebhookId) -> String {
    format!("WHD#{org}#{webhook}")
}

fn delivery_sk(id: &str) -> String {
    format!("DLV#{id}")
}

fn ms(t: OffsetDateTime) -> i64 {
    ((t.unix_timestamp_nanos() / 1_000_000) as i64).max(0)
}

/// The `by-customer-v2` index sort key of a delivery: its creation in zero-padded milliseconds,
/// then its id, so that text order is (creation, id) order.
fn created_sk(created_ms: i64, id: &str) -> String {
    format!("{:015}#{id}", created_ms.max(0))
}

/// The cursor after the delivery whose `by-customer-v2` index entry is `item` (its `gsi1sk`,
/// [`created_sk`]).
fn created_cursor(item: &Item) -> Result<DeliveryCursor, StoreError> {
    let sk = match item.get("gsi1sk") {
        Some(AttributeValue::S(sk)) => sk,
        _ => return Err(backend("a delivery's index entry lacks its sort key")),
    };
    DeliveryCursor::parse(&sk.replacen('#', ".", 1)).ok_or_else(|| backend("a malformed delivery index key"))
}

/// The due-index sort key of a delivery due at `due`: zero-padded milliseconds, so that text
/// order is time order.
fn due_sk(due: OffsetDateTime, d: &WebhookDelivery) -> String {
    format!("{:015}#{}#{}#{}", ms(due), d.org, d.webhook_id, d.id)
}

impl TryFrom<&Webhook> for Item {
    type Error = StoreError;

    fn try_from(hook: &Webhook) -> Result<Self, StoreError> {
        let mut item = key(org_pk(&hook.org), webhook_sk(&hook.id));
        item.insert("kind".into(), s("webhook"));
        item.insert("version".into(), n(hook.version));
        item.insert("doc".into(), s(serde_json::to_string(hook).map_err(backend)?));
        Ok(item)
    }
}

impl TryFrom<&WebhookDelivery> for Item {
    type Error = StoreError;

    fn try_from(d: &WebhookDelivery) -> Result<Self, StoreError> {
        let pk = deliveries_pk(&d.org, &d.webhook_id);
        let mut item = key(pk.clone(), delivery_sk(&d.id));
        item.insert("kind".into(), s("webhook_delivery"));
        item.insert("version".into(), n(d.version));
        let status: &str = d.status.into();
        item.insert("status".into(), s(status));
        item.insert("doc".into(), s(serde_json::to_string(d).map_err(backend)?));
        item.insert(TTL_ATTRIBUTE.into(), n(d.expires_at.unix_timestamp()));
        item.insert("gsi1pk".into(), s(pk));
        item.insert("gsi1sk".into(), s(created_sk(ms(d.created_at), &d.id)));
        // Sparse: only pending deliveries are in the due index.
        if d.status == DeliveryStatus::Pending
            && let Some(due) = d.next_attempt_at
        {
            item.insert("gsi3pk".into(), s(format!("WDUE#{}", shard_of(&d.id))));
            item.insert("gsi3sk".into(), s(due_sk(due, d)));
        }
        Ok(item)
    }
}

impl DynamoStore {
    pub(super) async fn put_webhook_item(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
        let item = Item::try_from(hook)?;
        match expect {
            Expect::Absent => self.put_if(item, "attribute_not_exists(pk)", &[]).await,
            Expect::Version(v) => self.put_if(item, "#version = :v", &[(":v", n(v))]).await,
        }
    }

    pub(super) async fn get_webhook_item(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.get(key(org_pk(org), webhook_sk(id))).await?.as_ref().map(doc_of).transpose()
    }

    pub(super) async fn list_webhook_items(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError> {
        self.org_docs(org, "WHK#").await
    }

    pub(super) async fn delete_webhook_item(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), webhook_sk(id))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        // The deliveries go whether or not the webhook was there: none may outlive it.
        self.delete_partition(deliveries_pk(org, id)).await?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    pub(super) async fn insert_delivery_item(&self, d: &WebhookDelivery) -> Result<bool, StoreError> {
        // TTL deletes late: a delivery past its expiry no longer holds its id.
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Item::try_from(d)?))
            .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", n(d.created_at.unix_timestamp()))
            .send()
            .await;
        match res.map_err(conditional) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn get_delivery_item(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.get(key(deliveries_pk(org, webhook), delivery_sk(id))).await?.as_ref().map(doc_of).transpose()
    }

    /// A page newest first: the webhook's `by-customer-v2` index partition read backwards from
    /// strictly before the cursor's sort key, `status` as a FilterExpression, then the page's
    /// deliveries read from the table (the index projects keys and `status` only).
    /// `query_until` reads on until the page (and one more, to know whether another follows) is
    /// full or the partition ends, so a filter never makes a short page end the listing.
    pub(super) async fn list_delivery_items(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
        let limit = limit.max(1);
        let wanted: Option<&'static str> = status.map(Into::into);
        let mut deliveries = Vec::with_capacity(limit);
        let mut after = cursor.cloned();
        // A delivery dropped by the status's second look (its entry lagged an attempt) leaves
        // room on the page: the query goes on after the last entry read.
        loop {
            let need = limit - deliveries.len();
            let after_sk = after.as_ref().map(|c| s(created_sk(c.created_ms(), &c.id)));
            let key_condition = if after_sk.is_some() { "gsi1pk = :pk AND gsi1sk < :after" } else { "gsi1pk = :pk" };
            let mut found = self
                .query_index_until(
                    BY_CUSTOMER,
                    || {
                        let mut q = self
                            .client
                            .query()
                            .table_name(&self.table)
                            .key_condition_expression(key_condition)
                            .expression_attribute_values(":pk", s(deliveries_pk(org, webhook)))
                            .scan_index_forward(false);
                        if let Some(after) = &after_sk {
                            q = q.expression_attribute_values(":after", after.clone());
                        }
                        if let Some(wanted) = wanted {
                            q = q
                                .filter_expression("#status = :status")
                                .expression_attribute_names("#status", "status")
                                .expression_attribute_values(":status", s(wanted));
                        }
                        q
                    },
                    need + 1,
                )
                .await?;
            let more = found.len() > need;
            found.truncate(need);
            let last = found.last().map(created_cursor).transpose()?;
            let keys: Vec<Item> = found.iter().map(table_key).collect::<Result<_, _>>()?;
            for item in self.get_batch(&keys).await?.iter().flatten() {
                let d: WebhookDelivery = doc_of(item)?;
                // Read again: one whose index entry lagged its last attempt is judged as it is now.
                if d.org == *org && d.webhook_id == *webhook && status.is_none_or(|st| d.status == st) {
                    deliveries.push(d);
                }
            }
            match last {
                Some(last) if more && deliveries.len() < limit => after = Some(last),
                _ => return Ok(Page { items: deliveries, next: last.filter(|_| more) }),
            }
        }
    }

    pub(super) async fn update_delivery_item(
        &self,
        d: &WebhookDelivery,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        self.put_if(Item::try_from(d)?, "#version = :v", &[(":v", n(expected_version))]).await
    }

    /// Up to `limit` pending deliveries due by `until`, round by round among organizations (the
    /// port's order, [`crate::ports::Store::due_deliveries`]): the keys of every shard of the due
    /// index (`WDUE#{shard}`) read to the end of their due range and ordered by
    /// [`DynamoStore::due_keys_round_by_round`] (at most `limit` of one organization), then each
    /// delivery read from the table in that order, kept only if it is still pending and due (the
    /// index projects keys only, and lags the table), until `limit` are found.
    pub(super) async fn due_delivery_items(
        &self,
        until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};

        if limit == 0 {
            return Ok(Vec::new());
        }
        let upper = format!("{:015}#~", ms(until));
        let keys = self.due_keys_round_by_round("WDUE", &upper, limit).await?;
        let mut items = futures_util::stream::iter(keys).map(|k| self.get(k)).buffered(DELIVERY_READS);
        let mut due = Vec::new();
        while due.len() < limit {
            match items.try_next().await? {
                Some(Some(item)) => {
                    let d: WebhookDelivery = doc_of(&item)?;
                    if d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|t| t <= until) {
                        due.push(d);
                    }
                }
                Some(None) => {}
                None => break,
            }
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Sealed;

    fn delivery(status: DeliveryStatus) -> WebhookDelivery {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        WebhookDelivery {
            org: OrgId::parse("acme").unwrap(),
            webhook_id: WebhookId::parse("ops").unwrap(),
            id: "msg_abc".into(),
            event_id: "evt".into(),
            event_type: "Connection Created".into(),
            payload: "{}".into(),
            status,
            version: 1,
            attempts: Vec::new(),
            next_attempt_at: Some(at + time::Duration::milliseconds(5)),
            created_at: at,
            expires_at: at + time::Duration::days(30),
        }
    }

    #[test]
    fn only_pending_deliveries_carry_the_due_index_keys() {
        let item = Item::try_from(&delivery(DeliveryStatus::Pending)).unwrap();
        assert_eq!(item["pk"], s("WHD#acme#ops"));
        assert_eq!(item["sk"], s("DLV#msg_abc"));
        assert_eq!(item["gsi1sk"], s("001700000000000#msg_abc"));
        assert_eq!(item["gsi3sk"], s("001700000000005#acme#ops#msg_abc"));
        assert_eq!(item[TTL_ATTRIBUTE], n(1_700_000_000 + 30 * 86_400));
        for status in [DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            let item = Item::try_from(&delivery(status)).unwrap();
            assert!(!item.contains_key("gsi3pk") && !item.contains_key("gsi3sk"), "{status:?}");
        }
        let hook = Webhook {
            org: OrgId::parse("acme").unwrap(),
            id: WebhookId::parse("ops").unwrap(),
            url: "https://hooks.example.com".into(),
            events: vec!["Connection Created".into()],
            enabled: true,
            disabled_reason: None,
            secrets: Sealed { key_id: "k".into(), wrapped_key: vec![1], ciphertext: vec![2] },
            previous_until: None,
            last_delivered_at: None,
            version: 3,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        let item = Item::try_from(&hook).unwrap();
        assert_eq!((&item["pk"], &item["sk"], &item["version"]), (&s("ORG#acme"), &s("WHK#ops"), &n(3)));
    }
}
