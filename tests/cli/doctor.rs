//! `latchkey doctor` on both backends: the data directory `latchkey serve` made, and the table,
//! key, bus and clock of the aws backend on moto (`support::moto`, which ignores key policies:
//! the data-key context is checked against `infra/template.yaml` by the command's unit tests).

use std::path::Path;

use tokio::process::Command;

use crate::harness::{BIN, Run, Server};

fn mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_data_directory_serve_made_and_fails_a_readable_key() {
    let server = Server::start().await;
    let data = server.dir.path().join("data");
    let doctor = || {
        let data = data.clone();
        async move {
            Run::of(
                Command::new(BIN)
                    .env_clear()
                    .env("LATCHKEY_DATA_DIR", &data)
                    .env("RUST_LOG", "warn")
                    .arg("doctor")
                    .output()
                    .await
                    .expect("run latchkey doctor"),
            )
        }
    };
    let run = doctor().await;
    run.ok();
    for line in ["ok    data directory", "ok    master key", "ok    database file latchkey.db "] {
        assert!(run.stdout.contains(line), "{line:?} in {run:#?}");
    }
    // serve got its secret from LATCHKEY_JWT_SECRET: no file, a warning that says what to do.
    assert!(run.stdout.contains("warn  jwt secret"), "{run:#?}");

    mode(&data.join("master.key"), 0o644);
    let run = doctor().await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  master key") && run.stdout.contains("chmod 600"), "{run:#?}");
    mode(&data.join("master.key"), 0o600);
    mode(&data, 0o755);
    let run = doctor().await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  data directory"), "{run:#?}");
}

/// `latchkey ARGS` on the aws backend of the shared moto server, with `env` besides.
async fn on_moto(args: &[&str], env: &[(&str, &str)]) -> Run {
    let endpoint = tokio::task::spawn_blocking(support::moto::endpoint).await.expect("moto starts");
    let out = Command::new(BIN)
        .env_clear()
        .envs(support::moto::aws_env(endpoint))
        .env("LATCHKEY_BACKEND", "aws")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .await
        .expect("run latchkey");
    Run::of(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_table_key_bus_and_clock_of_the_aws_backend() {
    let table = support::moto::unique("doctor");
    on_moto(&["bootstrap"], &[("LATCHKEY_TABLE", &table)]).await.ok();
    let sdk = support::moto::sdk_config().await;
    let key = support::moto::create_kms_key(&sdk).await;

    let good = [("LATCHKEY_TABLE", table.as_str()), ("LATCHKEY_KMS_KEY_ID", key.as_str())];
    let run = on_moto(&["doctor"], &good).await;
    run.ok();
    for line in [
        format!("ok    dynamodb table   {table}: ACTIVE"),
        "ok    kms key          ".to_owned(),
        "ok    kms data key     GenerateDataKey and Decrypt work".to_owned(),
        "ok    eventbridge bus  arn:aws:events:".to_owned(),
        "ok    clock".to_owned(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in {run:#?}");
    }

    let bad = [("LATCHKEY_TABLE", "absent"), ("LATCHKEY_KMS_KEY_ID", "alias/absent"), ("LATCHKEY_EVENT_BUS", "absent")];
    let run = on_moto(&["doctor"], &bad).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  dynamodb table   DescribeTable absent: ResourceNotFoundException"), "{run:#?}");
    assert!(run.stdout.contains("fail  kms key") && run.stdout.contains("fail  eventbridge bus"), "{run:#?}");
    assert!(!run.stdout.contains("kms data key"), "no round trip with a key DescribeKey did not find: {run:#?}");
    assert!(run.stderr.contains("3 check(s) failed"), "{run:#?}");

    aws_sdk_kms::Client::new(&sdk).disable_key().key_id(&key).send().await.expect("DisableKey");
    let run = on_moto(&["doctor"], &good).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout.contains("is Disabled: enable it"),
        "moto lets a disabled key work: doctor asks DescribeKey: {run:#?}"
    );
}

/// A table made before the listing indexes projected keys only (infra/README.md, Index
/// migration): doctor warns that the old indexes serve meanwhile, `latchkey bootstrap` adds the
/// new ones, doctor warns that the old ones are still written, and is content once they are
/// deleted.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_adds_the_listing_indexes_to_an_older_table_and_doctor_says_so() {
    let sdk = support::moto::sdk_config().await;
    let table = support::moto::create_legacy_table(&aws_sdk_dynamodb::Client::new(&sdk)).await;
    let key = support::moto::create_kms_key(&sdk).await;
    let env = [("LATCHKEY_TABLE", table.as_str()), ("LATCHKEY_KMS_KEY_ID", key.as_str())];
    let run = on_moto(&["doctor"], &env).await;
    run.ok();
    let warned = format!(
        "warn  dynamodb table   {table} lacks the index(es) by-customer-v2, by-definition-v2, served meanwhile"
    );
    assert!(run.stdout.contains(&warned), "{run:#?}");

    let run = on_moto(&["bootstrap"], &env).await;
    run.ok();
    assert!(
        run.stdout.contains(&format!("table {table} already exists; added its index by-customer-v2, by-definition-v2")),
        "{run:#?}"
    );
    let run = on_moto(&["doctor"], &env).await;
    run.ok();
    let still = format!("warn  dynamodb table   {table} still has by-customer, which this release no longer reads");
    assert!(run.stdout.contains(&still), "{run:#?}");

    // The old indexes deleted, one UpdateTable each, as infra/README.md says.
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    for old in ["by-customer", "by-definition"] {
        let delete =
            aws_sdk_dynamodb::types::DeleteGlobalSecondaryIndexAction::builder().index_name(old).build().unwrap();
        client
            .update_table()
            .table_name(&table)
            .global_secondary_index_updates(
                aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder().delete(delete).build(),
            )
            .send()
            .await
            .expect("delete an old index");
    }
    let run = on_moto(&["doctor"], &env).await;
    run.ok();
    assert!(run.stdout.contains(&format!("ok    dynamodb table   {table}: ACTIVE")), "{run:#?}");
}
