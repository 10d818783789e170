//! Latchkey: a connection platform that keeps third-party credentials for a SaaS organization's
//! customers. This crate is shared by every deployed function and by the `latchkey` command.
//!
//! - [`domain`]: newtypes, definitions, connections and their pure rules; no I/O.
//! - [`ports`]: the traits the service needs (store, key provider, event sink, clock).
//! - [`crypto`]: envelope encryption over a [`crypto::KeyProvider`] (the key-management port,
//!   beside the envelope that uses it).
//! - [`service`]: the use cases.
//! - [`provider`]: the provider-client port and its adapter: token and revocation requests to
//!   OAuth providers, the SSRF guard, and the one reader of what providers answer.
//! - [`adapters`]: the embedded backend (SQLite, local master key, log event sink).
//! - [`http`]: one axum router with problem+json errors and bearer-token auth.
//! - [`lambda`]: the Lambda entry points built on the same service.

pub mod adapters;
pub mod catalog;
pub mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod lambda;
pub mod ports;
pub mod provider;
pub mod service;
pub mod telemetry;
