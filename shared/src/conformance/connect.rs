//! Store cases for connect sessions (SPEC section 9): stored as put, forgotten once expired,
//! and their link traded at most once, by one conditional write.

use std::sync::Arc;

use time::Duration;

use super::{fresh_org, now};
use crate::domain::connect::{SESSION_TTL, secret_hash};
use crate::domain::{ConnectContext, ConnectSession, ConnectionId, CustomerId, DefinitionKey, InstanceId, Redirects};
use crate::ports::{Store, StoreError};

fn session(link_secret: &str) -> ConnectSession {
    let at = now();
    ConnectSession {
        id: ulid::Ulid::new().to_string(),
        org: fresh_org(),
        customer: CustomerId::parse("c-1").expect("valid customer"),
        definitions: vec![DefinitionKey::parse("acme-api").expect("valid key")],
        connection_id: Some(ConnectionId::generate()),
        context: ConnectContext {
            instance_id: Some(InstanceId::parse("inst-1").expect("valid instance")),
            integration_name: Some("Sync".into()),
            ..Default::default()
        },
        redirects: Some(Redirects { success_url: Some("https://app.example.com/ok".into()), failure_url: None }),
        parent_origin: Some("https://app.example.com".into()),
        link_hash: secret_hash(link_secret),
        browser_hash: None,
        created_at: at,
        expires_at: at + SESSION_TTL,
    }
}

pub async fn connect_sessions_round_trip_and_expire(store: Arc<dyn Store>) {
    let s = session("link-secret-1");
    store.put_connect_session(&s).await.unwrap();
    assert!(matches!(store.put_connect_session(&s).await, Err(StoreError::Conflict)), "ids are unique");
    assert_eq!(store.get_connect_session(&s.id, now()).await.unwrap(), Some(s.clone()));
    assert_eq!(store.get_connect_session(&ulid::Ulid::new().to_string(), now()).await.unwrap(), None);
    // Expired: gone for reads, however late the backend's TTL is.
    assert_eq!(store.get_connect_session(&s.id, s.expires_at).await.unwrap(), None);
    assert_eq!(store.get_connect_session(&s.id, s.expires_at - Duration::seconds(1)).await.unwrap(), Some(s.clone()));
}

pub async fn connect_links_are_traded_once(store: Arc<dyn Store>) {
    let s = session("link-secret-2");
    store.put_connect_session(&s).await.unwrap();
    let (link, browser) = (secret_hash("link-secret-2"), secret_hash("browser-secret"));

    // Another link's hash, or too late: nothing found, nothing changed.
    assert_eq!(store.trade_connect_link(&s.id, &secret_hash("guess"), &browser, now()).await.unwrap(), None);
    assert_eq!(store.trade_connect_link(&s.id, &link, &browser, s.expires_at).await.unwrap(), None);
    assert_eq!(
        store.trade_connect_link(&ulid::Ulid::new().to_string(), &link, &browser, now()).await.unwrap(),
        None,
        "an unknown session"
    );
    assert_eq!(store.get_connect_session(&s.id, now()).await.unwrap().unwrap().browser_hash, None);

    let traded = store.trade_connect_link(&s.id, &link, &browser, now()).await.unwrap();
    let expected = ConnectSession { browser_hash: Some(browser.clone()), ..s.clone() };
    assert_eq!(traded.as_ref(), Some(&expected));
    assert_eq!(store.get_connect_session(&s.id, now()).await.unwrap(), Some(expected.clone()));
    // A second trade, even with the same hashes, finds nothing and keeps the first browser.
    let again = store.trade_connect_link(&s.id, &link, &secret_hash("another browser"), now()).await.unwrap();
    assert_eq!(again, None);
    assert_eq!(store.trade_connect_link(&s.id, &link, &browser, now()).await.unwrap(), None);
    assert_eq!(store.get_connect_session(&s.id, now()).await.unwrap(), Some(expected));
}

pub async fn concurrent_trades_of_one_link_have_one_winner(store: Arc<dyn Store>) {
    let s = session("link-secret-3");
    store.put_connect_session(&s).await.unwrap();
    let link = secret_hash("link-secret-3");
    let browsers: Vec<String> = (0..8).map(|i| secret_hash(&format!("browser-{i}"))).collect();
    let at = now();
    let results =
        futures_util::future::join_all(browsers.iter().map(|b| store.trade_connect_link(&s.id, &link, b, at))).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().expect("no store error").as_ref()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let stored = store.get_connect_session(&s.id, now()).await.unwrap().unwrap();
    assert_eq!(stored.browser_hash, winners[0].browser_hash, "the winner's browser is the one kept");
}
