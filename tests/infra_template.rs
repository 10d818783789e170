//! `infra/template.yaml` against the code it deploys: every function package of the workspace
//! is a function built by cargo-lambda for arm64; the table is exactly the one `latchkey
//! bootstrap` creates; the HTTP routes are the OpenAPI document's operations; no statement
//! grants a wildcard action; and each function's role is granted exactly the AWS actions its
//! code calls, recorded by running that function's handlers over moto and an OAuth server.
//! (cfn-lint and checkov run in tests/infra.sh.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::{calls, moto, oauth};

use http_body_util::BodyExt;
use latchkey::config::Components;
use latchkey::domain::{ConnectionId, EventType, OrgId};
use latchkey::http::Surface;
use latchkey::http::auth::{Claims, Verifier, sign_hs256};
use latchkey::service::ServiceOptions;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

const TEMPLATE: &str = include_str!("../infra/template.yaml");
const TABLE: &str = include_str!("../infra/dynamodb-table.json");
const OPENAPI: &str = include_str!("../shared/openapi.json");
const WORKSPACE: &str = include_str!("../Cargo.toml");

// --- The template as JSON ------------------------------------------------------------------

/// The template as JSON, YAML short-form intrinsics (`!Ref X`) in their long form
/// (`{"Ref": "X"}`), anchors resolved.
fn template() -> Value {
    to_json(serde_yaml::from_str(TEMPLATE).expect("infra/template.yaml is YAML"))
}

fn to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => json!(b),
        Y::Number(n) => serde_json::to_value(n).expect("a number"),
        Y::String(s) => json!(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter().map(|(k, v)| (k.as_str().expect("string keys").to_owned(), to_json(v))).collect(),
        ),
        Y::Tagged(t) => {
            let name = t.tag.to_string().trim_start_matches('!').to_owned();
            let inner = to_json(t.value);
            match name.as_str() {
                "Ref" | "Condition" => json!({ name: inner }),
                "GetAtt" => {
                    let s = inner.as_str().expect("!GetAtt Resource.Attribute");
                    let (resource, attribute) = s.split_once('.').expect("!GetAtt Resource.Attribute");
                    json!({"Fn::GetAtt": [resource, attribute]})
                }
                _ => json!({ format!("Fn::{name}"): inner }),
            }
        }
    }
}

fn resources(t: &Value) -> &serde_json::Map<String, Value> {
    t["Resources"].as_object().expect("Resources")
}

fn of_type<'a>(t: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    resources(t).iter().filter(|(_, r)| r["Type"] == kind).collect()
}

/// `connections-api` -> `ConnectionsApi`, the prefix of that function's logical ids.
fn logical(package: &str) -> String {
    package
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn get_att(resource: &str, attribute: &str) -> Value {
    json!({"Fn::GetAtt": [resource, attribute]})
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The function packages of the workspace (`members` under `functions/`).
fn function_packages() -> Vec<String> {
    let line = WORKSPACE.lines().find(|l| l.starts_with("members")).expect("workspace members");
    let packages: Vec<String> =
        line.split('"').filter_map(|m| m.strip_prefix("functions/")).map(str::to_owned).collect();
    assert_eq!(packages.len(), 5, "{packages:?}");
    packages
}

// --- Static checks ---------------------------------------------------------------------------

#[test]
fn every_function_package_is_deployed_as_cargo_lambda_builds_it() {
    let t = template();
    let globals = &t["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Architectures"], json!(["arm64"]));
    assert_eq!(globals["Handler"], "bootstrap");
    let env = &globals["Environment"]["Variables"];
    assert_eq!(env["LATCHKEY_BACKEND"], "aws");
    assert_eq!(env["LATCHKEY_TABLE"], json!({"Ref": "Table"}));
    assert_eq!(env["LATCHKEY_KMS_KEY_ID"], get_att("Key", "Arn"));
    assert_eq!(env["LATCHKEY_EVENT_BUS"], json!({"Ref": "EventBus"}));
    assert!(env.get("LATCHKEY_JWT_SECRET").is_none(), "deployed, API Gateway's JWT authorizer authenticates");

    let packages = function_packages();
    let deployed: BTreeSet<String> =
        of_type(&t, "AWS::Serverless::Function").iter().map(|(n, _)| (*n).clone()).collect();
    let expected: BTreeSet<String> = packages.iter().map(|p| format!("{}Function", logical(p))).collect();
    assert_eq!(deployed, expected, "one function per package under functions/");
    for package in &packages {
        let name = logical(package);
        let f = &resources(&t)[&format!("{name}Function")];
        assert_eq!(f["Properties"]["CodeUri"], format!("../functions/{package}"), "{package}");
        assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda", "{package}");
        assert_eq!(f["Metadata"]["BuildProperties"]["Binary"], package.as_str(), "{package}");
        assert_eq!(f["Properties"]["Role"], get_att(&format!("{name}Role"), "Arn"), "{package}: its own role");
        assert_eq!(f["DependsOn"], format!("{name}Policy"), "{package}: permissions before the first run");
        assert_eq!(f["Properties"]["LoggingConfig"]["LogGroup"], json!({"Ref": format!("{name}Logs")}));
        let manifest =
            std::fs::read_to_string(format!("{}/functions/{package}/Cargo.toml", env!("CARGO_MANIFEST_DIR")))
                .expect("the package's Cargo.toml");
        assert!(manifest.contains(&format!("name = \"{package}\"")), "{package}: the package builds that binary");
    }
}

#[test]
fn the_table_is_the_one_bootstrap_creates_with_production_settings() {
    let t = template();
    let table = &resources(&t)["Table"];
    let p = &table["Properties"];
    let schema: Value = serde_json::from_str(TABLE).unwrap();
    for field in ["AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode"] {
        assert_eq!(p[field], schema[field], "{field} differs from infra/dynamodb-table.json");
    }
    assert_eq!(p["TimeToLiveSpecification"], json!({"AttributeName": schema["TimeToLiveAttribute"], "Enabled": true}));
    assert_eq!(p["PointInTimeRecoverySpecification"], json!({"PointInTimeRecoveryEnabled": true}));
    assert_eq!(p["DeletionProtectionEnabled"], true);
    assert_eq!(p["SSESpecification"], json!({"SSEEnabled": true, "SSEType": "KMS", "KMSMasterKeyId": {"Ref": "Key"}}));
    let known: BTreeSet<&str> = [
        "AttributeDefinitions",
        "KeySchema",
        "GlobalSecondaryIndexes",
        "BillingMode",
        "TimeToLiveSpecification",
        "PointInTimeRecoverySpecification",
        "DeletionProtectionEnabled",
        "SSESpecification",
    ]
    .into();
    let present: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(present, known, "nothing else shapes the table");
    assert_eq!(table["DeletionPolicy"], "Retain");
    let key = &resources(&t)["Key"];
    assert_eq!(key["Properties"]["EnableKeyRotation"], true);
    assert_eq!(key["DeletionPolicy"], "Retain");
}

/// CloudFormation takes a template of at most 51,200 bytes inline (`TemplateBody`); a larger one
/// must come from S3. What `sam deploy` sends is not `infra/template.yaml` but what `sam build`
/// wrote from it, comments dropped and YAML aliases expanded: [`built_size`] estimates that
/// without running sam. `tests/infra.sh` checks the file `sam build` writes exactly; this fails
/// first, while a deploy would still go through.
#[test]
fn the_built_template_stays_under_cloudformations_inline_limit() {
    const INLINE_LIMIT: usize = 51_200;
    // `sam build` adds about 180 bytes to what `yaml_dump` writes (each function's
    // `SamResourceId` and built `CodeUri`); the estimate is 26 bytes under `yaml_dump`'s count
    // (infra/README.md, Size). The rest of the margin is warning room: about four more routes.
    const MARGIN: usize = 1_024;
    let built = built_size();
    assert!(
        built + MARGIN < INLINE_LIMIT,
        "sam build would write about {built} bytes from infra/template.yaml: within {MARGIN} of \
         CloudFormation's inline limit ({INLINE_LIMIT}); see infra/README.md, Size"
    );
}

/// About the bytes `sam build` writes from `infra/template.yaml` (without its ~180 bytes of build
/// metadata): the template as `samcli.yamlhelper.yaml_parse` reads it (comments dropped, aliases
/// expanded, intrinsics in their long form), written back as `yaml_dump` (PyYAML, block style)
/// writes it, long scalars folded as PyYAML folds them ([`folded`]). Key order differs from
/// sam's, the size does not.
fn built_size() -> usize {
    let yaml = serde_yaml::to_string(&template()).expect("the template serializes");
    // PyYAML escapes anything else (`allow_unicode` is off), which this does not count.
    assert!(yaml.is_ascii(), "the template's values are ASCII");
    yaml.lines().map(|line| folded(line).len() + 1).sum()
}

/// One line of block YAML as PyYAML writes it: a plain or single-quoted scalar is broken at the
/// first space past column 80, continuing two columns right of its key or sequence item.
/// (Double-quoted and block scalars, which PyYAML folds otherwise, are left as they are.)
fn folded(line: &str) -> String {
    const WIDTH: usize = 80;
    if line.len() <= WIDTH {
        return line.to_owned();
    }
    let mut rest = line.trim_start_matches(' ');
    let mut column = line.len() - rest.len();
    while let Some(item) = rest.strip_prefix("- ") {
        rest = item;
        column += 2;
    }
    let value = match rest.split_once(": ") {
        Some((key, value)) if !key.starts_with('\'') => value,
        _ => rest,
    };
    if value.starts_with(['"', '|', '>']) {
        return line.to_owned();
    }
    let continuation = " ".repeat(column + 2);
    let mut out = line[..line.len() - value.len()].to_owned();
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 && out.len() - out.rfind('\n').map_or(0, |n| n + 1) > WIDTH {
            out.push('\n');
            out.push_str(&continuation);
        } else if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The folding `built_size` counts is PyYAML's: these are lines `sam build` wrote.
#[test]
fn the_size_estimate_folds_long_scalars_as_pyyaml_does() {
    let description = "Description: 'Latchkey: the connection platform (connections API, OAuth callback, token lookup, \
                       refresh and revoke functions; DynamoDB table; KMS key; EventBridge bus, schedule and rule; HTTP \
                       API).'";
    assert_eq!(
        folded(description),
        "Description: 'Latchkey: the connection platform (connections API, OAuth callback,\n  token lookup, refresh \
         and revoke functions; DynamoDB table; KMS key; EventBridge\n  bus, schedule and rule; HTTP API).'"
    );
    let comment = "        - comment: Access logs hold route templates, statuses and ids, never secrets; CloudWatch \
                   encrypts them at rest.";
    assert_eq!(
        folded(comment),
        "        - comment: Access logs hold route templates, statuses and ids, never secrets;\n            \
         CloudWatch encrypts them at rest."
    );
    let short = "    Description: An SNS topic the alarms notify; empty, alarms show in CloudWatch only.";
    assert_eq!(
        folded(short),
        "    Description: An SNS topic the alarms notify; empty, alarms show in CloudWatch\n      only."
    );
}

/// The routes are SAM `HttpApi` events on the HTTP functions: every OpenAPI operation has exactly
/// one, on the function that serves it, behind the API's JWT authorizer unless the operation is
/// public (`security: []`, `Auth: {Authorizer: NONE}`).
#[test]
fn the_http_routes_are_the_openapi_operations() {
    let openapi: Value = serde_json::from_str(OPENAPI).unwrap();
    let mut documented = BTreeMap::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "patch", "delete"].contains(&method.as_str()) {
                let public = op.get("security") == Some(&json!([]));
                documented.insert(format!("{} {path}", method.to_uppercase()), public);
            }
        }
    }
    let t = template();
    let api = &resources(&t)["HttpApi"];
    assert_eq!(api["Type"], "AWS::Serverless::HttpApi");
    let auth = &api["Properties"]["Auth"];
    let default = auth["DefaultAuthorizer"].as_str().expect("routes are JWT-authorized unless they say otherwise");
    let jwt = &auth["Authorizers"][default];
    assert_eq!(jwt["IdentitySource"], "$request.header.Authorization");
    assert_eq!(jwt["JwtConfiguration"]["issuer"], json!({"Ref": "JwtIssuer"}));
    assert_eq!(jwt["JwtConfiguration"]["audience"], json!({"Ref": "JwtAudience"}));
    assert!(of_type(&t, "AWS::ApiGatewayV2::Route").is_empty(), "routes are events, not resources");

    let mut deployed = BTreeMap::new();
    for (name, function) in of_type(&t, "AWS::Serverless::Function") {
        let events = function["Properties"]["Events"].as_object().into_iter().flatten();
        for (event, e) in events.filter(|(_, e)| e["Type"] == "HttpApi") {
            let p = &e["Properties"];
            assert_eq!(p["ApiId"], json!({"Ref": "HttpApi"}), "{name}.{event}");
            // API Gateway answers 503 after 29 s; the function may run on (see Timeout).
            assert_eq!(p["TimeoutInMillis"], 29000, "{name}.{event}");
            assert!(p.get("PayloadFormatVersion").is_none_or(|v| v == "2.0"), "{name}.{event}: payload 2.0");
            let key = format!("{} {}", p["Method"].as_str().unwrap().to_uppercase(), p["Path"].as_str().unwrap());
            // The connect page's routes under /connect/ share one public catch-all route.
            if key == "ANY /connect/{proxy+}" {
                assert_eq!(p["Auth"]["Authorizer"], "NONE", "{name}.{event}: the connect page is public");
                let served: Vec<_> = documented.keys().filter(|k| k.contains(" /connect/")).cloned().collect();
                assert!(!served.is_empty(), "{name}.{event}: no documented /connect/ operation");
                for op in served {
                    assert!(documented[&op], "{op} is public");
                    assert!(deployed.insert(op.clone(), true).is_none(), "{name}.{event}: {op} twice");
                }
                continue;
            }
            let public = match p["Auth"]["Authorizer"].as_str() {
                None => false,
                Some("NONE") => true,
                Some(other) => panic!("{name}.{event}: authorizer {other}, not the API's default {default}"),
            };
            let serves =
                if key == "GET /v1/oauth/callback" { "OauthCallbackFunction" } else { "ConnectionsApiFunction" };
            assert_eq!(name, serves, "{key}");
            assert!(deployed.insert(key, public).is_none(), "{name}.{event}: a route key twice");
        }
    }
    assert_eq!(deployed, documented, "routes (and which are public) match shared/openapi.json");

    // Each event puts its function's ARN into the API: no function may name the API in turn.
    let variables = &t["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        variables["LATCHKEY_PUBLIC_URL"],
        json!({"Fn::If": ["HasPublicUrl", {"Ref": "PublicUrl"}, {"Ref": "AWS::NoValue"}]}),
        "without PublicUrl the functions read the API's domain from the request"
    );
    for (name, function) in of_type(&t, "AWS::Serverless::Function") {
        let mut properties = function["Properties"].clone();
        properties.as_object_mut().unwrap().remove("Events");
        let text = format!("{properties} {variables}");
        assert!(!text.contains("HttpApi"), "{name} names the API: a dependency cycle with its events");
    }

    let api = &api["Properties"];
    assert!(api.get("StageName").is_none(), "the $default stage: no stage in the redirect URI's path");
    assert!(api["AccessLogSettings"]["DestinationArn"].is_object(), "access logs");
    assert!(!api["AccessLogSettings"]["Format"].as_str().unwrap().contains("$context.path"), "no paths or queries");
    assert!(api["DefaultRouteSettings"]["ThrottlingRateLimit"].is_object(), "throttling");
}

/// Every `Statement` in the template, with the logical id of the resource holding it.
fn statements(t: &Value) -> Vec<(String, Value)> {
    fn walk(owner: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "Statement" {
                        out.extend(v.as_array().into_iter().flatten().map(|s| (owner.to_owned(), s.clone())));
                    } else {
                        walk(owner, v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(owner, i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, r) in resources(t) {
        walk(name, r, &mut out);
    }
    out
}

#[test]
fn no_statement_grants_a_wildcard_action_and_role_policies_name_their_resources() {
    let t = template();
    let all = statements(&t);
    assert!(all.len() > 15, "{}", all.len());
    for (owner, s) in &all {
        for action in strings(&s["Action"]) {
            assert!(!action.contains('*'), "{owner}: wildcard action {action}");
        }
        assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none(), "{owner}: Not* statement");
        if resources(&t)[owner]["Type"] == "AWS::IAM::Policy" {
            assert_ne!(s["Resource"], "*", "{owner}: every role statement names its resources");
        }
    }
    for (name, role) in of_type(&t, "AWS::IAM::Role") {
        let p = &role["Properties"];
        assert!(p.get("ManagedPolicyArns").is_none() && p.get("Policies").is_none(), "{name}: one policy, elsewhere");
    }
}

#[test]
fn the_schedule_and_the_revoke_rule_reach_their_functions() {
    let t = template();
    assert_eq!(t["Parameters"]["RefreshSchedule"]["Default"], "rate(5 minutes)");
    let schedule = &resources(&t)["RefreshScheduleRule"]["Properties"];
    assert_eq!(schedule["ScheduleExpression"], json!({"Ref": "RefreshSchedule"}));
    assert_eq!(schedule["Targets"][0]["Arn"], get_att("TokenRefreshFunction", "Arn"));
    let rule = &resources(&t)["RevokeRule"]["Properties"];
    assert_eq!(rule["EventBusName"], json!({"Ref": "EventBus"}));
    assert_eq!(rule["EventPattern"]["source"], json!([latchkey::adapters::aws::eventbridge::SOURCE]));
    assert_eq!(
        rule["EventPattern"]["detail-type"],
        json!([EventType::ConnectionDisconnected.detail_type(), EventType::ConnectionDeleted.detail_type()]),
        "the events handle_revoke acts on"
    );
    assert_eq!(rule["Targets"][0]["Arn"], get_att("TokenRevokeFunction", "Arn"));
    for (rule, function) in [("RefreshScheduleRule", "TokenRefreshFunction"), ("RevokeRule", "TokenRevokeFunction")] {
        let target = &resources(&t)[rule]["Properties"]["Targets"][0];
        assert!(target["DeadLetterConfig"]["Arn"].is_object(), "{rule}: undeliverable events are kept");
        let f = &resources(&t)[function]["Properties"];
        assert!(f["DeadLetterQueue"]["TargetArn"].is_object(), "{function}: failed invocations are kept");
        assert!(f.get("ReservedConcurrentExecutions").is_some(), "{function}: protects providers");
    }
    assert_eq!(resources(&t)["TokenRefreshFunction"]["Properties"]["ReservedConcurrentExecutions"], 1);
}

/// The metric filters read fields of the functions' JSON log lines: the sweep's summary line as
/// the code writes it must match the refresh-failures filter, and every function's log group
/// counts `kms_throttled` (whose line the KMS adapter's unit test checks).
#[tokio::test(flavor = "current_thread")]
async fn the_metric_filters_read_fields_the_code_logs() {
    let t = template();
    let filter = &resources(&t)["RefreshFailuresMetric"]["Properties"];
    assert_eq!(filter["FilterPattern"], r#"{ $.message = "refresh sweep" && $.failed > 0 }"#);
    assert_eq!(filter["MetricTransformations"][0]["MetricValue"], "$.failed");
    assert_eq!(filter["LogGroupName"], json!({"Ref": "TokenRefreshLogs"}));
    let throttled: BTreeSet<String> = of_type(&t, "AWS::Logs::MetricFilter")
        .iter()
        .filter(|(_, f)| f["Properties"]["FilterPattern"] == "{ $.kms_throttled IS TRUE }")
        .map(|(_, f)| f["Properties"]["LogGroupName"]["Ref"].as_str().unwrap().to_owned())
        .collect();
    let every: BTreeSet<String> = function_packages().iter().map(|p| format!("{}Logs", logical(p))).collect();
    assert_eq!(throttled, every, "KMS throttling is counted in every function's logs");

    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let logs = latchkey::telemetry::Captured::default();
    let _scope =
        tracing::subscriber::set_default(latchkey::telemetry::json_subscriber("info".parse().unwrap(), logs.clone()));
    latchkey::lambda::handle_refresh(&app.service, Instant::now() + Duration::from_secs(5)).await.unwrap();
    let lines = logs.lines();
    let summary = lines.iter().find(|l| l["message"] == "refresh sweep").unwrap_or_else(|| panic!("{lines:?}"));
    assert!(summary["failed"].is_u64(), "a number the filter can compare: {summary}");
    // Kept whatever LogLevel says: RUST_LOG names the targets of both lines.
    assert_eq!(summary["target"], "latchkey::service::refresh");
    let rust_log = t["Globals"]["Function"]["Environment"]["Variables"]["RUST_LOG"]["Fn::Sub"].as_str().unwrap();
    assert!(rust_log.contains("latchkey::service::refresh=info"), "{rust_log}");
    assert!(rust_log.contains("latchkey::adapters::aws::kms=warn"), "{rust_log}");
}

/// A function may outlive its caller's patience, never the work it started: lookups may wait
/// for another worker's refresh (lease + 5 s) and then call the provider (15 s); the sweep stops
/// starting work `SWEEP_MARGIN` before its end.
#[test]
fn function_timeouts_leave_room_for_a_refresh_in_flight() {
    let t = template();
    let default = t["Globals"]["Function"]["Timeout"].as_u64().unwrap();
    let lease = latchkey::service::RefreshPolicy::default().lease.as_secs();
    for package in function_packages() {
        let f = &resources(&t)[&format!("{}Function", logical(&package))]["Properties"];
        let timeout = f["Timeout"].as_u64().unwrap_or(default);
        assert!(timeout >= lease + 5 + 15 + 5, "{package}: {timeout} s");
    }
    let sweep = resources(&t)["TokenRefreshFunction"]["Properties"]["Timeout"].as_u64().unwrap();
    assert!(sweep > 2 * latchkey::lambda::SWEEP_MARGIN.as_secs(), "{sweep} s");
}

// --- Least privilege, measured ----------------------------------------------------------------

/// What the template grants `package`'s role, from its one policy: every action, KMS included,
/// except the KMS actions DynamoDB uses on its behalf for the table's encryption at rest
/// (`kms:ViaService`). Every KMS action the role uses directly must also be allowed to it by a
/// key-policy statement that names the role (`aws:PrincipalArn`) under the same encryption
/// context conditions. `dynamodb:Query (index)` stands for the index ARN.
fn granted(t: &Value, package: &str) -> BTreeSet<String> {
    let name = logical(package);
    let role = get_att(&format!("{name}Role"), "Arn");
    let mut out = BTreeSet::new();
    let policies: Vec<_> = of_type(t, "AWS::IAM::Policy")
        .into_iter()
        .filter(|(_, p)| p["Properties"]["Roles"].as_array().unwrap().contains(&json!({"Ref": format!("{name}Role")})))
        .collect();
    assert_eq!(policies.len(), 1, "{package}: one policy");
    let key_policy = resources(t)["Key"]["Properties"]["KeyPolicy"]["Statement"].as_array().unwrap().clone();
    let mut through_dynamodb = false;
    for s in policies[0].1["Properties"]["PolicyDocument"]["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow");
        let actions = strings(&s["Action"]);
        let resources = match &s["Resource"] {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        if !actions.iter().any(|a| a.starts_with("kms:")) {
            if resources.contains(&json!({"Fn::Sub": "${Table.Arn}/index/*"})) {
                out.insert("dynamodb:Query (index)".to_owned());
            }
            out.extend(actions);
            continue;
        }
        assert_eq!(resources, [get_att("Key", "Arn")], "{package}: KMS on the stack's key only");
        if s["Condition"]["StringEquals"].get("kms:ViaService").is_some() {
            through_dynamodb = true;
            continue;
        }
        let ctx = &s["Condition"]["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"];
        assert_eq!(ctx, &json!(["org", "connection_id", "definition"]), "{package}: only Latchkey's context");
        assert_eq!(s["Condition"]["Null"]["kms:EncryptionContext:org"], "false", "{package}: a context is required");
        for action in actions {
            let allowed = key_policy.iter().any(|k| {
                strings(&k["Action"]).contains(&action)
                    && k["Condition"]["ArnEquals"]["aws:PrincipalArn"].as_array().is_some_and(|r| r.contains(&role))
                    && k["Condition"]["ForAllValues:StringEquals"] == s["Condition"]["ForAllValues:StringEquals"]
                    && k["Condition"]["Null"] == s["Condition"]["Null"]
            });
            assert!(allowed, "{package}: the key policy does not allow it {action} under the same conditions");
            out.insert(action);
        }
    }
    assert!(through_dynamodb, "{package}: may use the table's key through DynamoDB");
    // And the key policy allows no role anything its own policy does not.
    for k in &key_policy {
        if let Some(roles) = k["Condition"]["ArnEquals"]["aws:PrincipalArn"].as_array()
            && roles.contains(&role)
        {
            for action in strings(&k["Action"]) {
                assert!(out.contains(&action), "{package}: the key policy allows {action}, unused");
            }
        }
    }
    out
}

/// The permissions the Lambda platform uses for the function, not its code: writing its logs,
/// and sending failed asynchronous invocations to its dead-letter queue.
fn platform(t: &Value, package: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["logs:CreateLogStream", "logs:PutLogEvents"].map(str::to_owned).into();
    if resources(t)[&format!("{}Function", logical(package))]["Properties"].get("DeadLetterQueue").is_some() {
        out.insert("sqs:SendMessage".to_owned());
    }
    out
}

const ORG: &str = "acme";
const SECRET: &str = "infra-template-test-secret-of-32-bytes-or-more";

/// One deployed function: its own clients (recording), its own cold caches.
struct Function {
    app: Components,
    calls: calls::Calls,
}

async fn function(config: &aws_config::SdkConfig, table: &str, key: &str, bus: &str) -> Function {
    let calls = calls::Calls::default();
    let (ddb, kms, eb) = calls.clients(config);
    let options = ServiceOptions {
        public_url: Some("https://latchkey.example.test".into()),
        allow_loopback_providers: true,
        ..ServiceOptions::default()
    };
    let app = Components::aws(ddb, kms, eb, table, key, bus, options);
    Function { app, calls }
}

fn bearer(customer: Option<&str>, roles: &[&str]) -> String {
    let claims = Claims {
        org: ORG.into(),
        customer: customer.map(str::to_owned),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        exp: 4_102_444_800,
    };
    sign_hs256(&SecretString::from(SECRET), &claims).unwrap()
}

/// One request to `surface`'s router of `f`, as API Gateway would pass it on.
async fn call(f: &Function, surface: Surface, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
    let router =
        latchkey::http::router_for(surface, f.app.router_state(Verifier::hs256(&SecretString::from(SECRET)).unwrap()));
    let mut req = http::Request::builder().method(method).uri(uri);
    if surface == Surface::ConnectionsApi {
        req = req.header("authorization", format!("Bearer {}", bearer(None, &["admin", "runtime"])));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(axum::body::Body::from(b.to_string())),
        None => req.body(axum::body::Body::empty()),
    }
    .unwrap();
    let res = router.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Waits until connection `id`'s refresh is due: past half its token's life, when the sweep
/// picks it up and a lookup no longer takes the token for just issued. Time passing is the
/// behaviour: the functions run on the system clock (`Components::aws` takes no other), the
/// one the provider's `expires_in` is counted on. Polls the store through `watcher`, whose
/// calls are not measured.
async fn until_due(watcher: &Function, id: &str) {
    let org = OrgId::parse(ORG).unwrap();
    let id = ConnectionId::parse(id).unwrap();
    support::eventually(Duration::from_secs(20), &format!("{id}'s refresh to be due"), || async {
        let c = watcher.app.store.get_connection(&org, &id).await.unwrap().expect("the connection is stored");
        c.refresh.due_at.is_some_and(|due| due <= time::OffsetDateTime::now_utc())
    })
    .await;
}

fn path_and_query(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    format!("{}?{}", u.path(), u.query().unwrap_or_default())
}

/// Each function runs what it runs when deployed (its HTTP surface, or its Lambda handler) over
/// moto and oauth2-mock-server; what it calls must be exactly what the template grants it.
#[tokio::test]
async fn each_function_is_granted_exactly_the_aws_actions_its_code_calls() {
    let config = moto::sdk_config().await;
    let table = moto::unique("latchkey");
    latchkey::adapters::aws::schema::bootstrap(&aws_sdk_dynamodb::Client::new(&config), &table).await.unwrap();
    let key = moto::create_kms_key(&config).await;
    let bus = moto::unique("bus");
    aws_sdk_eventbridge::Client::new(&config).create_event_bus().name(&bus).send().await.unwrap();
    let api = function(&config, &table, &key, &bus).await;
    let callback = function(&config, &table, &key, &bus).await;
    let lookup = function(&config, &table, &key, &bus).await;
    let refresh = function(&config, &table, &key, &bus).await;
    let revoke = function(&config, &table, &key, &bus).await;
    // Reads the store for the test itself; its calls are nobody's.
    let watcher = function(&config, &table, &key, &bus).await;
    // Tokens that live 1 s: due after half of it, for the sweep and for a lookup that wants more.
    let short = json!({"expires_in": 1});
    let provider = oauth::MockServer::start(json!({"rewrites": [{"set": short}]})).await;
    let ok = |(status, body): (u16, Value), what: &str| {
        assert!((200..300).contains(&status), "{what}: {status} {body}");
        body
    };

    // connections-api: every route it serves.
    use Surface::ConnectionsApi as Api;
    ok(call(&api, Api, "GET", "/healthz", None).await, "healthz");
    ok(call(&api, Api, "GET", "/openapi.json", None).await, "openapi");
    ok(call(&api, Api, "GET", "/v1/providers", None).await, "providers");
    let keyed = json!({"auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "clientSecret": {"type": "password", "visibility": "organization", "default": "org-secret"}}});
    ok(call(&api, Api, "PUT", "/v1/definitions/keyed", Some(keyed)).await, "PUT keyed");
    let idp = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": provider.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": provider.token_endpoint()},
        "revokeUrl": {"type": "url", "default": provider.revocation_endpoint()},
        "clientId": {"type": "string", "default": "client"},
        "clientSecret": {"type": "password", "default": "client-secret"}}});
    ok(call(&api, Api, "PUT", "/v1/definitions/idp", Some(idp)).await, "PUT idp");
    ok(call(&api, Api, "GET", "/v1/definitions", None).await, "list definitions");
    ok(call(&api, Api, "GET", "/v1/definitions/keyed", None).await, "GET definition");
    let created = ok(
        call(
            &api,
            Api,
            "POST",
            "/v1/connections",
            Some(json!({"definition": "keyed", "customer": "c-1",
            "values": {"apiKey": "k-1"}})),
        )
        .await,
        "POST keyed connection",
    );
    let keyed_id = created["id"].as_str().unwrap().to_owned();
    ok(call(&api, Api, "GET", &format!("/v1/connections/{keyed_id}"), None).await, "GET connection");
    ok(call(&api, Api, "GET", "/v1/connections?customer=c-1", None).await, "list connections");
    let patch = json!({"label": "renamed", "values": {"apiKey": "k-2"}});
    ok(call(&api, Api, "PATCH", &format!("/v1/connections/{keyed_id}"), Some(patch)).await, "PATCH");
    ok(call(&api, Api, "POST", &format!("/v1/connections/{keyed_id}/token"), Some(json!({}))).await, "token");
    ok(call(&api, Api, "GET", &format!("/v1/connections/{keyed_id}/logs"), None).await, "logs");

    let created = ok(
        call(&api, Api, "POST", "/v1/connections", Some(json!({"definition": "idp", "customer": "c-1"}))).await,
        "POST oauth connection",
    );
    let oauth_id = created["id"].as_str().unwrap().to_owned();
    let started =
        ok(call(&api, Api, "POST", &format!("/v1/connections/{oauth_id}/authorize"), None).await, "authorize");
    let redirected = provider.authorize(started["authorize_url"].as_str().unwrap()).await;

    // oauth-callback: the provider's redirect (twice), then a denied one.
    let (status, _) = call(&callback, Surface::OauthCallback, "GET", &path_and_query(&redirected), None).await;
    assert_eq!(status, 200, "callback");
    let mut more = Vec::new();
    for customer in ["c-2", "c-3"] {
        let created = ok(
            call(&api, Api, "POST", "/v1/connections", Some(json!({"definition": "idp", "customer": customer}))).await,
            "POST another",
        );
        let id = created["id"].as_str().unwrap().to_owned();
        let started = ok(call(&api, Api, "POST", &format!("/v1/connections/{id}/authorize"), None).await, "authorize");
        more.push((id, started["authorize_url"].as_str().unwrap().to_owned()));
    }
    let [(second_id, second_url), (denied_id, denied_url)] = <[_; 2]>::try_from(more).unwrap();
    let redirected = provider.authorize(&second_url).await;
    let (status, _) = call(&callback, Surface::OauthCallback, "GET", &path_and_query(&redirected), None).await;
    assert_eq!(status, 200, "second callback");
    let state = oauth::query_param(&denied_url, "state").unwrap();
    let denied = format!("/v1/oauth/callback?error=access_denied&state={state}");
    let (status, _) = call(&callback, Surface::OauthCallback, "GET", &denied, None).await;
    assert!((200..500).contains(&status), "denied callback: {status}");

    // token-refresh: one sweep once the token is due; it also revokes the tokens of a
    // connection disconnected since (as it does when the revoke event was lost).
    ok(call(&api, Api, "POST", &format!("/v1/connections/{second_id}/disconnect"), None).await, "disconnect");
    until_due(&watcher, &oauth_id).await;
    let summary =
        latchkey::lambda::handle_refresh(&refresh.app.service, Instant::now() + Duration::from_secs(20)).await.unwrap();
    assert_eq!((summary["refreshed"].as_u64(), summary["revocations"].as_u64()), (Some(1), Some(1)), "{summary}");

    // token-lookup: a cold lookup that refreshes on demand (once the sweep's token is due: one
    // just issued is handed out as it is), then report_error.
    until_due(&watcher, &oauth_id).await;
    let found = latchkey::lambda::handle_lookup(
        &lookup.app.service,
        json!({"org": ORG, "connection_id": oauth_id, "min_valid_seconds": 60}),
    )
    .await
    .unwrap();
    assert!(found["token"]["access_token"].is_string(), "{found}");
    let reported =
        json!({"action": "report_error", "org": ORG, "connection_id": keyed_id, "message": "401 from the API"});
    latchkey::lambda::handle_lookup(&lookup.app.service, reported).await.unwrap();

    // connections-api again: forced refresh, disconnect, delete.
    ok(call(&api, Api, "POST", &format!("/v1/connections/{oauth_id}/refresh"), None).await, "refresh");
    ok(call(&api, Api, "POST", &format!("/v1/connections/{oauth_id}/disconnect"), None).await, "disconnect");
    let (status, _) = call(&api, Api, "DELETE", &format!("/v1/connections/{keyed_id}"), None).await;
    assert_eq!(status, 204, "DELETE connection");
    for id in [&second_id, &denied_id] {
        let (status, _) = call(&api, Api, "DELETE", &format!("/v1/connections/{id}"), None).await;
        assert_eq!(status, 204, "DELETE connection");
    }

    // token-revoke: the disconnect event.
    let event = json!({"detail-type": "Connection Disconnected", "source": "latchkey",
        "detail": {"org": ORG, "connection_id": oauth_id}});
    let revoked =
        latchkey::lambda::handle_revoke(&revoke.app.service, &serde_json::from_value(event).unwrap()).await.unwrap();
    assert_eq!(revoked["revoked"], 1, "{revoked}");

    let (status, _) = call(&api, Api, "DELETE", &format!("/v1/connections/{oauth_id}"), None).await;
    assert_eq!(status, 204, "DELETE connection");
    let (status, _) = call(&api, Api, "DELETE", "/v1/definitions/keyed", None).await;
    assert_eq!(status, 204, "DELETE definition");

    let t = template();
    let mut report = Vec::new();
    for (package, f) in [
        ("connections-api", &api),
        ("oauth-callback", &callback),
        ("token-lookup", &lookup),
        ("token-refresh", &refresh),
        ("token-revoke", &revoke),
    ] {
        let mut used = f.calls.actions();
        used.extend(platform(&t, package));
        let granted = granted(&t, package);
        let missing: Vec<_> = used.difference(&granted).collect();
        let unused: Vec<_> = granted.difference(&used).collect();
        if !missing.is_empty() || !unused.is_empty() {
            report.push(format!("{package}: missing {missing:?}, granted but unused {unused:?}"));
        }
    }
    assert!(report.is_empty(), "infra/template.yaml is not least privilege:\n{}", report.join("\n"));
}
