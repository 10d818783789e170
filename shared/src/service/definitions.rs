use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::retry::Races;
use super::{DefinitionView, Result, Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::validate::{self, Values};
use crate::domain::{Connection, Definition, DefinitionKey, FieldError, LogType, Principal, Refusal};
use crate::ports::{ConnectionFilter, Expect, StoreError};
use crate::provider::destination::check_literal_destination;

fn require_organization(p: &Principal) -> Result<()> {
    if p.is_organization() {
        Ok(())
    } else {
        Err(ServiceError::Forbidden("only organization users manage definitions"))
    }
}

impl Service {
    /// Creates or replaces a definition; `true` when it was created.
    pub async fn put_definition(&self, p: &Principal, key: &str, body: &Value) -> Result<(DefinitionView, bool)> {
        require_organization(p)?;
        let key = DefinitionKey::parse(key).map_err(|e| ServiceError::invalid("key", &e.to_string()))?;
        let spec = validate::definition_from_json(key.as_str(), body, crate::catalog::provider)
            .map_err(ServiceError::Invalid)?;
        self.check_endpoints(spec.inputs.iter().map(|(k, i)| (k, i.default.as_ref())), "inputs", ".default")?;
        self.check_verify_destination(spec.verify.as_ref())?;
        let existing = self.store.get_definition(&p.org, &key).await?;

        let mut secrets = spec.secret_defaults;
        if !spec.keep_secret_defaults.is_empty()
            && let Some(old) = &existing
        {
            let old_secrets = self.definition_secrets(old).await?;
            for name in &spec.keep_secret_defaults {
                if let Some(v) = old_secrets.get(name) {
                    secrets.insert(name.clone(), v.clone());
                }
            }
        }
        if spec.keep_secret_defaults.contains(validate::PRIVATE_KEY_INPUT)
            && let Some(kept) = secrets.get(validate::PRIVATE_KEY_INPUT)
            && spec.auth == crate::domain::AuthKind::Oauth2JwtBearer
        {
            // The stored key was checked for the algorithm of its day; a new one must fit it too.
            let errors = super::oauth::jwt_bearer_kept_key_errors(&spec.inputs, kept);
            if !errors.is_empty() {
                return Err(ServiceError::Invalid(errors));
            }
        }
        let ctx = EncryptionContext::definition(&p.org, &key);
        let sealed = if secrets.is_empty() { None } else { Some(self.envelope.seal_secrets(&ctx, &secrets).await?) };

        let now = self.clock.now();
        let (expect, version, created_at) = match &existing {
            Some(d) => (Expect::Version(d.version), d.version + 1, d.created_at),
            None => (Expect::Absent, 1, now),
        };
        let def = Definition {
            org: p.org.clone(),
            key,
            label: spec.label,
            description: spec.description,
            auth: spec.auth,
            provider: spec.provider,
            inputs: spec.inputs,
            redirects: spec.redirects,
            oauth: spec.oauth,
            verify: spec.verify,
            secret_default_names: secrets.keys().cloned().collect(),
            secret_defaults: sealed,
            version,
            created_at,
            updated_at: now,
        };
        match self.store.put_definition(&def, expect).await {
            Ok(()) => {
                if let Some(old) = &existing {
                    self.seal_new_password_inputs(old, &def).await;
                    if def.verify.is_some() && old.verify != def.verify {
                        self.schedule_verification(&def).await;
                    }
                    if self.client_settings_changed(old, &def).await {
                        self.rearm_client_rejected(&def).await;
                    }
                }
                Ok((DefinitionView::from(&def), existing.is_none()))
            }
            Err(StoreError::Conflict) => Err(ServiceError::Conflict("the definition was changed concurrently; retry")),
            Err(e) => Err(e.into()),
        }
    }

    /// Provider endpoints Latchkey will call must pass the outbound policy (public addresses;
    /// loopback only where allowed) whoever set them: literal addresses are checked when they
    /// are written, as early as possible, and every address again at each call. `values` are
    /// (input name, value) pairs; errors name `{prefix}.{name}{suffix}`.
    pub(crate) fn check_endpoints<'a>(
        &self,
        values: impl Iterator<Item = (&'a String, Option<&'a Value>)>,
        prefix: &str,
        suffix: &str,
    ) -> Result<()> {
        let mut errors = Vec::new();
        for (name, value) in values.filter(|(n, _)| {
            ["tokenUrl", "revokeUrl", "deviceAuthorizationUrl", "requestTokenUrl", "accessTokenUrl"]
                .contains(&n.as_str())
        }) {
            let Some(url) = value.and_then(Value::as_str).and_then(|u| url::Url::parse(u).ok()) else {
                continue;
            };
            if let Err(msg) = check_literal_destination(&url, self.allow_loopback_providers()) {
                errors.push(FieldError::new(format!("{prefix}.{name}{suffix}"), msg.to_string()));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ServiceError::Invalid(errors)) }
    }

    pub async fn get_definition(&self, p: &Principal, key: &str) -> Result<DefinitionView> {
        require_organization(p)?;
        let key = DefinitionKey::parse(key).map_err(|_| ServiceError::NotFound)?;
        let def = self.store.get_definition(&p.org, &key).await?.ok_or(ServiceError::NotFound)?;
        Ok(DefinitionView::from(&def))
    }

    pub async fn list_definitions(&self, p: &Principal) -> Result<Vec<DefinitionView>> {
        require_organization(p)?;
        Ok(self.store.list_definitions(&p.org).await?.iter().map(DefinitionView::from).collect())
    }

    pub async fn delete_definition(&self, p: &Principal, key: &str) -> Result<()> {
        require_organization(p)?;
        let key = DefinitionKey::parse(key).map_err(|_| ServiceError::NotFound)?;
        match self.store.delete_definition(&p.org, &key).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServiceError::NotFound),
            Err(StoreError::InUse) => {
                Err(ServiceError::Conflict("the definition is used by connections; delete them first"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a definition change turned inputs into `password` ones, seals the plain values
    /// connections stored under those names. Reads already hide such values (they judge by the
    /// current definition) and a PATCH seals them too; this keeps them off the disk in clear.
    /// A failure is logged: the definition change itself has succeeded.
    async fn seal_new_password_inputs(&self, old: &Definition, new: &Definition) {
        let names: BTreeSet<&String> = new
            .inputs
            .iter()
            .filter(|(k, i)| i.kind.is_secret() && !old.inputs.get(*k).is_some_and(|o| o.kind.is_secret()))
            .map(|(k, _)| k)
            .collect();
        if names.is_empty() {
            return;
        }
        let filter = ConnectionFilter { definition: Some(new.key.clone()), ..Default::default() };
        let mut all = std::pin::pin!(super::walk::connections(self.store.as_ref(), &new.org, &filter));
        while let Some(found) = all.next().await {
            let c = match found {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(org = %new.org, definition = %new.key, error = %e, "sealing new password inputs failed");
                    return;
                }
            };
            if !c.values.keys().any(|k| names.contains(k)) {
                continue;
            }
            let (org, id) = (c.org.clone(), c.id.clone());
            if let Err(e) = self.seal_plain_secrets(c, new).await {
                tracing::warn!(org = %org, connection_id = %id, error = %e, "sealing new password inputs failed");
            }
        }
    }

    /// Whether a definition change touched the OAuth app's client settings (client id or
    /// secret, token endpoint, client authentication; for JWT bearer the assertion's settings
    /// and private key).
    async fn client_settings_changed(&self, old: &Definition, new: &Definition) -> bool {
        let plain = |d: &Definition, n: &str| d.inputs.get(n).and_then(|i| i.default.clone());
        let settings = ["clientId", "tokenUrl", "clientAuth", "issuer", "subject", "audience", "algorithm", "keyId"];
        if settings.iter().any(|n| plain(old, n) != plain(new, n)) {
            return true;
        }
        match (self.definition_secrets(old).await, self.definition_secrets(new).await) {
            (Ok(o), Ok(n)) => ["clientSecret", "privateKey"].iter().any(|name| {
                o.get(*name).map(|s| s.expose_secret().to_owned()) != n.get(*name).map(|s| s.expose_secret().to_owned())
            }),
            _ => true,
        }
    }

    /// After the organization fixed its client settings, connections red `client_rejected`
    /// (SPEC section 8: the organization's to fix, not the customer's) get their refreshes
    /// back: yellow again, due now. Best effort, like sealing new password inputs.
    async fn rearm_client_rejected(&self, def: &Definition) {
        let filter = ConnectionFilter {
            definition: Some(def.key.clone()),
            status: Some(crate::domain::Status::Error),
            ..Default::default()
        };
        let rejected = |c: &Connection| {
            c.status == crate::domain::Status::Error
                && c.error.as_ref().is_some_and(|e| e.code == Refusal::ClientRejected.code())
        };
        let mut all = std::pin::pin!(super::walk::connections(self.store.as_ref(), &def.org, &filter));
        while let Some(found) = all.next().await {
            let c = match found {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(org = %def.org, definition = %def.key, error = %e, "re-arming connections failed");
                    return;
                }
            };
            if !rejected(&c) {
                continue;
            }
            let mut next = c.clone();
            next.status = crate::domain::Status::Configured;
            next.error = None;
            next.refresh.failures = 0;
            next.refresh.due_at = c.oauth.as_ref().filter(|t| t.has_refresh_token).map(|_| self.due_now());
            next.version = c.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, c.version).await {
                Ok(()) => {
                    self.log(&next, LogType::Updated, "the organization updated the client settings: refreshes resume")
                        .await;
                }
                // Changed meanwhile: whatever happened to it is newer than this.
                Err(StoreError::Conflict) => {}
                Err(e) => {
                    tracing::warn!(org = %c.org, connection_id = %c.id, error = %e, "re-arming a connection failed")
                }
            }
        }
    }

    async fn seal_plain_secrets(&self, mut current: Connection, def: &Definition) -> Result<()> {
        let mut races = Races::default();
        loop {
            let mut values = Values { plain: current.values.clone(), secret: self.open_secrets(&current).await? };
            if !values.seal_secret_inputs(&def.inputs) {
                return Ok(());
            }
            let mut next = current.clone();
            next.secret_names = values.secret_names();
            next.values = values.plain;
            next.secrets = self.seal_secrets(&next, &values.secret).await?;
            next.version = current.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => {
                    self.log(&next, LogType::Updated, "values of inputs that became passwords were sealed").await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            match self.store.get_connection(&current.org, &current.id).await? {
                Some(c) => current = c,
                None => return Ok(()),
            }
        }
    }

    /// The definition's unsealed `password` defaults.
    pub(crate) async fn definition_secrets(&self, def: &Definition) -> Result<BTreeMap<String, SecretString>> {
        let Some(sealed) = &def.secret_defaults else {
            return Ok(BTreeMap::new());
        };
        Ok(self.envelope.open_secrets(&EncryptionContext::definition(&def.org, &def.key), sealed).await?)
    }

    /// A definition's defaults, plain and secret, as connection values start from.
    pub(crate) async fn definition_defaults(&self, def: &Definition) -> Result<Values> {
        Ok(Values {
            plain: def.inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect(),
            secret: self.definition_secrets(def).await?,
        })
    }
}
