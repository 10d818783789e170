//! An organization's webhook endpoints: create or replace, read, list, delete, rotate the
//! signing secret, and the views the API shows (never a secret but the one a creation or
//! rotation answers with, once).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::super::{Result, Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::validate::check_secure_url;
use crate::domain::{
    DeliveryAttempt, DeliveryStatus, EventType, FieldError, Principal, Webhook, WebhookDelivery, WebhookId,
    WebhookSecrets,
};
use crate::ports::{DeliveryCursor, Expect, StoreError};
use crate::provider::destination::{DestinationError, check_public_destination};

/// How long the previous secret keeps signing beside the new one after a rotation.
pub const ROTATION_OVERLAP: time::Duration = time::Duration::hours(24);
/// The longest webhook URL accepted, in bytes.
const MAX_URL: usize = 2048;
/// How many deliveries a listing shows by default, and at most.
pub const DEFAULT_DELIVERIES: usize = 20;
pub const MAX_DELIVERIES: usize = 100;

/// A webhook as the API shows it: never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub id: WebhookId,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why Latchkey disabled it (`deliveries_failing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// While a rotated-out secret still signs: until when.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// What a rotation answers: the new secret (shown this once) and when the old one stops
/// signing.
#[derive(Debug, Serialize)]
pub struct RotatedSecret {
    #[serde(serialize_with = "expose")]
    pub secret: SecretString,
    #[serde(with = "time::serde::rfc3339")]
    pub previous_secret_expires_at: OffsetDateTime,
}

fn expose<S: serde::Serializer>(v: &SecretString, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(secrecy::ExposeSecret::expose_secret(v))
}

/// A delivery as the API shows it: its attempts and the body it sends (which holds no secret).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: WebhookId,
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: Vec<DeliveryAttempt>,
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The body, parsed: `{"type", "timestamp", "data"}`.
    pub payload: Value,
}

/// The query of `GET /v1/webhooks/{id}/deliveries`, as text: checked by
/// [`Service::list_webhook_deliveries`].
#[derive(Debug, Default, serde::Deserialize)]
pub struct DeliveriesQuery {
    /// Page size, 1 to [`MAX_DELIVERIES`].
    pub limit: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of deliveries: `next_cursor` (opaque) is set when another page may follow.
#[derive(Debug, Serialize)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

impl From<&WebhookDelivery> for DeliveryView {
    fn from(d: &WebhookDelivery) -> Self {
        Self {
            id: d.id.clone(),
            webhook_id: d.webhook_id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            status: d.status,
            attempts: d.attempts.clone(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            payload: serde_json::from_str(&d.payload).unwrap_or(Value::Null),
        }
    }
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub(crate) fn new_secret() -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut bytes[..]);
    SecretString::from(format!("whsec_{}", STANDARD.encode(&bytes[..])))
}

fn require_organization(p: &Principal) -> Result<()> {
    if p.is_organization() { Ok(()) } else { Err(ServiceError::Forbidden("only organization users manage webhooks")) }
}

pub(super) fn parse_id(id: &str) -> Result<WebhookId> {
    WebhookId::parse(id).map_err(|_| ServiceError::NotFound)
}

/// The body of `PUT /v1/webhooks/{id}`, checked.
struct WebhookBody {
    url: String,
    events: Vec<String>,
    enabled: bool,
}

impl Service {
    /// Checks a PUT body: `url` (https to a public address, or http/loopback where loopback is
    /// allowed), `events` (one or more known `detail-type`s, duplicates dropped), `enabled`
    /// (default `true`); no other member.
    async fn webhook_body(&self, body: &Value) -> Result<WebhookBody> {
        let Some(object) = body.as_object() else {
            return Err(ServiceError::invalid("", "the body must be a JSON object"));
        };
        let mut errors = Vec::new();
        for name in object.keys().filter(|k| !matches!(k.as_str(), "url" | "events" | "enabled")) {
            errors.push(FieldError::new(name.clone(), "is not a member of a webhook"));
        }
        let url = match object.get("url").and_then(Value::as_str) {
            None => {
                errors.push(FieldError::new("url", "is required: the https URL deliveries are posted to"));
                None
            }
            Some(u) if u.len() > MAX_URL => {
                errors.push(FieldError::new("url", format!("must be at most {MAX_URL} bytes")));
                None
            }
            Some(u) => match self.check_webhook_url(u).await {
                Ok(url) => Some(url),
                Err(message) => {
                    errors.push(FieldError::new("url", message));
                    None
                }
            },
        };
        let mut events: Vec<String> = Vec::new();
        match object.get("events").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => {
                for (i, e) in list.iter().enumerate() {
                    match e.as_str().and_then(EventType::from_detail_type) {
                        Some(t) if !events.iter().any(|x| x == t.detail_type()) => {
                            events.push(t.detail_type().to_owned());
                        }
                        Some(_) => {}
                        None => errors.push(FieldError::new(
                            format!("events[{i}]"),
                            "is not an event type (see the README's Events section)",
                        )),
                    }
                }
            }
            _ => errors.push(FieldError::new("events", "must be a non-empty array of event types")),
        }
        let enabled = match object.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::new("enabled", "must be true or false"));
                true
            }
        };
        match url {
            Some(url) if errors.is_empty() => Ok(WebhookBody { url, events, enabled }),
            _ => Err(ServiceError::Invalid(errors)),
        }
    }

    /// A webhook URL under the outbound policy: `https` (http only on loopback, where allowed),
    /// a public address (a name that does not resolve yet is accepted: it is checked again at
    /// every delivery). The error is the field message.
    async fn check_webhook_url(&self, u: &str) -> std::result::Result<String, String> {
        let url = check_secure_url(u).map_err(|e| e.to_string())?;
        if url.scheme() != "https" && !self.options.allow_loopback_providers {
            return Err("must be https".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".to_owned());
        }
        match check_public_destination(&url, self.options.allow_loopback_providers).await {
            Ok(()) | Err(DestinationError::Unresolved) => Ok(url.to_string()),
            Err(DestinationError::Refused(why)) => Err(format!("must be a public address: it {why}")),
        }
    }

    /// Opens `hook`'s signing secrets (the key service is called: only to sign or rotate).
    pub(super) async fn webhook_secrets(&self, hook: &Webhook) -> Result<WebhookSecrets> {
        Ok(self.envelope.open_json(&EncryptionContext::organization(&hook.org), &hook.secrets).await?)
    }

    /// The view of `hook`, from its clear fields alone (no secret is opened).
    fn webhook_view(&self, hook: &Webhook) -> WebhookView {
        let now = self.clock.now();
        WebhookView {
            id: hook.id.clone(),
            url: hook.url.clone(),
            events: hook.events.clone(),
            enabled: hook.enabled,
            disabled_reason: hook.disabled_reason.clone(),
            created_at: hook.created_at,
            updated_at: hook.updated_at,
            previous_secret_expires_at: hook.previous_until.filter(|t| *t > now),
        }
    }

    /// Creates or replaces a webhook. A creation answers its signing secret (the only time it
    /// is shown); a replacement keeps the secrets. `enabled: true` clears a `disabled_reason`.
    ///
    /// # Errors
    /// 403 for a customer user, 422 for a bad id or body, 409 after repeated concurrent writes.
    pub async fn put_webhook(
        &self,
        p: &Principal,
        id: &str,
        body: &Value,
    ) -> Result<(WebhookView, Option<SecretString>)> {
        require_organization(p)?;
        let id = WebhookId::parse(id).map_err(|e| ServiceError::invalid("id", &e.to_string()))?;
        let body = self.webhook_body(body).await?;
        let mut races = super::super::retry::Races::default();
        loop {
            let now = self.clock.now();
            let existing = self.store.get_webhook(&p.org, &id).await?;
            let (hook, expect, secret) = match existing {
                Some(old) => {
                    let hook = Webhook {
                        url: body.url.clone(),
                        events: body.events.clone(),
                        enabled: body.enabled,
                        disabled_reason: None,
                        version: old.version + 1,
                        updated_at: now,
                        ..old
                    };
                    let expect = Expect::Version(hook.version - 1);
                    (hook, expect, None)
                }
                None => {
                    let secret = new_secret();
                    let secrets = WebhookSecrets { current: secret.clone(), previous: None, previous_until: None };
                    let sealed = self.envelope.seal_json(&EncryptionContext::organization(&p.org), &secrets).await?;
                    let hook = Webhook {
                        org: p.org.clone(),
                        id: id.clone(),
                        url: body.url.clone(),
                        events: body.events.clone(),
                        enabled: body.enabled,
                        disabled_reason: None,
                        secrets: sealed,
                        previous_until: None,
                        last_delivered_at: None,
                        version: 1,
                        created_at: now,
                        updated_at: now,
                    };
                    (hook, Expect::Absent, Some(secret))
                }
            };
            match self.store.put_webhook(&hook, expect).await {
                Ok(()) => return Ok((self.webhook_view(&hook), secret)),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One webhook of the caller's organization.
    ///
    /// # Errors
    /// 404 when there is none of that id in the caller's organization; 403 for a customer user.
    pub async fn get_webhook(&self, p: &Principal, id: &str) -> Result<WebhookView> {
        require_organization(p)?;
        let hook = self.store.get_webhook(&p.org, &parse_id(id)?).await?.ok_or(ServiceError::NotFound)?;
        Ok(self.webhook_view(&hook))
    }

    /// Every webhook of the caller's organization, by id.
    pub async fn list_webhooks(&self, p: &Principal) -> Result<Vec<WebhookView>> {
        require_organization(p)?;
        Ok(self.store.list_webhooks(&p.org).await?.iter().map(|hook| self.webhook_view(hook)).collect())
    }

    /// Deletes a webhook and its deliveries.
    ///
    /// # Errors
    /// 404 when there is none of that id in the caller's organization.
    pub async fn delete_webhook(&self, p: &Principal, id: &str) -> Result<()> {
        require_organization(p)?;
        if self.store.delete_webhook(&p.org, &parse_id(id)?).await? { Ok(()) } else { Err(ServiceError::NotFound) }
    }

    /// A new signing secret; the current one becomes the previous one and keeps signing beside
    /// it for [`ROTATION_OVERLAP`]. There is one previous secret: a second rotation within the
    /// overlap drops the first rotation's previous secret at once (the previous secret is always
    /// the one just replaced).
    ///
    /// # Errors
    /// 404 when there is none of that id in the caller's organization.
    pub async fn rotate_webhook_secret(&self, p: &Principal, id: &str) -> Result<RotatedSecret> {
        require_organization(p)?;
        let id = parse_id(id)?;
        let mut races = super::super::retry::Races::default();
        loop {
            let hook = self.store.get_webhook(&p.org, &id).await?.ok_or(ServiceError::NotFound)?;
            let old = self.webhook_secrets(&hook).await?;
            let now = self.clock.now();
            let secret = new_secret();
            let until = now + ROTATION_OVERLAP;
            let secrets =
                WebhookSecrets { current: secret.clone(), previous: Some(old.current), previous_until: Some(until) };
            let sealed = self.envelope.seal_json(&EncryptionContext::organization(&p.org), &secrets).await?;
            let expect = Expect::Version(hook.version);
            let rotated = Webhook {
                secrets: sealed,
                previous_until: Some(until),
                version: hook.version + 1,
                updated_at: now,
                ..hook
            };
            match self.store.put_webhook(&rotated, expect).await {
                Ok(()) => return Ok(RotatedSecret { secret, previous_secret_expires_at: until }),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A page of a webhook's deliveries, newest first: `limit` of them (default
    /// [`DEFAULT_DELIVERIES`], at most [`MAX_DELIVERIES`]), only those of `status` when given,
    /// after `cursor` (a `next_cursor` of an earlier page).
    ///
    /// # Errors
    /// 404 when there is no such webhook in the caller's organization; 422 for a bad limit,
    /// status or cursor.
    pub async fn list_webhook_deliveries(&self, p: &Principal, id: &str, q: &DeliveriesQuery) -> Result<DeliveryPage> {
        require_organization(p)?;
        let id = parse_id(id)?;
        let mut errors = Vec::new();
        let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
            None => DEFAULT_DELIVERIES,
            Some(l) => l.parse::<usize>().ok().filter(|n| (1..=MAX_DELIVERIES).contains(n)).unwrap_or_else(|| {
                errors.push(FieldError::new("limit", format!("must be an integer from 1 to {MAX_DELIVERIES}")));
                DEFAULT_DELIVERIES
            }),
        };
        let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => s
                .parse::<DeliveryStatus>()
                .map_err(|_| {
                    errors.push(FieldError::new("status", "must be one of pending, delivered, failed"));
                })
                .ok(),
        };
        let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => DeliveryCursor::parse(c).or_else(|| {
                errors.push(FieldError::new("cursor", "is not a cursor returned by this API"));
                None
            }),
        };
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        self.store.get_webhook(&p.org, &id).await?.ok_or(ServiceError::NotFound)?;
        let page = self.store.list_deliveries(&p.org, &id, status, limit, cursor.as_ref()).await?;
        Ok(DeliveryPage {
            items: page.items.iter().map(DeliveryView::from).collect(),
            next_cursor: page.next.map(|c| c.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_32_random_bytes_in_the_standard_form() {
        let (a, b) = (new_secret(), new_secret());
        let (a, b) = (secrecy::ExposeSecret::expose_secret(&a), secrecy::ExposeSecret::expose_secret(&b));
        assert_ne!(a, b);
        let key = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        assert!(standardwebhooks::Webhook::new(a).is_ok());
    }
}
