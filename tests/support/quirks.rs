//! A scripted OAuth 2.0 provider on loopback for the quirk tests: [`QuirkServer`] runs
//! `tests/oauth/quirks.mjs` (Node.js built-ins only), which answers token requests exactly as its
//! configuration scripts them (refusals inside a 200, JSON served as `text/plain`, form-encoded
//! answers, 201s...) and records every request it gets. The script documents its configuration at
//! the top.
//!
//! It starts the script with
//! [`crate::oauth`]'s node process handling (ready line, stderr into the test's output,
//! stdin pipe, killed on drop), so a server lives until its value is dropped and dies with the
//! test binary however it ends.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::Value;

use crate::oauth::{NodeProcess, get_json, http, status_and_json};

pub use crate::oauth::query_param;

/// A running `tests/oauth/quirks.mjs`.
pub struct QuirkServer {
    process: NodeProcess,
}

impl QuirkServer {
    /// Starts a provider scripted by `config` (`json!({})` for plain RFC 6749 answers), e.g.
    /// `json!({"token": {"refresh_token": [{"status": 200, "json": {"error": "bad_refresh_token"}}]}})`.
    pub async fn start(config: Value) -> Self {
        QuirkServer { process: NodeProcess::start("quirks", &config).await }
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.process.url
    }

    pub fn authorize_endpoint(&self) -> String {
        self.process.endpoint("authorization_endpoint")
    }

    pub fn token_endpoint(&self) -> String {
        self.process.endpoint("token_endpoint")
    }

    pub fn revoke_endpoint(&self) -> String {
        self.process.endpoint("revocation_endpoint")
    }

    /// Everything recorded so far (`GET /__requests`): `{"authorize": [{"query"}], "token":
    /// [{"grant_type", "form", "basic", "status", "issued"}], "revoke": [{"form", "basic",
    /// "status"}]}`, oldest first.
    pub async fn requests(&self) -> Value {
        get_json(&format!("{}/__requests", self.url())).await
    }

    /// The recorded token requests of `grant` (`authorization_code`, `refresh_token`,
    /// `client_credentials`), oldest first.
    pub async fn token_requests(&self, grant: &str) -> Vec<Value> {
        let all = self.requests().await;
        all["token"].as_array().into_iter().flatten().filter(|r| r["grant_type"] == grant).cloned().collect()
    }

    /// How many token requests of `grant` the provider got.
    pub async fn token_calls(&self, grant: &str) -> usize {
        self.token_requests(grant).await.len()
    }

    /// How many requests of any kind (authorize, token, revoke) the provider got.
    pub async fn total_calls(&self) -> usize {
        let all = self.requests().await;
        ["authorize", "token", "revoke"].iter().map(|k| all[k].as_array().map_or(0, Vec::len)).sum()
    }

    /// Replaces the whole configuration (`PUT /__config`); the scripts start from their first
    /// answer again, the records stay.
    pub async fn set_config(&self, config: Value) {
        let url = format!("{}/__config", self.url());
        let response = http().put(&url).json(&config).send().await.unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "PUT {url}: {body}");
    }

    /// Plays the user's browser at the provider: requests `authorize_url` and returns where the
    /// provider redirects (the redirect URI with `code`, `state` and the `callback_params`),
    /// without requesting it.
    pub async fn authorize(&self, authorize_url: &str) -> String {
        let response = http().get(authorize_url).send().await.unwrap_or_else(|e| panic!("GET {authorize_url}: {e}"));
        let status = response.status();
        match response.headers().get(LOCATION).and_then(|l| l.to_str().ok()) {
            Some(location) if status.is_redirection() => location.to_owned(),
            _ => panic!("GET {authorize_url}: {status} {}", response.text().await.unwrap_or_default()),
        }
    }
}
