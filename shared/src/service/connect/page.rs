//! What the connect page shows and does, as the session's customer: every read and change
//! goes through the API's own use cases (`list_connections`, `create_connection`,
//! `update_connection`, `authorize`, `disconnect`, `connection_logs`) with a customer
//! principal, so the page sees and changes exactly what that customer could over the API, and
//! only within what the session allows (its definitions, its connection).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::super::DeviceAuthorizeResponse;
use super::super::{ConnectionView, ListQuery, MAX_PAGE, Result, Service, ServiceError};
use crate::domain::{
    AuthKind, BrowserBinding, ConnectContext, ConnectSession, Connection, ConnectionId, Definition, DefinitionKey,
    InputType, InstanceId, LogEntry, Principal, Scope, Status, StatusError, Visibility,
};
use crate::ports::StoreError;

/// How many log lines the page shows per connection, newest first.
pub const PAGE_LOG_LINES: usize = 10;

/// What the connect page shows: the session's context and, per definition it offers, the
/// customer's connections.
#[derive(Debug, Serialize)]
pub struct ConnectPage {
    /// The session's instance, integration and config variable, as its creator named them.
    pub context: ConnectContext,
    /// The `postMessage` target origin, if the session named one.
    pub parent_origin: Option<String>,
    /// In the session's order (or the organization's, when it named none).
    pub definitions: Vec<PageDefinition>,
}

/// One definition the page offers.
#[derive(Debug, Serialize)]
pub struct PageDefinition {
    /// The definition's key (`acme-api`): the forms' `definition` field.
    pub key: String,
    /// The organization's label for it, shown as the section's heading.
    pub label: String,
    /// The organization's description, shown under the heading.
    pub description: Option<String>,
    /// How its connections authenticate.
    pub auth: AuthKind,
    /// `oauth2_authorization_code` or `oauth2_device_code`: a Connect button instead of a form.
    pub oauth: bool,
    /// The customer-visible inputs (never `organization` or `embedded` ones), in definition
    /// order.
    pub inputs: Vec<PageInput>,
    /// The customer's connections of this definition, newest first (only the session's
    /// connection when it names one).
    pub connections: Vec<PageConnection>,
}

/// One input of a definition's form.
#[derive(Debug, Serialize)]
pub struct PageInput {
    /// The input's name in the definition (`apiKey`): the form field is `value.{name}`.
    pub name: String,
    /// The input's label, shown in the field's `<label>`.
    pub label: String,
    /// Its type, which decides the field's markup and how the posted text is read.
    pub kind: InputType,
    /// Whether a new connection needs a value for it.
    pub required: bool,
    /// The default value; never for a `password` input.
    pub default: Option<Value>,
    /// Help text shown under the field.
    pub description: Option<String>,
}

/// One of the customer's connections.
#[derive(Debug, Serialize)]
pub struct PageConnection {
    /// The connection's id (`con_…`): the forms' `connection_id` field.
    pub id: String,
    /// Its label, when it has one.
    pub label: Option<String>,
    /// Its status, shown in words and colour.
    pub status: Status,
    /// Why it is red.
    pub error: Option<StatusError>,
    /// `false` for organization-scoped connections: the customer cannot change them.
    pub editable: bool,
    /// The instance it is bound to (its name when the connect session that made it named one,
    /// else its id); `None` for reusable (customer- or organization-scoped) connections.
    pub instance: Option<String>,
    /// When it was created: tells apart rows without a label.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// The customer-visible secret (`password`) inputs it holds a value for: an update form may
    /// leave those blank to keep them; the others (never set, or wiped by a disconnect) are
    /// required again when the definition requires them.
    pub secrets_held: BTreeSet<String>,
    /// Its customer-visible values, secrets left out (not even a "set" marker).
    pub values: BTreeMap<String, Value>,
    /// The newest [`PAGE_LOG_LINES`] log lines, newest first.
    pub logs: Vec<LogEntry>,
    /// A device-flow connection's device authorization in progress: the row shows its user
    /// code and links on every load until it is approved, refused or lapses.
    pub device: Option<DeviceAuthorizeResponse>,
}

/// What the Connect button starts: where the browser goes next.
#[derive(Debug)]
pub struct PageAuthorization {
    /// The provider's authorize URL, its state bound to the session's browser.
    pub authorize_url: String,
    /// The definition's label: "Continue to {label}".
    pub label: String,
    /// A device-flow definition's device authorization (then `authorize_url` is empty): the
    /// page shows its user code and links instead of going on to the provider.
    pub device: Option<DeviceAuthorizeResponse>,
}

/// Whether a definition's connections are made with the Connect button (an authorization by
/// the customer at the provider) rather than a form of values.
fn connected_by_button(auth: AuthKind) -> bool {
    matches!(auth, AuthKind::Oauth2AuthorizationCode | AuthKind::Oauth2DeviceCode | AuthKind::Oauth1)
}

/// The principal the page acts as: the session's customer, no roles.
fn customer(s: &ConnectSession) -> Principal {
    Principal { org: s.org.clone(), customer: Some(s.customer.clone()), roles: Vec::new() }
}

/// The inputs a customer sees and sets on the page.
fn page_inputs(def: &Definition) -> Vec<PageInput> {
    def.inputs
        .iter()
        .filter(|(_, i)| i.visibility == Visibility::Customer)
        .map(|(name, i)| PageInput {
            name: name.clone(),
            label: i.label.clone(),
            kind: i.kind,
            required: i.required,
            default: if i.kind.is_secret() { None } else { i.default.clone() },
            description: i.description.clone(),
        })
        .collect()
}

/// Whether session `s` offers connection `id`, of `scope`, bound to `instance`: a session
/// naming a connection offers that one only (its creator chose it, whatever its instance);
/// else one bound to the session's instance, or a reusable one (customer- or
/// organization-scoped, bound to no instance); a session naming no instance offers the
/// reusable ones only. The one rule of what the page lists ([`Service::connect_page`]) and acts
/// on (`offered_connection`, used by every action): a connection it does not offer is unknown
/// to the page.
fn offers(s: &ConnectSession, id: &ConnectionId, scope: Scope, instance: Option<&InstanceId>) -> bool {
    if let Some(own) = &s.connection_id {
        return own == id;
    }
    match instance {
        Some(i) => s.context.instance_id.as_ref() == Some(i),
        None => scope != Scope::Instance,
    }
}

/// The connection the page acts on: the session's when it names one (a request naming another
/// finds nothing), else the one the request names, if any.
fn target(s: &ConnectSession, requested: Option<&str>) -> Result<Option<String>> {
    match (&s.connection_id, requested.filter(|r| !r.is_empty())) {
        (Some(own), None) => Ok(Some(own.to_string())),
        (Some(own), Some(r)) if r == own.as_str() => Ok(Some(r.to_owned())),
        (Some(_), Some(_)) => Err(ServiceError::NotFound),
        (None, r) => Ok(r.map(str::to_owned)),
    }
}

impl Service {
    /// What the connect page of session `s` shows.
    ///
    /// # Errors
    /// The store's.
    pub async fn connect_page(&self, s: &ConnectSession) -> Result<ConnectPage> {
        let p = customer(s);
        let (defs, only) = match &s.connection_id {
            Some(id) => match self.visible_connection(&p, id.as_str()).await {
                Ok(c) => (vec![self.definition_of(&c).await?], Some(c.id)),
                // Deleted since: nothing to show.
                Err(ServiceError::NotFound) => (Vec::new(), None),
                Err(e) => return Err(e),
            },
            None if s.definitions.is_empty() => (self.store.list_definitions(&s.org).await?, None),
            None => {
                let mut defs = Vec::new();
                for key in &s.definitions {
                    defs.extend(self.store.get_definition(&s.org, key).await?);
                }
                (defs, None)
            }
        };
        let mut definitions = Vec::with_capacity(defs.len());
        for def in defs {
            let mut connections = Vec::new();
            for view in self.customer_connections(&p, &def.key).await? {
                if only.as_ref().is_some_and(|id| *id != view.id)
                    || !offers(s, &view.id, view.scope, view.instance_id.as_ref())
                {
                    continue;
                }
                connections.push(self.page_connection(&p, &def, view).await?);
            }
            definitions.push(PageDefinition {
                key: def.key.to_string(),
                label: def.label.clone(),
                description: def.description.clone(),
                auth: def.auth,
                oauth: connected_by_button(def.auth),
                inputs: page_inputs(&def),
                connections,
            });
        }
        Ok(ConnectPage { context: s.context.clone(), parent_origin: s.parent_origin.clone(), definitions })
    }

    /// Every connection of `definition` the customer `p` sees, newest first (every page).
    async fn customer_connections(&self, p: &Principal, definition: &DefinitionKey) -> Result<Vec<ConnectionView>> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let q = ListQuery {
                definition: Some(definition.to_string()),
                limit: Some(MAX_PAGE.to_string()),
                cursor: cursor.take(),
                ..Default::default()
            };
            let page = self.list_connections(p, &q).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    async fn page_connection(&self, p: &Principal, def: &Definition, view: ConnectionView) -> Result<PageConnection> {
        let secret = |k: &str| def.inputs.get(k).is_none_or(|i| i.kind.is_secret());
        // A secret the connection holds shows in the view as its `{"set": true}` marker.
        let (held, values): (BTreeMap<String, Value>, _) = view.values.into_iter().partition(|(k, _)| secret(k));
        let instance = view.instance_id.as_ref().map(|id| {
            let ctx = view.connect_context.as_ref().filter(|c| c.instance_id.as_ref() == Some(id));
            ctx.and_then(|c| c.instance_name.clone()).unwrap_or_else(|| id.to_string())
        });
        let logs = self.connection_logs(p, view.id.as_str(), PAGE_LOG_LINES).await?;
        Ok(PageConnection {
            id: view.id.to_string(),
            label: view.label,
            status: view.status,
            error: view.error,
            editable: view.scope != Scope::Organization,
            instance,
            created_at: view.created_at,
            secrets_held: held.into_keys().collect(),
            values,
            logs,
            // A lapsed code is not worth typing (the sweep ends it at its next poll).
            device: view.device.filter(|d| d.expires_at > self.clock.now()),
        })
    }

    /// A definition the session offers, by key.
    async fn offered_definition(&self, s: &ConnectSession, key: &str) -> Result<Definition> {
        let key = DefinitionKey::parse(key).map_err(|_| ServiceError::NotFound)?;
        if !s.allows(&key) {
            return Err(ServiceError::NotFound);
        }
        self.store.get_definition(&s.org, &key).await?.ok_or(ServiceError::NotFound)
    }

    /// A connection of `def` the session's customer sees and the session offers.
    async fn offered_connection(&self, s: &ConnectSession, id: &str, def: Option<&Definition>) -> Result<Connection> {
        let c = self.visible_connection(&customer(s), id).await?;
        let offered = match def {
            Some(def) => c.definition == def.key,
            None => s.allows(&c.definition),
        };
        if offered && offers(s, &c.id, c.scope, c.instance_id.as_ref()) { Ok(c) } else { Err(ServiceError::NotFound) }
    }

    /// A new connection of `def` for the session's customer, with the session's context: scope
    /// `instance` when the session names an instance, else `customer`.
    async fn create_for_session(
        &self,
        s: &ConnectSession,
        def: &Definition,
        values: Map<String, Value>,
    ) -> Result<ConnectionView> {
        let mut body = json!({"definition": def.key.as_str(), "values": values});
        if let Some(instance) = &s.context.instance_id {
            body["scope"] = json!("instance");
            body["instance_id"] = json!(instance.as_str());
        }
        let context = Some(s.context.clone()).filter(|c| !c.is_empty());
        self.create_connection_in(&customer(s), &body, context).await
    }

    /// The customer's pending connection of `def` that a Connect without a connection reuses
    /// (newest first), so abandoned or denied authorizations do not pile up pending
    /// connections: one the page could have created for this session, of the session's
    /// instance when it names one, else customer-scoped, with no end user.
    async fn pending_for_session(&self, s: &ConnectSession, def: &Definition) -> Result<Option<ConnectionId>> {
        let instance = s.context.instance_id.as_ref();
        let reusable = |v: &ConnectionView| {
            v.status == Status::Pending
                && v.user.is_none()
                && match instance {
                    Some(i) => v.scope == Scope::Instance && v.instance_id.as_ref() == Some(i),
                    None => v.scope == Scope::Customer,
                }
        };
        let mine = self.customer_connections(&customer(s), &def.key).await?;
        Ok(mine.into_iter().find(reusable).map(|v| v.id))
    }

    /// Writes the session's context onto `c` (one the page reconnects or updates), so the
    /// events about it from now on carry it. Nothing when the session names no context or `c`
    /// already has it.
    async fn carry_context(&self, s: &ConnectSession, c: &Connection) -> Result<()> {
        let Some(context) = Some(&s.context).filter(|ctx| !ctx.is_empty()) else {
            return Ok(());
        };
        let mut current = c.clone();
        // A few lost races (a refresh writing the same item) are retried on a fresh read.
        for _ in 0..3 {
            if current.connect_context.as_ref() == Some(context) {
                return Ok(());
            }
            let mut next = current.clone();
            next.connect_context = Some(context.clone());
            next.version = current.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict) => {
                    current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::unexpected("the connection kept changing while the connect page wrote its context"))
    }

    /// The customer-visible inputs of the form of `definition` (one the session offers that is
    /// not `oauth2_authorization_code`), in definition order: what a posted form is read by.
    ///
    /// # Errors
    /// `NotFound` for a definition the session does not offer; `Conflict` for an OAuth
    /// authorization-code definition (connected with the Connect button).
    pub async fn connect_form_inputs(&self, s: &ConnectSession, definition: &str) -> Result<Vec<PageInput>> {
        let def = self.offered_definition(s, definition).await?;
        if connected_by_button(def.auth) {
            return Err(ServiceError::Conflict("OAuth definitions are connected with the Connect button"));
        }
        Ok(page_inputs(&def))
    }

    /// The form of a definition that is not `oauth2_authorization_code`: creates a connection
    /// with `values` (the JSON values the API takes, by input name), or, naming one (or when the
    /// session names one), PATCHes that connection's values: same id, values not sent are kept,
    /// and a red or disconnected connection becomes `configured` again (as the API's PATCH).
    ///
    /// # Errors
    /// `NotFound` for a definition or connection the session does not offer; `Conflict` for an
    /// OAuth authorization-code definition; those of create and PATCH: `Invalid` naming
    /// `values.<input>`, `CredentialsRejected`, `VerificationUnavailable`...
    pub async fn connect_with_values(
        &self,
        s: &ConnectSession,
        definition: &str,
        connection_id: Option<&str>,
        values: Map<String, Value>,
    ) -> Result<ConnectionView> {
        let def = self.offered_definition(s, definition).await?;
        if connected_by_button(def.auth) {
            return Err(ServiceError::Conflict("OAuth definitions are connected with the Connect button"));
        }
        match target(s, connection_id)? {
            Some(id) => {
                let c = self.offered_connection(s, &id, Some(&def)).await?;
                self.carry_context(s, &c).await?;
                self.update_connection(&customer(s), c.id.as_str(), &json!({"values": values}), None).await
            }
            None => self.create_for_session(s, &def, values).await,
        }
    }

    /// The Connect button of an `oauth2_authorization_code` definition: reconnects in place the
    /// connection the request or the session names, else the customer's pending one of `def`
    /// (an earlier Connect abandoned or denied), else creates a pending connection; the session's
    /// context is written onto a connection it did not create. Then an authorize URL whose state
    /// is bound to this browser (the session's cookie), or for an `oauth2_device_code` definition
    /// a device authorization whose code and links the page shows.
    ///
    /// # Errors
    /// `NotFound` for a definition or connection the session does not offer; `Conflict` for
    /// another kind of definition; those of authorize.
    pub async fn connect_authorize(
        &self,
        s: &ConnectSession,
        definition: &str,
        connection_id: Option<&str>,
        public_url: Option<&str>,
    ) -> Result<PageAuthorization> {
        let def = self.offered_definition(s, definition).await?;
        if !connected_by_button(def.auth) {
            return Err(ServiceError::Conflict("only OAuth definitions are authorized"));
        }
        let device = def.auth == AuthKind::Oauth2DeviceCode;
        let hash = s.browser_hash.clone().ok_or(ServiceError::NotFound)?;
        if public_url.is_none() && !device {
            // Before a pending connection is created that could never be authorized.
            return Err(ServiceError::unexpected("no public URL: no OAuth redirect URI for the connect page"));
        }
        let existing = match target(s, connection_id)? {
            Some(id) => Some(id),
            None => self.pending_for_session(s, &def).await?.map(|id| id.to_string()),
        };
        let id: ConnectionId = match existing {
            Some(id) => {
                let c = self.offered_connection(s, &id, Some(&def)).await?;
                self.carry_context(s, &c).await?;
                c.id
            }
            None => self.create_for_session(s, &def, Map::new()).await?.id,
        };
        if device {
            // Nothing comes back to this browser: the customer approves the code anywhere, the
            // sweep polls, and the page shows the status once polled. A code still valid is
            // shown again (the customer may have typed it already); only a lapsed one is renewed.
            if let Some(shown) = self.device_in_progress(s, &id).await? {
                return Ok(PageAuthorization { authorize_url: String::new(), label: def.label, device: Some(shown) });
            }
            let started = self.authorize_device(&customer(s), id.as_str()).await?;
            return Ok(PageAuthorization { authorize_url: String::new(), label: def.label, device: Some(started) });
        }
        let binding = BrowserBinding { session: s.id.clone(), hash };
        let started = self.authorize_bound(&customer(s), id.as_str(), public_url, Some(binding)).await?;
        Ok(PageAuthorization { authorize_url: started.authorize_url, label: def.label, device: None })
    }

    /// Connection `id`'s device authorization, when one is in progress and its code has not
    /// lapsed yet (the sweep ends a lapsed one at its next poll).
    async fn device_in_progress(
        &self,
        s: &ConnectSession,
        id: &ConnectionId,
    ) -> Result<Option<DeviceAuthorizeResponse>> {
        let c = self.store.get_connection(&s.org, id).await?.ok_or(ServiceError::NotFound)?;
        let now = self.clock.now();
        Ok(c.device.as_ref().filter(|d| d.expires_at > now).map(DeviceAuthorizeResponse::from))
    }

    /// The Disconnect button: the API's disconnect, as the customer.
    ///
    /// # Errors
    /// `NotFound` for a connection the session does not offer; `Forbidden` for an
    /// organization-scoped one.
    pub async fn connect_disconnect(&self, s: &ConnectSession, connection_id: &str) -> Result<ConnectionView> {
        let id = target(s, Some(connection_id))?.ok_or(ServiceError::NotFound)?;
        let c = self.offered_connection(s, &id, None).await?;
        self.disconnect(&customer(s), c.id.as_str()).await
    }
}
