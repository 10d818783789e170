//! The `latchkey-client` crate against a real `latchkey serve`: typed errors for each refusal,
//! error reports, paging, no answer at all, and an OAuth 1.0a lookup (with `latchkey lookup`).

use latchkey_client::{Client, ErrorKind, NewConnection, Status};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::commands::ACME;
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gives_typed_errors_for_each_unusable_connection_and_reports_errors() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.client(&server.token("acme", &["runtime"]).await);
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let org_client = server.client(&org);
    let new = |definition: &str| -> NewConnection {
        let values = if definition == "crm" { json!({}) } else { json!({"apiKey": "k"}) };
        serde_json::from_value(json!({"definition": definition, "customer": "c-1", "values": values})).unwrap()
    };

    // An OAuth connection not authorized yet.
    let pending = org_client.create_connection(&new("crm")).await.expect("create an OAuth connection");
    assert_eq!(pending.status, Status::Pending);
    let e = runtime.lookup(&pending.id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::ConnectionPending), "{e:?}");

    let id = org_client.create_connection(&new("acme-api")).await.unwrap().id;
    let creds = runtime.lookup(&id, Some(60)).await.unwrap();
    assert_eq!(creds.fields.secret("apiKey").unwrap().expose_secret(), "k");
    assert!(!format!("{creds:?}").contains("\"k\""), "Debug hides values");

    let reported = runtime.report_error(&id, "401 from Acme").await.unwrap();
    assert_eq!(reported.status, Status::Error);
    assert_eq!(reported.error.code, "reported");
    let e = runtime.lookup(&id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::ConnectionError), "{e:?}");
    assert_eq!(e.kind().unwrap().error_type(), "ConnectionError", "the Lambda errorType of the same refusal");

    let e = runtime.lookup("con_00000000000000000000000000", None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::NotFound));
    let e = org_client.lookup(&id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::Forbidden));
    let e = server.client("not-a-jwt").get_connection(&id).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::Unauthorized));
    let e = org_client.create_connection(&new("nope")).await.unwrap_err();
    assert!(matches!(e.kind(), Some(ErrorKind::NotFound | ErrorKind::InvalidRequest)), "{e:?}");

    // Paging: every connection, whatever the page size.
    for _ in 0..4 {
        org_client.create_connection(&new("acme-api")).await.unwrap();
    }
    let filter = latchkey_client::ConnectionFilter { limit: Some(2), ..Default::default() };
    let mut pages = 0;
    let all = org_client.all_connections(&filter, |_| pages += 1).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(pages >= 3, "followed the cursor over {pages} pages");

    // No answer at all.
    let closed = Client::new("http://127.0.0.1:9", "t".to_owned().into()).unwrap();
    let e = closed.get_connection(&id).await.unwrap_err();
    assert!(e.is_retryable() && e.kind().is_none(), "{e:?}");
}

/// An `oauth1` connection authorized at the OAuth 1.0a test provider (`support::oauth1`): the
/// client's lookup keeps the `oauth1` member, whose secrets sign a request the provider accepts
/// and never show in `Debug`, and `latchkey lookup` prints that member in clear.
#[tokio::test(flavor = "multi_thread")]
async fn an_oauth1_lookup_gives_the_client_and_the_command_what_signing_needs() {
    let provider = support::oauth1::server();
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime_token = server.token("acme", &["runtime"]).await;
    let key = format!("consumer{}", &support::random_secret()[..16]);
    let secret = format!("s&c+r%t {}", &support::random_secret()[..16]);
    provider.register(&key, &secret, None).await;
    let org_client = server.client(&org);
    let definition = json!({"label": "Legacy API", "auth": "oauth1", "inputs": {
        "requestTokenUrl": {"type": "url", "default": provider.request_token_endpoint()},
        "authorizeUrl": {"type": "url", "default": provider.authorize_endpoint()},
        "accessTokenUrl": {"type": "url", "default": provider.access_token_endpoint()},
        "consumerKey": {"type": "string", "default": key},
        "consumerSecret": {"type": "password", "default": secret}}});
    org_client.put_definition("legacy", &definition).await.expect("an oauth1 definition");
    let new: NewConnection = serde_json::from_value(json!({"definition": "legacy", "customer": "c-1"})).unwrap();
    let id = org_client.create_connection(&new).await.expect("an oauth1 connection").id;

    // Authorize, the user approves at the provider, the browser comes back to the callback.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let started: serde_json::Value = http
        .post(format!("{}/v1/connections/{id}/authorize", server.url))
        .bearer_auth(&org)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let back = provider.approve(started["authorize_url"].as_str().expect("authorize_url")).await;
    let page = http.get(&back).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "{:?}", page.text().await);

    let creds = server.client(&runtime_token).lookup(&id, None).await.expect("the lookup");
    let o = creds.oauth1.as_ref().expect("the oauth1 member");
    assert_eq!((o.consumer_key.as_str(), o.signature_method.as_str()), (key.as_str(), "HMAC-SHA1"));
    assert_eq!(o.consumer_secret.expose_secret(), secret);
    assert!(o.private_key.is_none());
    assert_eq!(o.token.expose_secret(), creds.token.as_ref().unwrap().access_token.expose_secret());
    let debug = format!("{creds:?}");
    for hidden in [o.token_secret.expose_secret(), o.token.expose_secret(), &secret] {
        assert!(!debug.contains(hidden), "Debug shows no secret: {debug}");
    }
    // What an execution does with them: a signed request the provider accepts.
    let token = oauth1_request::Token::new(
        oauth1_request::Credentials::new(o.consumer_key.as_str(), o.consumer_secret.expose_secret()),
        oauth1_request::Credentials::new(o.token.expose_secret(), o.token_secret.expose_secret()),
    );
    let resource = provider.resource_endpoint();
    let authorization =
        oauth1_request::Builder::<_, _, &str>::with_token(token, oauth1_request::HmacSha1::new()).get(&resource, &());
    let res = http.get(&resource).header(reqwest::header::AUTHORIZATION, authorization).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "the provider accepts the signature: {:?}", res.text().await);

    let printed = server.run(&runtime_token, &["lookup", &id]).await.ok().json();
    assert_eq!(printed["oauth1"]["tokenSecret"], o.token_secret.expose_secret(), "printed in clear, as asked");
    assert_eq!(printed["oauth1"]["consumerSecret"], secret.as_str());
    assert_eq!(printed, creds.expose_json());
}
