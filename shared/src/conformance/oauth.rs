//! Store cases for the OAuth flows' short-lived records: revocation jobs (claimed once,
//! retried, deleted) and pending authorizations (single use, expiring).

use std::sync::Arc;

use time::OffsetDateTime;

use super::{fresh_org, now};
use crate::crypto::Sealed;
use crate::domain::{ConnectionId, DefinitionKey, OrgId, RevocationJob};
use crate::ports::{Store, StoreError};

/// A job of `org` for connection `conn`, first attempted at `at`, living until `expires_at`
/// (its tokens and settings stand-in seals: the store never opens them).
fn revocation_job(org: &OrgId, conn: &ConnectionId, at: OffsetDateTime, expires_at: OffsetDateTime) -> RevocationJob {
    let sealed = Sealed { key_id: "k".into(), wrapped_key: vec![1; 40], ciphertext: vec![2; 40] };
    RevocationJob {
        id: ulid::Ulid::new().to_string(),
        org: org.clone(),
        connection_id: conn.clone(),
        definition: DefinitionKey::parse("acme").unwrap(),
        tokens: sealed.clone(),
        settings: sealed,
        attempts: 0,
        next_attempt_at: at,
        expires_at,
    }
}

pub async fn revocation_jobs_are_claimed_once_and_deleted(store: Arc<dyn Store>) {
    let org = fresh_org();
    let t0 = now();
    let job = |conn: &ConnectionId, at: OffsetDateTime| revocation_job(&org, conn, at, t0 + time::Duration::days(7));
    let conn = ConnectionId::generate();
    let now_job = job(&conn, t0 - time::Duration::seconds(1));
    let later_job = job(&conn, t0 + time::Duration::hours(1));
    store.put_revocation(&now_job).await.unwrap();
    store.put_revocation(&later_job).await.unwrap();
    assert!(matches!(store.put_revocation(&now_job).await, Err(StoreError::Conflict)));
    assert_eq!(store.revocations_of(&org, &conn).await.unwrap().len(), 2);
    let due: Vec<_> =
        store.due_revocations(t0, 10_000, usize::MAX).await.unwrap().into_iter().filter(|j| j.org == org).collect();
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

/// A revocation job's next attempt is filed under the whole second at or after it, like the
/// connections' due index: a reader up to any instant of the second it falls in does not find
/// it (the attempt would be skipped as not due yet, and retried a sweep later), one at the next
/// second does; a job due on a whole second is found from that second on.
pub async fn revocation_jobs_come_due_no_earlier_than_their_time(store: Arc<dyn Store>) {
    let org = fresh_org();
    let second = OffsetDateTime::from_unix_timestamp(now().unix_timestamp() + 60).unwrap();
    let ms = time::Duration::milliseconds;
    let job = |at| revocation_job(&org, &ConnectionId::generate(), at, second + time::Duration::days(3));
    let (fraction, whole) = (job(second + ms(300)), job(second));
    store.put_revocation(&fraction).await.unwrap();
    store.put_revocation(&whole).await.unwrap();
    let ids = |until| {
        let (store, org) = (store.clone(), org.clone());
        async move {
            let due = store.due_revocations(until, 10_000, usize::MAX).await.unwrap();
            let mut ids: Vec<String> = due.into_iter().filter(|j| j.org == org).map(|j| j.id).collect();
            ids.sort();
            ids
        }
    };
    assert!(ids(second - ms(1)).await.is_empty(), "nothing is due yet");
    for until in [second, second + ms(300), second + ms(999)] {
        assert_eq!(ids(until).await, vec![whole.id.clone()], "at {until}, only the whole second's job");
    }
    let mut both = vec![fraction.id.clone(), whole.id.clone()];
    both.sort();
    assert_eq!(ids(second + ms(1_000)).await, both, "a second later, both");
    // A retry scheduled into a second is filed the same way.
    let mut retry = whole.clone();
    retry.attempts = 1;
    retry.next_attempt_at = second + time::Duration::seconds(4) + ms(1);
    store.update_revocation(&retry, 0).await.unwrap();
    assert_eq!(ids(second + time::Duration::seconds(4) + ms(999)).await, vec![fraction.id.clone()]);
    assert_eq!(ids(second + time::Duration::seconds(5)).await, both);
}

/// `due_revocations` hands out at most `limit` jobs however many shards their due entries fall
/// in (DynamoDB spreads them over 16), oldest first across all of them, every one of them due,
/// and all of them without a limit.
pub async fn due_revocations_honour_their_limit_across_shards(store: Arc<dyn Store>) {
    let org = fresh_org();
    let t0 = now();
    // Due ten years ago, ten seconds apart (the index files a job under its whole second): older
    // than any other test's jobs in a shared store, so the oldest five are ours.
    let oldest = t0 - time::Duration::days(3650);
    let jobs: Vec<RevocationJob> = (0..40)
        .map(|i| {
            revocation_job(
                &org,
                &ConnectionId::generate(),
                oldest + time::Duration::seconds(10 * i),
                t0 + time::Duration::days(3),
            )
        })
        .collect();
    // Put newest first: neither the order of writes nor of ids decides the answer.
    for job in jobs.iter().rev() {
        store.put_revocation(job).await.unwrap();
    }
    let few: Vec<String> = store.due_revocations(t0, 5, usize::MAX).await.unwrap().into_iter().map(|j| j.id).collect();
    let want: Vec<String> = jobs[..5].iter().map(|j| j.id.clone()).collect();
    assert_eq!(few, want, "the five oldest due jobs, oldest first");
    let mut ours: Vec<String> = store
        .due_revocations(t0, 10_000, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.org == org)
        .map(|j| j.id)
        .collect();
    let mut want: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
    ours.sort();
    want.sort();
    assert_eq!(ours, want, "every due job without a limit");
}

/// `due_revocations` hands out at most `per_org` jobs of one organization (its oldest), so the
/// jobs of another organization, newer as they are, come out beside a crowd of due jobs of the
/// first: read past it page after page, however the store spreads the two over its shards.
pub async fn due_revocations_share_their_limit_among_organizations(store: Arc<dyn Store>) {
    let (crowd, other) = (fresh_org(), fresh_org());
    let t0 = now();
    let oldest = t0 - time::Duration::days(3650);
    let jobs = |org: &OrgId, from: OffsetDateTime, count: i64| -> Vec<RevocationJob> {
        (0..count)
            .map(|i| {
                let at = from + time::Duration::seconds(10 * i);
                revocation_job(org, &ConnectionId::generate(), at, t0 + time::Duration::days(3))
            })
            .collect()
    };
    // 160 of the crowd (about 10 a shard of DynamoDB's 16), every one older than the other's 3.
    let crowded = jobs(&crowd, oldest, 160);
    let others = jobs(&other, oldest + time::Duration::seconds(10_000), 3);
    for job in crowded.iter().chain(&others) {
        store.put_revocation(job).await.unwrap();
    }
    let ids = |jobs: &[RevocationJob]| jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
    let due = |limit, per_org| {
        let store = store.clone();
        async move { store.due_revocations(t0, limit, per_org).await.unwrap() }
    };

    // Round by round: each organization's oldest, then each one's second oldest...
    let want: Vec<String> = ids(&[
        crowded[0].clone(),
        others[0].clone(),
        crowded[1].clone(),
        others[1].clone(),
        crowded[2].clone(),
        others[2].clone(),
        crowded[3].clone(),
        crowded[4].clone(),
    ]);
    assert_eq!(ids(&due(8, 5).await), want, "five of the crowd and the other organization's three, round by round");
    // One of each: every shard is read past the crowd's keys to the other's.
    assert_eq!(ids(&due(2, 1).await), vec![crowded[0].id.clone(), others[0].id.clone()]);
    let of = |jobs: Vec<RevocationJob>, org: &OrgId| jobs.into_iter().filter(|j| &j.org == org).count();
    let crowds_first: Vec<String> = due(10_000, 3).await.into_iter().filter(|j| j.org == crowd).map(|j| j.id).collect();
    assert_eq!(crowds_first, ids(&crowded[..3]), "the crowd's three oldest, across shards");
    assert_eq!(of(due(10_000, 3).await, &crowd), 3, "no more than three of the crowd");
    assert_eq!(of(due(10_000, usize::MAX).await, &crowd), 160, "all of them without a cap");
}

/// `due_revocations` takes its answer round by round, so however many organizations have a
/// crowd of due jobs, one more organization's single newer job comes out while fewer
/// organizations than `limit` have jobs due: six crowds of 30 (about 2 a shard of DynamoDB's
/// 16 each), and a `limit` of 10 with 5 of one organization, which six crowds' oldest five
/// would fill twice over in due order.
pub async fn due_revocations_go_round_by_round_among_organizations(store: Arc<dyn Store>) {
    let t0 = now();
    // Each case has a store of its own: every due job in it is this case's.
    let oldest = t0 - time::Duration::days(4000);
    let crowds: Vec<Vec<RevocationJob>> = (0..6)
        .map(|c| {
            let org = fresh_org();
            (0..30)
                .map(|i| {
                    let at = oldest + time::Duration::seconds(1_000 * c + 10 * i);
                    revocation_job(&org, &ConnectionId::generate(), at, t0 + time::Duration::days(3))
                })
                .collect()
        })
        .collect();
    let late = revocation_job(
        &fresh_org(),
        &ConnectionId::generate(),
        oldest + time::Duration::seconds(100_000),
        t0 + time::Duration::days(3),
    );
    for job in crowds.iter().flatten().chain([&late]) {
        store.put_revocation(job).await.unwrap();
    }
    let got: Vec<String> = store.due_revocations(t0, 10, 5).await.unwrap().into_iter().map(|j| j.id).collect();
    // The first round: each crowd's oldest, then the late organization's one; the second round
    // begins with the crowds' second oldest, oldest first.
    let mut want: Vec<String> = crowds.iter().map(|c| c[0].id.clone()).collect();
    want.push(late.id.clone());
    want.extend(crowds.iter().take(3).map(|c| c[1].id.clone()));
    assert_eq!(got, want, "every organization's oldest, then the second oldest of the first three crowds");
    let got: Vec<String> = store.due_revocations(t0, 3, 5).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(
        got,
        crowds.iter().take(3).map(|c| c[0].id.clone()).collect::<Vec<_>>(),
        "a round cut by the limit: its oldest"
    );
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
