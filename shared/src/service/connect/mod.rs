//! Connect sessions (SPEC section 9): created by organization users
//! ([`Service::create_connect_session`]), opened once by the customer's browser
//! ([`Service::open_connect_link`]), then checked on every request of the page by its cookie
//! ([`Service::connect_session`]). What the page shows and does is [`page`]'s: it acts as the
//! session's customer through the API's own use cases, so the API's visibility rules hold.

mod page;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

pub use page::{ConnectPage, PageAuthorization, PageConnection, PageDefinition, PageInput};

use super::oauth::STATE_TTL;
use super::{Result, Service, ServiceError};
use crate::domain::connect::{ConnectRequest, new_secret, parse_link, secret_hash};
pub use crate::domain::connect::{SESSION_COOKIE_PREFIX, SESSION_TTL};
use crate::domain::{ConnectSession, FieldError, Principal, Scope};

/// What `POST /v1/connect/sessions` answers (201): the link to send the customer to, valid
/// once, until `expires_at` (RFC 3339, [`SESSION_TTL`] after creation).
#[derive(Debug, Serialize)]
pub struct ConnectLink {
    /// `{public_url}/connect?session={id}.{secret}`: the secret is in no store.
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Whether `c` is bound to an instance other than the one `context` names (a session for one
/// instance never reconnects another's connection; naming no instance, it may).
fn other_instance(c: &crate::domain::Connection, context: &crate::domain::ConnectContext) -> bool {
    matches!((&c.instance_id, &context.instance_id), (Some(bound), Some(named)) if bound != named)
}

impl Service {
    /// `POST /v1/connect/sessions` (organization users): a new session for one customer and its
    /// one-time link under `public_url` (the configured `LATCHKEY_PUBLIC_URL`, or on Lambda the
    /// API Gateway domain, like authorize's).
    ///
    /// # Errors
    /// `Forbidden` for a customer principal; `Invalid` naming each bad field
    /// ([`ConnectRequest::from_json`]), `definitions[i]` for a definition the organization does
    /// not have, `connection_id` for a connection that is not this customer's (whether it
    /// exists for another is never told), that the customer cannot change or that is bound to
    /// an instance other than `instance.id`; `Unexpected` when
    /// `public_url` is `None`.
    pub async fn create_connect_session(
        &self,
        p: &Principal,
        body: &Value,
        public_url: Option<&str>,
    ) -> Result<ConnectLink> {
        if !p.is_organization() {
            return Err(ServiceError::Forbidden("connect sessions are created by organization users"));
        }
        let req = ConnectRequest::from_json(body).map_err(ServiceError::Invalid)?;
        let mut errors = Vec::new();
        for (i, key) in req.definitions.iter().enumerate() {
            if self.store.get_definition(&p.org, key).await?.is_none() {
                errors.push(FieldError::new(format!("definitions[{i}]"), "no such definition"));
            }
        }
        if let Some(id) = &req.connection_id {
            let own =
                self.store.get_connection(&p.org, id).await?.filter(|c| c.customer.as_ref() == Some(&req.customer));
            match own {
                None => errors.push(FieldError::new("connection_id", "is not a connection of this customer")),
                Some(c) if c.scope == Scope::Organization => errors
                    .push(FieldError::new("connection_id", "is organization-scoped: the customer cannot change it")),
                Some(c) if !req.definitions.is_empty() && !req.definitions.contains(&c.definition) => {
                    errors.push(FieldError::new("connection_id", "its definition is not among definitions"));
                }
                Some(c) if other_instance(&c, &req.context) => {
                    errors.push(FieldError::new("connection_id", "is bound to another instance than instance.id"));
                }
                Some(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let public_url = public_url.ok_or_else(|| {
            ServiceError::unexpected("LATCHKEY_PUBLIC_URL is not configured and no API Gateway domain: no connect link")
        })?;
        let now = self.clock.now();
        let link_secret = new_secret();
        let session = ConnectSession {
            id: ulid::Ulid::new().to_string(),
            org: p.org.clone(),
            customer: req.customer,
            definitions: req.definitions,
            connection_id: req.connection_id,
            context: req.context,
            redirects: req.redirects,
            parent_origin: req.parent_origin,
            link_hash: secret_hash(link_secret.expose_secret()),
            browser_hash: None,
            created_at: now,
            expires_at: now + SESSION_TTL,
        };
        self.store.put_connect_session(&session).await?;
        tracing::info!(org = %session.org, session = %session.id, "connect session created");
        Ok(ConnectLink {
            url: format!(
                "{}/connect?session={}.{}",
                public_url.trim_end_matches('/'),
                session.id,
                link_secret.expose_secret()
            ),
            expires_at: session.expires_at,
        })
    }

    /// `GET /connect?session={link}`: trades the link, once, for a new browser secret (the
    /// cookie's value), returning the session with it.
    ///
    /// # Errors
    /// `NotFound` for a malformed, unknown, used or expired link: never which.
    pub async fn open_connect_link(&self, link: &str) -> Result<(ConnectSession, SecretString)> {
        let (id, link_secret) = parse_link(link).ok_or(ServiceError::NotFound)?;
        let browser_secret = new_secret();
        let traded = self
            .store
            .trade_connect_link(
                id,
                &secret_hash(link_secret),
                &secret_hash(browser_secret.expose_secret()),
                self.clock.now(),
            )
            .await?;
        let session = traded.ok_or(ServiceError::NotFound)?;
        tracing::info!(org = %session.org, session = %session.id, "connect link opened");
        Ok((session, browser_secret))
    }

    /// The `Max-Age` of session `s`'s cookie, in seconds: the session's time left on the
    /// service's clock plus an OAuth state's lifetime ([`STATE_TTL`]), so that an authorization
    /// started in the session's last minutes still finds its browser's cookie at the callback
    /// (the page itself is refused once the session expires, whatever the cookie).
    pub fn connect_cookie_max_age(&self, s: &ConnectSession) -> i64 {
        s.seconds_left(self.clock.now()) + i64::try_from(STATE_TTL.as_secs()).unwrap_or(0)
    }

    /// The session `id` for a request carrying `browser_secret` in its cookie.
    ///
    /// # Errors
    /// `NotFound` when the session is unknown or expired, or the secret is not its browser's.
    pub async fn connect_session(&self, id: &str, browser_secret: &SecretString) -> Result<ConnectSession> {
        if !crate::domain::connect::is_session_id(id) {
            return Err(ServiceError::NotFound);
        }
        let session = self.store.get_connect_session(id, self.clock.now()).await?.ok_or(ServiceError::NotFound)?;
        if session.browser_matches(browser_secret) { Ok(session) } else { Err(ServiceError::NotFound) }
    }
}
