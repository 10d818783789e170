//! The black-box suites: Latchkey through HTTP, as its callers see it. Each module is one part of
//! the contract; all share the harness in [`harness`] (`TestApp::spawn()`: `latchkey serve` on a
//! free loopback port with a fresh backend) and the outside processes of the `support` crate
//! (moto, the OAuth test servers). One binary, so the AWS SDK is linked once.
//!
//! `tests/run.sh` runs the `serve` suite again in-process and on the aws backend, and a few
//! others on the aws backend, selecting them by module path (`cargo test --test api serve::`).

mod harness;

mod auth;
mod catalog;
mod connect_page;
mod connect_sessions;
mod dependency_timeouts;
mod device_code;
mod events;
mod fanout;
mod idempotency;
mod import;
mod isolation;
mod jwt_bearer;
mod lambda_handlers;
mod oauth;
mod oauth1;
mod oauth_servers;
mod openapi;
mod providers;
mod quirks;
mod reconnect;
mod refresh;
mod revoke;
mod rt_lifetime;
mod rt_warning;
mod security;
mod selector;
mod serve;
mod tags;
mod verify;
mod webhooks;
