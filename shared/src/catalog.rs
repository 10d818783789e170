//! The built-in provider catalog (`shared/providers.json`): OAuth 2.0 endpoints and quirks of
//! common apps, and the inputs and `verify` request of API-key and basic-auth providers, so
//! that a definition can say `"provider": "slack"` (or `"openai"`) instead of spelling them
//! out. Facts come from each provider's public documentation (`docs_url`); the tests below
//! check every entry.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::domain::AuthKind;
pub use crate::domain::{ExpiresIn, Provider, ProviderInput, TokenResponse};

/// The catalog file, embedded at build time.
pub const PROVIDERS_JSON: &str = include_str!("../providers.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    providers: Vec<Provider>,
}

/// Every provider, in file order (by key). The file is part of the build; the tests below
/// check it.
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

/// The providers that authenticate with `auth` (`GET /v1/providers?auth=`), in file order.
pub fn providers_by_auth(auth: AuthKind) -> impl Iterator<Item = &'static Provider> {
    providers().iter().filter(move |p| p.auth == auth)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::domain::validate::{CLIENT_AUTH_METHODS, check_secure_url, definition_from_json};
    use crate::domain::{ACCESS_TOKEN, InputType, OAuthQuirks};

    /// A URL with its `{param}` placeholders filled by a harmless sample.
    fn filled(url: &str, params: &[String]) -> String {
        params.iter().fold(url.to_owned(), |u, p| u.replace(&format!("{{{p}}}"), "example"))
    }

    /// `url` parses as an https URL (loopback http, which the provider URL policy allows for
    /// tests, is no catalog URL).
    fn assert_https(key: &str, url: &str) {
        let parsed = check_secure_url(url).unwrap_or_else(|e| panic!("{key}: {url}: {e}"));
        assert_eq!(parsed.scheme(), "https", "{key}: {url}");
    }

    #[test]
    fn keys_are_unique_definition_keys_in_order() {
        let all = providers();
        assert!(all.len() >= 100, "at least 100 providers, found {}", all.len());
        let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
        let sorted: BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(sorted.len(), keys.len(), "keys are unique");
        assert!(keys.is_sorted(), "the file is sorted by key, so that additions diff cleanly");
        for p in all {
            assert!(crate::domain::DefinitionKey::parse(&p.key).is_ok(), "{}: key", p.key);
            assert!(!p.name.trim().is_empty(), "{}: name", p.key);
            assert_https(&p.key, &p.docs_url);
        }
    }

    /// The README's "Provider catalog" section counts the catalog by kind and names every kind
    /// `?auth=` takes. It fell behind once (161 counted, `oauth1` missing from the list).
    #[test]
    fn the_readme_counts_the_catalog_as_it_is() {
        use strum::VariantNames;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme.split("\n## Provider catalog\n").nth(1).expect("the section").split("\n## ").next();
        let flat = section.unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
        let n = |a| providers_by_auth(a).count();
        let kinds = [
            (AuthKind::Oauth2AuthorizationCode, "OAuth 2.0 authorization code"),
            (AuthKind::Oauth2ClientCredentials, "client credentials"),
            (AuthKind::Oauth2JwtBearer, "JWT bearer"),
            (AuthKind::Oauth2DeviceCode, "device code"),
            (AuthKind::Oauth1, "OAuth 1.0a"),
            (AuthKind::ApiKey, "API key"),
            (AuthKind::Basic, "HTTP Basic"),
        ];
        assert_eq!(
            kinds.iter().map(|&(a, _)| n(a)).sum::<usize>(),
            providers().len(),
            "a kind the sentence leaves out"
        );
        let counts: Vec<String> = kinds.iter().map(|&(a, name)| format!("{} {name}", n(a))).collect();
        let sentence = format!("{} providers: {}", providers().len(), counts.join(", "));
        assert!(flat.contains(&sentence), "README's catalog sentence should read: {sentence}");
        let listed = flat.split("?auth=").nth(1).and_then(|s| s.split("lists one kind").next()).unwrap_or_default();
        for kind in AuthKind::VARIANTS {
            let named = listed.contains(&format!("`{kind}`")) || listed.starts_with(&format!("{kind}`"));
            assert!(named, "README's `?auth=` list lacks {kind}: {listed}");
        }
    }

    #[test]
    fn every_kind_of_provider_is_there() {
        let count = |a| providers_by_auth(a).count();
        assert!(count(AuthKind::ApiKey) >= 30, "api_key: {}", count(AuthKind::ApiKey));
        assert!(count(AuthKind::Basic) >= 5, "basic: {}", count(AuthKind::Basic));
        assert!(count(AuthKind::Oauth2AuthorizationCode) >= 30);
        assert!(count(AuthKind::Oauth2ClientCredentials) >= 1);
        assert!(count(AuthKind::Oauth2DeviceCode) >= 1, "device flow (github-device)");
        assert!(count(AuthKind::Oauth2JwtBearer) >= 1, "service accounts (google-service-account)");
        assert!(count(AuthKind::Oauth1) >= 1, "OAuth 1.0a (x-oauth1)");
        assert!(providers_by_auth(AuthKind::ApiKey).all(|p| p.auth == AuthKind::ApiKey));
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
            "openai",
            "stripe-api-key",
            "sendgrid",
            "twilio",
        ] {
            assert!(provider(needed).is_some(), "{needed} is in the catalog");
        }
    }

    #[test]
    fn oauth_entries_have_their_endpoints_and_nothing_of_api_keys() {
        for p in providers().iter().filter(|p| p.auth.is_oauth()) {
            assert_eq!(
                p.auth == AuthKind::Oauth2AuthorizationCode,
                p.authorize_url.is_some(),
                "{}: authorize_url",
                p.key
            );
            assert_eq!(
                p.auth == AuthKind::Oauth2DeviceCode,
                p.device_authorization_url.is_some(),
                "{}: device_authorization_url",
                p.key
            );
            let token_url = p.token_url.as_deref().unwrap_or_else(|| panic!("{}: token_url", p.key));
            let device = p.device_authorization_url.as_deref();
            for url in
                [p.authorize_url.as_deref(), Some(token_url), p.revoke_url.as_deref(), device].into_iter().flatten()
            {
                let u = filled(url, &p.url_params);
                assert!(!u.contains('{'), "{}: every placeholder is in url_params: {url}", p.key);
                assert_https(&p.key, &u);
            }
            assert!(p.pkce.is_some(), "{}: pkce is stated", p.key);
            let method = p.client_auth.as_deref().unwrap_or_else(|| panic!("{}: client_auth", p.key));
            assert!(CLIENT_AUTH_METHODS.contains(&method), "{}: client_auth", p.key);
            assert!(p.token_response.is_some(), "{}: token_response", p.key);
            assert!(p.inputs.is_empty(), "{}: OAuth inputs are the well-known ones and url_params", p.key);
        }
    }

    #[test]
    fn oauth1_entries_have_their_three_endpoints_and_a_signature_method() {
        for p in providers_by_auth(AuthKind::Oauth1) {
            for url in [&p.request_token_url, &p.authorize_url, &p.access_token_url] {
                assert_https(&p.key, url.as_deref().unwrap_or_else(|| panic!("{}: an OAuth 1.0a endpoint", p.key)));
            }
            let method = p.signature_method.as_deref().unwrap_or("HMAC-SHA1");
            assert!(crate::domain::validate::SignatureMethod::parse(method).is_some(), "{}: signature_method", p.key);
            assert!(
                p.token_url.is_none() && p.revoke_url.is_none() && p.token_response.is_none() && p.inputs.is_empty(),
                "{}: no OAuth 2.0 member",
                p.key
            );
        }
        for p in providers().iter().filter(|p| p.auth != AuthKind::Oauth1) {
            assert!(
                p.request_token_url.is_none() && p.access_token_url.is_none() && p.signature_method.is_none(),
                "{}: OAuth 1.0a members only on oauth1 entries",
                p.key
            );
        }
    }

    #[test]
    fn api_key_and_basic_entries_have_inputs_and_a_verify_request_or_say_why_not() {
        for p in providers().iter().filter(|p| !p.auth.has_app_settings()) {
            assert!(matches!(p.auth, AuthKind::ApiKey | AuthKind::Basic), "{}: auth", p.key);
            assert!(
                p.authorize_url.is_none()
                    && p.token_url.is_none()
                    && p.revoke_url.is_none()
                    && p.url_params.is_empty()
                    && p.default_scopes.is_empty()
                    && p.pkce.is_none()
                    && p.client_auth.is_none()
                    && p.oauth == OAuthQuirks::default()
                    && p.token_response.is_none()
                    && p.expiry_buffer_secs == 0,
                "{}: no OAuth member",
                p.key
            );
            assert!(p.inputs.values().any(|i| i.kind == InputType::Password), "{}: a secret input", p.key);
            let Some(verify) = p.verify.as_ref() else {
                // A verify request that refuses some valid keys is worse than none (a 422 at
                // create): an entry without one says why.
                let why = p.description.as_deref().unwrap_or_default();
                assert!(why.starts_with("No verify request: "), "{}: verify, or a description why not", p.key);
                continue;
            };
            assert_eq!(p.auth == AuthKind::Basic, verify.basic.is_some(), "{}: basic auth is verify.basic", p.key);
            let used = verify.names();
            for name in p.inputs.keys() {
                assert!(used.contains(&name.as_str()), "{}: the input {name} is used by verify", p.key);
            }
        }
    }

    #[test]
    fn verify_requests_are_https_and_name_only_declared_inputs() {
        for p in providers() {
            let Some(verify) = &p.verify else { continue };
            let known = |n: &str| p.inputs.contains_key(n) || (p.auth.is_oauth() && n == ACCESS_TOKEN);
            let errors = verify.check(known);
            assert!(errors.is_empty(), "{}: {errors:?}", p.key);
            let sample = verify.url.replace("{{", "").replace("}}", "");
            assert_https(&p.key, &sample);
            assert!(!verify.expect_status.is_empty(), "{}: expect_status is stated", p.key);
        }
    }

    #[test]
    fn every_entry_is_what_a_definition_naming_it_gets() {
        for p in providers() {
            let spec = definition_from_json("x", &json!({"provider": p.key}), provider)
                .unwrap_or_else(|e| panic!("{}: a definition naming it is valid: {e:?}", p.key));
            assert_eq!(spec.auth, p.auth, "{}", p.key);
            assert_eq!(spec.verify, p.verify, "{}: the definition carries the catalog's verify", p.key);
            for (name, input) in &p.inputs {
                assert_eq!(spec.inputs.get(name), Some(&input.to_input()), "{}: input {name}", p.key);
            }
            // The oauth block is one a definition could carry itself.
            if p.auth.is_oauth() {
                let block = json!({"auth": p.auth, "provider": p.key, "oauth": p.oauth});
                if let Err(e) = definition_from_json("x", &block, provider) {
                    panic!("{}: the oauth block is one a definition could carry: {e:?}", p.key);
                }
            }
        }
    }

    #[test]
    fn entries_on_a_regional_host_name_their_region() {
        // Keys work only on their own site or region: one entry each, labelled with it.
        /// An entry's key, the region its name and description give, its verify host.
        type Region = (&'static str, &'static str, &'static str);
        let regions: [(&str, &[Region]); 3] = [
            (
                "datadog",
                &[
                    ("datadog", "US1", "api.datadoghq.com"),
                    ("datadog-us3", "US3", "api.us3.datadoghq.com"),
                    ("datadog-us5", "US5", "api.us5.datadoghq.com"),
                    ("datadog-eu", "EU1", "api.datadoghq.eu"),
                    ("datadog-ap1", "AP1", "api.ap1.datadoghq.com"),
                ],
            ),
            ("posthog", &[("posthog", "US", "us.posthog.com"), ("posthog-eu", "EU", "eu.posthog.com")]),
            ("honeycomb", &[("honeycomb", "US", "api.honeycomb.io"), ("honeycomb-eu", "EU", "api.eu1.honeycomb.io")]),
        ];
        for (family, entries) in regions {
            let listed: BTreeSet<&str> =
                providers().iter().map(|p| p.key.as_str()).filter(|k| k.split('-').next() == Some(family)).collect();
            let expected: BTreeSet<&str> = entries.iter().map(|(key, _, _)| *key).collect();
            assert_eq!(listed, expected, "{family}: one entry per region");
            for (key, region, host) in entries {
                let p = provider(key).unwrap_or_else(|| panic!("{key}"));
                assert!(p.name.contains(&format!("({region}")), "{key}: the name says {region}: {}", p.name);
                let why = p.description.as_deref().unwrap_or_default();
                assert!(why.contains(region), "{key}: the description names {region}: {why}");
                let verify = p.verify.as_ref().unwrap_or_else(|| panic!("{key}: verify"));
                let url = url::Url::parse(&verify.url).unwrap_or_else(|e| panic!("{key}: {e}"));
                assert_eq!(url.host_str(), Some(*host), "{key}: the region's host");
            }
        }
    }

    #[test]
    fn revocation_urls_are_rfc_7009_endpoints() {
        // A revokeUrl gets a form POST of token=...; endpoints taking DELETE, a JSON body or
        // no token (Zendesk's tokens/current.json, Stripe's deauthorize, Dropbox's RPC, Notion's
        // and Intuit's JSON) would fail every time: such entries have none and say why.
        for p in providers() {
            if let Some(url) = &p.revoke_url {
                let path = url::Url::parse(&filled(url, &p.url_params)).expect("parsed above").path().to_owned();
                for wrong in [".json", "deauthorize", "/2/auth/token/revoke"] {
                    assert!(!path.contains(wrong), "{}: {url} is no RFC 7009 endpoint", p.key);
                }
            }
        }
        for key in ["zendesk", "stripe", "dropbox", "notion", "quickbooks"] {
            let p = provider(key).unwrap_or_else(|| panic!("{key}"));
            assert!(p.revoke_url.is_none(), "{key}: no revokeUrl");
            let why = p.description.as_deref().unwrap_or_default();
            assert!(why.starts_with("No revokeUrl: "), "{key}: says why: {why}");
        }
    }

    #[test]
    fn an_entry_with_an_unknown_member_is_refused() {
        let entry = json!({"key": "acme", "name": "Acme", "auth": "api_key", "docs_url": "https://acme.example/docs",
                           "inputs": {"apiKey": {"label": "API key", "type": "password", "secret": true}}});
        assert!(serde_json::from_value::<Provider>(entry).is_err(), "an unknown input member");
        let entry = json!({"key": "acme", "name": "Acme", "auth": "api_key", "docs": "https://acme.example/docs"});
        assert!(serde_json::from_value::<Provider>(entry).is_err(), "an unknown entry member");
    }
}
