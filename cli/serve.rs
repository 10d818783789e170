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

/// How many of those places one organization's connections may hold at once: one whose
/// revocation endpoint holds its answers (a bulk disconnect) leaves the others 12.
const REVOKER_PER_ORGANIZATION: usize = 4;

/// Disconnects the revoker holds waiting for a place, at most; past that it leaves them to the
/// sweep (their jobs are due at once), as it does the events it missed.
const REVOKER_WAITING: usize = 10_000;

/// The revoker, as the EventBridge rule runs token-revoke in AWS: on our own disconnect and
/// delete events (in-process, on either backend: [`Components::build_serving`]); the sweep
/// retries what it misses. On aws, a deployed stack's token-revoke may get the same event: the
/// attempt's conditional claim lets one of them run it.
///
/// Events are taken off the channel as they come and wait in arrival order; a place that comes
/// free goes to the first waiting connection whose organization holds fewer than
/// [`REVOKER_PER_ORGANIZATION`] places, so one organization's held revocations (up to two 15 s
/// provider calls a job) keep neither the disconnects after them nor other organizations'.
fn spawn_revoker(events: &latchkey::adapters::LogEventSink, revoker: Arc<Service>) {
    use latchkey::domain::{ConnectionId, EventType, OrgId};
    use std::collections::{BTreeMap, VecDeque};

    let mut rx = events.subscribe();
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        let mut places: BTreeMap<OrgId, usize> = BTreeMap::new();
        let mut waiting: VecDeque<(OrgId, ConnectionId)> = VecDeque::new();
        loop {
            while running.len() < REVOKER_CONNECTIONS {
                let under_share =
                    |(org, _): &(OrgId, ConnectionId)| places.get(org).copied().unwrap_or(0) < REVOKER_PER_ORGANIZATION;
                let Some((org, id)) = waiting.iter().position(under_share).and_then(|i| waiting.remove(i)) else {
                    break;
                };
                *places.entry(org.clone()).or_default() += 1;
                let revoker = revoker.clone();
                running.spawn(async move {
                    if let Err(err) = revoker.revoke_pending(&org, &id).await {
                        tracing::warn!(org = %org, connection_id = %id, error = %err, "revocation failed");
                    }
                    org
                });
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    // A revocation's task does not panic; were it to, its place would stay
                    // taken, and the sweep would still run that organization's jobs.
                    if let Ok(org) = done
                        && let Some(n) = places.get_mut(&org)
                    {
                        *n -= 1;
                        if *n == 0 {
                            places.remove(&org);
                        }
                    }
                }
                received = rx.recv() => match received {
                    Ok(e) if matches!(e.kind, EventType::ConnectionDisconnected | EventType::ConnectionDeleted) => {
                        let Some(id) = e.connection_id().cloned() else { continue };
                        if waiting.len() >= REVOKER_WAITING {
                            tracing::warn!(org = %e.org, connection_id = %id, "the revoker is full; the sweep revokes this one");
                            continue;
                        }
                        waiting.push_back((e.org, id));
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
