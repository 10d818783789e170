//! Ports wrapped so that every call is counted and timed, by port and operation: the sweep
//! bench's `--profile` (`src/bin/sweep.rs`), what one refresh costs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey::crypto::{CryptoError, DataKey, EncryptionContext, KeyProvider, PlainKey};
use latchkey::domain::Event;
use latchkey::ports::{EventError, EventSink, StoreError};
use latchkey::provider::{ApiRequest, FormPost, ProviderClient, RawAnswer, TransportError};

use crate::store_tap::{Call, StoreHook};

/// One operation's calls and the time they took, summed (concurrent calls overlap).
#[derive(Debug, Default, Clone, Copy)]
pub struct Op {
    pub calls: u64,
    pub total: Duration,
}

/// Calls and time per (port, operation): (`"store"`, `"get_connection"`).
#[derive(Default)]
pub struct Stats(Mutex<BTreeMap<(&'static str, &'static str), Op>>);

impl Stats {
    /// One call of `port`'s operation `name` that took `took`.
    pub fn add(&self, port: &'static str, name: &'static str, took: Duration) {
        let mut ops = self.0.lock().expect("stats");
        let op = ops.entry((port, name)).or_default();
        op.calls += 1;
        op.total += took;
    }

    /// The figures so far.
    pub fn snapshot(&self) -> BTreeMap<(&'static str, &'static str), Op> {
        self.0.lock().expect("stats").clone()
    }
}

/// A port wrapped so that every call is counted and timed: the key provider (`keys`), the
/// event sink (`events`) and the provider client (`provider`). The store is wrapped as a
/// [`Tapped`](crate::store_tap::Tapped) store with a [`StoreTimer`].
pub struct Counted<T: ?Sized> {
    inner: Arc<T>,
    stats: Arc<Stats>,
}

impl<T: ?Sized> Counted<T> {
    pub fn new(inner: Arc<T>, stats: Arc<Stats>) -> Self {
        Self { inner, stats }
    }
}

macro_rules! timed {
    ($self:ident, $port:literal, $name:literal, $call:expr) => {{
        let started = Instant::now();
        let out = $call.await;
        $self.stats.add($port, $name, started.elapsed());
        out
    }};
}

/// The store's calls counted and timed (port `store`, by method name) around a
/// [`Tapped`](crate::store_tap::Tapped) store.
pub struct StoreTimer(pub Arc<Stats>);

#[async_trait]
impl StoreHook for StoreTimer {
    type Ticket = Instant;

    async fn before(&self, _call: &Call<'_>) -> Result<Instant, StoreError> {
        Ok(Instant::now())
    }

    async fn after(&self, call: &Call<'_>, started: Instant, _: Result<usize, &StoreError>) -> Result<(), StoreError> {
        self.0.add("store", call.name(), started.elapsed());
        Ok(())
    }
}

#[async_trait]
impl KeyProvider for Counted<dyn KeyProvider> {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        timed!(self, "keys", "generate_data_key", self.inner.generate_data_key(ctx))
    }
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        timed!(self, "keys", "decrypt_data_key", self.inner.decrypt_data_key(key_id, wrapped, ctx))
    }
}

#[async_trait]
impl EventSink for Counted<dyn EventSink> {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        timed!(self, "events", "publish", self.inner.publish(event))
    }
}

#[async_trait]
impl ProviderClient for Counted<dyn ProviderClient> {
    async fn post_form(&self, post: &FormPost) -> Result<RawAnswer, TransportError> {
        timed!(self, "provider", "post_form", self.inner.post_form(post))
    }
    async fn send(&self, request: &ApiRequest) -> Result<RawAnswer, TransportError> {
        timed!(self, "provider", "send", self.inner.send(request))
    }
}

/// Prints what one refresh cost, operation by operation, between the `before` and `after`
/// snapshots of a sweep that refreshed `refreshed` connections in `wall`.
pub fn print_profile(
    after: &BTreeMap<(&'static str, &'static str), Op>,
    before: &BTreeMap<(&'static str, &'static str), Op>,
    refreshed: usize,
    wall: Duration,
) {
    println!("per refresh (the sweep only; time is summed over concurrent calls, wall {:.2} s):", wall.as_secs_f64());
    println!("| operation | calls per refresh | mean ms per call | ms per refresh (summed) |");
    println!("|---|---|---|---|");
    for ((port, name), op) in after {
        let base = before.get(&(*port, *name)).copied().unwrap_or_default();
        let calls = op.calls - base.calls;
        if calls == 0 {
            continue;
        }
        let total = op.total - base.total;
        println!(
            "| {port} {name} | {:.2} | {:.3} | {:.3} |",
            calls as f64 / refreshed as f64,
            total.as_secs_f64() * 1e3 / calls as f64,
            total.as_secs_f64() * 1e3 / refreshed as f64
        );
    }
}
