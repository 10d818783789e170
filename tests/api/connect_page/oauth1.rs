//! The Connect button of an `oauth1` definition (SPEC sections 9 and 12): the continue page
//! links to the provider's authorize URL with the request token, and the callback (which
//! carries `oauth_token` and `oauth_verifier`, no `state`) completes only in the browser that
//! pressed Connect, back on the page. Against the oauthlib provider of `tests/api/oauth1.rs`.

use reqwest::StatusCode;
use serde_json::json;

use super::{Browser, CUSTOMER, link, setup};
use crate::harness::{TestApp, random_hex};

/// The `href` of the continue page's link, unescaped.
fn continue_link(html: &str) -> String {
    let at = html.find("<a class=\"continue\" href=\"").unwrap_or_else(|| panic!("no continue link in {html}"));
    let rest = &html[at + "<a class=\"continue\" href=\"".len()..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}

#[tokio::test]
async fn the_connect_button_of_an_oauth1_definition_completes_in_its_own_browser_only() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let provider = support::oauth1::server();
    let (key, secret) = (format!("consumer{}", random_hex()), format!("secret{}", random_hex()));
    provider.register(&key, &secret, None).await;
    let definition = json!({"label": "Legacy", "auth": "oauth1", "inputs": {
        "requestTokenUrl": {"type": "url", "default": provider.request_token_endpoint()},
        "authorizeUrl": {"type": "url", "default": provider.authorize_endpoint()},
        "accessTokenUrl": {"type": "url", "default": provider.access_token_endpoint()},
        "consumerKey": {"type": "string", "default": key},
        "consumerSecret": {"type": "password", "default": secret}}});
    app.put_definition(&org, "legacy", &definition).await.assert_status(StatusCode::CREATED);
    let mut browser = Browser::new(&app);
    let (id, page) =
        browser.open(&link(&app, &org, json!({"customer": CUSTOMER, "definitions": ["legacy"]})).await).await;
    let csrf = page.csrf();
    let path = format!("/connect/{id}/authorize");
    let fields = [("csrf", csrf.as_str()), ("definition", "legacy")];

    // Approved at the provider, but the callback arrives in another browser: refused.
    let first = browser.post(&path, &fields).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.html);
    let to_provider = continue_link(&first.html);
    assert!(to_provider.starts_with(&format!("{}?oauth_token=", provider.authorize_endpoint())), "{to_provider}");
    let back = provider.approve(&to_provider).await;
    let elsewhere = Browser::new(&app).get(&back).await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
    assert!(elsewhere.html.contains("started in another browser"), "{}", elsewhere.html);

    // Pressed again in the page's browser: the same pending connection, authorized back on the page.
    let again = browser.post(&path, &fields).await;
    let back = provider.approve(&continue_link(&again.html)).await;
    let done = browser.get(&back).await;
    assert!(done.status.is_redirection(), "{}: {}", done.status, done.html);
    let listed = app.list_connections(&org, "").await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.body);
    let cid = items[0]["id"].as_str().unwrap();
    assert_eq!(done.location(), format!("{}/connect/{id}?connected={cid}", app.url("")));
    assert_eq!(items[0]["status"], "configured");
    let shown = browser.get(done.location()).await;
    assert!(shown.html.contains("Authorization completed successfully"), "{}", shown.html);
}
