//! Store cases for definitions, connections and their logs: conditional writes, scoping to an
//! organization, the selector's candidates, listings and their filters.

use std::sync::Arc;

use super::{connection, definition, fresh_org, now};
use crate::domain::{CustomerId, Definition, LogEntry, LogType, Scope, Status};
use crate::ports::{ConnectionFilter, Expect, Store, StoreError};

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
