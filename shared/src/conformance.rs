//! Conformance suites for the ports. Every adapter of a port runs the same cases: the embedded
//! ones here, the AWS ones against an emulator. Each case uses fresh organizations, so a shared
//! backend needs no reset between cases.
//!
//! The store's cases live in one module per kind of record and are gathered in [`store`]; the
//! key provider's are in [`keys`], the branch-key store's in [`branch_keys`]. Each macro below
//! names its suite's cases.
//!
//! ```ignore
//! latchkey::store_conformance_tests!(make_store());     // async fn make_store() -> (Arc<dyn Store>, Guard)
//! latchkey::keys_conformance_tests!(make_keys());       // async fn make_keys() -> (Arc<dyn KeyProvider>, Guard)
//! latchkey::branch_keys_conformance_tests!(make());     // async fn make() -> (Arc<dyn BranchKeyStore>, Guard)
//! ```

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::domain::{AuthKind, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, OrgId, Scope, Status};

/// A fresh organization id for one case.
pub fn fresh_org() -> OrgId {
    OrgId::parse(&format!("org-{}", ulid::Ulid::new().to_string().to_ascii_lowercase())).expect("valid org id")
}

fn now() -> OffsetDateTime {
    crate::ports::Clock::now(&crate::ports::SystemClock)
}

/// A minimal definition.
pub fn definition(org: &OrgId, key: &str) -> Definition {
    Definition {
        org: org.clone(),
        key: DefinitionKey::parse(key).expect("valid key"),
        label: key.to_owned(),
        description: None,
        auth: AuthKind::ApiKey,
        provider: None,
        inputs: Default::default(),
        redirects: None,
        oauth: Default::default(),
        verify: None,
        secret_default_names: Default::default(),
        secret_defaults: None,
        version: 1,
        created_at: now(),
        updated_at: now(),
    }
}

/// A minimal connection of `def` for `customer`.
pub fn connection(def: &Definition, customer: &str) -> Connection {
    Connection {
        id: ConnectionId::generate(),
        org: def.org.clone(),
        customer: Some(CustomerId::parse(customer).expect("valid customer")),
        scope: Scope::Customer,
        instance_id: None,
        definition: def.key.clone(),
        label: None,
        status: Status::Configured,
        error: None,
        values: BTreeMap::from([("endpoint".to_owned(), serde_json::json!("https://api.example.com"))]),
        secret_names: Default::default(),
        secrets: None,
        auth: Some(AuthKind::ApiKey),
        oauth: None,
        device: None,
        tags: Default::default(),
        user: None,
        captured: Default::default(),
        verify: Default::default(),
        refresh: Default::default(),
        generation: 0,
        connect_context: None,
        version: 1,
        created_at: now(),
        updated_at: now(),
    }
}

pub mod branch_keys;
mod connect;
mod connections;
mod due_index;
mod idempotency;
pub mod keys;
mod oauth;
mod tags;
mod webhooks;

/// The store port's cases.
pub mod store {
    pub use super::connect::{
        concurrent_trades_of_one_link_have_one_winner, connect_links_are_traded_once,
        connect_sessions_round_trip_and_expire,
    };
    pub use super::connections::{
        connections_are_scoped_to_their_org, connections_need_their_definition, definitions_in_use_cannot_be_deleted,
        definitions_round_trip_with_conditional_puts, listings_filter_and_page_newest_first,
        logs_are_newest_first_and_go_with_the_connection,
        selector_candidates_are_one_customers_connections_of_one_definition, updates_are_conditional_on_the_version,
    };
    pub use super::due_index::{
        the_due_index_finds_what_is_due_and_nothing_else, the_due_index_hands_out_nothing_before_its_time,
        the_due_index_holds_the_earliest_of_refresh_warning_and_lapse,
        the_due_index_pages_past_stuck_entries_and_forgets_cleared_ones,
    };
    pub use super::idempotency::{
        idempotency_claims_are_released_or_lapse, idempotency_keys_are_claimed_once_and_answered_for_a_day,
    };
    pub use super::oauth::{
        due_revocations_go_round_by_round_among_organizations, due_revocations_honour_their_limit_across_shards,
        due_revocations_share_their_limit_among_organizations, oauth_states_are_single_use_and_expire,
        revocation_jobs_are_claimed_once_and_deleted, revocation_jobs_come_due_no_earlier_than_their_time,
    };
    pub use super::tags::listings_filter_by_tags_and_page_past_what_does_not_match;
    pub use super::webhooks::{
        concurrent_inserts_of_one_delivery_have_one_winner, deleting_a_webhook_deletes_its_deliveries,
        deliveries_are_inserted_once_and_listed_newest_first, delivery_updates_are_conditional_on_the_version,
        due_deliveries_are_pending_soonest_first_across_orgs, due_deliveries_go_round_by_round_among_organizations,
        webhook_deliveries_page_by_cursor_and_filter_by_status, webhooks_round_trip_with_conditional_puts,
    };
}

/// Generates one `#[tokio::test]` per store case; `$make` is an expression evaluating to a
/// future of `(Arc<dyn Store>, guard)`, the guard kept alive for the case.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!($make, store;
            definitions_round_trip_with_conditional_puts,
            definitions_in_use_cannot_be_deleted,
            connections_need_their_definition,
            connections_are_scoped_to_their_org,
            selector_candidates_are_one_customers_connections_of_one_definition,
            updates_are_conditional_on_the_version,
            listings_filter_and_page_newest_first,
            listings_filter_by_tags_and_page_past_what_does_not_match,
            idempotency_keys_are_claimed_once_and_answered_for_a_day,
            idempotency_claims_are_released_or_lapse,
            logs_are_newest_first_and_go_with_the_connection,
            oauth_states_are_single_use_and_expire,
            connect_sessions_round_trip_and_expire,
            connect_links_are_traded_once,
            concurrent_trades_of_one_link_have_one_winner,
            the_due_index_finds_what_is_due_and_nothing_else,
            the_due_index_hands_out_nothing_before_its_time,
            the_due_index_holds_the_earliest_of_refresh_warning_and_lapse,
            the_due_index_pages_past_stuck_entries_and_forgets_cleared_ones,
            revocation_jobs_are_claimed_once_and_deleted,
            revocation_jobs_come_due_no_earlier_than_their_time,
            due_revocations_honour_their_limit_across_shards,
            due_revocations_share_their_limit_among_organizations,
            due_revocations_go_round_by_round_among_organizations,
            webhooks_round_trip_with_conditional_puts,
            deliveries_are_inserted_once_and_listed_newest_first,
            concurrent_inserts_of_one_delivery_have_one_winner,
            delivery_updates_are_conditional_on_the_version,
            deleting_a_webhook_deletes_its_deliveries,
            due_deliveries_are_pending_soonest_first_across_orgs,
            due_deliveries_go_round_by_round_among_organizations,
            webhook_deliveries_page_by_cursor_and_filter_by_status,
        );
    };
}

/// Generates one `#[tokio::test]` per key-provider case; `$make` evaluates to a future of
/// `(Arc<dyn KeyProvider>, guard)`.
#[macro_export]
macro_rules! keys_conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!($make, keys;
            sealed_values_open_only_under_their_context,
            data_keys_unwrap_only_under_their_context,
            tampering_is_detected,
            opened_values_of_the_wrong_shape_are_format_errors,
            the_key_cache_never_skips_the_context_check,
        );
    };
}

/// Generates one `#[tokio::test]` per branch-key store case; `$make` evaluates to a future of
/// `(Arc<dyn BranchKeyStore>, guard)`.
#[macro_export]
macro_rules! branch_keys_conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!($make, branch_keys;
            branch_keys_are_put_once_per_version_and_the_newest_is_active,
            concurrent_puts_of_one_version_have_one_winner,
            concurrent_puts_of_different_versions_all_land,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr, $suite:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (port, _guard) = $make.await;
                $crate::conformance::$suite::$case(port).await;
            }
        )*
    };
}
