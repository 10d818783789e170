//! The ports: the few traits the service needs from the outside world (the key provider's sits
//! beside the envelope that uses it, in [`crate::crypto`]). The embedded backend
//! implements them for `latchkey serve`; the AWS adapters implement the very same traits, and
//! both run the suites in [`crate::conformance`].

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::{
    ConnectSession, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, DeliveryStatus, Event,
    IdempotencyRecord, LogEntry, OAuthState, OrgId, RevocationJob, Status, Webhook, WebhookDelivery, WebhookId,
};

/// A boxed error from an adapter's backend (SQLite, an AWS SDK...). Never carries secret values:
/// adapters pass secrets only as bound parameters or sealed blobs.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the record exists, is gone, or has another version.
    #[error("the record was changed concurrently")]
    Conflict,
    /// The definition still has connections.
    #[error("the definition is used by connections")]
    InUse,
    /// A connection names a definition that does not exist (any more).
    #[error("the definition does not exist")]
    DefinitionMissing,
    /// The store did not answer in time, could not be reached, or throttled past the retries:
    /// nothing is known to have failed for good, and the same request may succeed shortly
    /// (HTTP 503 with `Retry-After`, Lambda `errorType` `Unavailable`).
    #[error("the store is unavailable")]
    Unavailable(#[source] BackendError),
    #[error("the store failed")]
    Backend(#[source] BackendError),
}

impl StoreError {
    /// Whether this is [`StoreError::Unavailable`]: retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The condition of a write.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// The record must not exist yet.
    Absent,
    /// The record must exist with exactly this version.
    Version(u64),
}

/// Filters of a connection listing; all optional, combined with AND.
#[derive(Debug, Default)]
pub struct ConnectionFilter {
    pub customer: Option<CustomerId>,
    pub definition: Option<DefinitionKey>,
    pub status: Option<Status>,
    /// Only the connections of this end user (`Connection::user`).
    pub user: Option<crate::domain::UserId>,
    /// `tag=key:value` conditions: the connection has every one of these tags.
    pub tags: Vec<crate::domain::TagFilter>,
}

impl ConnectionFilter {
    /// Whether `c` passes every condition of the filter. Stores whose index may lag a write
    /// judge the record they read again with it.
    pub fn matches(&self, c: &Connection) -> bool {
        self.customer.as_ref().is_none_or(|x| c.customer.as_ref() == Some(x))
            && self.definition.as_ref().is_none_or(|d| &c.definition == d)
            && self.status.is_none_or(|s| c.status == s)
            && self.user.as_ref().is_none_or(|u| c.user.as_ref() == Some(u))
            && self.tags.iter().all(|t| t.matches(&c.tags))
    }
}

/// One page of a listing, newest first; `next` is the cursor of the following page (a
/// connection id for connections, a [`DeliveryCursor`] for webhook deliveries).
#[derive(Debug)]
pub struct Page<T, C = ConnectionId> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// Where a listing of a webhook's deliveries resumes ([`Store::list_deliveries`]): the page
/// after it starts with the next delivery, newest first, after the one created at `created_at`
/// (milliseconds) with `id`. Its text form, `{created_at Unix ms}.{id}`, is the API's opaque
/// `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryCursor {
    pub created_at: OffsetDateTime,
    pub id: String,
}

impl DeliveryCursor {
    /// The cursor after `d`.
    pub fn after(d: &WebhookDelivery) -> Self {
        Self { created_at: d.created_at, id: d.id.clone() }
    }

    /// `created_at` in Unix milliseconds, the precision deliveries are ordered by.
    pub fn created_ms(&self) -> i64 {
        (self.created_at.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// Reads the text form; `None` for anything [`Display`](std::fmt::Display) did not write.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('.')?;
        let ms: i64 = ms.parse().ok().filter(|ms| *ms >= 0)?;
        let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        valid.then(|| Self { created_at, id: id.to_owned() })
    }
}

impl std::fmt::Display for DeliveryCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_ms(), self.id)
    }
}

/// One entry of the refresh-due index: a connection and the due time the index holds for it
/// (whole seconds). Also the cursor of [`Store::due_connections`]: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    pub org: OrgId,
    pub id: ConnectionId,
    /// The connection's due time as the index orders it: Unix seconds, rounded up
    /// ([`crate::domain::due_second`]).
    pub due: i64,
}

/// Durable state. Every write that can race is conditional.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<Option<Definition>, StoreError>;
    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError>;
    /// Writes `def` (whose `version` the caller has set) if `expect` holds.
    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError>;
    /// Deletes a definition; `Ok(false)` when there was none, `InUse` while connections use it.
    async fn delete_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<bool, StoreError>;

    /// Inserts a new connection; `DefinitionMissing` if its definition is gone, atomically.
    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError>;
    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError>;
    /// Replaces a connection (whose `version` the caller has incremented) if it is still at
    /// `expected_version`; `Conflict` otherwise, including when it was deleted.
    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError>;
    /// Deletes a connection and its logs; `Ok(false)` when there was none.
    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError>;
    /// Lists an organization's connections, newest first, starting after `cursor`.
    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError>;
    /// The connections of `customer` for `definition`, every scope and status, oldest first, as
    /// they are now: what a lookup by selector chooses from ([`crate::domain::Selector`]). One
    /// index query on the customer's connections, never a scan, then the records it found read
    /// consistently (DynamoDB: one BatchGetItem), so a connection deleted or changed since its
    /// index entry was written is never answered from the index. The index may lag a connection
    /// created a moment ago: it may not be found yet.
    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError>;

    /// How many shards the due index has; [`Store::due_connections`] takes `0..due_shards()`.
    fn due_shards(&self) -> u32 {
        1
    }

    /// Connections of every organization whose due time ([`Connection::due_index_at`], rounded
    /// up to a whole Unix second by [`crate::domain::due_second`]) is at or before `until`
    /// (rounded down): never one whose time has not come, one whose time came less than a second
    /// ago perhaps not yet. From one shard of the due index, in index order (due time, then organization, then id),
    /// strictly after `after` when given: a key query, never a scan. Passing the last entry of a
    /// page as `after` reads the next page, so a sweep can move past entries it had to leave in
    /// the index (a refresh lease held elsewhere) instead of meeting them again.
    ///
    /// The index holds exactly the connections whose `refresh.due_at` is set: every write
    /// derives it from the record (a write that clears `due_at` takes the connection out).
    async fn due_connections(
        &self,
        shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError>;

    /// Stores a revocation job; `Conflict` if its id exists.
    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError>;
    /// The revocation jobs of a connection.
    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError>;
    /// Up to `limit` revocation jobs of every organization due by `until`, taken round by round:
    /// each organization's oldest due job (by next attempt, to the second), then each one's
    /// second oldest, and so on, up to `per_org` of one organization; in that order, and within
    /// a round oldest first (ties by organization, connection and job id, as DynamoDB's index
    /// key orders them). So however many organizations have many due jobs (a revocation
    /// endpoint down for all their grants), every organization with a due job is in the answer
    /// while fewer than `limit` have one, and however the store spreads jobs, a full `limit` of
    /// due jobs in one place does not keep older ones elsewhere waiting. A job is filed under
    /// its next attempt rounded up to the whole second ([`crate::domain::due_second`]) and read
    /// up to `until` rounded down, so none comes out before its next attempt; one can come out
    /// up to a second after it.
    async fn due_revocations(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError>;
    /// Replaces a job if it still has `expected_attempts` (claiming an attempt); `Conflict` if
    /// another worker claimed it or it is gone.
    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError>;
    /// Deletes a job; `Ok(false)` when it was gone already.
    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError>;

    /// Stores a pending authorization; `Conflict` if its hash exists.
    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError>;
    /// Atomically removes and returns the pending authorization of `hash`: a second take finds
    /// nothing. An expired one (`expires_at <= now`) is removed and not returned.
    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError>;

    /// Stores a new connect session (SPEC section 9); `Conflict` if its id exists. Sessions
    /// are forgotten after `expires_at` (DynamoDB TTL; SQLite purges them on writes).
    async fn put_connect_session(&self, session: &ConnectSession) -> Result<(), StoreError>;
    /// Trades a session's link, once, in one conditional write: when session `id` has
    /// `link_hash`, no `browser_hash` yet and `expires_at > now`, sets its `browser_hash` and
    /// returns it. Anything else (unknown, another hash, traded already, expired) finds nothing
    /// and changes nothing; of concurrent trades, exactly one gets the session.
    async fn trade_connect_link(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError>;
    /// The session `id`, if it exists and has not expired at `now`.
    async fn get_connect_session(&self, id: &str, now: OffsetDateTime) -> Result<Option<ConnectSession>, StoreError>;

    /// Claims an idempotency key: stores `claim` (no response yet) unless a record with its id
    /// still holds the key at `now` ([`IdempotencyRecord::holds_key`]), in which case nothing is
    /// written and that record is returned. Of concurrent claims of one key, exactly one gets
    /// `Ok(None)`. Records past `expires_at` are never returned (and are purged or expire).
    async fn claim_idempotency(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Stores `done` (a claim with its response) if the record still holds `done.claim`;
    /// `Conflict` if another request has claimed the key since.
    async fn complete_idempotency(&self, done: &IdempotencyRecord) -> Result<(), StoreError>;
    /// Frees a key whose request failed: deletes the record if it still holds `claim.claim` and
    /// has no response; otherwise does nothing.
    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<(), StoreError>;

    /// Writes `hook` (SPEC section 11): `Expect::Absent` creates it (`Conflict` if the id
    /// exists); `Expect::Version(v)` replaces the stored version `v` (`Conflict` otherwise).
    /// The caller sets `hook.version` (1 on create, `v + 1` on replace).
    async fn put_webhook(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError>;
    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError>;
    /// Every webhook of `org`, ordered by id.
    async fn list_webhooks(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes a webhook and its deliveries; `false` if there was none.
    async fn delete_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError>;
    /// Stores a new delivery unless one with its `(org, webhook_id, id)` exists: `true` when
    /// written, `false` (nothing changed) when it existed. Of concurrent inserts of one id,
    /// exactly one gets `true`.
    async fn insert_delivery(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError>;
    async fn get_delivery(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError>;
    /// A page of a webhook's deliveries, newest first (`created_at` in milliseconds, then `id`,
    /// both descending): at most `limit` of them (at least one), only those of `status` when
    /// given, starting after `cursor`. `next` is set when more may follow; a filtered listing
    /// reads on until the page is full or the deliveries end.
    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError>;
    /// Replaces a delivery if the stored one has version `expected_version` (`Conflict`
    /// otherwise, or if it is gone). The caller sets `delivery.version = expected_version + 1`.
    async fn update_delivery(&self, delivery: &WebhookDelivery, expected_version: u64) -> Result<(), StoreError>;
    /// `Pending` deliveries of every organization with `next_attempt_at <= until`, at most
    /// `limit`, round by round among organizations: each one's soonest, then each one's second
    /// soonest..., within a round soonest first (ties by organization, webhook, id). So one
    /// organization's backlog (an endpoint that holds every attempt to its timeout) cannot fill a
    /// read that other organizations' due deliveries wait behind.
    async fn due_deliveries(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError>;

    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError>;
    /// The newest `limit` log entries of a connection, newest first.
    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError>;
}

/// One version of an organization's branch key ([`crate::crypto::BranchKeyring`]): a 256-bit
/// key, generated and wrapped by the key provider (KMS `GenerateDataKey`, or the local master
/// key) under the encryption context `{org, purpose: "branch-key"}`. Only the wrapped form is
/// ever stored; it unwraps the data keys of the org's records sealed under this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchKeyRecord {
    pub org: OrgId,
    /// 1, 2, ...: a rotation stores the next version, which becomes the active one.
    pub version: u32,
    /// The key provider's key that wrapped it (a KMS key ARN, `local:{fingerprint}`), passed
    /// back to the provider to unwrap it.
    pub key_id: String,
    /// The branch key wrapped by the provider (a KMS ciphertext blob, or `nonce || AES-GCM`).
    pub wrapped: Vec<u8>,
    pub created_at: OffsetDateTime,
}

/// Per-organization branch keys, wrapped by the key provider (AWS's hierarchical keyring): the
/// store behind [`crate::crypto::BranchKeyring`]. A separate port from [`Store`] so that an
/// adapter can hold them apart; the SQLite and DynamoDB stores implement both, and both run
/// the cases of [`crate::conformance::branch_keys`].
#[async_trait]
pub trait BranchKeyStore: Send + Sync + 'static {
    /// The newest version for `org`, if any (a consistent read).
    async fn active_branch_key(&self, org: &OrgId) -> Result<Option<BranchKeyRecord>, StoreError>;
    /// Version `version` of `org`'s branch key, if stored.
    async fn get_branch_key(&self, org: &OrgId, version: u32) -> Result<Option<BranchKeyRecord>, StoreError>;
    /// Put-if-absent: [`StoreError::Conflict`] if that version of `key.org` exists (two cold
    /// containers racing to create it: the loser re-reads the winner's).
    async fn put_branch_key(&self, key: &BranchKeyRecord) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
#[error("publishing the event failed")]
pub struct EventError(#[source] pub BackendError);

/// Where lifecycle events go (EventBridge, or the log and in-process subscribers).
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, event: &Event) -> Result<(), EventError>;
}

/// The time, as a port so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock, truncated to milliseconds so stored and returned times compare equal.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now)
    }
}
