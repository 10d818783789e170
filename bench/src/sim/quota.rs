//! Quota models around the in-memory ports: what each call would consume on AWS and whether AWS
//! would throttle it, on the simulated clock.
//!
//! - [`MeteredStore`]: every [`Store`] call as the DynamoDB adapter makes it (docs/dynamodb.md):
//!   the partition keys it touches on the table and its indexes, the capacity units it consumes
//!   (writes: 1 WCU per started KB of the item on the table, and on each index whose entry of
//!   the item the write changes, 1 WCU per started KB of that entry; strongly consistent reads 1 RCU per started 4 KB, eventually consistent half),
//!   and a per-partition budget per second (1,000 WCU, 3,000 RCU). A call over a throttled
//!   partition's budget is retried like the SDK does (3 attempts, 50 ms then 100 ms apart), then
//!   fails `StoreError::Unavailable`.
//! - [`MeteredKeys`]: KMS `GenerateDataKey`/`Decrypt` counted, with a requests-per-second quota
//!   (throttled calls retried like the SDK, then `CryptoError::Unavailable`).
//! - [`CountingEvents`]: EventBridge `PutEvents` entries counted.
//!
//! Which partitions throttle: the due index (`refresh-due`, `DUE#{shard}`) always. Its writes go
//! to the newest sort keys (a refreshed connection is due again an interval later), which
//! DynamoDB's split for heat cannot spread, so 1,000 WCU per shard is a hard bound. Table and
//! other index keys (`ORG#{org}` with `CON#{ulid}` sort keys, spread over the key range) are
//! split by DynamoDB when hot: their peaks are reported, and throttle only with `strict_all`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey::crypto::{CryptoError, DataKey, EncryptionContext, KeyProvider, PlainKey};
use latchkey::domain::{Connection, Event, OrgId};
use latchkey::ports::{EventError, EventSink, Store, StoreError};

use super::answers::{AnswerTally, Answers, connection_of_customer};
use super::clock::SimClock;
use super::memory::{MemoryStore, due_shard};
use crate::store_tap::{Call, StoreHook, Tapped};

/// The quotas and latencies of the modelled AWS services.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Write capacity units one partition takes per second (DynamoDB: 1,000).
    pub partition_wcu: f64,
    /// Read capacity units one partition serves per second (DynamoDB: 3,000).
    pub partition_rcu: f64,
    /// The due index's partitions' budgets: the same, or a slice's share of them when a run
    /// simulates one slice of the population (`Scenario::slices`).
    pub partition_wcu_due: f64,
    pub partition_rcu_due: f64,
    /// Throttle every partition, not only the due index's (see the module documentation).
    pub strict_all: bool,
    /// KMS cryptographic requests per second the account may make (shared quota; 10,000 in
    /// many regions by default). `f64::INFINITY`: unbounded.
    pub kms_rps: f64,
    /// Latency of one DynamoDB read, one write, one query.
    pub read_latency: Duration,
    pub write_latency: Duration,
    pub query_latency: Duration,
    /// Latency of one KMS request.
    pub kms_latency: Duration,
    /// Every write to the due index throttles for this long from the meter's start (an outage,
    /// for tests: `bench/tests/commit_retry.rs`); zero in the runs.
    pub due_outage: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            partition_wcu: 1_000.0,
            partition_rcu: 3_000.0,
            partition_wcu_due: 1_000.0,
            partition_rcu_due: 3_000.0,
            strict_all: false,
            kms_rps: 10_000.0,
            read_latency: Duration::from_millis(4),
            write_latency: Duration::from_millis(7),
            query_latency: Duration::from_millis(8),
            kms_latency: Duration::from_millis(8),
            due_outage: Duration::ZERO,
        }
    }
}

/// One simulated minute's totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Minute {
    pub rcu: f64,
    pub wcu: f64,
    pub store_throttles: u64,
    pub kms_generate: u64,
    pub kms_decrypt: u64,
    pub kms_throttles: u64,
    /// Token refreshes committed (a new token written).
    pub refreshes: u64,
    pub events: u64,
    /// The most WCU any due-index shard took in one second of this minute.
    pub due_shard_peak_wcu: f64,
    /// Entries due at or before the minute's end that the index still held then.
    pub backlog: u64,
}

/// The highest per-second consumption of a class of partitions, and the key that reached it.
#[derive(Debug, Default, Clone)]
pub struct Peak {
    pub wcu: f64,
    pub rcu: f64,
    pub wcu_key: String,
    pub rcu_key: String,
}

#[derive(Default)]
struct MeterState {
    second: i64,
    /// This second's consumption per partition key: (rcu, wcu).
    current: HashMap<String, (f64, f64)>,
    /// This second's KMS requests.
    kms_current: f64,
    peaks: BTreeMap<String, Peak>,
    minutes: Vec<Minute>,
    /// Seconds from becoming due to the new token's commit, one per refresh.
    lags: Vec<f32>,
    totals: Minute,
}

/// Everything the simulation counts: capacity per partition and second, KMS requests,
/// refreshes and their due lag, per simulated minute, and what became of the provider's answers.
pub struct Meter {
    clock: SimClock,
    limits: Limits,
    state: Mutex<MeterState>,
    answers: Arc<Answers>,
}

/// The class a partition key is reported under: each due-index shard on its own, the other
/// keys by table or index and key prefix.
fn class_of(index: &str, pk: &str) -> String {
    if index == "refresh-due" {
        return format!("refresh-due {pk}");
    }
    let prefix = pk.split('#').next().unwrap_or(pk);
    format!("{index} {prefix}#")
}

impl Meter {
    pub fn new(clock: SimClock, limits: Limits) -> Self {
        Self { clock, limits, state: Mutex::new(MeterState::default()), answers: Arc::new(Answers::new(clock)) }
    }

    /// The ledger of provider answers, for the provider to report each answer to
    /// (`SimProvider::recording`); the metered store reports commits.
    pub fn answers(&self) -> Arc<Answers> {
        self.answers.clone()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_secs(&self) -> i64 {
        self.clock.elapsed_secs().floor() as i64
    }

    /// Rolls the per-second counters over to the current second, folding the last one into
    /// the peaks.
    fn roll(&self, s: &mut MeterState) {
        let now = self.now_secs();
        if now == s.second {
            return;
        }
        let minute = (s.second / 60) as usize;
        let mut due_peak = 0.0f64;
        for (key, (rcu, wcu)) in s.current.drain() {
            let (index, pk) = key.split_once(' ').unwrap_or(("table", key.as_str()));
            let class = class_of(index, pk);
            if index == "refresh-due" {
                due_peak = due_peak.max(wcu);
                if std::env::var_os("SIM_DEBUG").is_some() && wcu > 30.0 {
                    eprintln!("second {} {key}: {wcu} WCU", s.second);
                }
            }
            let p = s.peaks.entry(class).or_default();
            if wcu > p.wcu {
                p.wcu = wcu;
                p.wcu_key = key.clone();
            }
            if rcu > p.rcu {
                p.rcu = rcu;
                p.rcu_key = key.clone();
            }
        }
        let m = Self::minute_mut(s, minute);
        m.due_shard_peak_wcu = m.due_shard_peak_wcu.max(due_peak);
        s.kms_current = 0.0;
        s.second = now;
    }

    fn minute_mut(s: &mut MeterState, minute: usize) -> &mut Minute {
        if s.minutes.len() <= minute {
            s.minutes.resize(minute + 1, Minute::default());
        }
        &mut s.minutes[minute]
    }

    fn this_minute<'a>(&self, s: &'a mut MeterState) -> &'a mut Minute {
        let minute = (self.now_secs() / 60) as usize;
        Self::minute_mut(s, minute)
    }

    /// Charges `units` (index, partition key, rcu, wcu) if every throttled partition has room
    /// this second; `false` (and a throttle counted) otherwise.
    fn charge(&self, units: &[(&str, String, f64, f64)]) -> bool {
        let mut s = self.state();
        self.roll(&mut s);
        let l = &self.limits;
        let outage = self.clock.elapsed_secs() < l.due_outage.as_secs_f64();
        let over = units.iter().any(|(index, pk, rcu, wcu)| {
            if outage && *index == "refresh-due" && *wcu > 0.0 {
                return true;
            }
            let (r, w) = s.current.get(&format!("{index} {pk}")).copied().unwrap_or_default();
            if *index == "refresh-due" {
                r + rcu > l.partition_rcu_due || w + wcu > l.partition_wcu_due
            } else {
                l.strict_all && (r + rcu > l.partition_rcu || w + wcu > l.partition_wcu)
            }
        });
        if over {
            if std::env::var_os("SIM_DEBUG").is_some() {
                let now = s.second;
                for (index, pk, rcu, wcu) in units {
                    let (r, w) = s.current.get(&format!("{index} {pk}")).copied().unwrap_or_default();
                    eprintln!("throttle at {now} s: {index} {pk} has {r}+{rcu} RCU, {w}+{wcu} WCU");
                }
            }
            self.this_minute(&mut s).store_throttles += 1;
            s.totals.store_throttles += 1;
            return false;
        }
        let (mut rcu_sum, mut wcu_sum) = (0.0, 0.0);
        for (index, pk, rcu, wcu) in units {
            let e = s.current.entry(format!("{index} {pk}")).or_default();
            e.0 += rcu;
            e.1 += wcu;
            rcu_sum += rcu;
            wcu_sum += wcu;
        }
        let m = self.this_minute(&mut s);
        m.rcu += rcu_sum;
        m.wcu += wcu_sum;
        s.totals.rcu += rcu_sum;
        s.totals.wcu += wcu_sum;
        true
    }

    /// Waits `latency`, then charges `units`, retrying a throttled call twice (50 ms, 100 ms)
    /// as the SDK's standard retry mode does.
    async fn consume(&self, latency: Duration, units: &[(&str, String, f64, f64)]) -> Result<(), StoreError> {
        for attempt in 0..3u32 {
            tokio::time::sleep(latency).await;
            if self.charge(units) {
                return Ok(());
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
        Err(StoreError::Unavailable("throttled: provisioned throughput exceeded (simulated)".into()))
    }

    /// One KMS request: `false` when the account's requests-per-second quota is spent.
    fn kms(&self, generate: bool) -> bool {
        let mut s = self.state();
        self.roll(&mut s);
        if s.kms_current + 1.0 > self.limits.kms_rps {
            self.this_minute(&mut s).kms_throttles += 1;
            s.totals.kms_throttles += 1;
            return false;
        }
        s.kms_current += 1.0;
        let count = |m: &mut Minute| if generate { m.kms_generate += 1 } else { m.kms_decrypt += 1 };
        count(self.this_minute(&mut s));
        count(&mut s.totals);
        true
    }

    /// A committed refresh: a new token written, `lag` seconds after the connection became due.
    fn refreshed(&self, lag: f64) {
        let mut s = self.state();
        self.roll(&mut s);
        self.this_minute(&mut s).refreshes += 1;
        s.totals.refreshes += 1;
        s.lags.push(lag.max(0.0) as f32);
    }

    fn event(&self) {
        let mut s = self.state();
        self.roll(&mut s);
        self.this_minute(&mut s).events += 1;
        s.totals.events += 1;
    }

    /// Records the backlog at the end of the current minute.
    pub fn backlog(&self, due: usize) {
        let mut s = self.state();
        self.roll(&mut s);
        self.this_minute(&mut s).backlog = due as u64;
    }

    /// Flushes the current second and returns the figures so far (an answer uncommitted for
    /// longer than the refresh lease counted as lost).
    pub fn snapshot(&self) -> MeterSnapshot {
        let answers = self.answers.tally(latchkey::service::RefreshPolicy::default().lease);
        let mut s = self.state();
        s.second = -1;
        self.roll(&mut s);
        MeterSnapshot {
            minutes: s.minutes.clone(),
            peaks: s.peaks.clone(),
            lags: s.lags.clone(),
            totals: s.totals,
            answers,
        }
    }
}

/// What a [`Meter`] counted.
#[derive(Debug, Clone)]
pub struct MeterSnapshot {
    pub minutes: Vec<Minute>,
    pub peaks: BTreeMap<String, Peak>,
    pub lags: Vec<f32>,
    pub totals: Minute,
    /// The provider's token answers: committed, lost (commit failed), cut off by the run's end.
    pub answers: AnswerTally,
}

/// Bytes of a connection's item as the DynamoDB adapter writes it: its JSON document plus the
/// key and index attributes (names and values).
pub fn connection_item_bytes(c: &Connection) -> usize {
    let doc = serde_json::to_vec(c).map(|d| d.len()).unwrap_or(2_000);
    let (org, id) = (c.org.as_str().len(), c.id.as_str().len());
    let customer = c.customer.as_ref().map_or(0, |x| x.as_str().len());
    let def = c.definition.as_str().len();
    // pk, sk, kind, version, doc, definition, status, customer, gsi1pk/sk, gsi2pk/sk, gsi3pk/sk.
    let names = 2 + 2 + 4 + 7 + 3 + 10 + 6 + 8 + 6 * 6;
    let values = (4 + org) + (4 + id) + 10 + 8 + def + 12 + customer;
    let gsi1 = if customer > 0 { (9 + org + customer) + (4 + id) } else { 0 };
    let gsi2 = (9 + org + def) + (4 + id);
    let gsi3 = if c.due_index_at().is_some() { 6 + (14 + org + id) } else { 0 };
    doc + names + values + gsi1 + gsi2 + gsi3
}

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

fn read_units(bytes: usize) -> f64 {
    bytes.div_ceil(4096).max(1) as f64
}

/// The in-memory store, metered and throttled like DynamoDB (see the module documentation):
/// every call passes through [`DynamoModel`].
pub type MeteredStore = Tapped<MemoryStore, DynamoModel>;

impl MeteredStore {
    pub fn new(inner: Arc<MemoryStore>, meter: Arc<Meter>, clock: SimClock) -> Self {
        let shards = inner.due_shards();
        Tapped::around(inner.clone(), DynamoModel { memory: inner, meter, clock, shards })
    }
}

/// What each store call costs as the DynamoDB adapter makes it: its latency, then the capacity
/// it consumes on each partition it touches (throttled and retried as the SDK does), and
/// every committed refresh reported to the meter and the answers ledger.
pub struct DynamoModel {
    /// The store the calls go to, read for the size of what a call reads or overwrites.
    memory: Arc<MemoryStore>,
    meter: Arc<Meter>,
    clock: SimClock,
    /// The due index's shard count as the store reports it.
    shards: u32,
}

impl DynamoModel {
    fn org_pk(org: &OrgId) -> String {
        format!("ORG#{org}")
    }

    /// The units of writing `next` over `old` (conditional put of the whole item, index writes
    /// for every index whose entry of the item the write changes). The listing indexes project
    /// keys and `definition`, `status`, `user`, `tags` (`LISTING_ATTRIBUTES`): a write that
    /// changes none of them, as a refresh, writes nothing to them (DynamoDB developer guide,
    /// "Provisioned throughput considerations for global secondary indexes"); one that does
    /// writes an entry of about 200 bytes, 1 WCU.
    fn put_units(&self, old: Option<&Connection>, next: &Connection) -> Vec<(&'static str, String, f64, f64)> {
        let new_bytes = connection_item_bytes(next);
        let old_bytes = old.map_or(0, connection_item_bytes);
        let mut units = vec![("table", Self::org_pk(&next.org), 0.0, write_units(new_bytes.max(old_bytes)))];
        let listed = |c: &Connection| (c.definition.clone(), c.status, c.user.clone(), c.tags.clone());
        if old.is_none_or(|old| listed(old) != listed(next)) {
            if let Some(customer) = &next.customer {
                units.push(("by-customer", format!("ORG#{}#CUS#{customer}", next.org), 0.0, 1.0));
            }
            units.push(("by-definition", format!("ORG#{}#DEF#{}", next.org, next.definition), 0.0, 1.0));
        }
        let old_due = old.and_then(Connection::due_index_second);
        let new_due = next.due_index_second();
        if old_due != new_due {
            let shard = format!("DUE#{}", due_shard(next.id.as_str(), self.shards));
            // KEYS_ONLY entries are far under 1 KB: a moved entry is a delete and a put.
            let n = f64::from(u8::from(old_due.is_some()) + u8::from(new_due.is_some()));
            units.push(("refresh-due", shard, 0.0, n));
        }
        units
    }

    /// A committed `conn` over `old`: a refresh when it holds tokens obtained anew.
    fn committed(&self, old: Option<Connection>, conn: &Connection) {
        let obtained = |c: &Connection| c.oauth.as_ref().map(|t| t.obtained_at);
        if let Some(old) = old
            && obtained(&old) != obtained(conn)
            && conn.oauth.is_some()
        {
            let due = old.refresh.due_at.unwrap_or_else(|| self.clock.start());
            let lag = (latchkey::ports::Clock::now(&self.clock) - due).as_seconds_f64();
            self.meter.refreshed(lag);
            if let Some(i) = conn.customer.as_ref().and_then(|c| connection_of_customer(c.as_str())) {
                self.meter.answers.committed(i);
            }
        }
    }
}

#[async_trait]
impl StoreHook for DynamoModel {
    /// `update_connection`: the item as it was just before the write.
    type Ticket = Option<Connection>;

    async fn before(&self, call: &Call<'_>) -> Result<Option<Connection>, StoreError> {
        let (l, meter) = (&self.meter.limits, &self.meter);
        match *call {
            Call::GetDefinition { org, .. } | Call::ActiveBranchKey { org } | Call::GetBranchKey { org, .. } => {
                meter.consume(l.read_latency, &[("table", Self::org_pk(org), 1.0, 0.0)]).await?;
            }
            Call::ListDefinitions { org } => {
                meter.consume(l.query_latency, &[("table", Self::org_pk(org), 1.0, 0.0)]).await?;
            }
            Call::ListWebhooks { org } => {
                meter.consume(l.query_latency, &[("table", Self::org_pk(org), 0.5, 0.0)]).await?;
            }
            Call::PutDefinition { def, .. } => {
                meter.consume(l.write_latency, &[("table", Self::org_pk(&def.org), 0.0, 2.0)]).await?;
            }
            Call::PutBranchKey { key } => {
                meter.consume(l.write_latency, &[("table", Self::org_pk(&key.org), 0.0, 1.0)]).await?;
            }
            Call::InsertConnection { conn } => {
                // A transaction: the item and the definition's count, each written twice (2x WCU).
                let mut units = self.put_units(None, conn);
                for u in &mut units {
                    u.3 *= 2.0;
                }
                meter.consume(l.write_latency, &units).await?;
            }
            Call::GetConnection { org, id } => {
                // Charged for the item as it was when the read started; what the call returns
                // is what the store holds when the read completes.
                let units = read_units(self.memory.peek(org, id).as_ref().map_or(0, connection_item_bytes));
                meter.consume(l.read_latency, &[("table", Self::org_pk(org), units, 0.0)]).await?;
            }
            Call::UpdateConnection { conn, .. } => {
                let old = self.memory.peek(&conn.org, &conn.id);
                meter.consume(l.write_latency, &self.put_units(old.as_ref(), conn)).await?;
                // The item may have changed during the call's latency: the condition decides.
                return Ok(self.memory.peek(&conn.org, &conn.id));
            }
            // Charged after the query, by what it found.
            Call::DueConnections { .. } => {}
            Call::DueRevocations { .. } => {
                // One query per shard of the revocations' due index (`RDUE#{shard}`).
                for shard in 0..self.shards {
                    meter.consume(Duration::ZERO, &[("refresh-due", format!("RDUE#{shard}"), 0.5, 0.0)]).await?;
                }
                tokio::time::sleep(l.query_latency).await;
            }
            Call::AppendLog { org, id, entry } => {
                // pk, sk (a ULID), the entry's JSON, the TTL attribute.
                let bytes = 100 + entry.message.len() + org.as_str().len() + id.as_str().len();
                let units = [("table", format!("LOG#{org}#{id}"), 0.0, write_units(bytes))];
                meter.consume(l.write_latency, &units).await?;
            }
            // Every other call: one item read or written, on a partition of its own.
            _ if call.writes() => meter.consume(l.write_latency, &[("table", "OTHER".into(), 0.0, 1.0)]).await?,
            _ => meter.consume(l.read_latency, &[("table", "OTHER".into(), 1.0, 0.0)]).await?,
        }
        Ok(None)
    }

    async fn after(
        &self,
        call: &Call<'_>,
        old: Option<Connection>,
        answer: Result<usize, &StoreError>,
    ) -> Result<(), StoreError> {
        match (call, answer) {
            (Call::DueConnections { shard, .. }, Ok(found)) => {
                // KEYS_ONLY entries of about 120 bytes, eventually consistent: half an RCU per 4 KB.
                let units = (found * 120).div_ceil(4096).max(1) as f64 * 0.5;
                let pk = format!("DUE#{shard}");
                self.meter.consume(self.meter.limits.query_latency, &[("refresh-due", pk, units, 0.0)]).await
            }
            (Call::UpdateConnection { conn, .. }, Ok(_)) => {
                self.committed(old, conn);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A key provider counted and throttled like KMS: every `generate_data_key` is one
/// `GenerateDataKey`, every `decrypt_data_key` one `Decrypt`.
pub struct MeteredKeys {
    inner: Arc<dyn KeyProvider>,
    meter: Arc<Meter>,
}

impl MeteredKeys {
    pub fn new(inner: Arc<dyn KeyProvider>, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }

    async fn admit(&self, generate: bool) -> Result<(), CryptoError> {
        for attempt in 0..3u32 {
            tokio::time::sleep(self.meter.limits.kms_latency).await;
            if self.meter.kms(generate) {
                return Ok(());
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
        Err(CryptoError::Unavailable("throttled: KMS request quota exceeded (simulated)".into()))
    }
}

#[async_trait]
impl KeyProvider for MeteredKeys {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        self.admit(true).await?;
        self.inner.generate_data_key(ctx).await
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        self.admit(false).await?;
        self.inner.decrypt_data_key(key_id, wrapped, ctx).await
    }
}

/// EventBridge, counted: every published event is one `PutEvents` entry, answered after
/// [`EVENT_LATENCY`] of simulated time ([`CountingEvents::instant`]: at once, for seeding).
pub struct CountingEvents {
    meter: Arc<Meter>,
    published: AtomicU64,
    latency: Duration,
}

/// How long a `PutEvents` call takes in the simulation.
pub const EVENT_LATENCY: Duration = Duration::from_millis(10);

impl CountingEvents {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { meter, published: AtomicU64::new(0), latency: EVENT_LATENCY }
    }

    /// Events that take no simulated time: seeding publishes one per connection, and 10 ms
    /// each would move the clock 10,000 s over a million connections before the run starts.
    pub fn instant(meter: Arc<Meter>) -> Self {
        Self { latency: Duration::ZERO, ..Self::new(meter) }
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventSink for CountingEvents {
    async fn publish(&self, _event: &Event) -> Result<(), EventError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        self.meter.event();
        Ok(())
    }
}
