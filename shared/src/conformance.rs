//! Conformance suites for the ports. Every adapter of a port runs the same cases: the embedded
//! ones here, the AWS ones against an emulator. Each case uses fresh organizations, so a shared
//! backend needs no reset between cases.
//!
//! ```ignore
//! latchkey::store_conformance_tests!(make_store());     // async fn make_store() -> (Arc<dyn Store>, Guard)
//! latchkey::keys_conformance_tests!(make_keys());       // async fn make_keys() -> (Arc<dyn KeyProvider>, Guard)
//! latchkey::branch_keys_conformance_tests!(make());     // async fn make() -> (Arc<dyn BranchKeyStore>, Guard)
//! ```

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, LogEntry, LogType, OrgId, Scope, Status,
};

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
mod idempotency;
mod tags;
mod webhooks;

/// The store port's cases.
pub mod store {
    use std::sync::Arc;

    pub use super::connect::{
        concurrent_trades_of_one_link_have_one_winner, connect_links_are_traded_once,
        connect_sessions_round_trip_and_expire,
    };
    pub use super::idempotency::{
        idempotency_claims_are_released_or_lapse, idempotency_keys_are_claimed_once_and_answered_for_a_day,
    };
    pub use super::tags::listings_filter_by_tags_and_page_past_what_does_not_match;
    pub use super::webhooks::{
        concurrent_inserts_of_one_delivery_have_one_winner, deleting_a_webhook_deletes_its_deliveries,
        deliveries_are_inserted_once_and_listed_newest_first, delivery_updates_are_conditional_on_the_version,
        due_deliveries_are_pending_soonest_first_across_orgs, webhook_deliveries_page_by_cursor_and_filter_by_status,
        webhooks_round_trip_with_conditional_puts,
    };

    use super::*;
    use crate::ports::{ConnectionFilter, DueEntry, Expect, Store, StoreError};

    pub async fn definitions_round_trip_with_conditional_puts(store: Arc<dyn Store>) {
        let org = fresh_org();
        let mut def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.expect("first put");
        assert!(matches!(store.put_definition(&def, Expect::Absent).await, Err(StoreError::Conflict)));
        def.version = 2;
        def.label = "Acme v2".into();
        assert!(matches!(store.put_definition(&def, Expect::Version(7)).await, Err(StoreError::Conflict)));
        store.put_definition(&def, Expect::Version(1)).await.expect("conditional replace");
        let got = store.get_definition(&org, &def.key).await.unwrap().expect("stored");
        assert_eq!((got.label.as_str(), got.version), ("Acme v2", 2));
        assert!(store.get_definition(&fresh_org(), &def.key).await.unwrap().is_none(), "another org sees nothing");
        store.put_definition(&definition(&org, "beta"), Expect::Absent).await.unwrap();
        let keys: Vec<_> = store.list_definitions(&org).await.unwrap().into_iter().map(|d| d.key.to_string()).collect();
        assert_eq!(keys, ["acme", "beta"]);
    }

    pub async fn definitions_in_use_cannot_be_deleted(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let conn = connection(&def, "c-1");
        store.insert_connection(&conn).await.unwrap();
        assert!(matches!(store.delete_definition(&org, &def.key).await, Err(StoreError::InUse)));
        assert!(store.delete_connection(&org, &conn.id).await.unwrap());
        assert!(store.delete_definition(&org, &def.key).await.unwrap());
        assert!(!store.delete_definition(&org, &def.key).await.unwrap(), "second delete finds nothing");
    }

    pub async fn connections_need_their_definition(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "ghost");
        let conn = connection(&def, "c-1");
        assert!(matches!(store.insert_connection(&conn).await, Err(StoreError::DefinitionMissing)));
        store.put_definition(&def, Expect::Absent).await.unwrap();
        store.insert_connection(&conn).await.unwrap();
        assert!(matches!(store.insert_connection(&conn).await, Err(StoreError::Conflict)), "ids are unique");
    }

    pub async fn connections_are_scoped_to_their_org(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let conn = connection(&def, "c-1");
        store.insert_connection(&conn).await.unwrap();
        let other = fresh_org();
        assert!(store.get_connection(&other, &conn.id).await.unwrap().is_none());
        assert!(!store.delete_connection(&other, &conn.id).await.unwrap());
        let mut moved = conn.clone();
        moved.org = other.clone();
        moved.version = 2;
        assert!(matches!(store.update_connection(&moved, 1).await, Err(StoreError::Conflict)));
        assert!(store.list_connections(&other, &ConnectionFilter::default(), 10, None).await.unwrap().items.is_empty());
        let got = store.get_connection(&org, &conn.id).await.unwrap().expect("still there");
        assert_eq!(got.version, 1);
    }

    /// `find_for_selector`: every scope and status of one customer's connections of one
    /// definition, oldest first; nothing of another customer, definition or organization, and
    /// nothing deleted.
    pub async fn selector_candidates_are_one_customers_connections_of_one_definition(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        let other_def = definition(&org, "beta");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        store.put_definition(&other_def, Expect::Absent).await.unwrap();
        let mut expected = Vec::new();
        for (scope, instance, user, status) in [
            (Scope::Organization, None, None, Status::Active),
            (Scope::Customer, None, None, Status::Error),
            (Scope::Customer, None, Some("u-1"), Status::Configured),
            (Scope::Instance, Some("inst-9"), None, Status::Disconnected),
        ] {
            let mut c = connection(&def, "c-1");
            c.scope = scope;
            c.instance_id = instance.map(|i| crate::domain::InstanceId::parse(i).unwrap());
            c.user = user.map(|u| crate::domain::UserId::parse(u).unwrap());
            c.status = status;
            store.insert_connection(&c).await.unwrap();
            expected.push(c.id.clone());
            // Ids carry milliseconds: keep creation order visible in them.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        store.insert_connection(&connection(&def, "c-2")).await.unwrap();
        store.insert_connection(&connection(&other_def, "c-1")).await.unwrap();
        let mut org_wide = connection(&def, "c-1");
        org_wide.customer = None;
        org_wide.scope = Scope::Organization;
        store.insert_connection(&org_wide).await.unwrap();
        let elsewhere = fresh_org();
        let foreign = definition(&elsewhere, "acme");
        store.put_definition(&foreign, Expect::Absent).await.unwrap();
        store.insert_connection(&connection(&foreign, "c-1")).await.unwrap();

        let customer = CustomerId::parse("c-1").unwrap();
        let found = store.find_for_selector(&org, &def.key, &customer).await.unwrap();
        let ids: Vec<_> = found.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, expected, "every scope and status, oldest first, nothing else");
        assert_eq!(found[2].user.as_ref().map(|u| u.as_str()), Some("u-1"), "the user is stored");
        assert_eq!(found[3].instance_id.as_ref().map(|i| i.as_str()), Some("inst-9"));
        // Listings filter on the user too, alone or with the customer's index.
        for customer in [None, Some(customer.clone())] {
            let f = ConnectionFilter {
                user: Some(crate::domain::UserId::parse("u-1").unwrap()),
                customer,
                ..Default::default()
            };
            let listed = store.list_connections(&org, &f, 10, None).await.unwrap().items;
            assert_eq!(listed.iter().map(|c| &c.id).collect::<Vec<_>>(), [&expected[2]]);
        }

        assert!(store.delete_connection(&org, &expected[1]).await.unwrap());
        let found = store.find_for_selector(&org, &def.key, &customer).await.unwrap();
        assert_eq!(found.len(), 3, "a deleted connection is no candidate");
        let nobody = CustomerId::parse("c-404").unwrap();
        assert!(store.find_for_selector(&org, &def.key, &nobody).await.unwrap().is_empty());
        assert_eq!(store.find_for_selector(&elsewhere, &def.key, &customer).await.unwrap().len(), 1);
    }

    pub async fn updates_are_conditional_on_the_version(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let conn = connection(&def, "c-1");
        store.insert_connection(&conn).await.unwrap();
        // Many writers read version 1; exactly one may win.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (store, mut next) = (store.clone(), conn.clone());
            next.version = 2;
            next.label = Some(format!("writer {i}"));
            tasks.push(tokio::spawn(async move { store.update_connection(&next, 1).await }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => wins += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(wins, 1);
        let got = store.get_connection(&org, &conn.id).await.unwrap().unwrap();
        assert_eq!(got.version, 2);
        store.delete_connection(&org, &conn.id).await.unwrap();
        let mut late = got.clone();
        late.version = 3;
        assert!(matches!(store.update_connection(&late, 2).await, Err(StoreError::Conflict)), "deleted stays deleted");
    }

    pub async fn listings_filter_and_page_newest_first(store: Arc<dyn Store>) {
        let org = fresh_org();
        let (a, b) = (definition(&org, "alpha"), definition(&org, "beta"));
        store.put_definition(&a, Expect::Absent).await.unwrap();
        store.put_definition(&b, Expect::Absent).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..7 {
            let mut c = connection(if i % 2 == 0 { &a } else { &b }, if i < 4 { "c-1" } else { "c-2" });
            if i == 6 {
                c.status = Status::Error;
            }
            store.insert_connection(&c).await.unwrap();
            ids.push(c.id);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        ids.reverse();
        let all = ConnectionFilter::default();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_connections(&org, &all, 3, cursor.as_ref()).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.into_iter().map(|c| c.id));
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ids, "every connection once, newest first");
        let by = |customer: Option<&str>, def: Option<&Definition>, status: Option<Status>| ConnectionFilter {
            customer: customer.map(|c| CustomerId::parse(c).unwrap()),
            definition: def.map(|d| d.key.clone()),
            status,
            ..Default::default()
        };
        let count = |f: ConnectionFilter| {
            let store = store.clone();
            let org = org.clone();
            async move { store.list_connections(&org, &f, 100, None).await.unwrap().items.len() }
        };
        assert_eq!(count(by(Some("c-1"), None, None)).await, 4);
        assert_eq!(count(by(Some("c-2"), Some(&a), None)).await, 2);
        assert_eq!(count(by(None, Some(&b), None)).await, 3);
        assert_eq!(count(by(None, None, Some(Status::Error))).await, 1);
        assert_eq!(count(by(Some("c-9"), None, None)).await, 0);
    }

    pub async fn the_due_index_finds_what_is_due_and_nothing_else(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let t0 = now();
        let mut due = connection(&def, "c-1");
        due.refresh.due_at = Some(t0 - time::Duration::seconds(30));
        let mut later = connection(&def, "c-2");
        later.refresh.due_at = Some(t0 + time::Duration::hours(1));
        let never = connection(&def, "c-3");
        for c in [&due, &later, &never] {
            store.insert_connection(c).await.unwrap();
        }
        let find = |until| {
            let store = store.clone();
            let org = org.clone();
            async move {
                let mut found = Vec::new();
                for shard in 0..store.due_shards() {
                    found.extend(
                        store
                            .due_connections(shard, until, None, 10_000)
                            .await
                            .unwrap()
                            .into_iter()
                            .filter(|e| e.org == org),
                    );
                }
                found.into_iter().map(|e| e.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(find(t0).await, vec![due.id.clone()]);
        let mut both = find(t0 + time::Duration::hours(2)).await;
        both.sort();
        let mut expected = vec![due.id.clone(), later.id.clone()];
        expected.sort();
        assert_eq!(both, expected);
        // Taking a connection out of the index (red, refreshed...) is an ordinary update.
        let mut done = due.clone();
        done.refresh.due_at = None;
        done.version = 2;
        store.update_connection(&done, 1).await.unwrap();
        assert!(find(t0).await.is_empty());
    }

    /// A connection's place in the due index is the earliest of its refresh due time, its
    /// refresh token's warning and its lapse (`Connection::due_index_at`), and only while a
    /// refresh is scheduled: the sweep finds warnings and lapses without a scan.
    pub async fn the_due_index_holds_the_earliest_of_refresh_warning_and_lapse(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let t0 = now();
        let hours = time::Duration::hours;
        let mut c = connection(&def, "c-1");
        c.oauth = Some(crate::domain::OAuthTokens {
            sealed: crate::domain::Sealed { key_id: "k".into(), wrapped_key: vec![1; 8], ciphertext: vec![2; 8] },
            token_type: "Bearer".into(),
            expires_at: Some(t0 + hours(10)),
            scopes: Vec::new(),
            has_refresh_token: true,
            obtained_at: t0,
            token_origin: "https://idp.example.com".into(),
            revoke_origin: None,
            refresh_token_expires_at: Some(t0 + hours(5)),
        });
        c.refresh.due_at = Some(t0 + hours(9));
        c.refresh.rt_warn_at = Some(t0 + hours(3));
        store.insert_connection(&c).await.unwrap();
        let due_times = || {
            let (store, org) = (store.clone(), org.clone());
            async move { all_due(&store, &org, t0 + hours(100), 100).await.into_iter().map(|e| e.due).collect::<Vec<_>>() }
        };
        assert_eq!(due_times().await, vec![(t0 + hours(3)).unix_timestamp()], "the warning comes first");
        let mut next = c.clone();
        next.refresh.rt_warn_at = None;
        next.version = 2;
        store.update_connection(&next, 1).await.unwrap();
        assert_eq!(due_times().await, vec![(t0 + hours(5)).unix_timestamp()], "then the lapse");
        let mut refreshed = next.clone();
        refreshed.oauth.as_mut().unwrap().refresh_token_expires_at = Some(t0 + hours(50));
        refreshed.version = 3;
        store.update_connection(&refreshed, 2).await.unwrap();
        assert_eq!(due_times().await, vec![(t0 + hours(9)).unix_timestamp()], "then the refresh");
        let mut red = refreshed.clone();
        red.refresh.due_at = None;
        red.refresh.rt_warn_at = Some(t0 + hours(1));
        red.version = 4;
        store.update_connection(&red, 3).await.unwrap();
        assert!(due_times().await.is_empty(), "no refresh scheduled: out of the index, warning or not");
    }

    /// Every entry of one organization in the due index, shard by shard, paging with the cursor
    /// `page` entries at a time; asserts index order and that no entry comes twice.
    async fn all_due(store: &Arc<dyn Store>, org: &OrgId, until: OffsetDateTime, page: usize) -> Vec<DueEntry> {
        let mut all = Vec::new();
        for shard in 0..store.due_shards() {
            let mut after: Option<DueEntry> = None;
            let mut shard_entries: Vec<DueEntry> = Vec::new();
            loop {
                let got = store.due_connections(shard, until, after.as_ref(), page).await.unwrap();
                assert!(got.len() <= page, "a page holds at most {page} entries");
                let full = got.len() == page;
                after = got.last().cloned();
                shard_entries.extend(got);
                if !full {
                    break;
                }
            }
            let keys: Vec<_> = shard_entries.iter().map(|e| (e.due, e.org.to_string(), e.id.to_string())).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "strictly in index order, each entry once");
            all.extend(shard_entries.into_iter().filter(|e| e.org == *org));
        }
        all
    }

    /// The issue of a sweep starved by entries it cannot refresh, at the store: entries due
    /// before a healthy one fill whole pages, and the cursor pages past them all, never reading
    /// one twice; clearing their due time (what turning red does) takes each out of the index,
    /// and a changed due time moves an entry instead of leaving a stale copy behind. (The sweep
    /// over 1,000 such entries runs on both backends in `tests/adapters/sweep_starvation.rs`; here 250
    /// keep the emulator's slow transactions short.)
    pub async fn the_due_index_pages_past_stuck_entries_and_forgets_cleared_ones(store: Arc<dyn Store>) {
        use futures_util::StreamExt;

        const STUCK: usize = 250;
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let t0 = now();
        let stuck: Vec<Connection> = (0..STUCK)
            .map(|i| {
                let mut c = connection(&def, "c-1");
                c.status = Status::Error;
                c.refresh.due_at = Some(t0 - time::Duration::seconds(3_600 - (i % 100) as i64));
                c
            })
            .collect();
        let mut healthy = connection(&def, "c-2");
        healthy.refresh.due_at = Some(t0 - time::Duration::seconds(5));
        // One at a time: the emulator's transactions (an insert is one) are not thread-safe.
        for c in stuck.iter().chain([&healthy]) {
            store.insert_connection(c).await.unwrap();
        }

        // In its shard the healthy entry is due last: a first page that holds every stuck entry
        // of the shard does not reach it, the next page does.
        for shard in 0..store.due_shards() {
            let whole = store.due_connections(shard, t0, None, 10_000).await.unwrap();
            let Some(at) = whole.iter().position(|e| e.id == healthy.id) else { continue };
            assert_eq!(at + 1, whole.len(), "the healthy entry is due last in its shard");
            assert!(at > 0, "stuck entries share its shard");
            let first = store.due_connections(shard, t0, None, at).await.unwrap();
            assert!(first.iter().all(|e| e.id != healthy.id), "a full page of stuck entries");
            let next = store.due_connections(shard, t0, first.last(), at).await.unwrap();
            assert_eq!(next.iter().map(|e| &e.id).collect::<Vec<_>>(), vec![&healthy.id], "the next page");
        }
        let all = all_due(&store, &org, t0, 7).await;
        assert_eq!(all.len(), STUCK + 1);
        assert!(all.iter().any(|e| e.id == healthy.id), "paging reaches the healthy entry");
        assert_eq!(all_due(&store, &org, t0, 100).await.len(), STUCK + 1, "the same with pages of 100");
        assert_eq!(all_due(&store, &org, t0, 1_000).await.len(), STUCK + 1, "the same in one page");
        assert!(all_due(&store, &org, t0 - time::Duration::hours(2), 1_000).await.is_empty(), "nothing due yet");

        // Turning them red clears the due time: an ordinary update takes each one out.
        let cleared: Vec<_> = futures_util::stream::iter(stuck.iter())
            .map(|c| {
                let store = store.clone();
                let mut red = c.clone();
                red.refresh.due_at = None;
                red.version = c.version + 1;
                async move { store.update_connection(&red, c.version).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let failed: Vec<_> = cleared.iter().filter_map(|r| r.as_ref().err()).map(|e| format!("{e:?}")).collect();
        assert!(failed.is_empty(), "every update succeeds: {} failed, e.g. {:?}", failed.len(), failed.first());
        let left: Vec<_> = all_due(&store, &org, t0, 1_000).await.into_iter().map(|e| e.id).collect();
        assert_eq!(left, vec![healthy.id.clone()], "only the healthy entry is left");

        // A new due time moves the entry: no stale copy stays at the old time.
        let mut later = healthy.clone();
        later.refresh.due_at = Some(t0 + time::Duration::minutes(10));
        later.version = healthy.version + 1;
        store.update_connection(&later, healthy.version).await.unwrap();
        assert!(all_due(&store, &org, t0, 1_000).await.is_empty(), "not due at the old time any more");
        let moved = all_due(&store, &org, t0 + time::Duration::hours(1), 1_000).await;
        assert_eq!(moved.iter().map(|e| &e.id).collect::<Vec<_>>(), vec![&healthy.id]);
        assert_eq!(moved[0].due, (t0 + time::Duration::minutes(10)).unix_timestamp());
        // A deleted connection leaves the index with it.
        assert!(store.delete_connection(&org, &healthy.id).await.unwrap());
        assert!(all_due(&store, &org, t0 + time::Duration::hours(1), 1_000).await.is_empty());
    }

    pub async fn revocation_jobs_are_claimed_once_and_deleted(store: Arc<dyn Store>) {
        use crate::crypto::Sealed;
        use crate::domain::RevocationJob;
        let org = fresh_org();
        let sealed = Sealed { key_id: "k".into(), wrapped_key: vec![1; 40], ciphertext: vec![2; 40] };
        let t0 = now();
        let job = |conn: &ConnectionId, at: OffsetDateTime| RevocationJob {
            id: ulid::Ulid::new().to_string(),
            org: org.clone(),
            connection_id: conn.clone(),
            definition: DefinitionKey::parse("acme").unwrap(),
            tokens: sealed.clone(),
            settings: sealed.clone(),
            attempts: 0,
            next_attempt_at: at,
            expires_at: t0 + time::Duration::days(7),
        };
        let conn = ConnectionId::generate();
        let now_job = job(&conn, t0 - time::Duration::seconds(1));
        let later_job = job(&conn, t0 + time::Duration::hours(1));
        store.put_revocation(&now_job).await.unwrap();
        store.put_revocation(&later_job).await.unwrap();
        assert!(matches!(store.put_revocation(&now_job).await, Err(StoreError::Conflict)));
        assert_eq!(store.revocations_of(&org, &conn).await.unwrap().len(), 2);
        let due: Vec<_> =
            store.due_revocations(t0, 10_000).await.unwrap().into_iter().filter(|j| j.org == org).collect();
        assert_eq!(due, vec![now_job.clone()]);
        // Two workers claim the same attempt: one wins.
        let mut claim = now_job.clone();
        claim.attempts = 1;
        claim.next_attempt_at = t0 + time::Duration::minutes(1);
        store.update_revocation(&claim, 0).await.unwrap();
        assert!(matches!(store.update_revocation(&claim, 0).await, Err(StoreError::Conflict)));
        assert!(store.delete_revocation(&claim).await.unwrap());
        assert!(!store.delete_revocation(&claim).await.unwrap(), "deleting twice is harmless");
        assert_eq!(store.revocations_of(&org, &conn).await.unwrap(), vec![later_job]);
    }

    pub async fn oauth_states_are_single_use_and_expire(store: Arc<dyn Store>) {
        use crate::domain::OAuthState;
        let org = fresh_org();
        let state = |hash: &str, ttl: i64| OAuthState {
            hash: hash.to_owned(),
            org: org.clone(),
            connection_id: ConnectionId::generate(),
            verifier: None,
            request_token_secret: None,
            redirect_uri: "http://127.0.0.1:8080/v1/oauth/callback".into(),
            issuer: None,
            generation: 0,
            expires_at: now() + time::Duration::seconds(ttl),
            browser: None,
        };
        let live = state(&format!("h-{}", ulid::Ulid::new()), 600);
        store.put_oauth_state(&live).await.unwrap();
        assert!(matches!(store.put_oauth_state(&live).await, Err(StoreError::Conflict)));
        // Concurrent callbacks with one state: exactly one wins.
        let takes: Vec<_> = (0..6)
            .map(|_| {
                let (store, hash) = (store.clone(), live.hash.clone());
                tokio::spawn(async move { store.take_oauth_state(&hash, now()).await.unwrap() })
            })
            .collect();
        let mut won = Vec::new();
        for t in takes {
            won.extend(t.await.unwrap());
        }
        assert_eq!(won, vec![live.clone()], "exactly one take returns the state");
        assert!(store.take_oauth_state(&live.hash, now()).await.unwrap().is_none(), "a replay finds nothing");
        let expired = state(&format!("h-{}", ulid::Ulid::new()), 1);
        store.put_oauth_state(&expired).await.unwrap();
        let later = now() + time::Duration::seconds(5);
        assert!(store.take_oauth_state(&expired.hash, later).await.unwrap().is_none(), "an expired state is refused");
        assert!(store.take_oauth_state("never-stored", now()).await.unwrap().is_none());
        // OAuth 1.0a's pending authorization holds the sealed request token secret: read back whole.
        let mut oauth1 = state(&format!("h-{}", ulid::Ulid::new()), 600);
        let sealed = crate::domain::Sealed { key_id: "k".into(), wrapped_key: vec![3; 40], ciphertext: vec![4; 40] };
        oauth1.request_token_secret = Some(sealed);
        store.put_oauth_state(&oauth1).await.unwrap();
        assert_eq!(store.take_oauth_state(&oauth1.hash, now()).await.unwrap(), Some(oauth1));
    }

    pub async fn logs_are_newest_first_and_go_with_the_connection(store: Arc<dyn Store>) {
        let org = fresh_org();
        let def = definition(&org, "acme");
        store.put_definition(&def, Expect::Absent).await.unwrap();
        let conn = connection(&def, "c-1");
        store.insert_connection(&conn).await.unwrap();
        for (i, kind) in [LogType::Created, LogType::Updated, LogType::Used].into_iter().enumerate() {
            store.append_log(&org, &conn.id, &LogEntry::new(now(), kind, format!("line {i}"))).await.unwrap();
        }
        let logs = store.list_logs(&org, &conn.id, 10).await.unwrap();
        let kinds: Vec<_> = logs.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, [LogType::Used, LogType::Updated, LogType::Created]);
        assert_eq!(store.list_logs(&org, &conn.id, 2).await.unwrap().len(), 2);
        assert!(store.list_logs(&fresh_org(), &conn.id, 10).await.unwrap().is_empty());
        store.delete_connection(&org, &conn.id).await.unwrap();
        assert!(store.list_logs(&org, &conn.id, 10).await.unwrap().is_empty());
    }
}

/// The key-provider and envelope cases.
pub mod keys {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::crypto::KeyProvider;
    use crate::crypto::{CryptoError, EncryptionContext, Envelope};

    fn ctx(org: &OrgId) -> (EncryptionContext, ConnectionId) {
        let id = ConnectionId::generate();
        (EncryptionContext::connection(org, &id), id)
    }

    pub async fn sealed_values_open_only_under_their_context(keys: Arc<dyn KeyProvider>) {
        let env = Envelope::with_cache(keys, 0, Duration::ZERO);
        let org = fresh_org();
        let (a, _) = ctx(&org);
        let (b, _) = ctx(&org);
        let sealed = env.seal(&a, b"sk_live_secret").await.unwrap();
        assert_eq!(env.open(&a, &sealed).await.unwrap().as_slice(), b"sk_live_secret");
        assert!(!sealed.ciphertext.windows(14).any(|w| w == b"sk_live_secret"));
        assert!(matches!(env.open(&b, &sealed).await, Err(CryptoError::Decrypt)), "another record's context");
        let other_org = EncryptionContext::connection(&fresh_org(), &ConnectionId::generate());
        assert!(matches!(env.open(&other_org, &sealed).await, Err(CryptoError::Decrypt)));
    }

    pub async fn data_keys_unwrap_only_under_their_context(keys: Arc<dyn KeyProvider>) {
        let org = fresh_org();
        let (a, _) = ctx(&org);
        let (b, _) = ctx(&org);
        let dk = keys.generate_data_key(&a).await.unwrap();
        let back = keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &a).await.unwrap();
        assert_eq!(back.expose(), dk.plaintext.expose());
        assert!(keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &b).await.is_err());
        let dk2 = keys.generate_data_key(&a).await.unwrap();
        assert_ne!(dk.plaintext.expose(), dk2.plaintext.expose(), "a fresh data key per record");
        assert!(!dk.wrapped.windows(32).any(|w| w == dk.plaintext.expose()), "the wrapped key hides the key");
    }

    pub async fn tampering_is_detected(keys: Arc<dyn KeyProvider>) {
        let env = Envelope::with_cache(keys, 0, Duration::ZERO);
        let (a, _) = ctx(&fresh_org());
        let sealed = env.seal(&a, b"value").await.unwrap();
        let mut flipped = sealed.clone();
        let last = flipped.ciphertext.len() - 1;
        flipped.ciphertext[last] ^= 1;
        assert!(env.open(&a, &flipped).await.is_err());
        let mut wrapped = sealed.clone();
        wrapped.wrapped_key[20] ^= 1;
        assert!(env.open(&a, &wrapped).await.is_err());
    }

    /// A value that decrypts but is not what its reader expects (not JSON, not UTF-8) is a
    /// `Format` error, never `Decrypt`: the key and context were right, the content is not.
    pub async fn opened_values_of_the_wrong_shape_are_format_errors(keys: Arc<dyn KeyProvider>) {
        let env = Envelope::with_cache(keys, 0, Duration::ZERO);
        let (a, _) = ctx(&fresh_org());
        let not_json = env.seal(&a, b"sk_live_not json").await.unwrap();
        let opened: Result<BTreeMap<String, String>, _> = env.open_json(&a, &not_json).await;
        assert!(matches!(opened, Err(CryptoError::Format)), "not JSON");
        assert!(matches!(env.open_secrets(&a, &not_json).await, Err(CryptoError::Format)), "not a secrets map");
        let not_utf8 = env.seal(&a, &[0xff, 0xfe, 0x00]).await.unwrap();
        assert!(matches!(env.open_str(&a, &not_utf8).await, Err(CryptoError::Format)), "not UTF-8");
        let wrong_shape = env.seal_json(&a, &serde_json::json!({"apiKey": 1})).await.unwrap();
        assert!(matches!(env.open_secrets(&a, &wrong_shape).await, Err(CryptoError::Format)), "not strings");
        let (b, _) = ctx(&fresh_org());
        assert!(matches!(env.open_secrets(&b, &wrong_shape).await, Err(CryptoError::Decrypt)), "wrong context");
    }

    pub async fn the_key_cache_never_skips_the_context_check(keys: Arc<dyn KeyProvider>) {
        let env = Envelope::new(keys);
        let org = fresh_org();
        let (a, _) = ctx(&org);
        let (b, _) = ctx(&org);
        let sealed = env.seal(&a, b"value").await.unwrap();
        assert!(env.open(&a, &sealed).await.is_ok());
        assert!(env.open(&b, &sealed).await.is_err(), "a cached data key is not used for another context");
    }
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
            the_due_index_holds_the_earliest_of_refresh_warning_and_lapse,
            the_due_index_pages_past_stuck_entries_and_forgets_cleared_ones,
            revocation_jobs_are_claimed_once_and_deleted,
            webhooks_round_trip_with_conditional_puts,
            deliveries_are_inserted_once_and_listed_newest_first,
            concurrent_inserts_of_one_delivery_have_one_winner,
            delivery_updates_are_conditional_on_the_version,
            deleting_a_webhook_deletes_its_deliveries,
            due_deliveries_are_pending_soonest_first_across_orgs,
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
