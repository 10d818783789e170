//! An in-memory [`Store`]: every record in ordered maps behind one lock, with the same conditions,
//! orderings and expiry rules as the SQLite and DynamoDB adapters. It passes the store
//! conformance suite (`bench/tests/memory_store.rs`), which is what lets the scale simulation
//! claim it runs the real service: only the storage medium is different.
//!
//! The due index is sharded like the DynamoDB one (FNV-1a of the connection id modulo the shard
//! count), so a simulation sees the same per-shard load as the deployed table's `refresh-due`
//! partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use latchkey::domain::{
    ConnectSession, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, DeliveryStatus, IdempotencyRecord,
    LogEntry, LogType, OAuthState, OrgId, RevocationJob, Webhook, WebhookDelivery, WebhookId, due_second,
};
use latchkey::ports::{
    BranchKeyRecord, BranchKeyStore, ConnectionFilter, DeliveryCursor, DueEntry, Expect, Page, Store, StoreError,
};
use time::OffsetDateTime;

/// The due-index shard of a connection id: FNV-1a of its text modulo `shards`, the hash the
/// DynamoDB adapter shards its `refresh-due` index with.
pub fn due_shard(id: &str, shards: u32) -> u32 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h % u64::from(shards.max(1))) as u32
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(Box::new(e)))
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

type ConnKey = (OrgId, ConnectionId);
/// A due-index entry in index order: due (Unix seconds), organization, id.
type DueKey = (i64, OrgId, ConnectionId);
type DeliveryKey = (OrgId, WebhookId, String);

#[derive(Default)]
struct State {
    /// As JSON documents, like the other adapters (a definition is not `Clone`).
    definitions: BTreeMap<(OrgId, DefinitionKey), (u64, String)>,
    /// Per organization, by id (ULIDs: creation order).
    connections: BTreeMap<OrgId, BTreeMap<ConnectionId, Connection>>,
    /// One ordered set per shard.
    due: Vec<BTreeSet<DueKey>>,
    logs: BTreeMap<ConnKey, Vec<(OffsetDateTime, LogType, String)>>,
    revocations: BTreeMap<String, RevocationJob>,
    oauth_states: BTreeMap<String, OAuthState>,
    sessions: BTreeMap<String, ConnectSession>,
    idempotency: BTreeMap<String, IdempotencyRecord>,
    webhooks: BTreeMap<(OrgId, WebhookId), Webhook>,
    deliveries: BTreeMap<DeliveryKey, WebhookDelivery>,
    branch_keys: BTreeMap<(OrgId, u32), BranchKeyRecord>,
}

/// The in-memory store. `shards`: how many due-index shards ([`Store::due_shards`]);
/// `log_cap`: how many log lines are kept per connection, newest (`None`: all).
pub struct MemoryStore {
    state: Mutex<State>,
    shards: u32,
    log_cap: Option<usize>,
}

impl MemoryStore {
    /// A store with `shards` due-index shards (at least 1) keeping every log line.
    pub fn new(shards: u32) -> Self {
        let shards = shards.max(1);
        let state = State { due: (0..shards).map(|_| BTreeSet::new()).collect(), ..Default::default() };
        Self { state: Mutex::new(state), shards, log_cap: None }
    }

    /// Keeps only the newest `cap` log lines per connection (DynamoDB expires them after 90
    /// days; a simulation of millions of refreshes keeps memory for the records instead).
    pub fn with_log_cap(mut self, cap: usize) -> Self {
        self.log_cap = Some(cap.max(1));
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn due_key(c: &Connection) -> Option<DueKey> {
        c.due_index_second().map(|d| (d, c.org.clone(), c.id.clone()))
    }

    /// The shard a connection's entry lives in.
    fn shard_of(&self, id: &ConnectionId) -> usize {
        due_shard(id.as_str(), self.shards) as usize
    }

    /// Writes `c` and moves its due-index entry from what `old` had.
    fn write_connection(&self, s: &mut State, old: Option<&Connection>, c: Connection) {
        let shard = self.shard_of(&c.id);
        if let Some(k) = old.and_then(Self::due_key) {
            s.due[shard].remove(&k);
        }
        if let Some(k) = Self::due_key(&c) {
            s.due[shard].insert(k);
        }
        s.connections.entry(c.org.clone()).or_default().insert(c.id.clone(), c);
    }

    /// How many entries of the due index are due at or before `until` (every shard): the
    /// simulation's backlog.
    pub fn due_count(&self, until: OffsetDateTime) -> usize {
        let until = until.unix_timestamp();
        self.state().due.iter().map(|set| set.iter().take_while(|(d, _, _)| *d <= until).count()).sum()
    }

    /// How many connections the store holds.
    pub fn connection_count(&self) -> usize {
        self.state().connections.values().map(BTreeMap::len).sum()
    }

    /// A copy of one connection (the simulation's checks), without going through a port.
    pub fn peek(&self, org: &OrgId, id: &ConnectionId) -> Option<Connection> {
        self.state().connections.get(org).and_then(|m| m.get(id)).cloned()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<Option<Definition>, StoreError> {
        let doc = self.state().definitions.get(&(org.clone(), key.clone())).map(|(_, d)| d.clone());
        doc.map(|d| from_json(&d)).transpose()
    }

    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        let docs: Vec<String> =
            self.state().definitions.iter().filter(|((o, _), _)| o == org).map(|(_, (_, d))| d.clone()).collect();
        docs.iter().map(|d| from_json(d)).collect()
    }

    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError> {
        let mut s = self.state();
        let k = (def.org.clone(), def.key.clone());
        let ok = match (expect, s.definitions.get(&k)) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some((cur, _))) => *cur == v,
            _ => false,
        };
        if !ok {
            return Err(StoreError::Conflict);
        }
        s.definitions.insert(k, (def.version, to_json(def)?));
        Ok(())
    }

    async fn delete_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<bool, StoreError> {
        let mut s = self.state();
        if s.connections.get(org).is_some_and(|m| m.values().any(|c| &c.definition == key)) {
            return Err(StoreError::InUse);
        }
        Ok(s.definitions.remove(&(org.clone(), key.clone())).is_some())
    }

    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut s = self.state();
        if !s.definitions.contains_key(&(conn.org.clone(), conn.definition.clone())) {
            return Err(StoreError::DefinitionMissing);
        }
        if s.connections.get(&conn.org).is_some_and(|m| m.contains_key(&conn.id)) {
            return Err(StoreError::Conflict);
        }
        self.write_connection(&mut s, None, conn.clone());
        Ok(())
    }

    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        Ok(self.peek(org, id))
    }

    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError> {
        let mut s = self.state();
        let old = match s.connections.get(&conn.org).and_then(|m| m.get(&conn.id)) {
            Some(old) if old.version == expected_version => old.clone(),
            _ => return Err(StoreError::Conflict),
        };
        self.write_connection(&mut s, Some(&old), conn.clone());
        Ok(())
    }

    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError> {
        let mut s = self.state();
        let k = (org.clone(), id.clone());
        s.logs.remove(&k);
        let Some(old) = s.connections.get_mut(org).and_then(|m| m.remove(id)) else { return Ok(false) };
        if let Some(due) = Self::due_key(&old) {
            let shard = self.shard_of(id);
            s.due[shard].remove(&due);
        }
        Ok(true)
    }

    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let limit = limit.max(1);
        let s = self.state();
        let mut items: Vec<Connection> = s
            .connections
            .get(org)
            .into_iter()
            .flat_map(|m| m.values().rev())
            .filter(|c| cursor.is_none_or(|after| &c.id < after))
            .filter(|c| filter.matches(c))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|c| c.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        let s = self.state();
        Ok(s.connections
            .get(org)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|c| &c.definition == definition && c.customer.as_ref() == Some(customer))
            .cloned()
            .collect())
    }

    fn due_shards(&self) -> u32 {
        self.shards
    }

    async fn due_connections(
        &self,
        shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let s = self.state();
        let Some(set) = s.due.get(shard as usize) else { return Ok(Vec::new()) };
        let until = until.unix_timestamp();
        let start = after.map(|a| (a.due, a.org.clone(), a.id.clone()));
        let entries = match &start {
            Some(k) => set.range((std::ops::Bound::Excluded(k.clone()), std::ops::Bound::Unbounded)),
            None => set.range(..),
        };
        Ok(entries
            .take_while(|(d, _, _)| *d <= until)
            .take(limit)
            .map(|(due, org, id)| DueEntry { org: org.clone(), id: id.clone(), due: *due })
            .collect())
    }

    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        let mut s = self.state();
        // Jobs past their lifetime are forgotten here (DynamoDB: TTL), as SQLite does.
        let now = OffsetDateTime::now_utc();
        s.revocations.retain(|_, j| j.expires_at > now);
        if s.revocations.contains_key(&job.id) {
            return Err(StoreError::Conflict);
        }
        s.revocations.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        let s = self.state();
        Ok(s.revocations.values().filter(|j| &j.org == org && &j.connection_id == id).cloned().collect())
    }

    async fn due_revocations(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        let s = self.state();
        let until = until.unix_timestamp();
        let mut due: Vec<RevocationJob> = s
            .revocations
            .values()
            .filter(|j| due_second(j.next_attempt_at) <= until && j.expires_at.unix_timestamp() > until)
            .cloned()
            .collect();
        // Round by round (the port's order): each job's place among its organization's due
        // jobs, then its due second, organization, connection and id.
        let key =
            |j: &RevocationJob| (due_second(j.next_attempt_at), j.org.clone(), j.connection_id.clone(), j.id.clone());
        due.sort_by_key(key);
        let mut taken: BTreeMap<OrgId, usize> = BTreeMap::new();
        let mut ranked: Vec<(usize, RevocationJob)> = due
            .into_iter()
            .map(|j| {
                let n = taken.entry(j.org.clone()).or_default();
                *n += 1;
                (*n, j)
            })
            .filter(|(n, _)| *n <= per_org)
            .collect();
        ranked.sort_by_key(|(n, _)| *n);
        Ok(ranked.into_iter().take(limit).map(|(_, j)| j).collect())
    }

    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        let mut s = self.state();
        match s.revocations.get_mut(&job.id) {
            Some(cur) if cur.attempts == expected_attempts => {
                *cur = job.clone();
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        Ok(self.state().revocations.remove(&job.id).is_some())
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let mut s = self.state();
        let now = OffsetDateTime::now_utc();
        s.oauth_states.retain(|_, st| st.expires_at > now);
        if s.oauth_states.contains_key(&state.hash) {
            return Err(StoreError::Conflict);
        }
        s.oauth_states.insert(state.hash.clone(), state.clone());
        Ok(())
    }

    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        let taken = self.state().oauth_states.remove(hash);
        Ok(taken.filter(|st| st.expires_at.unix_timestamp() > now.unix_timestamp()))
    }

    async fn put_connect_session(&self, session: &ConnectSession) -> Result<(), StoreError> {
        let mut s = self.state();
        let at = ms(session.created_at);
        s.sessions.retain(|_, x| ms(x.expires_at) > at);
        if s.sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict);
        }
        s.sessions.insert(session.id.clone(), session.clone());
        Ok(())
    }

    async fn trade_connect_link(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        let mut s = self.state();
        match s.sessions.get_mut(id) {
            Some(x) if x.link_hash == link_hash && x.browser_hash.is_none() && ms(x.expires_at) > ms(now) => {
                x.browser_hash = Some(browser_hash.to_owned());
                Ok(Some(x.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn get_connect_session(&self, id: &str, now: OffsetDateTime) -> Result<Option<ConnectSession>, StoreError> {
        Ok(self.state().sessions.get(id).filter(|x| ms(x.expires_at) > ms(now)).cloned())
    }

    async fn claim_idempotency(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let mut s = self.state();
        s.idempotency.retain(|_, r| r.expires_at > now);
        if let Some(held) = s.idempotency.get(&claim.id).filter(|r| r.holds_key(now)) {
            return Ok(Some(held.clone()));
        }
        s.idempotency.insert(claim.id.clone(), claim.clone());
        Ok(None)
    }

    async fn complete_idempotency(&self, done: &IdempotencyRecord) -> Result<(), StoreError> {
        let mut s = self.state();
        match s.idempotency.get_mut(&done.id) {
            Some(r) if r.claim == done.claim => {
                *r = done.clone();
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<(), StoreError> {
        let mut s = self.state();
        if s.idempotency.get(&claim.id).is_some_and(|r| r.claim == claim.claim && r.response.is_none()) {
            s.idempotency.remove(&claim.id);
        }
        Ok(())
    }

    async fn put_webhook(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
        let mut s = self.state();
        let k = (hook.org.clone(), hook.id.clone());
        let ok = match (expect, s.webhooks.get(&k)) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(cur)) => cur.version == v,
            _ => false,
        };
        if !ok {
            return Err(StoreError::Conflict);
        }
        s.webhooks.insert(k, hook.clone());
        Ok(())
    }

    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(self.state().webhooks.get(&(org.clone(), id.clone())).cloned())
    }

    async fn list_webhooks(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError> {
        Ok(self.state().webhooks.iter().filter(|((o, _), _)| o == org).map(|(_, h)| h.clone()).collect())
    }

    async fn delete_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError> {
        let mut s = self.state();
        s.deliveries.retain(|(o, w, _), _| !(o == org && w == id));
        Ok(s.webhooks.remove(&(org.clone(), id.clone())).is_some())
    }

    async fn insert_delivery(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        let mut s = self.state();
        let at = ms(delivery.created_at);
        s.deliveries.retain(|_, d| ms(d.expires_at) > at);
        let k = (delivery.org.clone(), delivery.webhook_id.clone(), delivery.id.clone());
        if s.deliveries.contains_key(&k) {
            return Ok(false);
        }
        s.deliveries.insert(k, delivery.clone());
        Ok(true)
    }

    async fn get_delivery(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        Ok(self.state().deliveries.get(&(org.clone(), webhook.clone(), id.to_owned())).cloned())
    }

    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
        let limit = limit.max(1);
        let s = self.state();
        let mut all: Vec<&WebhookDelivery> =
            s.deliveries.values().filter(|d| &d.org == org && &d.webhook_id == webhook).collect();
        all.sort_by(|a, b| (ms(b.created_at), &b.id).cmp(&(ms(a.created_at), &a.id)));
        let mut items: Vec<WebhookDelivery> = all
            .into_iter()
            .filter(|d| status.is_none_or(|st| d.status == st))
            .filter(|d| cursor.is_none_or(|c| (ms(d.created_at), d.id.as_str()) < (c.created_ms(), c.id.as_str())))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(DeliveryCursor::after)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn update_delivery(&self, delivery: &WebhookDelivery, expected_version: u64) -> Result<(), StoreError> {
        let mut s = self.state();
        let k = (delivery.org.clone(), delivery.webhook_id.clone(), delivery.id.clone());
        match s.deliveries.get_mut(&k) {
            Some(d) if d.version == expected_version => {
                *d = delivery.clone();
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn due_deliveries(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        let s = self.state();
        let until = ms(until);
        let mut due: Vec<&WebhookDelivery> = s
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|n| ms(n) <= until))
            .collect();
        due.sort_by(|a, b| {
            let key =
                |d: &WebhookDelivery| (d.next_attempt_at.map(ms), d.org.clone(), d.webhook_id.clone(), d.id.clone());
            key(a).cmp(&key(b))
        });
        // Round by round (the port's order): each delivery's place among its organization's.
        let mut taken: BTreeMap<OrgId, usize> = BTreeMap::new();
        let mut ranked: Vec<(usize, &WebhookDelivery)> = due
            .into_iter()
            .map(|d| {
                let n = taken.entry(d.org.clone()).or_default();
                *n += 1;
                (*n, d)
            })
            .collect();
        ranked.sort_by_key(|(n, _)| *n);
        Ok(ranked.into_iter().take(limit).map(|(_, d)| d.clone()).collect())
    }

    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError> {
        let mut s = self.state();
        let lines = s.logs.entry((org.clone(), id.clone())).or_default();
        lines.push((entry.at, entry.kind, entry.message.clone()));
        if let Some(cap) = self.log_cap
            && lines.len() > cap
        {
            lines.drain(..lines.len() - cap);
        }
        Ok(())
    }

    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let s = self.state();
        let lines = s.logs.get(&(org.clone(), id.clone()));
        let newest =
            lines.map(|l| l.iter().rev().take(limit).map(|(at, kind, m)| LogEntry::new(*at, *kind, m.clone())));
        Ok(newest.map(Iterator::collect).unwrap_or_default())
    }
}

#[async_trait]
impl BranchKeyStore for MemoryStore {
    async fn active_branch_key(&self, org: &OrgId) -> Result<Option<BranchKeyRecord>, StoreError> {
        let s = self.state();
        Ok(s.branch_keys.range((org.clone(), 0)..=(org.clone(), u32::MAX)).next_back().map(|(_, k)| k.clone()))
    }

    async fn get_branch_key(&self, org: &OrgId, version: u32) -> Result<Option<BranchKeyRecord>, StoreError> {
        Ok(self.state().branch_keys.get(&(org.clone(), version)).cloned())
    }

    async fn put_branch_key(&self, key: &BranchKeyRecord) -> Result<(), StoreError> {
        let mut s = self.state();
        let k = (key.org.clone(), key.version);
        if s.branch_keys.contains_key(&k) {
            return Err(StoreError::Conflict);
        }
        s.branch_keys.insert(k, key.clone());
        Ok(())
    }
}
