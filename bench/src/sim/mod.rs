//! The scale simulation (issue 15, docs/scale.md "Simulation"): the real [`latchkey::service::Service`]
//! over in-memory ports that model the deployed dependencies' quotas, on a simulated clock
//! (tokio's paused time: a simulated hour takes the CPU time its work takes, no more).
//!
//! - [`memory`]: the in-memory store (passes the store conformance suite);
//! - [`quota`]: DynamoDB (per-partition capacity, item-size units), KMS (requests per second)
//!   and the event sink, metered and throttling like the services;
//! - [`provider`]: a provider token endpoint with a latency distribution; [`answers`]: what
//!   became of its answers (committed, or lost as a rotating provider would notice);
//! - [`clock`]: the simulated clock;
//! - [`run`]: the scenario (connections, organizations, schedule, Lambda concurrency) and its
//!   figures; [`report`]: Markdown and SVG.

pub mod answers;
pub mod clock;
pub mod memory;
pub mod provider;
pub mod quota;
pub mod report;
pub mod run;
