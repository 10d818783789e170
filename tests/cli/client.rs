//! The `latchkey-client` crate against a real `latchkey serve`: typed errors for each refusal,
//! error reports, paging, and no answer at all.

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
