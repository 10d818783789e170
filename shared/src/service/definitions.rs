use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{DefinitionView, Result, Service, ServiceError};
use crate::crypto::EncryptionContext;
use crate::domain::validate::{self, Values};
use crate::domain::{Definition, DefinitionKey, Principal};
use crate::ports::{Expect, StoreError};

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
        let spec = validate::definition_from_json(key.as_str(), body).map_err(ServiceError::Invalid)?;
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
        let ctx = EncryptionContext::definition(&p.org, &key);
        let sealed = if secrets.is_empty() {
            None
        } else {
            Some(self.envelope.seal_str(&ctx, &validate::secrets_to_json(&secrets)).await?)
        };

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
            secret_default_names: secrets.keys().cloned().collect(),
            secret_defaults: sealed,
            version,
            created_at,
            updated_at: now,
        };
        match self.store.put_definition(&def, expect).await {
            Ok(()) => Ok((DefinitionView::from(&def), existing.is_none())),
            Err(StoreError::Conflict) => Err(ServiceError::Conflict("the definition was changed concurrently; retry")),
            Err(e) => Err(e.into()),
        }
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

    /// The definition's unsealed `password` defaults.
    pub(crate) async fn definition_secrets(&self, def: &Definition) -> Result<BTreeMap<String, SecretString>> {
        let Some(sealed) = &def.secret_defaults else {
            return Ok(BTreeMap::new());
        };
        let json = self.envelope.open_str(&EncryptionContext::definition(&def.org, &def.key), sealed).await?;
        validate::secrets_from_json(json.expose_secret())
            .ok_or(ServiceError::Crypto(crate::crypto::CryptoError::Decrypt))
    }

    /// A definition's defaults, plain and secret, as connection values start from.
    pub(crate) async fn definition_defaults(&self, def: &Definition) -> Result<Values> {
        Ok(Values {
            plain: def.inputs.iter().filter_map(|(k, i)| Some((k.clone(), i.default.clone()?))).collect(),
            secret: self.definition_secrets(def).await?,
        })
    }
}
