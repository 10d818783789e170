//! One delegating [`Store`] (and [`BranchKeyStore`]) wrapper for the benches' decorators: a
//! [`Tapped`] store hands every call to the store it wraps and lets a [`StoreHook`] act before
//! and after it, seeing the call with its arguments ([`Call`]) and how many records the answer
//! held. The sweep bench's counter times each call by name; the simulation's DynamoDB model
//! (`sim::quota`) charges capacity per partition, throttles, and records committed refreshes.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use latchkey::domain::{
    ConnectSession, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, DeliveryStatus, IdempotencyRecord,
    LogEntry, OAuthState, OrgId, RevocationJob, Webhook, WebhookDelivery, WebhookId,
};
use latchkey::ports::{
    BranchKeyRecord, BranchKeyStore, ConnectionFilter, DeliveryCursor, DueEntry, Expect, Page, Store, StoreError,
};
use time::OffsetDateTime;

/// One call of [`Store`] or [`BranchKeyStore`], named as the trait method, with its arguments.
/// [`Store::due_shards`] is no call: it answers from configuration and passes straight through.
pub enum Call<'a> {
    GetDefinition {
        org: &'a OrgId,
        key: &'a DefinitionKey,
    },
    ListDefinitions {
        org: &'a OrgId,
    },
    PutDefinition {
        def: &'a Definition,
        expect: Expect,
    },
    DeleteDefinition {
        org: &'a OrgId,
        key: &'a DefinitionKey,
    },
    InsertConnection {
        conn: &'a Connection,
    },
    GetConnection {
        org: &'a OrgId,
        id: &'a ConnectionId,
    },
    UpdateConnection {
        conn: &'a Connection,
        expected_version: u64,
    },
    DeleteConnection {
        org: &'a OrgId,
        id: &'a ConnectionId,
    },
    ListConnections {
        org: &'a OrgId,
        filter: &'a ConnectionFilter,
        limit: usize,
        cursor: Option<&'a ConnectionId>,
    },
    FindForSelector {
        org: &'a OrgId,
        definition: &'a DefinitionKey,
        customer: &'a CustomerId,
    },
    DueConnections {
        shard: u32,
        until: OffsetDateTime,
        after: Option<&'a DueEntry>,
        limit: usize,
    },
    PutRevocation {
        job: &'a RevocationJob,
    },
    RevocationsOf {
        org: &'a OrgId,
        id: &'a ConnectionId,
    },
    DueRevocations {
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    },
    UpdateRevocation {
        job: &'a RevocationJob,
        expected_attempts: u32,
    },
    DeleteRevocation {
        job: &'a RevocationJob,
    },
    PutOAuthState {
        state: &'a OAuthState,
    },
    TakeOAuthState {
        hash: &'a str,
        now: OffsetDateTime,
    },
    PutConnectSession {
        session: &'a ConnectSession,
    },
    TradeConnectLink {
        id: &'a str,
        link_hash: &'a str,
        browser_hash: &'a str,
        now: OffsetDateTime,
    },
    GetConnectSession {
        id: &'a str,
        now: OffsetDateTime,
    },
    ClaimIdempotency {
        claim: &'a IdempotencyRecord,
        now: OffsetDateTime,
    },
    CompleteIdempotency {
        done: &'a IdempotencyRecord,
    },
    ReleaseIdempotency {
        claim: &'a IdempotencyRecord,
    },
    PutWebhook {
        hook: &'a Webhook,
        expect: Expect,
    },
    GetWebhook {
        org: &'a OrgId,
        id: &'a WebhookId,
    },
    ListWebhooks {
        org: &'a OrgId,
    },
    DeleteWebhook {
        org: &'a OrgId,
        id: &'a WebhookId,
    },
    InsertDelivery {
        delivery: &'a WebhookDelivery,
    },
    GetDelivery {
        org: &'a OrgId,
        webhook: &'a WebhookId,
        id: &'a str,
    },
    ListDeliveries {
        org: &'a OrgId,
        webhook: &'a WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&'a DeliveryCursor>,
    },
    UpdateDelivery {
        delivery: &'a WebhookDelivery,
        expected_version: u64,
    },
    DueDeliveries {
        until: OffsetDateTime,
        limit: usize,
    },
    AppendLog {
        org: &'a OrgId,
        id: &'a ConnectionId,
        entry: &'a LogEntry,
    },
    ListLogs {
        org: &'a OrgId,
        id: &'a ConnectionId,
        limit: usize,
    },
    ActiveBranchKey {
        org: &'a OrgId,
    },
    GetBranchKey {
        org: &'a OrgId,
        version: u32,
    },
    PutBranchKey {
        key: &'a BranchKeyRecord,
    },
}

impl Call<'_> {
    /// The trait method's name: `get_connection`.
    pub fn name(&self) -> &'static str {
        match self {
            Call::GetDefinition { .. } => "get_definition",
            Call::ListDefinitions { .. } => "list_definitions",
            Call::PutDefinition { .. } => "put_definition",
            Call::DeleteDefinition { .. } => "delete_definition",
            Call::InsertConnection { .. } => "insert_connection",
            Call::GetConnection { .. } => "get_connection",
            Call::UpdateConnection { .. } => "update_connection",
            Call::DeleteConnection { .. } => "delete_connection",
            Call::ListConnections { .. } => "list_connections",
            Call::FindForSelector { .. } => "find_for_selector",
            Call::DueConnections { .. } => "due_connections",
            Call::PutRevocation { .. } => "put_revocation",
            Call::RevocationsOf { .. } => "revocations_of",
            Call::DueRevocations { .. } => "due_revocations",
            Call::UpdateRevocation { .. } => "update_revocation",
            Call::DeleteRevocation { .. } => "delete_revocation",
            Call::PutOAuthState { .. } => "put_oauth_state",
            Call::TakeOAuthState { .. } => "take_oauth_state",
            Call::PutConnectSession { .. } => "put_connect_session",
            Call::TradeConnectLink { .. } => "trade_connect_link",
            Call::GetConnectSession { .. } => "get_connect_session",
            Call::ClaimIdempotency { .. } => "claim_idempotency",
            Call::CompleteIdempotency { .. } => "complete_idempotency",
            Call::ReleaseIdempotency { .. } => "release_idempotency",
            Call::PutWebhook { .. } => "put_webhook",
            Call::GetWebhook { .. } => "get_webhook",
            Call::ListWebhooks { .. } => "list_webhooks",
            Call::DeleteWebhook { .. } => "delete_webhook",
            Call::InsertDelivery { .. } => "insert_delivery",
            Call::GetDelivery { .. } => "get_delivery",
            Call::ListDeliveries { .. } => "list_deliveries",
            Call::UpdateDelivery { .. } => "update_delivery",
            Call::DueDeliveries { .. } => "due_deliveries",
            Call::AppendLog { .. } => "append_log",
            Call::ListLogs { .. } => "list_logs",
            Call::ActiveBranchKey { .. } => "active_branch_key",
            Call::GetBranchKey { .. } => "get_branch_key",
            Call::PutBranchKey { .. } => "put_branch_key",
        }
    }

    /// Whether the call may change what the store holds (taking an OAuth state or trading a
    /// connect link consumes it, claiming an idempotency key records the claim); `false` for
    /// reads and queries.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Call::PutDefinition { .. }
                | Call::DeleteDefinition { .. }
                | Call::InsertConnection { .. }
                | Call::UpdateConnection { .. }
                | Call::DeleteConnection { .. }
                | Call::PutRevocation { .. }
                | Call::UpdateRevocation { .. }
                | Call::DeleteRevocation { .. }
                | Call::PutOAuthState { .. }
                | Call::TakeOAuthState { .. }
                | Call::PutConnectSession { .. }
                | Call::TradeConnectLink { .. }
                | Call::ClaimIdempotency { .. }
                | Call::CompleteIdempotency { .. }
                | Call::ReleaseIdempotency { .. }
                | Call::PutWebhook { .. }
                | Call::DeleteWebhook { .. }
                | Call::InsertDelivery { .. }
                | Call::UpdateDelivery { .. }
                | Call::AppendLog { .. }
                | Call::PutBranchKey { .. }
        )
    }
}

/// What a [`Tapped`] store does around each call it passes on.
#[async_trait]
pub trait StoreHook: Send + Sync + 'static {
    /// What [`StoreHook::before`] hands to [`StoreHook::after`] (a start time, a record read
    /// before the call).
    type Ticket: Send;

    /// Runs before the wrapped store is called; an error is the call's answer and the wrapped
    /// store is not called.
    async fn before(&self, call: &Call<'_>) -> Result<Self::Ticket, StoreError>;

    /// Runs after the wrapped store answered: `answer` is how many records the answer held
    /// ([`Records`]) or its error. An error returned here replaces the answer.
    async fn after(
        &self,
        call: &Call<'_>,
        ticket: Self::Ticket,
        answer: Result<usize, &StoreError>,
    ) -> Result<(), StoreError>;
}

/// How many records an answer holds: the length of a list or page, 1 or 0 for an optional
/// record and for a delete's or insert's `bool`, 0 for `()`.
pub trait Records {
    fn records(&self) -> usize;
}

impl Records for () {
    fn records(&self) -> usize {
        0
    }
}

impl Records for bool {
    fn records(&self) -> usize {
        usize::from(*self)
    }
}

impl<T> Records for Option<T> {
    fn records(&self) -> usize {
        usize::from(self.is_some())
    }
}

impl<T> Records for Vec<T> {
    fn records(&self) -> usize {
        self.len()
    }
}

impl<T, C> Records for Page<T, C> {
    fn records(&self) -> usize {
        self.items.len()
    }
}

/// A store that passes every call to `inner`, with `hook` around it.
pub struct Tapped<S: ?Sized, H> {
    inner: Arc<S>,
    hook: H,
}

impl<S: ?Sized, H: StoreHook> Tapped<S, H> {
    /// `inner` with `hook` around every call.
    pub fn around(inner: Arc<S>, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The hook, for the figures it keeps.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    async fn tap<T: Records + Send>(
        &self,
        call: Call<'_>,
        run: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let ticket = self.hook.before(&call).await?;
        let answer = run.await;
        self.hook.after(&call, ticket, answer.as_ref().map(Records::records)).await?;
        answer
    }
}

#[async_trait]
impl<S: Store + ?Sized, H: StoreHook> Store for Tapped<S, H> {
    async fn get_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<Option<Definition>, StoreError> {
        self.tap(Call::GetDefinition { org, key }, self.inner.get_definition(org, key)).await
    }
    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        self.tap(Call::ListDefinitions { org }, self.inner.list_definitions(org)).await
    }
    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError> {
        self.tap(Call::PutDefinition { def, expect }, self.inner.put_definition(def, expect)).await
    }
    async fn delete_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<bool, StoreError> {
        self.tap(Call::DeleteDefinition { org, key }, self.inner.delete_definition(org, key)).await
    }
    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError> {
        self.tap(Call::InsertConnection { conn }, self.inner.insert_connection(conn)).await
    }
    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.tap(Call::GetConnection { org, id }, self.inner.get_connection(org, id)).await
    }
    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError> {
        let call = Call::UpdateConnection { conn, expected_version };
        self.tap(call, self.inner.update_connection(conn, expected_version)).await
    }
    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError> {
        self.tap(Call::DeleteConnection { org, id }, self.inner.delete_connection(org, id)).await
    }
    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let call = Call::ListConnections { org, filter, limit, cursor };
        self.tap(call, self.inner.list_connections(org, filter, limit, cursor)).await
    }
    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        let call = Call::FindForSelector { org, definition, customer };
        self.tap(call, self.inner.find_for_selector(org, definition, customer)).await
    }
    fn due_shards(&self) -> u32 {
        self.inner.due_shards()
    }
    async fn due_connections(
        &self,
        shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let call = Call::DueConnections { shard, until, after, limit };
        self.tap(call, self.inner.due_connections(shard, until, after, limit)).await
    }
    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        self.tap(Call::PutRevocation { job }, self.inner.put_revocation(job)).await
    }
    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        self.tap(Call::RevocationsOf { org, id }, self.inner.revocations_of(org, id)).await
    }
    async fn due_revocations(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        let call = Call::DueRevocations { until, limit, per_org };
        self.tap(call, self.inner.due_revocations(until, limit, per_org)).await
    }
    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        let call = Call::UpdateRevocation { job, expected_attempts };
        self.tap(call, self.inner.update_revocation(job, expected_attempts)).await
    }
    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        self.tap(Call::DeleteRevocation { job }, self.inner.delete_revocation(job)).await
    }
    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        self.tap(Call::PutOAuthState { state }, self.inner.put_oauth_state(state)).await
    }
    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        self.tap(Call::TakeOAuthState { hash, now }, self.inner.take_oauth_state(hash, now)).await
    }
    async fn put_connect_session(&self, session: &ConnectSession) -> Result<(), StoreError> {
        self.tap(Call::PutConnectSession { session }, self.inner.put_connect_session(session)).await
    }
    async fn trade_connect_link(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        let call = Call::TradeConnectLink { id, link_hash, browser_hash, now };
        self.tap(call, self.inner.trade_connect_link(id, link_hash, browser_hash, now)).await
    }
    async fn get_connect_session(&self, id: &str, now: OffsetDateTime) -> Result<Option<ConnectSession>, StoreError> {
        self.tap(Call::GetConnectSession { id, now }, self.inner.get_connect_session(id, now)).await
    }
    async fn claim_idempotency(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.tap(Call::ClaimIdempotency { claim, now }, self.inner.claim_idempotency(claim, now)).await
    }
    async fn complete_idempotency(&self, done: &IdempotencyRecord) -> Result<(), StoreError> {
        self.tap(Call::CompleteIdempotency { done }, self.inner.complete_idempotency(done)).await
    }
    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<(), StoreError> {
        self.tap(Call::ReleaseIdempotency { claim }, self.inner.release_idempotency(claim)).await
    }
    async fn put_webhook(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
        self.tap(Call::PutWebhook { hook, expect }, self.inner.put_webhook(hook, expect)).await
    }
    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.tap(Call::GetWebhook { org, id }, self.inner.get_webhook(org, id)).await
    }
    async fn list_webhooks(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError> {
        self.tap(Call::ListWebhooks { org }, self.inner.list_webhooks(org)).await
    }
    async fn delete_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError> {
        self.tap(Call::DeleteWebhook { org, id }, self.inner.delete_webhook(org, id)).await
    }
    async fn insert_delivery(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        self.tap(Call::InsertDelivery { delivery }, self.inner.insert_delivery(delivery)).await
    }
    async fn get_delivery(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.tap(Call::GetDelivery { org, webhook, id }, self.inner.get_delivery(org, webhook, id)).await
    }
    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
        let call = Call::ListDeliveries { org, webhook, status, limit, cursor };
        self.tap(call, self.inner.list_deliveries(org, webhook, status, limit, cursor)).await
    }
    async fn update_delivery(&self, delivery: &WebhookDelivery, expected_version: u64) -> Result<(), StoreError> {
        let call = Call::UpdateDelivery { delivery, expected_version };
        self.tap(call, self.inner.update_delivery(delivery, expected_version)).await
    }
    async fn due_deliveries(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.tap(Call::DueDeliveries { until, limit }, self.inner.due_deliveries(until, limit)).await
    }
    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError> {
        self.tap(Call::AppendLog { org, id, entry }, self.inner.append_log(org, id, entry)).await
    }
    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.tap(Call::ListLogs { org, id, limit }, self.inner.list_logs(org, id, limit)).await
    }
}

#[async_trait]
impl<S: BranchKeyStore + ?Sized, H: StoreHook> BranchKeyStore for Tapped<S, H> {
    async fn active_branch_key(&self, org: &OrgId) -> Result<Option<BranchKeyRecord>, StoreError> {
        self.tap(Call::ActiveBranchKey { org }, self.inner.active_branch_key(org)).await
    }
    async fn get_branch_key(&self, org: &OrgId, version: u32) -> Result<Option<BranchKeyRecord>, StoreError> {
        self.tap(Call::GetBranchKey { org, version }, self.inner.get_branch_key(org, version)).await
    }
    async fn put_branch_key(&self, key: &BranchKeyRecord) -> Result<(), StoreError> {
        self.tap(Call::PutBranchKey { key }, self.inner.put_branch_key(key)).await
    }
}
