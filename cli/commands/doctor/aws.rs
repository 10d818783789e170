//! The aws backend's checks: the region, the DynamoDB table (DescribeTable), the KMS key
//! (DescribeKey) and its data-key round trip, the EventBridge bus (DescribeEventBus), and the
//! local clock against an AWS answer's `Date`.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::{Check, Verdict, check};

/// Clock skew past which AWS refuses signed requests (SigV4 allows 5 minutes).
const SKEW_FAIL: Duration = Duration::from_secs(240);
/// Clock skew past which tokens' expiry checks (60 s leeway) and refresh timing go wrong.
const SKEW_WARN: Duration = Duration::from_secs(30);

/// The aws backend's checks, with the standard AWS configuration (region, credentials,
/// `AWS_ENDPOINT_URL`).
pub(super) async fn checks(table: Option<&str>, kms_key_id: Option<&str>, event_bus: &str) -> Vec<Check> {
    let sdk = latchkey::adapters::aws::sdk_config().await;
    let mut checks = Vec::new();
    match sdk.region() {
        Some(r) => checks.push(check("aws region", Verdict::Ok, r.to_string())),
        None => {
            checks.push(check("aws region", Verdict::Fail, "no region: set AWS_REGION"));
            return checks;
        }
    }
    checks.push(match table {
        None => check("dynamodb table", Verdict::Fail, "LATCHKEY_TABLE is not set"),
        Some(t) => dynamodb_check(&aws_sdk_dynamodb::Client::new(&sdk), t).await,
    });
    match kms_key_id {
        None => checks.push(check(KMS_KEY, Verdict::Fail, "LATCHKEY_KMS_KEY_ID is not set")),
        Some(k) => {
            let client = aws_sdk_kms::Client::new(&sdk);
            let described = kms_key_check(&client, k).await;
            let usable = described.verdict == Verdict::Ok;
            let refused = described.verdict == Verdict::Warn;
            checks.push(described);
            // A key DescribeKey found unusable (disabled, asymmetric, absent) has said it all.
            if usable || refused {
                checks.push(kms_data_key_check(&client, k, usable).await);
            }
        }
    }
    checks.push(eventbridge_check(&aws_sdk_eventbridge::Client::new(&sdk), event_bus).await);
    checks.push(clock_check(&sdk).await);
    checks
}

/// An AWS call's failure in one line: the service's code and message, or the chain of causes
/// of a failure to get an answer (timeout, connection, credentials).
fn sdk_error<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    if let Some(service) = e.as_service_error() {
        return format!("{}: {}", service.code().unwrap_or("error"), service.message().unwrap_or("no message"));
    }
    let mut said = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        said = format!("{said}: {s}");
        source = s.source();
    }
    said
}

/// The error code of an AWS service's answer (`AccessDeniedException`...); `None` when there was
/// no answer.
fn service_code<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|s| s.code())
}

async fn dynamodb_check(client: &aws_sdk_dynamodb::Client, table: &str) -> Check {
    let name = "dynamodb table";
    let out = match client.describe_table().table_name(table).send().await {
        Ok(out) => out,
        Err(e) => return check(name, Verdict::Fail, format!("DescribeTable {table}: {}", sdk_error(&e))),
    };
    let Some(t) = out.table() else {
        return check(name, Verdict::Fail, format!("DescribeTable {table} answered without a table"));
    };
    let status = t.table_status().map(|s| s.as_str().to_owned()).unwrap_or_else(|| "unknown".into());
    let have: Vec<&str> = t.global_secondary_indexes().iter().filter_map(|i| i.index_name()).collect();
    let missing: Vec<String> = latchkey::adapters::aws::schema::schema()
        .global_secondary_indexes
        .into_iter()
        .map(|i| i.index_name)
        .filter(|n| !have.contains(&n.as_str()))
        .collect();
    // An index this release replaces stands in for its successor until that one is built
    // (infra/README.md, Index migration): the store queries it meanwhile.
    let replaced_by_old =
        |n: &String| latchkey::adapters::aws::LEGACY_INDEXES.iter().any(|(new, old)| new == n && have.contains(old));
    let (served, lacking): (Vec<String>, Vec<String>) = missing.into_iter().partition(replaced_by_old);
    if !lacking.is_empty() {
        check(
            name,
            Verdict::Fail,
            format!(
                "{table} lacks the index(es) {}: deploy infra/ (or `latchkey bootstrap` on an emulator)",
                lacking.join(", ")
            ),
        )
    } else if !served.is_empty() {
        check(
            name,
            Verdict::Warn,
            format!(
                "{table} lacks the index(es) {}, served meanwhile by the ones they replace: migrate (infra/README.md, \
                 Index migration; `latchkey bootstrap` adds them to a table it made)",
                served.join(", ")
            ),
        )
    } else if status != "ACTIVE" {
        check(name, Verdict::Warn, format!("{table} is {status}, not ACTIVE"))
    } else if let Some(building) =
        t.global_secondary_indexes().iter().find(|i| !latchkey::adapters::aws::schema::is_built(i))
    {
        let index = building.index_name().unwrap_or("an index");
        check(
            name,
            Verdict::Warn,
            format!("{table}: {index} is being built; listings read the index it replaces meanwhile"),
        )
    } else if let Some((_, old)) = latchkey::adapters::aws::LEGACY_INDEXES.iter().find(|(_, old)| have.contains(old)) {
        check(
            name,
            Verdict::Warn,
            format!(
                "{table} still has {old}, which this release no longer reads and every refresh still writes in full: \
                 delete it (infra/README.md, Index migration)"
            ),
        )
    } else {
        check(name, Verdict::Ok, format!("{table}: ACTIVE, indexes {}", have.join(", ")))
    }
}

const KMS_KEY: &str = "kms key";
const KMS_DATA_KEY: &str = "kms data key";

/// The encryption context of the round trip: the keys sealing uses (`org` and `connection_id`,
/// as `latchkey::crypto::EncryptionContext::connection`), which is what the key policy of
/// `infra/template.yaml` allows (statements `SealSecrets` and `OpenSecrets`: context keys among
/// `org`, `connection_id`, `definition`, and `org` present). The values are not ids the service
/// issues: no organization's data is touched.
const DOCTOR_CONTEXT: [(&str, &str); 2] = [("org", "latchkey-doctor"), ("connection_id", "doctor-round-trip")];

/// The data key spec sealing asks for (the key policy requires `AES_256`).
const DATA_KEY_SPEC: aws_sdk_kms::types::DataKeySpec = aws_sdk_kms::types::DataKeySpec::Aes256;

/// Whether an AWS error code is a refusal by IAM or the key policy.
fn is_access_denied(code: Option<&str>) -> bool {
    matches!(code, Some("AccessDeniedException" | "AccessDenied"))
}

/// DescribeKey: the key exists, is enabled and symmetric. `ok` then; `warn` when this principal
/// may not call DescribeKey (the function roles may not: the round trip decides); `fail`
/// otherwise.
async fn kms_key_check(client: &aws_sdk_kms::Client, key: &str) -> Check {
    use aws_sdk_kms::types::KeyState;
    let out = match client.describe_key().key_id(key).send().await {
        Ok(out) => out,
        Err(e) if is_access_denied(service_code(&e)) => {
            return check(
                KMS_KEY,
                Verdict::Warn,
                format!("DescribeKey {key} refused to this principal ({}): the round trip decides", sdk_error(&e)),
            );
        }
        Err(e) => return check(KMS_KEY, Verdict::Fail, format!("DescribeKey {key}: {}", sdk_error(&e))),
    };
    let Some(m) = out.key_metadata() else {
        return check(KMS_KEY, Verdict::Fail, format!("DescribeKey {key} answered without metadata"));
    };
    if let Some(state) = m.key_state().filter(|s| **s != KeyState::Enabled) {
        return check(KMS_KEY, Verdict::Fail, format!("{key} is {}: enable it", state.as_str()));
    }
    let spec = m.key_spec().map(|s| s.as_str()).unwrap_or("unknown");
    if spec != "SYMMETRIC_DEFAULT" {
        return check(KMS_KEY, Verdict::Fail, format!("{key} is {spec}: Latchkey needs a symmetric key"));
    }
    check(KMS_KEY, Verdict::Ok, format!("{}: enabled, symmetric", m.key_id()))
}

/// The verdict on a refused data-key call: with DescribeKey's success behind it, AccessDenied
/// is what the deployed key policy answers any principal but a function role (`warn`); any
/// other refusal, or AccessDenied with nothing else showing the key works, is `fail`.
fn data_key_refusal(call: &str, described: bool, code: Option<&str>, said: &str) -> Check {
    if described && is_access_denied(code) {
        check(
            KMS_DATA_KEY,
            Verdict::Warn,
            format!(
                "{call} refused ({said}): only the function roles may use the key for data (key policy \
                 SealSecrets/OpenSecrets); DescribeKey succeeded. Run doctor as a function role to check sealing"
            ),
        )
    } else {
        check(KMS_DATA_KEY, Verdict::Fail, format!("{call}: {said}"))
    }
}

/// A GenerateDataKey/Decrypt round trip with [`DOCTOR_CONTEXT`]: what sealing and opening a
/// secret need. `described`: DescribeKey found the key usable.
async fn kms_data_key_check(client: &aws_sdk_kms::Client, key: &str, described: bool) -> Check {
    let mut generate = client.generate_data_key().key_id(key).key_spec(DATA_KEY_SPEC);
    for (k, v) in DOCTOR_CONTEXT {
        generate = generate.encryption_context(k, v);
    }
    let wrapped = match generate.send().await {
        Ok(out) => out.ciphertext_blob().cloned(),
        Err(e) => {
            let code = service_code(&e);
            return data_key_refusal(&format!("GenerateDataKey with {key}"), described, code, &sdk_error(&e));
        }
    };
    let Some(wrapped) = wrapped else {
        return check(KMS_DATA_KEY, Verdict::Fail, "GenerateDataKey answered without a ciphertext");
    };
    let mut decrypt = client.decrypt().ciphertext_blob(wrapped);
    for (k, v) in DOCTOR_CONTEXT {
        decrypt = decrypt.encryption_context(k, v);
    }
    match decrypt.send().await {
        Ok(out) if out.plaintext().is_some_and(|p| p.as_ref().len() == 32) => {
            check(KMS_DATA_KEY, Verdict::Ok, "GenerateDataKey and Decrypt work with a sealing context")
        }
        Ok(_) => check(KMS_DATA_KEY, Verdict::Fail, "Decrypt answered without a 32-byte key"),
        Err(e) => {
            let code = service_code(&e);
            data_key_refusal("Decrypt of a fresh data key", described, code, &sdk_error(&e))
        }
    }
}

async fn eventbridge_check(client: &aws_sdk_eventbridge::Client, bus: &str) -> Check {
    let name = "eventbridge bus";
    match client.describe_event_bus().name(bus).send().await {
        Ok(out) => check(name, Verdict::Ok, out.arn().unwrap_or(bus).to_owned()),
        Err(e) => check(name, Verdict::Fail, format!("DescribeEventBus {bus}: {}", sdk_error(&e))),
    }
}

/// The local clock against the `Date` of an answer of the DynamoDB endpoint (an unsigned GET:
/// any answer carries the time).
async fn clock_check(sdk: &aws_config::SdkConfig) -> Check {
    let name = "clock";
    let endpoint = match (sdk.endpoint_url(), sdk.region()) {
        (Some(url), _) => url.to_owned(),
        (None, Some(region)) => format!("https://dynamodb.{region}.amazonaws.com/"),
        (None, None) => return check(name, Verdict::Warn, "no endpoint to compare with"),
    };
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => return check(name, Verdict::Warn, format!("no HTTP client: {e}")),
    };
    let sent = SystemTime::now();
    let answer = match http.get(&endpoint).send().await {
        Ok(a) => a,
        Err(e) => return check(name, Verdict::Warn, format!("{endpoint} did not answer: {e}")),
    };
    let received = SystemTime::now();
    let Some(date) = answer.headers().get(reqwest::header::DATE).and_then(|d| d.to_str().ok()) else {
        return check(name, Verdict::Warn, format!("{endpoint} answered without a Date"));
    };
    let Ok(theirs) = httpdate::parse_http_date(date) else {
        return check(name, Verdict::Warn, format!("{endpoint} answered an unreadable Date"));
    };
    // Ours at the middle of the exchange; theirs has whole seconds.
    let ours = sent + received.duration_since(sent).unwrap_or_default() / 2;
    let skew = ours.duration_since(theirs).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
    let skew = skew.saturating_sub(Duration::from_secs(1));
    let ahead = ours > theirs;
    let said = format!("{}s {} {endpoint}", skew.as_secs(), if ahead { "ahead of" } else { "behind" });
    if skew > SKEW_FAIL {
        check(name, Verdict::Fail, format!("{said}: AWS refuses signatures beyond 5 minutes; sync the clock (NTP)"))
    } else if skew > SKEW_WARN {
        check(name, Verdict::Warn, format!("{said}: token expiry checks allow 60 s; sync the clock (NTP)"))
    } else {
        check(name, Verdict::Ok, format!("within {}s of {endpoint}", skew.as_secs().max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Resources.Key.Properties.KeyPolicy.Statement` of `infra/template.yaml`, by `Sid`.
    fn key_policy_statement(sid: &str) -> serde_yaml::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/template.yaml");
        let template: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let statements = &template["Resources"]["Key"]["Properties"]["KeyPolicy"]["Statement"];
        let statements = statements.as_sequence().expect("the key policy's statements");
        statements
            .iter()
            .find(|s| s["Sid"].as_str() == Some(sid))
            .unwrap_or_else(|| panic!("no statement {sid}"))
            .clone()
    }

    /// Whether a request with `context` (and, for GenerateDataKey, `spec`) meets every condition
    /// of `statement` that is about the request; the principal's conditions are the caller's
    /// (README: doctor's data-key check needs a function role). A condition this test does not
    /// know fails it, so that a new one is looked at here.
    fn allows(statement: &serde_yaml::Value, context: &[(&str, &str)], spec: Option<&str>) -> Result<(), String> {
        let keys: Vec<&str> = context.iter().map(|(k, _)| *k).collect();
        let conditions = statement["Condition"].as_mapping().expect("conditions");
        for (operator, tests) in conditions {
            let operator = operator.as_str().unwrap();
            for (key, wanted) in tests.as_mapping().unwrap() {
                let key = key.as_str().unwrap();
                let strings = |v: &serde_yaml::Value| -> Vec<String> {
                    match v {
                        serde_yaml::Value::Sequence(items) => {
                            items.iter().map(|i| i.as_str().unwrap_or_default().to_owned()).collect()
                        }
                        other => vec![other.as_str().unwrap_or_default().to_owned()],
                    }
                };
                match (operator, key) {
                    ("ArnEquals", "aws:PrincipalArn") => {}
                    ("ForAllValues:StringEquals", "kms:EncryptionContextKeys") => {
                        let allowed = strings(wanted);
                        if let Some(k) = keys.iter().find(|k| !allowed.iter().any(|a| a == *k)) {
                            return Err(format!("context key {k} is not among {allowed:?}"));
                        }
                    }
                    ("Null", k) if k.starts_with("kms:EncryptionContext:") => {
                        let member = k.trim_start_matches("kms:EncryptionContext:");
                        let must_be_present = strings(wanted) == ["false"];
                        if must_be_present != keys.contains(&member) {
                            return Err(format!("context key {member} must be present: {must_be_present}"));
                        }
                    }
                    ("StringEquals", "kms:DataKeySpec") => {
                        if spec.is_some_and(|s| strings(wanted) != [s]) {
                            return Err(format!("data key spec {spec:?} is not {wanted:?}"));
                        }
                    }
                    _ => panic!("a condition this test does not evaluate: {operator} {key}"),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_round_trip_context_is_one_the_deployed_key_policy_allows() {
        let spec = Some(DATA_KEY_SPEC.as_str());
        allows(&key_policy_statement("SealSecrets"), &DOCTOR_CONTEXT, spec).expect("GenerateDataKey is allowed");
        allows(&key_policy_statement("OpenSecrets"), &DOCTOR_CONTEXT, None).expect("Decrypt is allowed");
        // The evaluation itself refuses what the policy refuses.
        let refused = allows(&key_policy_statement("SealSecrets"), &[("latchkey", "doctor")], spec);
        assert!(refused.is_err(), "a context without org, with another key, is refused");
        assert!(allows(&key_policy_statement("OpenSecrets"), &[("connection_id", "c")], None).is_err());
    }

    #[test]
    fn access_denied_after_describe_key_is_a_warning_that_names_the_function_roles() {
        let denied =
            data_key_refusal("GenerateDataKey", true, Some("AccessDeniedException"), "AccessDeniedException: no");
        assert_eq!(denied.verdict, Verdict::Warn);
        assert!(denied.why.contains("only the function roles") && denied.why.contains("DescribeKey succeeded"));
        assert_eq!(
            data_key_refusal("GenerateDataKey", false, Some("AccessDeniedException"), "").verdict,
            Verdict::Fail
        );
        assert_eq!(data_key_refusal("Decrypt", true, Some("InvalidCiphertextException"), "").verdict, Verdict::Fail);
    }
}
