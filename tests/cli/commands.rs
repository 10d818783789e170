//! The commands that talk to a Latchkey API (`definitions`, `connections`, `lookup`, `import`)
//! end to end against a real `latchkey serve` (embedded backend).

use std::collections::BTreeMap;

use latchkey_client::{ConnectionFilter, NewConnection};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::harness::{Run, Server, latchkey};

pub const ACME: &str = r#"
- key: acme-api
  label: Acme API
  auth: api_key
  inputs:
    apiKey: {label: API Key, type: password, required: true}
    endpoint: {label: Endpoint, type: url, default: "https://api.acme.com"}
- key: crm
  provider: github
  # No verify request (the catalog's calls api.github.com, out of reach of the tests): imports
  # with live tokens would be checked at create.
  verify: null
  inputs:
    clientId: {label: Client ID, type: string, default: client-1}
"#;

pub async fn definition_version(server: &Server, token: &str, key: &str) -> u64 {
    server.client(token).get_definition(key).await.expect("read the definition").expect("it exists").version
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_apply_creates_then_writes_only_what_changed_with_a_diff() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let file = server.write("defs.yaml", ACME);

    let first = server.run(&org, &["definitions", "apply", "-f", &file]).await;
    first.ok();
    assert!(first.stdout.contains("+ acme-api (new") && first.stdout.contains("+ crm (new"), "{first:#?}");
    assert!(first.stdout.contains("+      \"default\": \"https://api.acme.com\""), "the diff: {}", first.stdout);
    assert!(first.stderr.contains("created 2, updated 0, unchanged 0"), "{first:#?}");

    // The same file again writes nothing: the provider's filled-in inputs compare equal too.
    let again = server.run(&org, &["definitions", "apply", "-f", &file]).await;
    again.ok();
    assert!(
        again.stdout.contains("= acme-api (unchanged)") && again.stdout.contains("= crm (unchanged)"),
        "{again:#?}"
    );
    assert_eq!(definition_version(&server, &org, "acme-api").await, 1, "no PUT for an unchanged definition");
    assert_eq!(definition_version(&server, &org, "crm").await, 1);

    let changed = server.write("defs2.yaml", &ACME.replace("https://api.acme.com", "https://eu.acme.com"));
    let dry = server.run(&org, &["definitions", "apply", "-f", &changed, "--dry-run"]).await;
    dry.ok();
    assert!(dry.stdout.contains("~ acme-api (changes"), "{dry:#?}");
    assert!(
        dry.stdout.contains("-      \"default\": \"https://api.acme.com\"")
            && dry.stdout.contains("+      \"default\": \"https://eu.acme.com\""),
        "{}",
        dry.stdout
    );
    assert!(dry.stderr.contains("would update 1"), "{dry:#?}");
    assert_eq!(definition_version(&server, &org, "acme-api").await, 1, "a dry run writes nothing");

    server.run(&org, &["definitions", "apply", "-f", &changed]).await.ok();
    assert_eq!(definition_version(&server, &org, "acme-api").await, 2);
    assert_eq!(definition_version(&server, &org, "crm").await, 1, "only what changed is written");
    let stored = server.client(&org).get_definition("acme-api").await.unwrap().unwrap();
    assert_eq!(stored.inputs["endpoint"]["default"], "https://eu.acme.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_apply_reads_json_and_refuses_an_invalid_file_before_writing_anything() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let good = json!({"key": "one", "auth": "api_key", "inputs": {"k": {"label": "K", "type": "string"}}});
    let bad = json!([
        {"key": "two", "auth": "api_key"},
        {"key": "three", "auth": "carrier_pigeon"},
        {"key": "Four Keys", "auth": "api_key"}
    ]);
    let good_file = server.write("one.json", &good.to_string());
    let bad_file = server.write("bad.json", &bad.to_string());
    let run = server.run(&org, &["definitions", "apply", "-f", &good_file, "-f", &bad_file]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("nothing was applied"), "{run:#?}");
    assert!(run.stderr.contains("bad.json[1] (three): auth:"), "names the file, entry and field: {run:#?}");
    assert!(run.stderr.contains("bad.json[2] (Four Keys): key: must be"), "{run:#?}");
    // A bad key alone: checked as the server checks its path segment, before anything is written
    // (it used to pass the local check, and the entries before it were written).
    let bad_key = server.write(
        "key.json",
        &json!([{"key": "five", "auth": "api_key"}, {"key": "Four Keys", "auth": "api_key"}]).to_string(),
    );
    for args in [&["definitions", "apply", "-f", &bad_key][..], &["definitions", "apply", "-f", &bad_key, "--dry-run"]]
    {
        let run = server.run(&org, args).await;
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(run.stderr.contains("key.json[1] (Four Keys): key: must be"), "{run:#?}");
    }
    assert!(server.client(&org).list_definitions().await.unwrap().is_empty(), "not the valid entry either");
    assert!(server.client(&org).list_definitions().await.unwrap().is_empty(), "not even the valid file");

    server.run(&org, &["definitions", "apply", "-f", &good_file]).await.ok();
    assert_eq!(definition_version(&server, &org, "one").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn import_creates_each_record_and_reports_failures_by_line_with_their_problems() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.token("acme", &["runtime"]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();

    let lines = [
        json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_canary_1"}}).to_string(),
        json!({"definition": "acme-api", "customer": "c-2", "values": {"apiKey": "sk_canary_2"}}).to_string(),
        String::new(),
        json!({"definition": "acme-api", "customer": "c-3"}).to_string(),
        "{not json".to_owned(),
        json!({"definition": "crm", "customer": "c-4", "tokens": {"access_token": "at_canary", "refresh_token": "rt_canary",
            "expires_in": 3600, "scopes": ["read:user"], "token_type": "Bearer"}})
        .to_string(),
    ];
    let file = server.write("import.jsonl", &lines.join("\n"));
    let run = server.run(&org, &["import", &file, "--concurrency", "3"]).await;
    assert_eq!(run.code, Some(1), "a failed record fails the command: {run:#?}");
    assert!(run.stderr.contains("imported 3 of 5"), "{run:#?}");
    assert!(
        run.stderr.contains("line 4: InvalidRequest") && run.stderr.contains("values.apiKey: is required"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("line 5: not JSON"), "{run:#?}");
    assert!(!run.stderr.contains("canary") && !run.stdout.contains("canary"), "no secret is printed: {run:#?}");
    let imported: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let at: std::collections::BTreeSet<&str> = imported.iter().map(|v| v["at"].as_str().unwrap()).collect();
    assert_eq!(at, ["line 1", "line 2", "line 6"].into());

    // The imported tokens are what a lookup hands out.
    let oauth = imported.iter().find(|v| v["at"] == "line 6").unwrap()["connection_id"].as_str().unwrap();
    let creds = server.client(&runtime).lookup(oauth, None).await.expect("lookup of the imported connection");
    assert_eq!(creds.token.as_ref().unwrap().access_token.expose_secret(), "at_canary");
    assert_eq!(creds.token.as_ref().unwrap().scopes, ["read:user"]);

    // A JSON array from stdin, numbered by record.
    let array = json!([{"definition": "acme-api", "customer": "c-5", "values": {"apiKey": "k"}}, {"definition": "nope", "customer": "c"}]);
    let run = server.run_with_stdin(&org, &["import", "-"], Some(&array.to_string())).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("imported 1 of 2") && run.stderr.contains("record 2: "), "{run:#?}");
}

/// Each record carries an `Idempotency-Key` of its place and owner: a re-run of the same file
/// (after a timeout, say) answers the connections already made and creates none again.
#[tokio::test(flavor = "multi_thread")]
async fn importing_the_same_file_twice_creates_each_connection_once() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    // Two records for one customer and definition, told apart by their lines only.
    let lines = [
        json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_canary_1"}}).to_string(),
        json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_canary_2"}}).to_string(),
        json!({"definition": "acme-api", "customer": "c-2", "values": {"apiKey": "sk_canary_3"}}).to_string(),
    ];
    let file = server.write("import.jsonl", &lines.join("\n"));
    let ids = |run: &Run| -> BTreeMap<String, String> {
        run.stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .map(|v| (v["at"].as_str().unwrap().to_owned(), v["connection_id"].as_str().unwrap().to_owned()))
            .collect()
    };
    let first = server.run(&org, &["import", &file]).await;
    first.ok();
    let second = server.run(&org, &["import", &file, "--concurrency", "1"]).await;
    second.ok();
    assert_eq!(ids(&first).len(), 3, "{first:#?}");
    assert_eq!(ids(&first), ids(&second), "the same connections answered again");
    let listed = server.client(&org).list_connections(&ConnectionFilter::default()).await.unwrap();
    assert_eq!(listed.items.len(), 3, "each record once: {:?}", listed.items);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_list_filters_and_get_shows_no_secret() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let client = server.client(&org);
    let mut ids = Vec::new();
    for customer in ["c-1", "c-1", "c-2"] {
        let body: NewConnection = serde_json::from_value(
            json!({"definition": "acme-api", "customer": customer, "values": {"apiKey": "sk_canary"}}),
        )
        .unwrap();
        ids.push(client.create_connection(&body).await.expect("create").id);
    }

    let table = server.run(&org, &["connections", "list"]).await;
    table.ok();
    assert!(table.stdout.starts_with("ID "), "{table:#?}");
    assert!(ids.iter().all(|id| table.stdout.contains(id.as_str())), "{table:#?}");
    assert!(table.stderr.contains("3 connections"), "{table:#?}");

    let only =
        server.run(&org, &["connections", "list", "--customer", "c-1", "--definition", "acme-api", "--json"]).await;
    let listed = only.ok().json();
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{only:#?}");
    assert!(!listed.contains(&ids[2].as_str()));

    let got = server.run(&org, &["connections", "get", &ids[0]]).await;
    let view = got.ok().json();
    assert_eq!(view["id"], ids[0].as_str());
    assert_eq!(view["values"]["apiKey"], json!({"set": true}));
    assert!(!got.stdout.contains("canary"));

    let missing = server.run(&org, &["connections", "get", "con_00000000000000000000000000"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("ConnectionNotFound"), "{missing:#?}");

    // A base URL with /v1 in it: every list is a 404, said as a wrong URL, not a missing connection.
    let wrong = format!("{}/v1", server.url.trim_end_matches('/'));
    for list in [&["connections", "list"][..], &["definitions", "list"]] {
        let run = server.run_with(&org, list, None, &[("LATCHKEY_URL", &wrong)]).await;
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(run.stderr.contains(&format!("the list itself was not found at {wrong}")), "{run:#?}");
        assert!(run.stderr.contains("without /v1"), "{run:#?}");
    }
    // A password in the URL is not repeated.
    let with_password = wrong.replacen("http://", "http://me:pw_canary@", 1);
    let run = server.run_with(&org, &["connections", "list"], None, &[("LATCHKEY_URL", &with_password)]).await;
    assert!(run.stderr.contains(&format!("the list itself was not found at {wrong}")), "{run:#?}");
    assert!(!run.stderr.contains("pw_canary"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_prints_the_credentials_for_a_runtime_token_and_refusals_exit_non_zero() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.token("acme", &["runtime"]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let body: NewConnection =
        serde_json::from_value(json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_live_1"}}))
            .unwrap();
    let id = server.client(&org).create_connection(&body).await.unwrap().id;

    let run = server.run(&runtime, &["lookup", &id]).await;
    let creds = run.ok().json();
    assert_eq!(creds["fields"]["apiKey"], "sk_live_1", "printed in clear, as asked");
    assert_eq!(creds["fields"]["endpoint"], "https://api.acme.com");
    assert_eq!(creds["status"], "active");
    assert_eq!(creds["token"], Value::Null);

    let refused = server.run(&org, &["lookup", &id]).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("Forbidden") && refused.stdout.is_empty(), "{refused:#?}");
    let no_token = server.run("", &["lookup", &id]).await;
    assert_eq!(no_token.code, Some(1));
    assert!(no_token.stderr.contains("LATCHKEY_TOKEN"), "{no_token:#?}");
    let help = Run::of(latchkey().args(["lookup", "--help"]).output().unwrap());
    assert!(help.stdout.contains("PRINTS SECRETS"), "{help:#?}");
}
