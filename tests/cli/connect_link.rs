//! `latchkey connect-link` against a real `latchkey serve`: it signs an organization token with
//! the server's JWT secret and prints a connect session's link, then its expiry; the link opens
//! the page once; the API's refusals are told by field; a secret the server does not know gets
//! nothing.

use reqwest::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::commands::ACME;
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread")]
async fn connect_link_prints_a_one_time_link_then_its_expiry() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let secret = [("LATCHKEY_JWT_SECRET", server.secret())];
    // No LATCHKEY_TOKEN is needed: an empty one shows the command signs its own.
    let args = ["connect-link", "--org", "acme", "--customer", "c-1", "--definition", "acme-api"];
    let run = server.run_with("", &args, None, &secret).await;
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert!(lines[0].starts_with(&format!("{}/connect?session=", server.url)), "{run:#?}");
    let expires = OffsetDateTime::parse(lines[1], &Rfc3339).unwrap();
    let left = expires - OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(29) && left <= time::Duration::minutes(30), "{left}");

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    assert_eq!(client.get(lines[0]).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    assert_eq!(client.get(lines[0]).send().await.unwrap().status(), StatusCode::FORBIDDEN, "once");

    let args = ["connect-link", "--org", "acme", "--customer", "c-1", "--definition", "nope"];
    let refused = server.run_with("", &args, None, &secret).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("definitions[0]: no such definition"), "{refused:#?}");
    assert!(refused.stdout.is_empty());

    let other = [("LATCHKEY_JWT_SECRET", "a-secret-this-server-has-never-seen-0123456789")];
    let args = ["connect-link", "--org", "acme", "--customer", "c-1"];
    let unknown = server.run_with("", &args, None, &other).await;
    assert_eq!(unknown.code, Some(1), "{unknown:#?}");
    assert!(unknown.stderr.contains("HTTP 401"), "{unknown:#?}");
}

/// `latchkey connect-link ... | head -1`: a reader that closed the pipe before the command wrote
/// is no failure (exit 0, not the "failed printing to stdout: Broken pipe" panic); the same for
/// `latchkey token`, whose output goes through the same writer.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_is_not_a_failure() {
    let server = Server::start().await;
    for args in [["connect-link", "--org", "acme", "--customer", "c-1"].as_slice(), &["token", "--org", "acme"]] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let child = tokio::process::Command::new(crate::harness::BIN)
            .env_clear()
            .env("LATCHKEY_URL", &server.url)
            .env("LATCHKEY_JWT_SECRET", server.secret())
            .env("RUST_LOG", "warn")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run latchkey");
        let out = child.wait_with_output().await.expect("wait for latchkey");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
