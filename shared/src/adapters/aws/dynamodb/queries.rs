//! The connection queries: listings with their filters, the selector's candidates, and the
//! due index the sweep reads (docs/dynamodb.md). Each is a Query on the table or an index,
//! paged by [`DynamoStore::query_until`]; never a Scan.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use time::OffsetDateTime;

use super::item::{
    Item, con_sk, connection_id_of, customer_pk, definition_pk, doc_of, due_sk, due_upper, org_pk, s, table_key,
};
use super::{BY_CUSTOMER, BY_DEFINITION, DynamoStore, REFRESH_DUE};
use crate::domain::{Connection, ConnectionId, CustomerId, DefinitionKey, OrgId};
use crate::ports::{ConnectionFilter, DueEntry, Page, StoreError};

impl DynamoStore {
    /// A page of `org`'s connections matching `filter`, newest first, strictly before
    /// `cursor`: one Query of the narrowest key (the customer's index partition, the
    /// definition's, or the organization's), the other conditions as a filter. An index Query
    /// finds keys (its items carry only [`super::LISTING_ATTRIBUTES`]); the page's records are
    /// then read from the table ([`DynamoStore::current_connections`]).
    pub(super) async fn list_connection_items(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let limit = limit.max(1);
        // The narrowest key first: the customer's index, the definition's, or the org partition.
        let (index, pk_name, sk_name, pk) = match (&filter.customer, &filter.definition) {
            (Some(c), _) => (Some(BY_CUSTOMER), "gsi1pk", "gsi1sk", customer_pk(org, c.as_str())),
            (None, Some(d)) => (Some(BY_DEFINITION), "gsi2pk", "gsi2sk", definition_pk(org, d.as_str())),
            (None, None) => (None, "pk", "sk", org_pk(org)),
        };
        let mut conditions = Vec::new();
        let mut values: Item = HashMap::from([(":pk".to_owned(), s(pk))]);
        let mut names: HashMap<String, String> = HashMap::new();
        if filter.customer.is_some()
            && let Some(d) = &filter.definition
        {
            conditions.push("#definition = :definition");
            values.insert(":definition".into(), s(d.as_str()));
            names.insert("#definition".into(), "definition".into());
        }
        if let Some(st) = filter.status {
            conditions.push("#status = :status");
            values.insert(":status".into(), s(st.as_str()));
            names.insert("#status".into(), "status".into());
        }
        // `user` is a reserved word in expressions: always through a name.
        if let Some(u) = &filter.user {
            conditions.push("#user = :user");
            values.insert(":user".into(), s(u.as_str()));
            names.insert("#user".into(), "user".into());
        }
        // Tags: a FilterExpression on the item's `tags` map. `query_until` reads on until the
        // page is full or the query ends, so a filter never makes a short page end the listing.
        let tag_conditions: Vec<String> = (0..filter.tags.len()).map(|i| format!("#tags.#tk{i} = :tv{i}")).collect();
        for (i, t) in filter.tags.iter().enumerate() {
            names.insert("#tags".into(), "tags".into());
            names.insert(format!("#tk{i}"), t.key.clone());
            values.insert(format!(":tv{i}"), s(t.value.as_str()));
        }
        conditions.extend(tag_conditions.iter().map(String::as_str));
        let filter_expr = (!conditions.is_empty()).then(|| conditions.join(" AND "));
        let names = (!names.is_empty()).then_some(names);
        // Through an index, records dropped by the filter's second look (their entries lagged a
        // write) leave room on the page: the query goes on after the last entry read, so a page
        // is short only where the listing ends.
        let mut conns: Vec<Connection> = Vec::with_capacity(limit);
        let mut after = cursor.cloned();
        loop {
            let need = limit - conns.len();
            let (found, more) = self
                .listing_entries(index, (pk_name, sk_name), &values, &names, &filter_expr, after.as_ref(), need)
                .await?;
            let last = found.last().map(connection_id_of).transpose()?;
            match index {
                // Read again, a connection whose index entry lagged a write is judged as it is now.
                Some(_) => {
                    let current = self.current_connections(org, &found).await?;
                    conns.extend(current.into_iter().filter(|c| filter.matches(c)));
                }
                None => conns.extend(found.iter().map(doc_of).collect::<Result<Vec<_>, _>>()?),
            }
            match last {
                Some(last) if more && conns.len() < limit => after = Some(last),
                _ => return Ok(Page { items: conns, next: last.filter(|_| more) }),
            }
        }
    }

    /// Up to `need` entries of a listing's Query (on the table when `index` is `None`), newest
    /// first, strictly before `after`; and whether more follow.
    #[allow(clippy::too_many_arguments)]
    async fn listing_entries(
        &self,
        index: Option<&str>,
        (pk_name, sk_name): (&str, &str),
        values: &Item,
        names: &Option<HashMap<String, String>>,
        filter_expr: &Option<String>,
        after: Option<&ConnectionId>,
        need: usize,
    ) -> Result<(Vec<Item>, bool), StoreError> {
        // Ids sort by creation; newest first, strictly before the cursor. On the table the sort
        // key range must also stay inside the connections (`CON#`), so BETWEEN is used and the
        // cursor item itself skipped.
        let mut values = values.clone();
        values.insert(":lo".into(), s("CON#"));
        let key_condition = match after {
            Some(c) => {
                values.insert(":hi".into(), s(con_sk(c)));
                format!("{pk_name} = :pk AND {sk_name} BETWEEN :lo AND :hi")
            }
            None => format!("{pk_name} = :pk AND begins_with({sk_name}, :lo)"),
        };
        let build = || {
            self.client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&key_condition)
                .set_expression_attribute_values(Some(values.clone()))
                .set_filter_expression(filter_expr.clone())
                .set_expression_attribute_names(names.clone())
                .scan_index_forward(false)
        };
        // One more than asked, to know whether more follow; one more again for the cursor item
        // that BETWEEN includes.
        let want = need + 1 + usize::from(after.is_some());
        let items = match index {
            Some(index) => self.query_index_until(index, build, want).await?,
            None => self.query_until(|| build().consistent_read(true), want).await?,
        };
        let after_sk = after.map(con_sk);
        let mut found: Vec<Item> = items
            .into_iter()
            .filter(|item| !matches!(item.get("sk"), Some(AttributeValue::S(sk)) if Some(sk) == after_sk.as_ref()))
            .collect();
        let more = found.len() > need;
        found.truncate(need);
        Ok((found, more))
    }

    /// One customer's connections of one definition, oldest first, as they are now.
    pub(super) async fn selector_candidate_items(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        // The customer's index partition, the definition as a filter: one Query (more pages only
        // past 1 MB of the customer's index entries), then the records it found, read from the
        // table in one BatchGetItem (strongly consistent: a connection deleted since the index
        // was written is not found; one created a moment ago may not be in the index yet).
        let items = self
            .query_index_until(
                BY_CUSTOMER,
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("gsi1pk = :pk AND begins_with(gsi1sk, :con)")
                        .filter_expression("#definition = :definition")
                        .expression_attribute_names("#definition", "definition")
                        .expression_attribute_values(":pk", s(customer_pk(org, customer.as_str())))
                        .expression_attribute_values(":con", s("CON#"))
                        .expression_attribute_values(":definition", s(definition.as_str()))
                },
                usize::MAX,
            )
            .await?;
        let mut conns = self.current_connections(org, &items).await?;
        conns.retain(|c| &c.definition == definition && c.customer.as_ref() == Some(customer));
        Ok(conns)
    }

    /// The connections of `org` whose index entries are `found`, read from the table as they
    /// are now, in the same order; one deleted since its entry was read is left out.
    async fn current_connections(&self, org: &OrgId, found: &[Item]) -> Result<Vec<Connection>, StoreError> {
        let keys: Vec<Item> = found.iter().map(table_key).collect::<Result<_, _>>()?;
        let conns: Vec<Connection> =
            self.get_batch(&keys).await?.iter().flatten().map(doc_of).collect::<Result<_, _>>()?;
        // The keys are under `org`'s partitions; a record of another organization is never handed out.
        Ok(conns.into_iter().filter(|c| &c.org == org).collect())
    }

    /// Up to `limit` entries of one due shard due by `until`, in index order, after `after`.
    pub(super) async fn due_connection_entries(
        &self,
        shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let upper = due_upper(until);
        // After a cursor: from its own index key (BETWEEN is inclusive, so the cursor entry, if
        // still there, is read and skipped, as listings do with theirs).
        let cursor = after.map(|a| due_sk(a.due, &a.org, &a.id));
        let lower = cursor.clone().unwrap_or_default();
        let items = self
            .query_until(
                || {
                    let q = self.client.query().table_name(&self.table).index_name(REFRESH_DUE);
                    let q = q
                        .expression_attribute_values(":p", s(format!("DUE#{shard}")))
                        .expression_attribute_values(":u", s(upper.clone()));
                    if cursor.is_some() {
                        q.key_condition_expression("gsi3pk = :p AND gsi3sk BETWEEN :l AND :u")
                            .expression_attribute_values(":l", s(lower.clone()))
                    } else {
                        q.key_condition_expression("gsi3pk = :p AND gsi3sk <= :u")
                    }
                },
                limit.max(1) + usize::from(cursor.is_some()),
            )
            .await?;
        let mut entries = Vec::with_capacity(items.len());
        for item in &items {
            let is_cursor = matches!(item.get("gsi3sk"), Some(AttributeValue::S(sk)) if Some(sk) == cursor.as_ref());
            if !is_cursor {
                entries.push(DueEntry::try_from(item)?);
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }
}
