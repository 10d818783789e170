//! The `latchkey` command's settings and `token`: `latchkey token` signs with the secret a
//! server uses, and never invents one; the server's settings (flags or `LATCHKEY_*` variables)
//! are documented by `serve --help` as in the README, checked at start, and blank ones are
//! unset; the commands that talk to an API take only `--url`/`--token`.

use crate::harness::{Run, Server, latchkey};

#[test]
fn token_without_a_secret_says_where_it_looked_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    let out = latchkey().env("LATCHKEY_DATA_DIR", &data).args(["token", "--org", "acme"]).output().unwrap();
    assert!(!out.status.success(), "a token no server can verify is not printed");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jwt.secret") && err.contains("elsewhere"), "names the file it looked for: {err}");
    assert!(err.contains("LATCHKEY_DATA_DIR"), "{err}");
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn token_signs_with_the_secret_of_the_data_directory_a_server_made() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let secret = "4f9c2a7e1b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1f3a";
    let path = dir.path().join("data").join("jwt.secret");
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let from_file =
        latchkey().env("LATCHKEY_DATA_DIR", dir.path().join("data")).args(["token", "--org", "acme"]).output().unwrap();
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    let from_env = latchkey().env("LATCHKEY_JWT_SECRET", secret).args(["token", "--org", "acme"]).output().unwrap();
    assert!(from_env.status.success(), "{}", String::from_utf8_lossy(&from_env.stderr));
    let verify = |out: &std::process::Output| {
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = ["exp".to_owned()].into();
        jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).map(|d| d.claims["org"].clone())
    };
    assert_eq!(verify(&from_file).unwrap(), "acme", "signed with the data directory's secret");
    assert_eq!(verify(&from_env).unwrap(), "acme");
}

/// Mistakes `latchkey token` refuses instead of printing a token that does not do what was
/// asked: a role Latchkey does not read (a misspelt `runtime`: its lookups would be 403), a
/// lifetime of 0 (expired at once, accepted only within the server's 60 s of clock skew), and
/// one past 366 days.
#[test]
fn token_refuses_a_role_latchkey_does_not_read_and_a_lifetime_of_zero() {
    let secret = "4f9c2a7e1b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1f3a";
    let run = |args: &[&str]| latchkey().env("LATCHKEY_JWT_SECRET", secret).args(args).output().unwrap();
    let typo = run(&["token", "--org", "acme", "--role", "runtme"]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    assert!(typo.stdout.is_empty());
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(err.contains("runtme") && err.contains("possible values: runtime"), "{err}");
    let zero = run(&["token", "--org", "acme", "--ttl", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{zero:?}");
    assert!(zero.stdout.is_empty());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--ttl"), "{zero:?}");
    let huge = run(&["token", "--org", "acme", "--ttl", "18446744073709551615"]);
    assert_eq!(huge.status.code(), Some(2), "{huge:?}");
    for ttl in ["1", "31622400"] {
        let fine = run(&["token", "--org", "acme", "--role", "runtime", "--ttl", ttl]);
        assert!(fine.status.success(), "{fine:?}");
    }
}

/// The `LATCHKEY_*` variables of the README's configuration table.
fn readme_variables() -> std::collections::BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme.split("## Configuration").nth(1).expect("a configuration section").split("\n## ").next();
    let rows = table.unwrap().lines().filter_map(|l| l.strip_prefix("| `LATCHKEY_"));
    rows.map(|rest| format!("LATCHKEY_{}", rest.split('`').next().unwrap())).collect()
}

#[test]
fn serve_help_documents_every_variable_of_the_readme_and_no_other() {
    let secret = "help-must-not-show-this-secret-0123456789";
    let out = latchkey().env("LATCHKEY_JWT_SECRET", secret).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    let documented = readme_variables();
    assert!(documented.len() >= 15, "the README's table was found: {documented:?}");
    for variable in &documented {
        assert!(help.contains(&format!("[env: {variable}")), "`latchkey serve --help` names {variable}:\n{help}");
    }
    let in_help: std::collections::BTreeSet<String> =
        help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().to_owned()).collect();
    assert_eq!(in_help, documented, "every setting is in the README's table");
    assert!(!help.contains(secret), "the secret's value is not shown");
}

#[test]
fn empty_and_blank_variables_count_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "4f9c2a7e1b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d1f3a";
    let path = dir.path().join("jwt.secret");
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = latchkey()
        .env("LATCHKEY_DATA_DIR", dir.path())
        .env("LATCHKEY_JWT_SECRET", "")
        .env("LATCHKEY_ADDR", "  ")
        .env("LATCHKEY_BACKEND", "")
        .env("LATCHKEY_REFRESH_INTERVAL_SECS", "")
        .env("LATCHKEY_JWT_AUDIENCE", " ")
        .args(["token", "--org", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_owned()].into();
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_ok(),
        "signed with the file's secret"
    );
}

#[test]
fn a_bad_value_stops_the_command_naming_its_variable_or_flag() {
    let out = latchkey().env("LATCHKEY_REFRESH_INTERVAL_SECS", "0").arg("serve").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("LATCHKEY_REFRESH_INTERVAL_SECS is invalid: must be a positive integer"), "{err}");
    let out = latchkey().args(["serve", "--addr", "nowhere"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("LATCHKEY_ADDR is invalid: \"nowhere\" is not host:port"), "{err}");
    let out = latchkey().args(["serve", "--refresh-concurrency", "1025"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("LATCHKEY_REFRESH_CONCURRENCY is invalid: must be a whole number from 1 to 1024"), "{err}");
}

/// The commands that talk to an API, as a user types them.
const API_COMMANDS: [&[&str]; 6] = [
    &["definitions", "apply"],
    &["definitions", "list"],
    &["connections", "list"],
    &["connections", "get"],
    &["lookup"],
    &["import"],
];

#[test]
fn the_api_commands_document_only_their_url_and_token() {
    for command in API_COMMANDS {
        let out = latchkey().args(command).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        let variables: std::collections::BTreeSet<&str> =
            help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap()).collect();
        assert_eq!(variables, ["LATCHKEY_TOKEN", "LATCHKEY_URL"].into(), "{command:?} --help:\n{help}");
        assert!(!help.contains("--backend") && !help.contains("Settings ("), "{command:?} --help:\n{help}");
    }
    // The group still reads as a list of its commands.
    let out = latchkey().args(["connections", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("list") && help.contains("get") && !help.contains("[env: "), "{help}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_server_setting_does_not_stop_an_api_command_but_stops_the_server_commands() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let bad = [("LATCHKEY_JWT_AUDIENCE", "api://latchkey"), ("LATCHKEY_REFRESH_INTERVAL_SECS", "0")];
    let run = server.run_with(&org, &["connections", "list"], None, &bad).await;
    run.ok();
    assert!(run.stderr.contains("0 connections"), "{run:#?}");

    let doctor = Run::of(latchkey().env("LATCHKEY_JWT_AUDIENCE", "api://latchkey").arg("doctor").output().unwrap());
    assert_eq!(doctor.code, Some(2), "{doctor:#?}");
    assert!(
        doctor.stderr.contains("LATCHKEY_JWT_AUDIENCE is invalid: is set without LATCHKEY_JWT_ISSUER"),
        "{doctor:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blank_url_or_token_counts_as_unset() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    // Blank: the default address (where nothing of this test listens, or another server).
    let run = server.run_with(&org, &["connections", "list"], None, &[("LATCHKEY_URL", "  ")]).await;
    assert!(!run.stderr.contains("relative URL") && !run.stderr.contains("base URL"), "{run:#?}");
    let run = server.run_with(&org, &["connections", "list", "--url", " "], None, &[]).await;
    assert!(!run.stderr.contains("relative URL") && !run.stderr.contains("base URL"), "{run:#?}");
    // A blank token is no token: the error says how to get one.
    let run = server.run_with(&org, &["connections", "list"], None, &[("LATCHKEY_TOKEN", " ")]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("no token: set LATCHKEY_TOKEN"), "{run:#?}");
}
