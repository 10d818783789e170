//! `latchkey serve`: every function in one process over the embedded backend (or aws), with the
//! revoker, the refresh sweep and the webhook worker that EventBridge runs in AWS as background
//! tasks.

use std::sync::Arc;

use latchkey::config::{Components, DEV_ORG, Settings};
use latchkey::service::Service;

/// Binds `settings.addr`, builds the service with the final public URL (`LATCHKEY_PUBLIC_URL`,
/// else `http://<bound address>`), and serves until Ctrl-C or SIGTERM.
pub async fn run(mut settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let (secret, generated) = settings.jwt_secret_or_generate()?;
    // HS256 tokens of the local secret, and RS256/ES256 tokens of LATCHKEY_JWT_ISSUER if set.
    let verifier = settings.verifier(Some(&secret))?;
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    let bound = listener.local_addr()?;
    let public_url = settings.public_url.get_or_insert_with(|| format!("http://{bound}")).clone();
    let components = Components::build_serving(&settings).await?;
    // Stdout is for people and the test harness; logs go to stderr.
    println!("latchkey listening on http://{bound}");
    println!("OAuth redirect URI: {public_url}/v1/oauth/callback");
    if generated {
        let t = crate::token(&secret, DEV_ORG.to_owned(), None, Vec::new(), 12 * 3600).await?;
        println!("LATCHKEY_JWT_SECRET is not set: using the secret in {}", settings.data_dir.display());
        println!("organization token (org \"{DEV_ORG}\", 12 h): {t}");
    }
    if let Some(events) = &components.events {
        spawn_revoker(events, components.service.clone());
    }
    spawn_sweeper(components.service.clone(), settings.refresh_interval);
    spawn_device_poller(components.service.clone(), settings.refresh_interval);
    spawn_webhook_worker(components.service.clone());
    tracing::info!(addr = %bound, "latchkey serve ready");
    let router = latchkey::http::router(components.router_state(verifier));
    axum::serve(listener, router).with_graceful_shutdown(shutdown()).await?;
    tracing::info!("latchkey serve stopped");
    Ok(())
}

/// How many connections' revocations `latchkey serve`'s revoker runs at once (each connection's
/// jobs up to `REVOKE_CONCURRENCY` at once).
const REVOKER_CONNECTIONS: usize = 16;

/// How many places one organization's connections take first; more only while more than as
/// many stay free. So one organization whose revocation endpoint holds its answers (a bulk
/// disconnect) leaves the others 4 places at least, and one alone uses 12.
const REVOKER_PER_ORGANIZATION: usize = 4;

/// Disconnects the revoker holds waiting for a place, at most, and of one organization; past
/// either, it leaves them to the sweep (their jobs are due at once), as it does the events it
/// missed.
const REVOKER_WAITING: usize = 10_000;
const REVOKER_WAITING_PER_ORGANIZATION: usize = 1_000;

/// The revoker, as the EventBridge rule runs token-revoke in AWS: on our own disconnect and
/// delete events (in-process, on either backend: [`Components::build_serving`]); the sweep
/// retries what it misses. On aws, a deployed stack's token-revoke may get the same event: the
/// attempt's conditional claim lets one of them run it.
///
/// Events are taken off the channel as they come and wait in arrival order
/// ([`RevokerQueue`]), so one organization's held revocations (up to two 15 s provider calls a
/// job) hold places, not the other organizations' disconnects behind them.
fn spawn_revoker(events: &latchkey::adapters::LogEventSink, revoker: Arc<Service>) {
    use latchkey::domain::EventType;

    let mut rx = events.subscribe();
    tokio::spawn(async move {
        let mut queue = RevokerQueue::default();
        let mut running = tokio::task::JoinSet::new();
        let mut running_orgs = std::collections::HashMap::new(); // by task id
        loop {
            while let Some((org, id)) = queue.next(running.len()) {
                let revoker = revoker.clone();
                let task = running.spawn({
                    let org = org.clone();
                    async move {
                        if let Err(err) = revoker.revoke_pending(&org, &id).await {
                            tracing::warn!(org = %org, connection_id = %id, error = %err, "revocation failed");
                        }
                    }
                });
                running_orgs.insert(task.id(), org);
            }
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let task = match done {
                        Ok((task, ())) => task,
                        Err(err) => err.id(),
                    };
                    if let Some(org) = running_orgs.remove(&task) {
                        queue.ended(&org);
                    }
                }
                received = rx.recv() => match received {
                    Ok(e) if matches!(e.kind, EventType::ConnectionDisconnected | EventType::ConnectionDeleted) => {
                        if let Some(id) = e.connection_id().cloned() {
                            queue.push(e.org, id);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the revoker fell behind; the sweep picks up what it missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // The server is stopping: what runs finishes on its own.
                        running.detach_all();
                        return;
                    }
                },
            }
        }
    });
}

/// The disconnects `latchkey serve`'s revoker has no place for yet, in arrival order, and the
/// places each organization holds. A place that comes free goes to the first waiting
/// connection of an organization under [`REVOKER_PER_ORGANIZATION`] places, else, while more
/// than that many places stay free, to the first waiting one.
#[derive(Default)]
struct RevokerQueue {
    waiting: std::collections::VecDeque<(latchkey::domain::OrgId, latchkey::domain::ConnectionId)>,
    /// Per organization: waiting connections, places held.
    orgs: std::collections::BTreeMap<latchkey::domain::OrgId, (usize, usize)>,
    /// Whether a place or an arrival since the last scan may let a waiting one start.
    changed: bool,
    /// Disconnects left to the sweep since the queue was last below its bounds.
    dropped: usize,
}

impl RevokerQueue {
    fn push(&mut self, org: latchkey::domain::OrgId, id: latchkey::domain::ConnectionId) {
        let waiting = self.orgs.get(&org).map_or(0, |o| o.0);
        if self.waiting.len() >= REVOKER_WAITING || waiting >= REVOKER_WAITING_PER_ORGANIZATION {
            if self.dropped == 0 {
                tracing::warn!(org = %org, connection_id = %id, "the revoker is full; the sweep revokes what comes now");
            }
            self.dropped += 1;
            return;
        }
        self.orgs.entry(org.clone()).or_default().0 += 1;
        self.waiting.push_back((org, id));
        self.changed = true;
    }

    /// The next waiting connection to start with `running` places taken, counted as holding one.
    fn next(&mut self, running: usize) -> Option<(latchkey::domain::OrgId, latchkey::domain::ConnectionId)> {
        if running >= REVOKER_CONNECTIONS || !std::mem::take(&mut self.changed) {
            return None;
        }
        let i = self
            .waiting
            .iter()
            .position(|(org, _)| self.orgs.get(org).map_or(0, |o| o.1) < REVOKER_PER_ORGANIZATION)
            .or_else(|| {
                (REVOKER_CONNECTIONS - running > REVOKER_PER_ORGANIZATION && !self.waiting.is_empty()).then_some(0)
            })?;
        let (org, id) = self.waiting.remove(i)?;
        let entry = self.orgs.entry(org.clone()).or_default();
        entry.0 -= 1;
        entry.1 += 1;
        if self.waiting.len() < REVOKER_WAITING && self.dropped > 0 {
            tracing::warn!(dropped = self.dropped, "the revoker has room again; the sweep revokes the ones it left");
            self.dropped = 0;
        }
        // Another may start too.
        self.changed = true;
        Some((org, id))
    }

    /// A connection of `org`'s revocations ended: its place is free.
    fn ended(&mut self, org: &latchkey::domain::OrgId) {
        if let Some(entry) = self.orgs.get_mut(org) {
            entry.1 = entry.1.saturating_sub(1);
            if *entry == (0, 0) {
                self.orgs.remove(org);
            }
        }
        self.changed = true;
    }
}

/// The least time a sweep of `latchkey serve` may start work in: its interval when longer.
/// With a short interval (tests run 1 s) and a slow store, a window of the interval alone could
/// go by in the sweep's reads of the due index and due revocations, leaving it nothing to start
/// in, sweep after sweep (moto under a loaded test run took over a second for them). Sweeps
/// never overlap: the next tick waits for the last sweep.
const SWEEP_MIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The refresh sweep every `every`, as the EventBridge schedule runs it in AWS; each starts
/// work for `every` or [`SWEEP_MIN_WINDOW`], whichever is longer.
fn spawn_sweeper(sweeper: Arc<Service>, every: std::time::Duration) {
    let window = every.max(SWEEP_MIN_WINDOW);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweeper.refresh_sweep(std::time::Instant::now() + window).await {
                tracing::warn!(error = %e, "refresh sweep failed");
            }
        }
    });
}

/// The longest `latchkey serve` waits between looks for device authorizations due for a poll
/// between its sweeps (RFC 8628's default interval): what finds codes that neither it nor the
/// sweep polled yet and that it did not start itself.
const DEVICE_POLL_TICK: std::time::Duration = std::time::Duration::from_secs(5);
/// The least it waits between two looks, however soon the next poll is due.
const DEVICE_POLL_MIN_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Polls due device authorizations between sweeps when the sweep runs less often than every
/// [`DEVICE_POLL_TICK`] (the sweep polls them too): after each look it sleeps until the
/// earliest next poll the look knows of (at most [`DEVICE_POLL_TICK`]), and wakes when a device
/// authorization starts or the sweep polls one ([`Service::device_started`]). So each code is
/// polled once its interval has passed (the due index rounds up to the whole second), never
/// sooner: the service checks.
fn spawn_device_poller(service: Arc<Service>, sweep_every: std::time::Duration) {
    if sweep_every <= DEVICE_POLL_TICK {
        return;
    }
    tokio::spawn(async move {
        loop {
            let deadline = std::time::Instant::now() + DEVICE_POLL_TICK;
            let wait = match service.poll_due_devices(deadline).await {
                Ok(pass) => pass.next_in.unwrap_or(DEVICE_POLL_TICK),
                Err(e) => {
                    tracing::warn!(error = %e, "polling device authorizations failed");
                    DEVICE_POLL_TICK
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait.clamp(DEVICE_POLL_MIN_WAIT, DEVICE_POLL_TICK)) => {}
                () = service.device_started() => {}
            }
        }
    });
}

/// How often the webhook worker looks for due deliveries when no event wakes it.
const WEBHOOK_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// The most deliveries the worker takes from the store at once (attempted
/// `DELIVERY_CONCURRENCY` at a time); a full batch is followed by another at once.
const WEBHOOK_BATCH: usize = 64;

/// The webhook worker, as the EventBridge rule, SQS and `webhook-deliver` do it in AWS: every
/// [`WEBHOOK_TICK`] and whenever an event enqueued deliveries, it attempts the outbox's due
/// deliveries. They are rows in the store: a restart loses none, and one claimed by a process
/// that died is due again after the claim's lease (the same `webhook-id`). On the aws backend
/// events enqueue nothing here (`webhook-deliver` enqueues them from SQS), and the worker only
/// attempts what is due in the table; a delivery's claim keeps it to one attempt at a time
/// whoever runs it.
fn spawn_webhook_worker(service: Arc<Service>) {
    let wake = service.webhook_wake();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WEBHOOK_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            loop {
                match service.deliver_due(WEBHOOK_BATCH).await {
                    Ok(n) if n == WEBHOOK_BATCH => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook deliveries failed");
                        break;
                    }
                }
            }
        }
    });
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey::domain::{ConnectionId, OrgId};

    fn org(name: &str) -> OrgId {
        OrgId::parse(name).unwrap()
    }

    /// Starts what may start with `running` places taken: their organizations.
    fn start(queue: &mut RevokerQueue, running: &mut usize) -> Vec<String> {
        std::iter::from_fn(|| {
            let (org, _) = queue.next(*running)?;
            *running += 1;
            Some(org.to_string())
        })
        .collect()
    }

    #[test]
    fn one_organization_alone_takes_all_but_the_reserve_and_another_goes_first() {
        let (mut queue, mut running) = (RevokerQueue::default(), 0);
        for _ in 0..20 {
            queue.push(org("held"), ConnectionId::generate());
        }
        assert_eq!(start(&mut queue, &mut running), vec!["held"; 12], "12 of 16: 4 stay free");
        queue.push(org("other"), ConnectionId::generate());
        queue.push(org("other"), ConnectionId::generate());
        assert_eq!(start(&mut queue, &mut running), ["other", "other"], "under their 4: into the free places");
        queue.ended(&org("held"));
        running -= 1;
        assert!(start(&mut queue, &mut running).is_empty(), "held is over its 4 and only 3 places are free");
        queue.ended(&org("other"));
        queue.ended(&org("other"));
        running -= 2;
        assert_eq!(start(&mut queue, &mut running), ["held"], "5 free: one more of the held");
    }

    #[test]
    fn one_organization_waits_in_at_most_its_part_of_the_queue() {
        let mut queue = RevokerQueue::default();
        for _ in 0..REVOKER_WAITING_PER_ORGANIZATION + 5 {
            queue.push(org("held"), ConnectionId::generate());
        }
        assert_eq!(
            (queue.waiting.len(), queue.dropped),
            (REVOKER_WAITING_PER_ORGANIZATION, 5),
            "the rest to the sweep"
        );
        queue.push(org("other"), ConnectionId::generate());
        assert_eq!(queue.waiting.len(), REVOKER_WAITING_PER_ORGANIZATION + 1, "another organization still waits");
    }
}
