//! Connect sessions as items: `pk` = `CONNECT#{id}`, `sk` = `CONNECT`, the session as created as
//! `doc`, its `link_hash`, `expires_ms` (Unix milliseconds, what trades and reads compare), the
//! table's TTL attribute (Unix seconds) at its expiry, and `browser_hash` once the link was
//! traded. Trading is one conditional UpdateItem, so of concurrent trades exactly one succeeds.

use aws_sdk_dynamodb::types::ReturnValue;
use time::OffsetDateTime;

use super::item::{Item, doc_of, key, n, s};
use super::write::{backend, conditional};
use super::{DynamoStore, TTL_ATTRIBUTE};
use crate::domain::ConnectSession;
use crate::ports::StoreError;

const SK: &str = "CONNECT";

fn pk(id: &str) -> String {
    format!("CONNECT#{id}")
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

impl TryFrom<&ConnectSession> for Item {
    type Error = StoreError;

    fn try_from(c: &ConnectSession) -> Result<Self, StoreError> {
        let mut item = key(pk(&c.id), SK.to_owned());
        item.insert("kind".into(), s("connect_session"));
        let doc = ConnectSession { browser_hash: None, ..c.clone() };
        item.insert("doc".into(), s(serde_json::to_string(&doc).map_err(backend)?));
        item.insert("link_hash".into(), s(c.link_hash.as_str()));
        if let Some(h) = &c.browser_hash {
            item.insert("browser_hash".into(), s(h.as_str()));
        }
        item.insert("expires_ms".into(), n(ms(c.expires_at)));
        item.insert(TTL_ATTRIBUTE.into(), n(c.expires_at.unix_timestamp()));
        Ok(item)
    }
}

/// The session of an item: its document with the item's browser hash.
fn session_of(item: &Item) -> Result<ConnectSession, StoreError> {
    let mut session: ConnectSession = doc_of(item)?;
    session.browser_hash = item.get("browser_hash").and_then(|v| v.as_s().ok()).cloned();
    Ok(session)
}

impl DynamoStore {
    pub(super) async fn put_connect_session_item(&self, session: &ConnectSession) -> Result<(), StoreError> {
        self.put_if(Item::try_from(session)?, "attribute_not_exists(pk)", &[]).await
    }

    pub(super) async fn trade_connect_link_item(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk(id), SK.to_owned())))
            .update_expression("SET browser_hash = :bh")
            .condition_expression("link_hash = :lh AND attribute_not_exists(browser_hash) AND expires_ms > :now")
            .expression_attribute_values(":bh", s(browser_hash))
            .expression_attribute_values(":lh", s(link_hash))
            .expression_attribute_values(":now", n(ms(now)))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res.map_err(conditional) {
            Ok(out) => out.attributes.as_ref().map(session_of).transpose(),
            // Unknown, another link, traded already or expired: nothing to tell apart.
            Err(StoreError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn get_connect_session_item(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        // TTL deletes late: the expiry is checked here.
        let Some(item) = self.get(key(pk(id), SK.to_owned())).await? else {
            return Ok(None);
        };
        let session = session_of(&item)?;
        Ok(session.is_live(now).then_some(session))
    }
}
