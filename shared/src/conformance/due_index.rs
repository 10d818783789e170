//! Store cases for the due index the sweep reads: what is due and nothing else, the earliest
//! of a connection's due times, and paging past entries the sweep cannot refresh.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{connection, definition, fresh_org, now};
use crate::domain::{Connection, OrgId, Status, due_second};
use crate::ports::{DueEntry, Expect, Store};

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

/// The index never hands out an entry before its time: a connection due a fraction into a
/// second is filed under the next whole second, so a reader up to any instant of the second it
/// is due in does not find it, and one at the next second does. (Filed under the second it
/// falls in, it would come out up to a second early, when its record is not due yet, and the
/// sweep would pass it by until its next run.)
pub async fn the_due_index_hands_out_nothing_before_its_time(store: Arc<dyn Store>) {
    let org = fresh_org();
    let def = definition(&org, "acme");
    store.put_definition(&def, Expect::Absent).await.unwrap();
    let second = OffsetDateTime::from_unix_timestamp(now().unix_timestamp() + 60).unwrap();
    let ms = time::Duration::milliseconds;
    let mut fraction = connection(&def, "c-1");
    fraction.refresh.due_at = Some(second + ms(300));
    let mut whole = connection(&def, "c-2");
    whole.refresh.due_at = Some(second);
    for c in [&fraction, &whole] {
        store.insert_connection(c).await.unwrap();
    }
    let ids = |until| {
        let (store, org) = (store.clone(), org.clone());
        async move { all_due(&store, &org, until, 100).await.into_iter().map(|e| e.id).collect::<Vec<_>>() }
    };
    assert!(ids(second - ms(1)).await.is_empty(), "nothing is due yet");
    for until in [second, second + ms(299), second + ms(300), second + ms(999)] {
        assert_eq!(ids(until).await, vec![whole.id.clone()], "at {until}, only the whole second is due");
    }
    let mut both = ids(second + ms(1_000)).await;
    both.sort();
    let mut expected = vec![fraction.id.clone(), whole.id.clone()];
    expected.sort();
    assert_eq!(both, expected, "a second later, both");
    let entry = all_due(&store, &org, second + ms(1_000), 100).await.into_iter().find(|e| e.id == fraction.id);
    assert_eq!(entry.map(|e| e.due), Some(second.unix_timestamp() + 1), "filed under the next second");
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
    assert_eq!(due_times().await, vec![due_second(t0 + hours(3))], "the warning comes first");
    let mut next = c.clone();
    next.refresh.rt_warn_at = None;
    next.version = 2;
    store.update_connection(&next, 1).await.unwrap();
    assert_eq!(due_times().await, vec![due_second(t0 + hours(5))], "then the lapse");
    let mut refreshed = next.clone();
    refreshed.oauth.as_mut().unwrap().refresh_token_expires_at = Some(t0 + hours(50));
    refreshed.version = 3;
    store.update_connection(&refreshed, 2).await.unwrap();
    assert_eq!(due_times().await, vec![due_second(t0 + hours(9))], "then the refresh");
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
    assert_eq!(moved[0].due, due_second(t0 + time::Duration::minutes(10)));
    // A deleted connection leaves the index with it.
    assert!(store.delete_connection(&org, &healthy.id).await.unwrap());
    assert!(all_due(&store, &org, t0 + time::Duration::hours(1), 1_000).await.is_empty());
}
