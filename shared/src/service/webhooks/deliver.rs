//! Deliveries: the fan-out of an event to the endpoints that subscribe to it, one attempt (claim,
//! sign, send, record, schedule the next), the worker's batch of due deliveries, and a manual
//! retry.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use secrecy::SecretString;
use time::OffsetDateTime;

use super::super::{Result, Service, ServiceError};
use super::WebhookMessage;
use super::config::{DeliveryView, parse_id};
use super::sender::{Answer, Signed, sign};
use crate::domain::{
    DeliveryAttempt, DeliveryStatus, Event, Principal, Webhook, WebhookDelivery, WebhookId, delivery_id,
};
use crate::ports::{Expect, StoreError};

/// How long a claimed delivery is another worker's: a process that dies mid-attempt leaves it
/// due again after this, under the same id. Longer than an attempt's timeout.
pub const CLAIM_LEASE: time::Duration = time::Duration::seconds(60);
/// How long a delivery record is kept.
pub const DELIVERY_RETENTION: time::Duration = time::Duration::days(30);
/// Attempts made at once by [`Service::deliver_due`].
pub const DELIVERY_CONCURRENCY: usize = 8;
/// Why Latchkey disables an endpoint whose delivery exhausted its schedule.
pub const DELIVERIES_FAILING: &str = "deliveries_failing";
/// How many due deliveries [`Service::deliver_due_until`] lists at a time.
pub const DUE_BATCH: usize = 4 * DELIVERY_CONCURRENCY;
/// How often a successful delivery retries recording `last_delivered_at` over concurrent writes
/// to its webhook before leaving it to them.
const LAST_DELIVERED_TRIES: usize = 3;

impl Service {
    /// Stores one `pending` delivery of `message` for every enabled webhook of its organization
    /// that lists its type and existed when the event occurred (`created_at <=
    /// message.occurred_at`: a late or redelivered message never reaches an endpoint created
    /// after its event), due now. Idempotent: a delivery that exists (the same event enqueued
    /// again, by a redelivered SQS message) is read instead of written.
    ///
    /// Returns the organization's deliveries of this event, in webhook order.
    ///
    /// # Errors
    /// The store's.
    pub async fn enqueue_deliveries(&self, message: &WebhookMessage) -> Result<Vec<WebhookDelivery>> {
        let now = self.clock.now();
        let mut deliveries = Vec::new();
        for hook in self.store.list_webhooks(&message.org).await? {
            if !hook.enabled || !hook.events.contains(&message.event_type) || hook.created_at > message.occurred_at {
                continue;
            }
            let delivery = WebhookDelivery {
                org: message.org.clone(),
                webhook_id: hook.id.clone(),
                id: delivery_id(&message.org, &hook.id, &message.event_id),
                event_id: message.event_id.clone(),
                event_type: message.event_type.clone(),
                payload: message.payload.clone(),
                status: DeliveryStatus::Pending,
                version: 1,
                attempts: Vec::new(),
                next_attempt_at: Some(now),
                created_at: now,
                expires_at: now + DELIVERY_RETENTION,
            };
            if self.store.insert_delivery(&delivery).await? {
                deliveries.push(delivery);
            } else if let Some(existing) = self.store.get_delivery(&message.org, &hook.id, &delivery.id).await? {
                deliveries.push(existing);
            }
        }
        Ok(deliveries)
    }

    /// Makes one attempt of a `pending` delivery (others are returned as they are):
    ///
    /// 1. claims it with a conditional write (version + 1, due again after [`CLAIM_LEASE`]); a
    ///    delivery another worker claimed first is left to it (the stored one is returned);
    /// 2. an endpoint deleted or disabled since: `failed`, nothing sent;
    /// 3. sends it signed by the endpoint's secrets under the outbound policy
    ///    ([`super::WebhookSender`]);
    /// 4. 2xx: `delivered`. Otherwise the attempt is recorded and, while the retry schedule
    ///    lasts, the next one is due after the schedule's wait or the answer's `Retry-After`
    ///    (at most 24 h), whichever is longer; after the last one the delivery is `failed` and,
    ///    unless a delivery to the endpoint succeeded since this one's first attempt, the
    ///    endpoint is disabled (`deliveries_failing`) and `Webhook Disabled` is emitted.
    ///
    /// Returns the delivery as stored afterwards.
    ///
    /// # Errors
    /// The store's or the key service's; the receiver's failures are recorded, not returned.
    pub async fn attempt_delivery(&self, delivery: WebhookDelivery) -> Result<WebhookDelivery> {
        if delivery.status != DeliveryStatus::Pending {
            return Ok(delivery);
        }
        let (org, webhook, id) = (delivery.org.clone(), delivery.webhook_id.clone(), delivery.id.clone());
        match self.attempt(delivery, false).await? {
            Some(after) => Ok(after),
            // Another worker claimed it first (or it was deleted): what is stored now.
            None => self.store.get_delivery(&org, &webhook, &id).await?.ok_or(ServiceError::NotFound),
        }
    }

    /// Attempts every delivery due now, up to `limit` of them, [`DELIVERY_CONCURRENCY`] at a
    /// time: what `latchkey serve`'s worker runs. Returns how many were due.
    ///
    /// # Errors
    /// The store's, listing the due deliveries; a failed attempt is logged and the rest go on.
    pub async fn deliver_due(&self, limit: usize) -> Result<usize> {
        self.deliver_due_batch(limit).await
    }

    /// Attempts deliveries as they come due, [`DUE_BATCH`] at a time, until none is due or
    /// `deadline` is too close to start another batch (less than an attempt's timeout,
    /// [`crate::service::ServiceOptions::webhook_attempt_timeout`], left): for a run of bounded length such as a scheduled Lambda
    /// invocation. A delivery whose attempt is cut off by the run's end is due again after its
    /// claim lease ([`CLAIM_LEASE`]). Returns how many were attempted.
    ///
    /// # Errors
    /// The store's, listing the due deliveries (the count so far is lost with it); a failed
    /// attempt is logged and the rest go on.
    pub async fn deliver_due_until(&self, deadline: Instant) -> Result<usize> {
        let mut total = 0;
        while Instant::now() + self.options.webhook_attempt_timeout < deadline {
            let n = self.deliver_due_batch(DUE_BATCH).await?;
            total += n;
            if n < DUE_BATCH {
                break;
            }
        }
        Ok(total)
    }

    async fn deliver_due_batch(&self, limit: usize) -> Result<usize> {
        let due = self.store.due_deliveries(self.clock.now(), limit).await?;
        let count = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(DELIVERY_CONCURRENCY, |d| async move {
                let (org, webhook, id) = (d.org.clone(), d.webhook_id.clone(), d.id.clone());
                if let Err(e) = self.attempt_delivery(d).await {
                    tracing::warn!(org = %org, webhook_id = %webhook, delivery_id = %id, error = %e, "a webhook delivery attempt failed");
                }
            })
            .await;
        Ok(count)
    }

    /// One more attempt of a delivery now, whatever its status (`POST
    /// /v1/webhooks/{id}/deliveries/{delivery_id}/retry`): a `pending` one goes on with its
    /// schedule; a `failed` or `delivered` one becomes `delivered` if it succeeds and otherwise
    /// keeps its status.
    ///
    /// # Errors
    /// 404 when the webhook or delivery is not the caller's organization's; 409
    /// [`ServiceError::WebhookDisabled`] when the endpoint is disabled; 409 when another worker
    /// is attempting it right now.
    pub async fn retry_delivery(&self, p: &Principal, id: &str, delivery_id: &str) -> Result<DeliveryView> {
        if !p.is_organization() {
            return Err(ServiceError::Forbidden("only organization users manage webhooks"));
        }
        let id = parse_id(id)?;
        let hook = self.store.get_webhook(&p.org, &id).await?.ok_or(ServiceError::NotFound)?;
        let delivery = self.store.get_delivery(&p.org, &id, delivery_id).await?.ok_or(ServiceError::NotFound)?;
        if !hook.enabled {
            return Err(ServiceError::WebhookDisabled);
        }
        match self.attempt(delivery, true).await? {
            Some(after) => Ok(DeliveryView::from(&after)),
            None => Err(ServiceError::Conflict("the delivery is being attempted right now; retry shortly")),
        }
    }

    /// [`Service::attempt_delivery`], also for a manual retry (`manual`: any status; the attempt
    /// is marked manual and does not count against the schedule; a failure leaves the status and
    /// the next scheduled attempt as they were and never disables the endpoint). `None` when
    /// another worker claimed it first.
    async fn attempt(&self, delivery: WebhookDelivery, manual: bool) -> Result<Option<WebhookDelivery>> {
        let now = self.clock.now();
        let expected = delivery.version;
        let scheduled_next = delivery.next_attempt_at;
        let claimed = WebhookDelivery { version: expected + 1, next_attempt_at: Some(now + CLAIM_LEASE), ..delivery };
        match self.store.update_delivery(&claimed, expected).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let pending = claimed.status == DeliveryStatus::Pending;

        let hook = self.store.get_webhook(&claimed.org, &claimed.webhook_id).await?;
        let hook = match hook {
            Some(h) if h.enabled || manual => h,
            // Deleted or disabled since it was enqueued: nothing is sent.
            _ => {
                let failed =
                    WebhookDelivery { status: DeliveryStatus::Failed, next_attempt_at: None, ..claimed.clone() };
                return self.finish(failed, claimed.version).await.map(Some);
            }
        };
        let answer = self.send_delivery(&hook, &claimed).await?;
        let attempt = DeliveryAttempt {
            at: now,
            status_code: answer.status,
            error: answer.error.map(str::to_owned),
            duration_ms: u64::try_from(answer.duration.as_millis()).unwrap_or(u64::MAX),
            manual,
        };
        let mut done = claimed.clone();
        done.attempts.push(attempt);
        let mut exhausted = false;
        if answer.delivered() {
            done.status = DeliveryStatus::Delivered;
            done.next_attempt_at = None;
        } else if !pending {
            // A manual retry of a delivery that had finished: it keeps its status.
            done.next_attempt_at = None;
        } else if manual {
            // A manual retry of a pending delivery: its schedule goes on as it was.
            done.next_attempt_at = scheduled_next;
        } else {
            let scheduled = done.attempts.iter().filter(|a| !a.manual).count();
            match self.next_attempt_after(scheduled, answer.retry_after) {
                Some(wait) => done.next_attempt_at = Some(self.clock.now() + wait),
                None => {
                    done.status = DeliveryStatus::Failed;
                    done.next_attempt_at = None;
                    exhausted = true;
                }
            }
        }
        tracing::info!(
            org = %done.org,
            webhook_id = %done.webhook_id,
            delivery_id = %done.id,
            status_code = answer.status,
            error = answer.error,
            outcome = <&str>::from(done.status),
            "webhook delivery attempt"
        );
        let stored = self.finish(done, claimed.version).await?;
        if answer.delivered() {
            self.record_delivered(&hook, now).await?;
        }
        if exhausted && stored.status == DeliveryStatus::Failed {
            let since = stored.attempts.first().map_or(now, |a| a.at);
            self.disable_webhook(&stored.org, &stored.webhook_id, since).await?;
        }
        Ok(Some(stored))
    }

    /// Writes the outcome of an attempt over the claim; a lost race (the lease ran out and
    /// another worker took it) keeps the other's record.
    async fn finish(&self, mut done: WebhookDelivery, claimed_version: u64) -> Result<WebhookDelivery> {
        done.version = claimed_version + 1;
        match self.store.update_delivery(&done, claimed_version).await {
            Ok(()) => Ok(done),
            Err(StoreError::Conflict) => {
                let stored = self.store.get_delivery(&done.org, &done.webhook_id, &done.id).await?;
                Ok(stored.unwrap_or(done))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The wait before the attempt after the `attempts`-th, `None` when the schedule is over:
    /// the schedule's entry or `Retry-After`, whichever is longer.
    fn next_attempt_after(&self, attempts: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self.options.webhook_retry_schedule.get(attempts.checked_sub(1)?)?;
        Some(scheduled.max(retry_after.unwrap_or_default()))
    }

    /// Signs `delivery` with `hook`'s secrets (both during a rotation) and sends it.
    async fn send_delivery(&self, hook: &Webhook, delivery: &WebhookDelivery) -> Result<Answer> {
        let secrets = self.webhook_secrets(hook).await?;
        let now = self.clock.now();
        let mut keys: Vec<&SecretString> = vec![&secrets.current];
        if let (Some(previous), Some(until)) = (&secrets.previous, secrets.previous_until)
            && until > now
        {
            keys.push(previous);
        }
        let timestamp = now.unix_timestamp();
        let signature = sign(&keys, &delivery.id, timestamp, &delivery.payload)
            .map_err(|_| ServiceError::unexpected("a webhook secret is not in the whsec_ form"))?;
        let Ok(url) = url::Url::parse(&hook.url) else {
            return Ok(Answer {
                status: None,
                error: Some("refused_destination"),
                retry_after: None,
                duration: Duration::ZERO,
            });
        };
        let request = Signed { url: &url, id: &delivery.id, timestamp, signature, payload: &delivery.payload };
        Ok(self.webhook_sender.send(&request, self.options.allow_loopback_providers).await)
    }

    /// Records on the webhook that a delivery to it succeeded at `at` (`last_delivered_at`), by
    /// a conditional write retried [`LAST_DELIVERED_TRIES`] times over concurrent writes; then
    /// left to them (losing that race only matters to an endpoint about to be disabled, and the
    /// writes that won it were made just now).
    async fn record_delivered(&self, hook: &Webhook, at: OffsetDateTime) -> Result<()> {
        let mut hook = hook.clone();
        for _ in 0..LAST_DELIVERED_TRIES {
            if hook.last_delivered_at.is_some_and(|t| t >= at) {
                return Ok(());
            }
            let expect = Expect::Version(hook.version);
            let updated = Webhook { last_delivered_at: Some(at), version: hook.version + 1, ..hook };
            match self.store.put_webhook(&updated, expect).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
            match self.store.get_webhook(&updated.org, &updated.id).await? {
                Some(now) => hook = now,
                None => return Ok(()),
            }
        }
        tracing::info!(org = %hook.org, webhook_id = %hook.id, "last_delivered_at left to concurrent writes");
        Ok(())
    }

    /// Disables an endpoint whose delivery, first attempted at `since`, exhausted its schedule,
    /// and emits `Webhook Disabled` (once: not when it was disabled already), unless a delivery
    /// to the endpoint succeeded since (`last_delivered_at >= since`): the endpoint works, the
    /// event did not.
    async fn disable_webhook(&self, org: &crate::domain::OrgId, id: &WebhookId, since: OffsetDateTime) -> Result<()> {
        let mut races = super::super::retry::Races::default();
        loop {
            let Some(hook) = self.store.get_webhook(org, id).await? else { return Ok(()) };
            if !hook.enabled {
                return Ok(());
            }
            if hook.last_delivered_at.is_some_and(|t| t >= since) {
                tracing::warn!(
                    org = %org,
                    webhook_id = %id,
                    "a webhook delivery failed its whole schedule; the endpoint stays enabled: it received others since"
                );
                return Ok(());
            }
            let expect = Expect::Version(hook.version);
            let disabled = Webhook {
                enabled: false,
                disabled_reason: Some(DELIVERIES_FAILING.to_owned()),
                version: hook.version + 1,
                updated_at: self.clock.now(),
                ..hook
            };
            match self.store.put_webhook(&disabled, expect).await {
                Ok(()) => break,
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(org = %org, webhook_id = %id, reason = DELIVERIES_FAILING, "webhook disabled");
        self.emit(Event::webhook_disabled(org, id, DELIVERIES_FAILING)).await;
        Ok(())
    }
}

/// When the delivery is due again, for callers that schedule it elsewhere (the
/// `webhook-deliver` function's SQS visibility): `None` when it is not pending.
pub fn next_attempt(d: &WebhookDelivery) -> Option<OffsetDateTime> {
    (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at).flatten()
}
