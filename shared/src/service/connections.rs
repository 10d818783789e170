use std::collections::{BTreeMap, BTreeSet};

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::retry::Races;
use super::{ConnectionPage, ConnectionView, Result, Service, ServiceError};
use crate::crypto::{EncryptionContext, Sealed};
use crate::domain::validate::{self, FieldError, PRIVATE_KEY_INPUT, Setter, Values};
use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, Event, EventType, InstanceId, LogEntry,
    LogType, Principal, Scope, Status, TagFilter, tags,
};
use crate::ports::{ConnectionFilter, StoreError};

mod import;

/// Largest page of a listing; the default is 50.
pub const MAX_PAGE: usize = 200;
const DEFAULT_PAGE: usize = 50;

/// Query of `GET /v1/connections`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    pub customer: Option<String>,
    pub definition: Option<String>,
    pub status: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `user=`: only the connections of this end user.
    pub user: Option<String>,
    /// Every `tag=key:value` parameter, in order (repeatable, so not read by serde: the HTTP
    /// layer fills it from the raw query).
    #[serde(skip)]
    pub tag: Vec<String>,
}

/// The inputs connections of `def` read from it at each use (SPEC section 8).
fn inherited_inputs(def: &Definition) -> BTreeSet<String> {
    def.inputs.keys().filter(|k| def.by_reference(k)).cloned().collect()
}

fn setter(p: &Principal) -> Setter {
    if p.is_organization() { Setter::Organization } else { Setter::Customer }
}

/// Whether `p` may see `c` at all (the store already scoped it to the organization).
fn visible(p: &Principal, c: &Connection) -> bool {
    c.org == p.org && (p.customer.is_none() || p.customer == c.customer)
}

/// Whether `p` may change `c`: customers never edit organization-scoped connections.
pub(crate) fn require_manage(p: &Principal, c: &Connection) -> Result<()> {
    if p.is_organization() || c.scope != Scope::Organization {
        Ok(())
    } else {
        Err(ServiceError::Forbidden("organization-scoped connections are managed by the organization"))
    }
}

fn take_str<'a>(obj: &'a Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(key, "must be a string"));
            None
        }
    }
}

fn label_ok(label: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let l = label?;
    if l.chars().count() > 200 {
        errors.push(FieldError::new("label", "must be at most 200 characters"));
    }
    Some(l.to_owned())
}

impl Service {
    /// Loads a connection `p` may see; anything else is indistinguishable from absent.
    pub(crate) async fn visible_connection(&self, p: &Principal, id: &str) -> Result<Connection> {
        let id = ConnectionId::parse(id).map_err(|_| ServiceError::NotFound)?;
        let c = self.store.get_connection(&p.org, &id).await?.ok_or(ServiceError::NotFound)?;
        if visible(p, &c) { Ok(c) } else { Err(ServiceError::NotFound) }
    }

    pub(crate) async fn definition_of(&self, c: &Connection) -> Result<Definition> {
        // Definitions cannot be deleted while connections use them, so this only fails on a
        // store error or a corrupted record.
        self.store.get_definition(&c.org, &c.definition).await?.ok_or(ServiceError::NotFound)
    }

    /// The view of `c` for `p`, judged by its definition (read unless given).
    async fn view(&self, p: &Principal, c: &Connection, def: Option<&Definition>) -> Result<ConnectionView> {
        let loaded;
        let def = match def {
            Some(d) => d,
            None => {
                loaded = self.definition_of(c).await?;
                &loaded
            }
        };
        Ok(ConnectionView::of(c, p, def))
    }

    pub(crate) async fn seal_secrets(
        &self,
        c: &Connection,
        secret: &BTreeMap<String, SecretString>,
    ) -> Result<Option<Sealed>> {
        if secret.is_empty() {
            return Ok(None);
        }
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        Ok(Some(self.envelope.seal_secrets(&ctx, secret).await?))
    }

    pub(crate) async fn open_secrets(&self, c: &Connection) -> Result<BTreeMap<String, SecretString>> {
        let Some(sealed) = &c.secrets else {
            return Ok(BTreeMap::new());
        };
        Ok(self.envelope.open_secrets(&EncryptionContext::connection(&c.org, &c.id), sealed).await?)
    }

    /// `POST /v1/connections`.
    pub async fn create_connection(&self, p: &Principal, body: &Value) -> Result<ConnectionView> {
        self.create_connection_in(p, body, None).await
    }

    /// `POST /v1/connections`, for the connect page with its session's `context` (kept on the
    /// connection, carried by its events).
    pub(crate) async fn create_connection_in(
        &self,
        p: &Principal,
        body: &Value,
        context: Option<crate::domain::ConnectContext>,
    ) -> Result<ConnectionView> {
        let Some(obj) = body.as_object() else {
            return Err(ServiceError::invalid("", "must be a JSON object"));
        };
        let mut errors = Vec::new();
        for k in obj.keys() {
            if !["definition", "scope", "customer", "instance_id", "label", "values", "tokens", "tags", "user"]
                .contains(&k.as_str())
            {
                errors.push(FieldError::new(k, "unknown field"));
            }
        }
        let definition = match take_str(obj, "definition", &mut errors) {
            Some(s) => {
                DefinitionKey::parse(s).map_err(|e| errors.push(FieldError::new("definition", e.to_string()))).ok()
            }
            None => {
                errors.push(FieldError::new("definition", "is required"));
                None
            }
        };
        let instance_id = take_str(obj, "instance_id", &mut errors).and_then(|s| {
            InstanceId::parse(s).map_err(|e| errors.push(FieldError::new("instance_id", e.to_string()))).ok()
        });
        let scope = match take_str(obj, "scope", &mut errors) {
            Some(s) => Scope::parse(s).or_else(|| {
                errors.push(FieldError::new("scope", "must be one of instance, customer, organization"));
                None
            }),
            None if instance_id.is_some() => Some(Scope::Instance),
            None => Some(Scope::Customer),
        };
        let named_customer = take_str(obj, "customer", &mut errors).and_then(|s| {
            CustomerId::parse(s).map_err(|e| errors.push(FieldError::new("customer", e.to_string()))).ok()
        });
        let label = label_ok(take_str(obj, "label", &mut errors), &mut errors);
        let tags = tags::parse(obj.get("tags")).map_err(|e| errors.extend(e)).unwrap_or_default();
        let imported = self.import_request(p, obj, &mut errors)?;

        let customer = match &p.customer {
            Some(own) => {
                if named_customer.as_ref().is_some_and(|c| c != own) {
                    return Err(ServiceError::Forbidden("customers can only create their own connections"));
                }
                if scope == Some(Scope::Organization) {
                    return Err(ServiceError::Forbidden(
                        "organization-scoped connections are managed by the organization",
                    ));
                }
                Some(own.clone())
            }
            None => named_customer,
        };
        match scope {
            Some(Scope::Instance | Scope::Customer) if customer.is_none() => {
                errors.push(FieldError::new("customer", "is required for instance and customer scope"));
            }
            _ => {}
        }
        match (scope, &instance_id) {
            (Some(Scope::Instance), None) => {
                errors.push(FieldError::new("instance_id", "is required for instance scope"))
            }
            (Some(Scope::Customer | Scope::Organization), Some(_)) => {
                errors.push(FieldError::new("instance_id", "is only for instance scope"));
            }
            _ => {}
        }
        let user = super::selector::user_of(obj, customer.as_ref(), &mut errors);

        let def = match &definition {
            Some(key) => self.store.get_definition(&p.org, key).await?,
            None => None,
        };
        if definition.is_some() && def.is_none() {
            errors.push(FieldError::new("definition", "no such definition"));
        }
        let defaults = match &def {
            Some(def) => Some(self.definition_defaults(def).await?),
            None => None,
        };
        let values = match (&def, &defaults) {
            (Some(def), Some(defaults)) => {
                let inherited = inherited_inputs(def);
                // App settings are read from the definition when used, never copied.
                let mut base = defaults.clone();
                for name in &inherited {
                    base.plain.remove(name);
                    base.secret.remove(name);
                }
                let changes = obj.get("values").unwrap_or(&Value::Null);
                validate::apply_values(&def.inputs, defaults, &inherited, base, changes, setter(p))
                    .map_err(|e| errors.extend(e))
                    .ok()
            }
            _ => None,
        };
        if let Some(def) = &def {
            import::check_importable(def, obj, &mut errors);
            if let (Some(values), Some(defaults)) = (&values, &defaults) {
                let changes = obj.get("values").and_then(|v| v.get(PRIVATE_KEY_INPUT));
                let key_written = changes.is_some_and(|v| !v.is_null());
                errors.extend(super::oauth::jwt_bearer_value_errors(def, values, defaults, key_written));
                errors.extend(super::oauth::oauth1_value_errors(def, values));
            }
        }
        let (Some(def), Some(scope), Some(values), true) = (def, scope, values, errors.is_empty()) else {
            return Err(ServiceError::Invalid(errors));
        };
        self.check_endpoints(values.plain.iter().map(|(k, v)| (k, Some(v))), "values", "")?;

        let now = self.clock.now();
        // Client credentials need no user: the token is fetched at the first lookup.
        let status = match def.auth {
            AuthKind::Oauth2AuthorizationCode | AuthKind::Oauth2DeviceCode | AuthKind::Oauth1 => Status::Pending,
            AuthKind::Oauth2ClientCredentials
            | AuthKind::Oauth2JwtBearer
            | AuthKind::ApiKey
            | AuthKind::Basic
            | AuthKind::Custom => Status::Configured,
        };
        let mut conn = Connection {
            id: ConnectionId::generate(),
            org: p.org.clone(),
            customer,
            scope,
            instance_id,
            user,
            definition: def.key.clone(),
            label,
            status,
            error: None,
            secret_names: values.secret_names(),
            values: values.plain.clone(),
            secrets: None,
            auth: Some(def.auth),
            oauth: None,
            device: None,
            tags,
            captured: Default::default(),
            verify: Default::default(),
            refresh: Default::default(),
            generation: 0,
            connect_context: context,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        // Refused credentials are never stored (SPEC section 10).
        self.verify_new_values(&def, &mut conn, &values).await?;
        conn.secrets = self.seal_secrets(&conn, &values.secret).await?;
        if let Some(tokens) = imported {
            conn = self.with_imported_tokens(&def, conn, tokens).await?;
        }
        match self.store.insert_connection(&conn).await {
            Ok(()) => {}
            Err(StoreError::DefinitionMissing) => {
                return Err(ServiceError::invalid("definition", "no such definition"));
            }
            Err(e) => return Err(e.into()),
        }
        if conn.oauth.is_some() {
            self.announce_import(&conn).await;
            return self.view(p, &conn, Some(&def)).await;
        }
        let who = if p.is_organization() { "the organization" } else { "the customer" };
        self.log(&conn, LogType::Created, format!("connection created by {who}")).await;
        self.log_connect_time_verification(None, &conn).await;
        self.emit(Event::about(EventType::ConnectionCreated, &conn)).await;
        // JWT bearer: no user to wait for, the first token is obtained now.
        let conn = self.obtain_at_connect(conn).await;
        self.view(p, &conn, Some(&def)).await
    }

    /// `GET /v1/connections/{id}`.
    pub async fn get_connection(&self, p: &Principal, id: &str) -> Result<ConnectionView> {
        let c = self.visible_connection(p, id).await?;
        self.view(p, &c, None).await
    }

    /// `GET /v1/connections`: customers only ever list their own.
    pub async fn list_connections(&self, p: &Principal, q: &ListQuery) -> Result<ConnectionPage> {
        let mut errors = Vec::new();
        let mut filter = ConnectionFilter::default();
        if let Some(s) = q.customer.as_deref().filter(|s| !s.is_empty()) {
            match CustomerId::parse(s) {
                Ok(c) => filter.customer = Some(c),
                Err(e) => errors.push(FieldError::new("customer", e.to_string())),
            }
        }
        if let Some(s) = q.definition.as_deref().filter(|s| !s.is_empty()) {
            match DefinitionKey::parse(s) {
                Ok(d) => filter.definition = Some(d),
                Err(e) => errors.push(FieldError::new("definition", e.to_string())),
            }
        }
        if let Some(s) = q.status.as_deref().filter(|s| !s.is_empty()) {
            match Status::parse(s) {
                Some(st) => filter.status = Some(st),
                None => errors
                    .push(FieldError::new("status", "must be one of pending, configured, active, error, disconnected")),
            }
        }
        let limit = match q.limit.as_deref() {
            None | Some("") => DEFAULT_PAGE,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new("limit", format!("must be an integer from 1 to {MAX_PAGE}")));
                    DEFAULT_PAGE
                }
            },
        };
        let cursor = match q.cursor.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => match ConnectionId::parse(s) {
                Ok(c) => Some(c),
                Err(_) => {
                    errors.push(FieldError::new("cursor", "is not a cursor returned by this API"));
                    None
                }
            },
            None => None,
        };
        if let Some(s) = q.user.as_deref().filter(|s| !s.is_empty()) {
            match crate::domain::UserId::parse(s) {
                Ok(u) => filter.user = Some(u),
                Err(e) => errors.push(FieldError::new("user", e.to_string())),
            }
        }
        for s in &q.tag {
            match TagFilter::parse(s) {
                Ok(f) => filter.tags.push(f),
                Err(e) => errors.push(FieldError::new("tag", e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        if let Some(own) = &p.customer {
            if filter.customer.as_ref().is_some_and(|c| c != own) {
                // Another customer's connections do not exist for this caller.
                return Ok(ConnectionPage { items: Vec::new(), next_cursor: None });
            }
            filter.customer = Some(own.clone());
        }
        let page = self.store.list_connections(&p.org, &filter, limit, cursor.as_ref()).await?;
        let mut items = Vec::with_capacity(page.items.len());
        let mut defs: BTreeMap<DefinitionKey, Definition> = BTreeMap::new();
        for c in &page.items {
            if !defs.contains_key(&c.definition) {
                defs.insert(c.definition.clone(), self.definition_of(c).await?);
            }
            items.push(self.view(p, c, defs.get(&c.definition)).await?);
        }
        Ok(ConnectionPage { items, next_cursor: page.next.map(|c| c.to_string()) })
    }

    /// `PATCH /v1/connections/{id}`: `label`, `values` merged (`null` resets to the default) and
    /// `tags` merged (`null` removes a tag).
    pub async fn update_connection(
        &self,
        p: &Principal,
        id: &str,
        body: &Value,
        if_match: Option<u64>,
    ) -> Result<ConnectionView> {
        let Some(obj) = body.as_object() else {
            return Err(ServiceError::invalid("", "must be a JSON object"));
        };
        let mut errors = Vec::new();
        for k in obj.keys().filter(|k| !["label", "values", "tags"].contains(&k.as_str())) {
            errors.push(FieldError::new(k, "unknown field"));
        }
        let label = label_ok(take_str(obj, "label", &mut errors), &mut errors);
        let clear_label = obj.get("label").is_some_and(Value::is_null);
        // The count of tags is checked against the current ones, below.
        let tag_changes = tags::TagChanges::parse(obj.get("tags")).map_err(|e| errors.extend(e)).unwrap_or_default();
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let changes = obj.get("values").unwrap_or(&Value::Null);

        let mut races = Races::default();
        loop {
            let current = self.visible_connection(p, id).await?;
            require_manage(p, &current)?;
            if if_match.is_some_and(|v| v != current.version) {
                return Err(ServiceError::PreconditionFailed);
            }
            let def = self.definition_of(&current).await?;
            let mut next = current.clone();
            if label.is_some() || clear_label {
                next.label = label.clone();
            }
            next.tags = tag_changes.apply(&current.tags).map_err(ServiceError::Invalid)?;
            let values_changed = !changes.is_null();
            if values_changed {
                let defaults = self.definition_defaults(&def).await?;
                let base = Values { plain: current.values.clone(), secret: self.open_secrets(&current).await? };
                let values =
                    validate::apply_values(&def.inputs, &defaults, &inherited_inputs(&def), base, changes, setter(p))
                        .map_err(ServiceError::Invalid)?;
                let key_written = changes.get(PRIVATE_KEY_INPUT).is_some_and(|v| !v.is_null());
                let mut key_errors = super::oauth::jwt_bearer_value_errors(&def, &values, &defaults, key_written);
                key_errors.extend(super::oauth::oauth1_value_errors(&def, &values));
                if !key_errors.is_empty() {
                    return Err(ServiceError::Invalid(key_errors));
                }
                self.check_endpoints(values.plain.iter().map(|(k, v)| (k, Some(v))), "values", "")?;
                // Refused credentials never replace the stored ones (SPEC section 10).
                self.verify_new_values(&def, &mut next, &values).await?;
                next.secret_names = values.secret_names();
                next.values = values.plain;
                next.secrets = self.seal_secrets(&next, &values.secret).await?;
                // New credentials get a new chance: a red connection turns yellow again, and so
                // does a disconnected one that needs no authorization.
                // An OAuth connection whose grant is dead (refused, expired, lacking scopes, bound
                // elsewhere) needs a new authorization, not new values.
                let fixable_red = next.status == Status::Error
                    && (!next.auth.is_some_and(AuthKind::has_app_settings)
                        || next.error.as_ref().is_none_or(|e| {
                            e.code == "reported" || e.code == crate::domain::Refusal::ClientRejected.code()
                        }));
                if fixable_red || (next.status == Status::Disconnected && next.reconfigurable()) {
                    next.status = Status::Configured;
                    next.error = None;
                    // Back in the refresh index: the sweep tries the new settings soon.
                    if next.oauth.as_ref().is_some_and(|t| t.has_refresh_token) {
                        next.refresh.failures = 0;
                        next.refresh.due_at = Some(self.due_now());
                    }
                }
            }
            next.version = current.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => {
                    let what = match changes.as_object() {
                        Some(m) if !m.is_empty() => {
                            format!("values updated: {}", m.keys().cloned().collect::<Vec<_>>().join(", "))
                        }
                        _ => "connection updated".to_owned(),
                    };
                    self.log(&next, LogType::Updated, what).await;
                    self.log_connect_time_verification(Some(&current), &next).await;
                    self.emit(Event::about(EventType::ConnectionUpdated, &next)).await;
                    return self.view(p, &next, Some(&def)).await;
                }
                // With If-Match the caller asked for exactly the version it read.
                Err(StoreError::Conflict) if if_match.is_some() => return Err(ServiceError::PreconditionFailed),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `DELETE /v1/connections/{id}`: like disconnect (tokens revoked at the provider,
    /// asynchronously), and the connection is gone.
    pub async fn delete_connection(&self, p: &Principal, id: &str) -> Result<()> {
        let c = self.visible_connection(p, id).await?;
        require_manage(p, &c)?;
        // First as a disconnect (fencing refreshes in flight, queueing the revocation), then gone.
        // Even a disconnected one: the new generation fences an authorization racing the delete.
        let stripped = self.strip_credentials(p, id).await?;
        if !self.store.delete_connection(&c.org, &c.id).await? {
            return Err(ServiceError::NotFound);
        }
        let mut gone = c.clone();
        gone.status = stripped.status;
        self.emit(Event::about(EventType::ConnectionDeleted, &gone)).await;
        Ok(())
    }

    /// `GET /v1/connections/{id}/logs`, newest first.
    pub async fn connection_logs(&self, p: &Principal, id: &str, limit: usize) -> Result<Vec<LogEntry>> {
        let c = self.visible_connection(p, id).await?;
        Ok(self.store.list_logs(&c.org, &c.id, limit.clamp(1, 1_000)).await?)
    }
}
