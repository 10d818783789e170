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
    assert_eq!(packages.len(), 6, "{packages:?}");
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
        // Permissions before the first run: its own policy and every one shared with its role.
        let mut attached: Vec<String> = of_type(&t, "AWS::IAM::Policy")
            .into_iter()
            .filter(|(_, p)| {
                p["Properties"]["Roles"].as_array().unwrap().contains(&json!({"Ref": format!("{name}Role")}))
            })
            .map(|(n, _)| n.clone())
            .collect();
        attached.sort();
        let mut depends = strings(&f["DependsOn"]);
        depends.sort();
        assert_eq!(depends, attached, "{package}: depends on the policies of its role");
        assert!(attached.contains(&format!("{name}Policy")), "{package}: a policy of its own");
        assert_eq!(f["Properties"]["LoggingConfig"]["LogGroup"], json!({"Ref": format!("{name}Logs")}));
        let manifest =
            std::fs::read_to_string(format!("{}/functions/{package}/Cargo.toml", env!("CARGO_MANIFEST_DIR")))
                .expect("the package's Cargo.toml");
        assert!(manifest.contains(&format!("name = \"{package}\"")), "{package}: the package builds that binary");
    }
}

/// The template's conditions with its parameters at their defaults, except `parameters`:
/// `Fn::Equals`, `Fn::Not`, `Fn::Or`, `Fn::And`, `Condition` and `Ref` of a parameter.
fn conditions(t: &Value, parameters: &[(&str, &str)]) -> BTreeMap<String, bool> {
    fn value(t: &Value, v: &Value, parameters: &[(&str, &str)]) -> Value {
        match v.get("Ref").and_then(Value::as_str) {
            Some(name) => match parameters.iter().find(|(p, _)| *p == name) {
                Some((_, set)) => json!(set),
                None => t["Parameters"][name]["Default"].clone(),
            },
            None => v.clone(),
        }
    }
    fn eval(t: &Value, c: &Value, parameters: &[(&str, &str)]) -> bool {
        let (function, args) = c.as_object().and_then(|o| o.iter().next()).expect("a condition function");
        let all = || args.as_array().expect("a list of conditions").iter().map(|a| eval(t, a, parameters));
        match function.as_str() {
            "Fn::Equals" => value(t, &args[0], parameters) == value(t, &args[1], parameters),
            "Fn::Not" => !eval(t, &args[0], parameters),
            "Fn::Or" => all().collect::<Vec<_>>().into_iter().any(|b| b),
            "Fn::And" => all().collect::<Vec<_>>().into_iter().all(|b| b),
            "Condition" => eval(t, &t["Conditions"][args.as_str().expect("a name")], parameters),
            other => panic!("condition function {other} is not evaluated here"),
        }
    }
    let names = t["Conditions"].as_object().expect("Conditions");
    names.iter().map(|(name, c)| (name.clone(), eval(t, c, parameters))).collect()
}

/// `v` with every `Fn::If` decided by `conditions`, and what `AWS::NoValue` removes removed.
fn resolved(v: &Value, conditions: &BTreeMap<String, bool>) -> Option<Value> {
    if let Some(args) = v.get("Fn::If") {
        let chosen = if conditions[args[0].as_str().expect("a condition name")] { &args[1] } else { &args[2] };
        return resolved(chosen, conditions);
    }
    if v == &json!({"Ref": "AWS::NoValue"}) {
        return None;
    }
    Some(match v {
        Value::Array(items) => Value::Array(items.iter().filter_map(|i| resolved(i, conditions)).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().filter_map(|(k, v)| resolved(v, conditions).map(|v| (k.clone(), v))).collect())
        }
        other => other.clone(),
    })
}

/// The table's indexes at `IndexMigrationStep` = `step`, by name.
fn indexes_at(t: &Value, step: &str) -> BTreeMap<String, Value> {
    let c = conditions(t, &[("IndexMigrationStep", step)]);
    let indexes = resolved(&resources(t)["Table"]["Properties"]["GlobalSecondaryIndexes"], &c).unwrap();
    indexes.as_array().unwrap().iter().map(|i| (i["IndexName"].as_str().unwrap().to_owned(), i.clone())).collect()
}

/// A stack made before the listing indexes projected keys only moves to them one index change per
/// update, as CloudFormation requires (DynamoDB's UpdateTable creates or deletes one global
/// secondary index a call), and never reads an index that is gone: 1 adds `by-customer-v2`, 2
/// `by-definition-v2`, 3 drops `by-customer`, `done` drops `by-definition`. The old indexes stay
/// exactly as they were meanwhile (a changed projection would be a replacement).
#[test]
fn the_index_migration_changes_one_index_per_stack_update() {
    let t = template();
    assert_eq!(t["Parameters"]["IndexMigrationStep"]["Default"], "done");
    let old = |name: &str, k: &str| {
        json!({"IndexName": name, "Projection": {"ProjectionType": "ALL"}, "KeySchema": [
            {"AttributeName": format!("{k}pk"), "KeyType": "HASH"},
            {"AttributeName": format!("{k}sk"), "KeyType": "RANGE"}]})
    };
    let mut before = indexes_at(&t, "done");
    before.retain(|name, _| name == "refresh-due");
    before.insert("by-customer".into(), old("by-customer", "gsi1"));
    before.insert("by-definition".into(), old("by-definition", "gsi2"));
    let mut changes = Vec::new();
    for step in ["1", "2", "3", "done"] {
        let now = indexes_at(&t, step);
        let added: Vec<_> = now.keys().filter(|n| !before.contains_key(*n)).cloned().collect();
        let dropped: Vec<_> = before.keys().filter(|n| !now.contains_key(*n)).cloned().collect();
        for (name, index) in &now {
            if let Some(was) = before.get(name) {
                assert_eq!(index, was, "step {step}: {name} is unchanged");
            }
        }
        assert_eq!(
            added.len() + dropped.len(),
            1,
            "step {step}: one index change ({added:?} added, {dropped:?} dropped)"
        );
        changes.push(format!("{step}: +{added:?} -{dropped:?}"));
        before = now;
    }
    assert_eq!(
        changes,
        [
            "1: +[\"by-customer-v2\"] -[]",
            "2: +[\"by-definition-v2\"] -[]",
            "3: +[] -[\"by-customer\"]",
            "done: +[] -[\"by-definition\"]",
        ]
    );
}

#[test]
fn the_table_is_the_one_bootstrap_creates_with_production_settings() {
    let t = template();
    let table = &resources(&t)["Table"];
    let p = &resolved(&table["Properties"], &conditions(&t, &[])).unwrap();
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
    println!("estimated built template: {built} bytes");
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

/// How specifically the route `route_method route_path` matches a request `method path`: `None`
/// when it does not; else a key that orders matches as API Gateway prefers them (its "most
/// specific" rule): a route without a greedy `{proxy+}` over one with, then segment by segment a
/// literal over a `{variable}`, then a named method over `ANY`.
fn route_match(route_method: &str, route_path: &str, method: &str, path: &str) -> Option<(bool, Vec<u8>, bool)> {
    let any = route_method == "ANY";
    if !any && route_method != method {
        return None;
    }
    let want: Vec<&str> = route_path.trim_matches('/').split('/').collect();
    let have: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut scores = Vec::new();
    for (i, segment) in want.iter().enumerate() {
        let variable = segment.starts_with('{') && segment.ends_with('}');
        if variable && segment.ends_with("+}") {
            // Greedy: the last segment, matching one or more.
            return (i == want.len() - 1 && have.len() > i).then_some((false, scores, !any));
        }
        match have.get(i) {
            Some(_) if variable => scores.push(1),
            Some(h) if h == segment => scores.push(2),
            _ => return None,
        }
    }
    (want.len() == have.len()).then_some((true, scores, !any))
}

#[test]
fn route_matching_prefers_the_most_specific_route() {
    let m = |route: &str, request: &str| {
        let (rm, rp) = route.split_once(' ').unwrap();
        let (m, p) = request.split_once(' ').unwrap();
        route_match(rm, rp, m, p)
    };
    assert!(m("ANY /v1/{proxy+}", "GET /v1/oauth/callback") < m("GET /v1/oauth/callback", "GET /v1/oauth/callback"));
    assert!(m("ANY /v1/{proxy+}", "POST /v1/webhooks/w/rotate-secret").is_some());
    assert!(m("ANY /v1/{proxy+}", "GET /v1").is_none(), "greedy needs a segment");
    assert!(m("GET /v1/oauth/callback", "POST /v1/oauth/callback").is_none());
    assert!(m("GET /connect", "GET /connect/x").is_none());
    assert!(m("GET /v1/{id}", "GET /v1/x") < m("GET /v1/x", "GET /v1/x"));
    assert!(m("ANY /v1/x", "GET /v1/x") < m("GET /v1/x", "GET /v1/x"));
}

/// Issue 16's webhook routes: served by connections-api behind the JWT authorizer, whether or
/// not the OpenAPI document lists them yet.
const WEBHOOK_OPERATIONS: &[&str] = &[
    "GET /v1/webhooks",
    "PUT /v1/webhooks/{id}",
    "GET /v1/webhooks/{id}",
    "DELETE /v1/webhooks/{id}",
    "POST /v1/webhooks/{id}/rotate-secret",
    "GET /v1/webhooks/{id}/deliveries",
    "POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry",
];

/// The routes are SAM `HttpApi` events on the HTTP functions. Every OpenAPI operation (and every
/// webhook route) reaches the function that serves it through the route API Gateway picks for
/// it, the most specific that matches ([`route_match`]): explicit routes, or a catch-all
/// (`ANY /v1/{proxy+}` for the authorized API, `ANY /connect/{proxy+}` for the connect page).
/// That route is behind the API's JWT authorizer unless the operation is public (`security:
/// []`, `Auth: {Authorizer: NONE}`), and every route serves at least one operation.
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
    for op in WEBHOOK_OPERATIONS {
        if let Some(public) = documented.insert((*op).to_owned(), false) {
            assert!(!public, "{op} is documented as public");
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

    // (method, path, public, function) of every route.
    let mut deployed: Vec<(String, String, bool, String)> = Vec::new();
    for (name, function) in of_type(&t, "AWS::Serverless::Function") {
        let events = function["Properties"]["Events"].as_object().into_iter().flatten();
        for (event, e) in events.filter(|(_, e)| e["Type"] == "HttpApi") {
            let p = &e["Properties"];
            assert_eq!(p["ApiId"], json!({"Ref": "HttpApi"}), "{name}.{event}");
            // API Gateway answers 503 after 29 s; the function may run on (see Timeout).
            assert_eq!(p["TimeoutInMillis"], 29000, "{name}.{event}");
            assert!(p.get("PayloadFormatVersion").is_none_or(|v| v == "2.0"), "{name}.{event}: payload 2.0");
            let public = match p["Auth"]["Authorizer"].as_str() {
                None => false,
                Some("NONE") => true,
                Some(other) => panic!("{name}.{event}: authorizer {other}, not the API's default {default}"),
            };
            let (method, path) = (p["Method"].as_str().unwrap().to_uppercase(), p["Path"].as_str().unwrap());
            let twice = deployed.iter().any(|(m, p, _, _)| *m == method && p == path);
            assert!(!twice, "{name}.{event}: {method} {path} twice");
            deployed.push((method, path.to_owned(), public, name.clone()));
        }
    }
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (op, public) in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        // A request of the operation: each `{parameter}` a value.
        let concrete: String =
            path.split('/').map(|s| if s.starts_with('{') { "sample" } else { s }).collect::<Vec<_>>().join("/");
        let chosen = deployed
            .iter()
            .filter_map(|r| route_match(&r.0, &r.1, method, &concrete).map(|score| (score, r)))
            .max_by(|a, b| a.0.cmp(&b.0));
        let Some((_, (m, p, route_public, function))) = chosen else {
            problems.push(format!("{op}: no route"));
            continue;
        };
        used.insert(format!("{m} {p}"));
        let serves = if op == "GET /v1/oauth/callback" { "OauthCallbackFunction" } else { "ConnectionsApiFunction" };
        if function != serves || route_public != public {
            problems
                .push(format!("{op}: {m} {p} (public: {route_public}) on {function}, not {serves} (public: {public})"));
        }
    }
    assert!(problems.is_empty(), "operations the routes do not serve as documented:\n{}", problems.join("\n"));
    let unused: Vec<_> = deployed.iter().map(|(m, p, _, _)| format!("{m} {p}")).filter(|k| !used.contains(k)).collect();
    assert!(unused.is_empty(), "routes that serve no documented operation: {unused:?}");
    // The authorized API is one catch-all; the explicit routes are the public ones.
    let catch_all = deployed.iter().find(|(m, p, _, _)| m == "ANY" && p == "/v1/{proxy+}").expect("ANY /v1/{proxy+}");
    assert!(!catch_all.2, "the /v1/ catch-all is JWT-authorized");
    assert!(deployed.iter().all(|(m, p, public, _)| *public || (m == "ANY" && p == "/v1/{proxy+}")), "{deployed:?}");

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
}

/// The sweep's fan-out as deployed: token-refresh is told its queue (`LATCHKEY_REFRESH_QUEUE_URL`)
/// and reads it in batches of 100 with partial batch failures, at most `MaximumConcurrency`
/// workers, and its reservation is exactly those workers and one tick (what reaches providers is
/// capped, and a tick is never throttled behind the workers). The queue hides a message longer
/// than a worker runs and sends one that failed 5 times to token-refresh's dead letters, whose
/// alarm watches them; the connection stays due in the table meanwhile. The role may send to and
/// read the queue's counts, and the event source receives and deletes.
#[test]
fn the_refresh_queue_feeds_token_refreshs_own_workers() {
    let t = template();
    let function = &resources(&t)["TokenRefreshFunction"]["Properties"];
    assert_eq!(function["Environment"]["Variables"]["LATCHKEY_REFRESH_QUEUE_URL"], json!({"Ref": "RefreshQueue"}));
    let events = function["Events"].as_object().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let work = &events["Work"];
    assert_eq!(work["Type"], "SQS");
    assert_eq!(
        work["Properties"],
        json!({"Queue": get_att("RefreshQueue", "Arn"), "BatchSize": 100, "MaximumBatchingWindowInSeconds": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"], "ScalingConfig": {"MaximumConcurrency": 200}})
    );
    assert_eq!(function["ReservedConcurrentExecutions"], 200 + 1, "the workers and one tick");

    let queue = &resources(&t)["RefreshQueue"]["Properties"];
    assert_eq!(queue["SqsManagedSseEnabled"], true);
    assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * function["Timeout"].as_u64().unwrap());
    assert_eq!(
        queue["RedrivePolicy"],
        json!({"deadLetterTargetArn": get_att("TokenRefreshDeadLetterQueue", "Arn"), "maxReceiveCount": 5})
    );
    let dead_letters = get_att("TokenRefreshDeadLetterQueue", "QueueName");
    let alarms = of_type(&t, "AWS::CloudWatch::Alarm");
    assert!(alarms.iter().any(|(_, a)| a["Properties"]["Dimensions"][0]["Value"] == dead_letters), "watched");

    let policy = &resources(&t)["TokenRefreshPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    let on_queue: Vec<&Value> =
        policy.as_array().unwrap().iter().filter(|s| s["Resource"] == get_att("RefreshQueue", "Arn")).collect();
    assert_eq!(on_queue.len(), 1);
    assert_eq!(
        on_queue[0]["Action"],
        json!([
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:SendMessage"
        ])
    );
}

/// Webhooks as the design has them: every Latchkey event on the bus to the webhook queue (14
/// days, visibility 120 s, 30 receives then the dead-letter queue), which only that rule may send
/// to; webhook-deliver reads it in batches of 10 with partial batch failures, at most 5
/// invocations at once, and sweeps what is due every 5 minutes (the backstop for messages in
/// the dead letters); an alarm watches the dead letters. (`webhook_events_flow_from_the_bus_through_the_queue_to_a_receiver` runs
/// this wiring against moto.)
#[test]
fn the_webhook_rule_feeds_the_queue_that_webhook_deliver_reads() {
    let t = template();
    let rule = &resources(&t)["WebhookRule"]["Properties"];
    assert_eq!(rule["EventBusName"], json!({"Ref": "EventBus"}));
    assert_eq!(rule["EventPattern"], json!({"source": [latchkey::adapters::aws::eventbridge::SOURCE]}), "every event");
    assert_eq!(rule["Targets"].as_array().map(Vec::len), Some(1));
    assert_eq!(rule["Targets"][0]["Arn"], get_att("WebhookQueue", "Arn"));
    assert_eq!(rule["Targets"][0]["DeadLetterConfig"]["Arn"], get_att("WebhookDeadLetterQueue", "Arn"));

    let queue = &resources(&t)["WebhookQueue"]["Properties"];
    assert_eq!(queue["MessageRetentionPeriod"], 14 * 24 * 3600);
    assert_eq!(queue["VisibilityTimeout"], 120);
    assert_eq!(queue["SqsManagedSseEnabled"], true);
    assert_eq!(
        queue["RedrivePolicy"],
        json!({"deadLetterTargetArn": get_att("WebhookDeadLetterQueue", "Arn"), "maxReceiveCount": 30})
    );
    let function = &resources(&t)["WebhookDeliverFunction"]["Properties"];
    let timeout = function["Timeout"].as_u64().or(t["Globals"]["Function"]["Timeout"].as_u64()).unwrap();
    assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= timeout, "Lambda refuses a shorter visibility");

    let events = function["Events"].as_object().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events["Queue"]["Type"], "SQS");
    assert_eq!(
        events["Queue"]["Properties"],
        json!({"Queue": get_att("WebhookQueue", "Arn"), "BatchSize": 10,
            "FunctionResponseTypes": ["ReportBatchItemFailures"], "ScalingConfig": {"MaximumConcurrency": 5}})
    );
    // The sweep: the handler tells its event from a batch (WebhookDeliverEvent).
    assert_eq!(events["Sweep"], json!({"Type": "Schedule", "Properties": {"Schedule": "rate(5 minutes)"}}));

    // Only the rule sends to either queue.
    let policies: Vec<_> = of_type(&t, "AWS::SQS::QueuePolicy")
        .into_iter()
        .filter(|(_, p)| p["Properties"]["Queues"].as_array().unwrap().contains(&json!({"Ref": "WebhookQueue"})))
        .collect();
    assert_eq!(policies.len(), 1, "one policy for the webhook queue");
    let p = &policies[0].1["Properties"];
    assert_eq!(p["Queues"], json!([{"Ref": "WebhookQueue"}, {"Ref": "WebhookDeadLetterQueue"}]));
    let statements = p["PolicyDocument"]["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    let s = &statements[0];
    assert_eq!(
        (&s["Effect"], &s["Principal"], &s["Action"]),
        (&json!("Allow"), &json!({"Service": "events.amazonaws.com"}), &json!("sqs:SendMessage"))
    );
    assert_eq!(s["Condition"], json!({"ArnEquals": {"aws:SourceArn": get_att("WebhookRule", "Arn")}}));
    for (name, other) in of_type(&t, "AWS::SQS::QueuePolicy") {
        let queues = &other["Properties"]["Queues"];
        if name != policies[0].0 {
            assert!(!queues.as_array().unwrap().contains(&json!({"Ref": "WebhookQueue"})), "{name}");
        }
    }

    let alarms: Vec<_> = of_type(&t, "AWS::CloudWatch::Alarm")
        .into_iter()
        .filter(|(_, a)| a["Properties"]["Dimensions"][0]["Value"] == get_att("WebhookDeadLetterQueue", "QueueName"))
        .collect();
    assert_eq!(alarms.len(), 1, "an alarm on the webhook dead letters");
    assert_eq!(alarms[0].1["Properties"]["MetricName"], "ApproximateNumberOfMessagesVisible");
    assert_eq!(alarms[0].1["Properties"]["Threshold"], 1);
}

/// The metric filter reads fields of the functions' JSON log lines: the sweep's summary line as
/// the code writes it must match the refresh-failures filter. What the functions count
/// themselves (`telemetry::metrics::COUNTED`, embedded-metric-format lines on standard output,
/// whose lines the metrics module's and the KMS adapter's unit tests check) each has an alarm on
/// its metric, without dimensions as the lines write it, and no metric filter counts it twice;
/// no function asks Lambda for the JSON log format, which would wrap the lines.
#[tokio::test(flavor = "current_thread")]
async fn the_metric_filters_and_alarms_read_what_the_code_logs() {
    let t = template();
    let filter = &resources(&t)["RefreshFailuresMetric"]["Properties"];
    assert_eq!(filter["FilterPattern"], r#"{ $.message = "refresh sweep" && $.failed > 0 }"#);
    assert_eq!(filter["MetricTransformations"][0]["MetricValue"], "$.failed");
    assert_eq!(filter["LogGroupName"], json!({"Ref": "TokenRefreshLogs"}));
    let filtered: Vec<_> = of_type(&t, "AWS::Logs::MetricFilter")
        .iter()
        .map(|(_, f)| f["Properties"]["MetricTransformations"][0]["MetricName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(filtered, ["RefreshFailures"], "only the sweep summary is read by a filter");
    for counted in latchkey::telemetry::metrics::COUNTED {
        let alarms: Vec<_> = of_type(&t, "AWS::CloudWatch::Alarm")
            .into_iter()
            .filter(|(_, a)| a["Properties"]["MetricName"] == counted.metric)
            .collect();
        assert_eq!(alarms.len(), 1, "an alarm on {}", counted.metric);
        let a = &alarms[0].1["Properties"];
        assert_eq!(a["Namespace"], latchkey::telemetry::metrics::NAMESPACE, "{}", counted.metric);
        assert!(a.get("Dimensions").is_none(), "{}: the lines write no dimensions", counted.metric);
        assert_eq!((&a["Statistic"], &a["Threshold"]), (&json!("Sum"), &json!(1)), "{}", counted.metric);
    }
    let global = t["Globals"]["Function"]["LoggingConfig"].get("LogFormat").and_then(Value::as_str);
    assert_eq!(global.unwrap_or("Text"), "Text", "Globals");
    for package in function_packages() {
        let f = &resources(&t)[&format!("{}Function", logical(&package))]["Properties"];
        let format = f["LoggingConfig"].get("LogFormat").and_then(Value::as_str).unwrap_or("Text");
        assert_eq!(format, "Text", "{package}");
    }

    // Kept whatever LogLevel says: RUST_LOG is the bare level, and the functions' filter keeps
    // the summary's target at info below it (telemetry::log_filter; its unit test covers the KMS
    // throttling lines).
    let rust_log = &t["Globals"]["Function"]["Environment"]["Variables"]["RUST_LOG"];
    assert_eq!(rust_log, &serde_json::json!({"Ref": "LogLevel"}));
    let levels = t["Parameters"]["LogLevel"]["AllowedValues"].as_array().unwrap();
    assert!(levels.len() >= 4, "{levels:?}");
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    for level in levels {
        let level = level.as_str().unwrap();
        let logs = latchkey::telemetry::Captured::default();
        let filter = latchkey::telemetry::log_filter(Some(level));
        let _scope = tracing::subscriber::set_default(latchkey::telemetry::json_subscriber(filter, logs.clone()));
        latchkey::lambda::handle_refresh(&app.service, Instant::now() + Duration::from_secs(5)).await.unwrap();
        let lines = logs.lines();
        let summary =
            lines.iter().find(|l| l["message"] == "refresh sweep").unwrap_or_else(|| panic!("{level}: {lines:?}"));
        assert!(summary["failed"].is_u64(), "a number the filter can compare: {summary}");
        assert_eq!(summary["target"], "latchkey::service::refresh");
    }
}

/// A function may outlive its caller's patience, never the work it started: lookups may wait
/// for another worker's refresh (lease + 5 s), then read the record (a store call) and refresh
/// under their own lease (the provider's answer is written until it ends), and write once more
/// after losing to another writer (two store calls); the sweep stops starting work
/// `SWEEP_MARGIN` before its end.
#[test]
fn function_timeouts_leave_room_for_a_refresh_in_flight() {
    let t = template();
    let default = t["Globals"]["Function"]["Timeout"].as_u64().unwrap();
    let lease = latchkey::service::RefreshPolicy::default().lease.as_secs();
    let store_call = latchkey::adapters::aws::OPERATION_TIMEOUT.as_secs();
    let lookup = (lease + 5) + store_call + lease + 2 * store_call;
    for package in function_packages() {
        let f = &resources(&t)[&format!("{}Function", logical(&package))]["Properties"];
        let timeout = f["Timeout"].as_u64().unwrap_or(default);
        assert!(timeout >= lookup, "{package}: {timeout} s, a lookup may take {lookup} s");
    }
    let sweep = resources(&t)["TokenRefreshFunction"]["Properties"]["Timeout"].as_u64().unwrap();
    assert!(sweep > 2 * latchkey::lambda::SWEEP_MARGIN.as_secs(), "{sweep} s");
}

// --- Least privilege, measured ----------------------------------------------------------------

/// What the template grants `package`'s role, from its policies (its own `<Function>Policy` and
/// `OpenSecretsPolicy`, shared by the connection roles): every action, KMS included, except the
/// KMS actions DynamoDB uses on its behalf for the table's encryption at rest
/// (`kms:ViaService`). Every KMS action the role uses directly must be under Latchkey's
/// encryption context (`{org}` alone for webhook-deliver, which opens only webhook secrets)
/// and also be allowed to it by a key-policy statement that names the role
/// (`aws:PrincipalArn`) under the same conditions. `dynamodb:Query (index)` stands for the
/// index ARN.
fn granted(t: &Value, package: &str) -> BTreeSet<String> {
    let name = logical(package);
    let role = get_att(&format!("{name}Role"), "Arn");
    let mut out = BTreeSet::new();
    let policies: Vec<_> = of_type(t, "AWS::IAM::Policy")
        .into_iter()
        .filter(|(_, p)| p["Properties"]["Roles"].as_array().unwrap().contains(&json!({"Ref": format!("{name}Role")})))
        .collect();
    let own = format!("{name}Policy");
    assert!(policies.iter().any(|(n, _)| **n == own), "{package}: a policy of its own");
    assert!(policies.iter().all(|(n, _)| **n == own || *n == "OpenSecretsPolicy"), "{package}: {policies:?}");
    let key_policy = resources(t)["Key"]["Properties"]["KeyPolicy"]["Statement"].as_array().unwrap().clone();
    let mut through_dynamodb = false;
    let statements =
        policies.iter().flat_map(|(_, p)| p["Properties"]["PolicyDocument"]["Statement"].as_array().unwrap());
    for s in statements {
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
        // `purpose`: the branch keys' context, {org, purpose} (crypto/branch.rs).
        let context = if package == "webhook-deliver" {
            json!(["org"])
        } else {
            json!(["org", "connection_id", "definition", "purpose"])
        };
        assert_eq!(ctx, &context, "{package}: only the contexts it opens");
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
/// sending failed asynchronous invocations to its dead-letter queue, and an SQS event source's
/// polling (receiving, deleting, reading the queue's attributes).
fn platform(t: &Value, package: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["logs:CreateLogStream", "logs:PutLogEvents"].map(str::to_owned).into();
    let f = &resources(t)[&format!("{}Function", logical(package))]["Properties"];
    if f.get("DeadLetterQueue").is_some() {
        out.insert("sqs:SendMessage".to_owned());
    }
    if f["Events"].as_object().into_iter().flatten().any(|(_, e)| e["Type"] == "SQS") {
        out.extend(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"].map(str::to_owned));
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
    // Due where the sweep looks: the index, which files a due time under the next whole second.
    let store = &watcher.app.store;
    support::eventually(Duration::from_secs(20), &format!("{id}'s refresh to be due"), || async {
        let now = time::OffsetDateTime::now_utc();
        let mut due = false;
        for shard in 0..store.due_shards() {
            due |= store
                .due_connections(shard, now, None, 1_000)
                .await
                .unwrap()
                .iter()
                .any(|e| e.org == org && e.id == id);
        }
        due
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
    // Its webhook routes (the deliveries themselves are webhook-deliver's: see
    // webhook_events_flow_from_the_bus_through_the_queue_to_a_receiver).
    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["Connection Created"], "enabled": true});
    ok(call(&api, Api, "PUT", "/v1/webhooks/hook-1", Some(hook.clone())).await, "PUT webhook");
    ok(call(&api, Api, "PUT", "/v1/webhooks/hook-1", Some(hook)).await, "PUT webhook again");
    ok(call(&api, Api, "GET", "/v1/webhooks", None).await, "list webhooks");
    ok(call(&api, Api, "GET", "/v1/webhooks/hook-1", None).await, "GET webhook");
    ok(call(&api, Api, "POST", "/v1/webhooks/hook-1/rotate-secret", None).await, "rotate");
    ok(call(&api, Api, "GET", "/v1/webhooks/hook-1/deliveries", None).await, "deliveries");
    let (status, _) = call(&api, Api, "DELETE", "/v1/webhooks/hook-1", None).await;
    assert_eq!(status, 204, "DELETE webhook");

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
    // Its worker hands back a message it could not start (the deadline had come) visible again
    // soon: ChangeMessageVisibility on its queue (here a queue in moto, the message received as
    // the event source mapping receives it).
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue_url = sqs.create_queue().queue_name(moto::unique("refresh")).send().await.unwrap().queue_url.unwrap();
    let body = json!({"org": ORG, "connection_id": oauth_id, "due": 0}).to_string();
    sqs.send_message().queue_url(&queue_url).message_body(body).send().await.unwrap();
    let got = sqs.receive_message().queue_url(&queue_url).send().await.unwrap();
    let message = &got.messages()[0];
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:{}", queue_url.rsplit('/').next().unwrap());
    let batch: latchkey::lambda::SqsEvent = serde_json::from_value(json!({"Records": [{
        "messageId": message.message_id(), "receiptHandle": message.receipt_handle(), "body": message.body(),
        "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"}]}))
    .unwrap();
    let recorded_sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config).interceptor(refresh.calls.clone()).build(),
    );
    let visibility = latchkey::lambda::SqsVisibility::new(recorded_sqs);
    let back =
        latchkey::lambda::handle_refresh_messages(&refresh.app.service, None, &visibility, batch, Instant::now()).await;
    assert_eq!(back.batch_item_failures.len(), 1, "deferred: handed back");

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
    // A lookup by selector (SPEC section 10): a Query of the `by-customer` index, then the
    // connections it found read from the table.
    let selected = latchkey::lambda::handle_lookup(
        &lookup.app.service,
        json!({"org": ORG, "definition": "keyed", "customer": "c-1"}),
    )
    .await
    .unwrap();
    assert_eq!(selected["connection_id"], json!(keyed_id), "{selected}");
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

    // The key hierarchy (shared/src/crypto/branch.rs): any function that seals may make an
    // organization's first branch key (KMS GenerateDataKey: an org whose first secret is an OAuth
    // token arrives through oauth-callback; one whose tokens were sealed before the hierarchy,
    // through a refresh in token-refresh or token-lookup), and a cold container of any of them
    // unwraps branch keys that others made (KMS Decrypt). Above, connections-api made the org's
    // branch key and the others found it: here each makes a new org's first seal, and
    // connections-api opens one that oauth-callback made.
    let mut first_seals = Vec::new();
    for f in [&api, &callback, &lookup, &refresh] {
        let org = latchkey::conformance::fresh_org();
        let ctx = latchkey::crypto::EncryptionContext::connection(&org, &latchkey::domain::ConnectionId::generate());
        first_seals.push((latchkey::crypto::KeyProvider::generate_data_key(&*f.app.keys, &ctx).await.unwrap(), ctx));
    }
    let (made_by_callback, ctx) = &first_seals[1];
    latchkey::crypto::KeyProvider::decrypt_data_key(
        &*api.app.keys,
        &made_by_callback.key_id,
        &made_by_callback.wrapped,
        ctx,
    )
    .await
    .unwrap();

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

/// The webhook path wired as the template declares it, against moto: the queues with the
/// template's retention, visibility and redrive, the rule with the template's pattern on the
/// bus and the queue as its target. connections-api creates a webhook and a connection; the
/// `Connection Created` event goes out through the EventBridge sink, the rule queues it, and
/// webhook-deliver's handler gets it as the event source mapping hands it over: the endpoint's
/// 500 hands the message back with its visibility moved to the next attempt (1 s), SQS
/// redelivers it then, and the second attempt is delivered, verified by the Standard Webhooks
/// crate, under the same id. Then a delivery whose message goes to the dead-letter queue (every
/// receive after the first lost, up to the declared `maxReceiveCount`) is delivered by the
/// scheduled sweep. What webhook-deliver called is exactly what its role is granted.
#[tokio::test]
async fn webhook_events_flow_from_the_bus_through_the_queue_to_a_receiver() {
    use aws_sdk_sqs::types::QueueAttributeName as Attr;
    use support::webhook_receiver::Receiver;
    let t = template();
    let config = moto::sdk_config().await;
    let table = moto::unique("latchkey");
    latchkey::adapters::aws::schema::bootstrap(&aws_sdk_dynamodb::Client::new(&config), &table).await.unwrap();
    let key = moto::create_kms_key(&config).await;
    let bus = moto::unique("bus");
    let events = aws_sdk_eventbridge::Client::new(&config);
    events.create_event_bus().name(&bus).send().await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&config);

    // The queues, as declared.
    let arn_of = |url: String| {
        let sqs = sqs.clone();
        async move {
            let out = sqs.get_queue_attributes().queue_url(&url).attribute_names(Attr::QueueArn).send().await.unwrap();
            (url, out.attributes().unwrap()[&Attr::QueueArn].clone())
        }
    };
    let number = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_else(|| panic!("a number: {v}"));
    let dead = &resources(&t)["WebhookDeadLetterQueue"]["Properties"];
    let dead_url = sqs
        .create_queue()
        .queue_name(moto::unique("webhook-dead-letters"))
        .attributes(Attr::MessageRetentionPeriod, number(&dead["MessageRetentionPeriod"]))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let (dead_url, dead_arn) = arn_of(dead_url).await;
    let declared = &resources(&t)["WebhookQueue"]["Properties"];
    let redrive = &declared["RedrivePolicy"];
    assert_eq!(redrive["deadLetterTargetArn"], get_att("WebhookDeadLetterQueue", "Arn"));
    let redrive = json!({"deadLetterTargetArn": dead_arn, "maxReceiveCount": redrive["maxReceiveCount"]});
    let queue_url = sqs
        .create_queue()
        .queue_name(moto::unique("webhook-queue"))
        .attributes(Attr::MessageRetentionPeriod, number(&declared["MessageRetentionPeriod"]))
        .attributes(Attr::VisibilityTimeout, number(&declared["VisibilityTimeout"]))
        .attributes(Attr::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let (queue_url, queue_arn) = arn_of(queue_url).await;

    // The rule, as declared: its pattern on the bus, the queue its one target.
    let rule = &resources(&t)["WebhookRule"]["Properties"];
    assert_eq!(rule["EventBusName"], json!({"Ref": "EventBus"}));
    let rule_name = moto::unique("webhook-rule");
    events
        .put_rule()
        .name(&rule_name)
        .event_bus_name(&bus)
        .event_pattern(rule["EventPattern"].to_string())
        .send()
        .await
        .unwrap();
    let declared_target = &rule["Targets"][0];
    assert_eq!(declared_target["Arn"], get_att("WebhookQueue", "Arn"));
    let target = aws_sdk_eventbridge::types::Target::builder()
        .id(declared_target["Id"].as_str().unwrap())
        .arn(&queue_arn)
        .build()
        .unwrap();
    let out = events.put_targets().rule(&rule_name).event_bus_name(&bus).targets(target).send().await.unwrap();
    assert_eq!(out.failed_entry_count(), 0);

    // connections-api, and webhook-deliver with its own recorded clients (SQS too) and a 1 s
    // retry schedule.
    let api = function(&config, &table, &key, &bus).await;
    let calls = calls::Calls::default();
    let (ddb, kms, eb) = calls.clients(&config);
    let options = ServiceOptions {
        allow_loopback_providers: true,
        webhook_retry_schedule: vec![Duration::from_secs(1)],
        ..ServiceOptions::default()
    };
    let deliver = Components::aws(ddb, kms, eb, &table, &key, &bus, options);
    let recorded_sqs =
        aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(&config).interceptor(calls.clone()).build());
    let visibility = latchkey::lambda::SqsVisibility::new(recorded_sqs);

    let (url, endpoint) = Receiver::start(&[500]).await;
    use Surface::ConnectionsApi as Api;
    let hook = json!({"url": url, "events": ["Connection Created"], "enabled": true});
    let (status, created) = call(&api, Api, "PUT", "/v1/webhooks/hook-1", Some(hook)).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    // A second endpoint that always fails: after its two attempts the delivery fails and the
    // endpoint is disabled, with a `Webhook Disabled` event (PutEvents).
    let (failing_url, failing) = Receiver::start(&[500, 500, 500]).await;
    let hook = json!({"url": failing_url, "events": ["Connection Created"], "enabled": true});
    assert_eq!(call(&api, Api, "PUT", "/v1/webhooks/hook-2", Some(hook)).await.0, 201);
    let keyed = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    assert_eq!(call(&api, Api, "PUT", "/v1/definitions/keyed", Some(keyed)).await.0, 201);
    let conn = json!({"definition": "keyed", "customer": "c-1", "values": {"apiKey": "k-webhook-wiring"}});
    let (status, conn) = call(&api, Api, "POST", "/v1/connections", Some(conn)).await;
    assert_eq!(status, 201, "{conn}");

    // The event source mapping's part: receive a batch, invoke, delete what was not handed back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut batches = Vec::new();
    // Until both endpoints are done with the event, the last batch was settled, and the queue
    // has nothing more (the `Webhook Disabled` event comes through it too).
    let mut types = BTreeSet::new();
    loop {
        assert!(Instant::now() < deadline, "not delivered: {batches:?}");
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            let done = endpoint.requests().iter().any(|(status, _, _)| *status == 200)
                && failing.requests().len() >= 2
                && batches.last().is_some_and(|(_, _, back)| *back == 0);
            if done {
                break;
            }
            continue;
        }
        for m in got.messages() {
            let envelope: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            types.insert(envelope["detail-type"].as_str().unwrap().to_owned());
        }
        let records: Vec<Value> = got
            .messages()
            .iter()
            .map(|m| {
                json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"})
            })
            .collect();
        let event: latchkey::lambda::SqsEvent = serde_json::from_value(json!({"Records": records})).unwrap();
        let handed_back: Vec<String> = latchkey::lambda::handle_webhook_messages(&deliver.service, &visibility, event)
            .await
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for m in got.messages() {
            if !handed_back.iter().any(|id| Some(id.as_str()) == m.message_id()) {
                sqs.delete_message()
                    .queue_url(&queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        batches.push((Instant::now(), got.messages().len(), handed_back.len()));
    }
    // First the 500 (handed back), then, once SQS let it be seen again, the 200.
    let requests = endpoint.requests();
    assert_eq!(requests.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(), [500, 200], "{batches:?}");
    assert!(batches.iter().any(|(_, _, back)| *back == 1), "{batches:?}");
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for (_, headers, body) in &requests {
        verifier.verify(body, headers).expect("a Standard Webhooks signature");
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!((&body["type"], &body["data"]["connection_id"]), (&json!("Connection Created"), &conn["id"]));
        assert!(!body.to_string().contains("k-webhook-wiring"), "no secret in a body");
    }
    assert_eq!(requests[0].1["webhook-id"], requests[1].1["webhook-id"], "one id per event");
    // Nothing is left in the queue or its dead letters.
    assert!(moto::receive_all(&config, &queue_url, 0).await.is_empty());
    assert_eq!(failing.requests().len(), 2, "two attempts, then the delivery fails");
    for t in [EventType::ConnectionCreated, EventType::WebhookDisabled] {
        assert!(types.contains(t.detail_type()), "{types:?}");
    }
    let (_, disabled) = call(&api, Api, "GET", "/v1/webhooks/hook-2", None).await;
    assert_eq!((&disabled["enabled"], &disabled["disabled_reason"]), (&json!(false), &json!("deliveries_failing")));

    // hook-3's endpoint answers the first attempt of a `Connection Disconnected` 500; its
    // message is handled that once, then every receive of it is lost (an invocation that dies)
    // until SQS moves it to the dead letters. The scheduled sweep delivers it once due.
    let (late_url, late) = Receiver::start(&[500]).await;
    let hook = json!({"url": late_url, "events": ["Connection Disconnected"], "enabled": true});
    let (status, created) = call(&api, Api, "PUT", "/v1/webhooks/hook-3", Some(hook)).await;
    assert_eq!(status, 201, "{created}");
    let late_secret = created["secret"].as_str().unwrap().to_owned();
    let id = conn["id"].as_str().unwrap();
    let (status, _) = call(&api, Api, "POST", &format!("/v1/connections/{id}/disconnect"), None).await;
    assert_eq!(status, 200, "disconnect");
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        assert!(Instant::now() < deadline, "the Connection Disconnected event never reached the queue");
        let got = sqs.receive_message().queue_url(&queue_url).wait_time_seconds(1).send().await.unwrap();
        if let Some(m) = got.messages().first() {
            break m.clone();
        }
    };
    let envelope: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(envelope["detail-type"], "Connection Disconnected");
    let record = json!({"messageId": message.message_id(), "receiptHandle": message.receipt_handle(),
        "body": message.body(), "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"});
    let event: latchkey::lambda::SqsEvent = serde_json::from_value(json!({"Records": [record]})).unwrap();
    let answer = latchkey::lambda::handle_webhook_messages(&deliver.service, &visibility, event).await;
    assert_eq!(answer.batch_item_failures.len(), 1, "handed back");
    assert_eq!(late.requests().len(), 1);
    let max_receives = declared["RedrivePolicy"]["maxReceiveCount"].as_u64().unwrap();
    let (mut receives, mut handle) = (1, message.receipt_handle().unwrap().to_owned());
    loop {
        // Visible again at once, as when the invocation that received it died.
        sqs.change_message_visibility()
            .queue_url(&queue_url)
            .receipt_handle(&handle)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        let got = sqs.receive_message().queue_url(&queue_url).send().await.unwrap();
        let Some(m) = got.messages().first() else { break };
        receives += 1;
        assert!(receives <= max_receives, "still in the queue after {receives} receives");
        handle = m.receipt_handle().unwrap().to_owned();
    }
    assert_eq!(receives, max_receives, "received as often as the redrive policy allows");
    let dead_letters = moto::receive_all(&config, &dead_url, 1).await;
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0]["detail-type"], "Connection Disconnected");
    assert_eq!(late.requests().len(), 1, "nothing more from the queue");
    support::eventually(Duration::from_secs(20), "the sweep to deliver it", || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        latchkey::lambda::handle_webhook_sweep(&deliver.service, deadline).await.unwrap();
        late.requests().iter().any(|(status, _, _)| *status == 200)
    })
    .await;
    let requests = late.requests();
    assert_eq!(requests.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(), [500, 200]);
    let verifier = standardwebhooks::Webhook::new(&late_secret).unwrap();
    for (_, headers, body) in &requests {
        verifier.verify(body, headers).expect("a Standard Webhooks signature");
    }
    assert_eq!(requests[0].1["webhook-id"], requests[1].1["webhook-id"], "one id per event");

    let mut used = calls.actions();
    used.extend(platform(&t, "webhook-deliver"));
    assert!(used.contains("sqs:ChangeMessageVisibility"), "{used:?}");
    assert!(used.contains("dynamodb:Query (index)"), "the sweep: {used:?}");
    let granted = granted(&t, "webhook-deliver");
    assert_eq!(used, granted, "webhook-deliver's role: what it calls, no more");
}
