//! The built-in provider catalog (`shared/providers.json`): OAuth 2.0 endpoints and quirks of
//! common apps, so that a definition can say `"provider": "slack"` instead of spelling them out.
//! Facts come from each provider's public documentation (`docs_url`).

use std::sync::OnceLock;

use serde::Deserialize;

pub use crate::domain::{ExpiresIn, Provider, TokenResponse};

/// The catalog file, embedded at build time.
pub const PROVIDERS_JSON: &str = include_str!("../providers.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    providers: Vec<Provider>,
}

/// Every provider, in file order. The file is part of the build; the tests below check it.
pub fn providers() -> &'static [Provider] {
    static CATALOG: OnceLock<Vec<Provider>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        serde_json::from_str::<CatalogFile>(PROVIDERS_JSON).expect("shared/providers.json is a valid catalog").providers
    })
}

/// The provider of that key.
pub fn provider(key: &str) -> Option<&'static Provider> {
    providers().iter().find(|p| p.key == key)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::AuthKind;
    use crate::domain::validate::{CLIENT_AUTH_METHODS, check_secure_url};

    /// A URL with its `{param}` placeholders filled by a harmless sample.
    fn filled(url: &str, params: &[String]) -> String {
        params.iter().fold(url.to_owned(), |u, p| u.replace(&format!("{{{p}}}"), "example"))
    }

    #[test]
    fn the_catalog_is_well_formed() {
        let all = providers();
        assert!(all.len() >= 20, "at least 20 providers, found {}", all.len());
        let keys: BTreeSet<_> = all.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys.len(), all.len(), "keys are unique");
        for p in all {
            assert!(crate::domain::DefinitionKey::parse(&p.key).is_ok(), "{}: key", p.key);
            assert!(p.auth.is_oauth(), "{}: auth", p.key);
            assert_eq!(
                p.auth == AuthKind::Oauth2AuthorizationCode,
                p.authorize_url.is_some(),
                "{}: authorize_url",
                p.key
            );
            for url in
                [p.authorize_url.as_deref(), Some(p.token_url.as_str()), p.revoke_url.as_deref()].into_iter().flatten()
            {
                let u = filled(url, &p.url_params);
                assert!(!u.contains('{'), "{}: every placeholder is in url_params: {url}", p.key);
                let parsed = check_secure_url(&u).unwrap_or_else(|e| panic!("{}: {url}: {e}", p.key));
                assert_eq!(parsed.scheme(), "https", "{}: {url}", p.key);
            }
            assert!(CLIENT_AUTH_METHODS.contains(&p.client_auth.as_str()), "{}: client_auth", p.key);
            assert!(p.docs_url.starts_with("https://"), "{}: docs_url", p.key);
            let block = serde_json::json!({"auth": p.auth, "provider": p.key, "oauth": p.oauth});
            if let Err(e) = crate::domain::validate::definition_from_json("x", &block, provider) {
                panic!("{}: the oauth block is one a definition could carry: {e:?}", p.key);
            }
        }
        for needed in [
            "slack",
            "slack-user",
            "google",
            "microsoft",
            "salesforce",
            "hubspot",
            "github",
            "quickbooks",
            "xero",
            "strava",
            "zoho",
            "zendesk",
            "twitch",
        ] {
            assert!(provider(needed).is_some(), "{needed} is in the catalog");
        }
    }
}
