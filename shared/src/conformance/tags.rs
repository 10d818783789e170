//! Store cases for tag filters on listings (SPEC section 10).

use std::sync::Arc;

use super::{connection, definition, fresh_org};
use crate::domain::{ConnectionId, CustomerId, Status, TagFilter};
use crate::ports::{ConnectionFilter, Expect, Store};

fn tag(k: &str, v: &str) -> TagFilter {
    TagFilter { key: k.to_owned(), value: v.to_owned() }
}

/// Every page of the listing of `filter`, `limit` at a time: the ids, newest first. Asserts that
/// no page but the last is short: a filter never ends a listing early nor returns an empty page
/// with a cursor.
async fn all_pages(
    store: &Arc<dyn Store>,
    org: &crate::domain::OrgId,
    filter: &ConnectionFilter,
    limit: usize,
) -> Vec<ConnectionId> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_connections(org, filter, limit, cursor.as_ref()).await.unwrap();
        match page.next {
            Some(next) => {
                assert_eq!(page.items.len(), limit, "a page with a next cursor is full");
                seen.extend(page.items.into_iter().map(|c| c.id));
                cursor = Some(next);
            }
            None => {
                seen.extend(page.items.into_iter().map(|c| c.id));
                return seen;
            }
        }
    }
}

pub async fn listings_filter_by_tags_and_page_past_what_does_not_match(store: Arc<dyn Store>) {
    let org = fresh_org();
    let def = definition(&org, "acme");
    store.put_definition(&def, Expect::Absent).await.unwrap();
    // Oldest first: 4 tagged prod (two of them team.name=a b:c"), then 12 newer untagged, so a
    // first page must read past a dozen that do not match.
    let mut prod = Vec::new();
    let mut team = Vec::new();
    for i in 0..16 {
        let mut c = connection(&def, if i % 2 == 0 { "c-1" } else { "c-2" });
        if i < 4 {
            c.tags.insert("env".into(), "prod".into());
            prod.push(c.id.clone());
            if i % 2 == 1 {
                c.tags.insert("team.name".into(), "a b:c\"".into());
                team.push(c.id.clone());
            }
        } else if i % 3 == 0 {
            c.tags.insert("env".into(), "dev".into());
        }
        store.insert_connection(&c).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    prod.reverse();
    team.reverse();
    let by = |tags: Vec<TagFilter>| ConnectionFilter { tags, ..Default::default() };

    for limit in [1, 3, 50] {
        assert_eq!(all_pages(&store, &org, &by(vec![tag("env", "prod")]), limit).await, prod, "limit {limit}");
    }
    let both = by(vec![tag("env", "prod"), tag("team.name", "a b:c\"")]);
    assert_eq!(all_pages(&store, &org, &both, 1).await, team, "every tag must match");
    assert!(all_pages(&store, &org, &by(vec![tag("env", "PROD")]), 5).await.is_empty(), "values match exactly");
    assert!(
        all_pages(&store, &org, &by(vec![tag("tier", "prod")]), 5).await.is_empty(),
        "a missing key matches nothing"
    );
    assert!(all_pages(&store, &org, &by(vec![tag("env", "")]), 5).await.is_empty(), "an empty value is not absence");
    let env_prod_c2 = ConnectionFilter {
        customer: Some(CustomerId::parse("c-2").unwrap()),
        tags: vec![tag("env", "prod")],
        ..Default::default()
    };
    assert_eq!(all_pages(&store, &org, &env_prod_c2, 1).await, team, "with the customer index");
    let by_def =
        ConnectionFilter { definition: Some(def.key.clone()), tags: vec![tag("env", "prod")], ..Default::default() };
    assert_eq!(all_pages(&store, &org, &by_def, 2).await, prod, "with the definition index");
    let red = ConnectionFilter { status: Some(Status::Error), tags: vec![tag("env", "prod")], ..Default::default() };
    assert!(all_pages(&store, &org, &red, 2).await.is_empty(), "with the status");
    assert!(all_pages(&store, &fresh_org(), &by(vec![tag("env", "prod")]), 5).await.is_empty(), "another org");

    // An update that changes the tags moves the connection in and out of the filter.
    let mut changed = store.get_connection(&org, &prod[0]).await.unwrap().unwrap();
    changed.tags.clear();
    changed.tags.insert("env".into(), "staging".into());
    changed.version += 1;
    store.update_connection(&changed, changed.version - 1).await.unwrap();
    assert_eq!(all_pages(&store, &org, &by(vec![tag("env", "prod")]), 2).await, prod[1..]);
    assert_eq!(all_pages(&store, &org, &by(vec![tag("env", "staging")]), 2).await, [prod[0].clone()]);
    let read = store.get_connection(&org, &prod[0]).await.unwrap().unwrap();
    assert_eq!(read.tags, changed.tags, "tags round-trip");
}
