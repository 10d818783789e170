//! `latchkey definitions apply -f FILE`: definitions kept in files (YAML or JSON), applied
//! idempotently: each is read back, compared in the form the API shows it, and written only
//! when it differs, with a diff of what changes. Also `list` and `get`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use latchkey::domain::DefinitionKey;
use latchkey::domain::validate::{DefinitionSpec, definition_from_json};
use latchkey_client::{Client, Definition, Put};
use serde_json::{Map, Value, json};

use super::{Failure, Remote, line, print_json, text};

/// `latchkey definitions ...`.
#[derive(Debug, Subcommand)]
pub enum Definitions {
    /// Create or update definitions from files, printing a diff of each change. Each file
    /// holds one definition or a list of them, as the PUT body plus its `key`:
    /// `{key: acme-api, label: Acme API, auth: api_key, inputs: {...}}`. Files ending in .json
    /// are read as JSON, any other as YAML. A secret default (`clientSecret`) written in clear
    /// cannot be compared with the stored one, so such a definition is always written; write
    /// `default: {set: true}` to keep the stored secret instead.
    Apply(Apply),
    /// List the definitions: key, auth, version, label.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one definition as JSON (secret defaults read `{"set": true}`).
    Get {
        /// The definition's key.
        key: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `latchkey definitions apply`.
#[derive(Debug, Args)]
pub struct Apply {
    /// A file of definitions (YAML or JSON); repeatable.
    #[arg(short = 'f', long = "file", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// Runs `latchkey definitions ...`.
///
/// # Errors
/// An unreadable or invalid file (then nothing is written), or the API's refusal of a
/// definition (the others are still applied).
pub async fn run(command: Definitions) -> Result<(), Failure> {
    match command {
        Definitions::Apply(apply) => run_apply(apply).await,
        Definitions::List { remote } => {
            for d in remote.client()?.list_definitions().await.map_err(|e| remote.listing_failure(e))? {
                line(format_args!("{}\t{}\tv{}\t{}", d.key, d.auth, d.version, d.label))?;
            }
            Ok(())
        }
        Definitions::Get { key, remote } => match remote.client()?.get_definition(&key).await? {
            Some(d) => print_json(&d),
            None => Err(format!("no definition {key:?}").into()),
        },
    }
}

/// One definition of a file, checked locally.
struct Desired {
    key: String,
    /// Where it was written, for messages: `defs.yaml` or `defs.yaml[2]`.
    origin: String,
    /// The PUT body: the document without `key`.
    body: Value,
    /// Whether it carries a secret default in clear (which reads cannot show).
    secret_in_clear: bool,
    /// Secret defaults sent back as `{"set": true}`: the stored one is kept, if there is one.
    keep: Vec<String>,
    /// The body in the form a read shows it, for the comparison.
    shown: Value,
}

/// What `apply` does to one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Update,
    Unchanged,
}

async fn run_apply(apply: Apply) -> Result<(), Failure> {
    // Every file is read and checked before anything is written.
    let mut desired = Vec::new();
    let mut problems = Vec::new();
    for file in &apply.files {
        match read_file(file) {
            Ok(docs) => {
                for (origin, doc) in docs {
                    match check(&origin, doc) {
                        Ok(d) => desired.push(d),
                        Err(mut p) => problems.append(&mut p),
                    }
                }
            }
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for d in &desired {
        if let Some(first) = seen.insert(d.key.as_str(), d.origin.as_str()) {
            problems.push(format!("{}: key {:?} is also defined in {first}", d.origin, d.key));
        }
    }
    if !problems.is_empty() {
        return Err(format!("nothing was applied:\n  {}", problems.join("\n  ")).into());
    }

    let client = apply.remote.client()?;
    let (mut counts, mut failures) = ([0usize; 3], Vec::new());
    for d in &desired {
        match apply_one(&client, d, apply.dry_run).await {
            Ok(change) => counts[change as usize] += 1,
            Err(e) => {
                line(format_args!("! {} ({}): {e}", d.key, d.origin))?;
                failures.push(d.key.clone());
            }
        }
    }
    let verb = if apply.dry_run { "would create" } else { "created" };
    let changed = if apply.dry_run { "would update" } else { "updated" };
    eprintln!("{verb} {}, {changed} {}, unchanged {}", counts[0], counts[1], counts[2]);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} definition(s) failed: {}", failures.len(), failures.join(", ")).into())
    }
}

/// Compares `d` with what is stored, prints the diff, and writes it unless `dry_run`.
async fn apply_one(client: &Client, d: &Desired, dry_run: bool) -> Result<Change, Failure> {
    let current = client.get_definition(&d.key).await?;
    let before = current.as_ref().map(shown_of_stored);
    let shown = with_kept_secrets(&d.shown, &d.keep, before.as_ref());
    let change = match &before {
        None => Change::Create,
        Some(b) if *b == shown && !d.secret_in_clear => Change::Unchanged,
        Some(_) => Change::Update,
    };
    match change {
        Change::Unchanged => line(format_args!("= {} (unchanged)", d.key))?,
        Change::Create | Change::Update => {
            let mark = if change == Change::Create { "+" } else { "~" };
            let what = if change == Change::Create { "new" } else { "changes" };
            line(format_args!("{mark} {} ({what}, from {})", d.key, d.origin))?;
            let old = before.as_ref().map(pretty).unwrap_or_default();
            text(diff(&old, &pretty(&shown), &d.key))?;
            if d.secret_in_clear && change == Change::Update {
                line("  (a secret default is given in clear: it is written again, as it cannot be compared)")?;
            }
            if !dry_run {
                let (_, put) = client.put_definition(&d.key, &d.body).await?;
                // Someone else created or deleted it between the read and the write.
                if (put == Put::Created) != (change == Change::Create) {
                    eprintln!("note: {} changed on the server while it was being applied", d.key);
                }
            }
        }
    }
    Ok(change)
}

/// The definitions of one file, each with where it was written.
fn read_file(path: &Path) -> Result<Vec<(String, Value)>, Failure> {
    let text = std::fs::read_to_string(path)?;
    let value: Value = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?
    } else {
        serde_yaml::from_str(&text).map_err(|e| format!("not YAML: {e}"))?
    };
    let name = path.display().to_string();
    Ok(match value {
        Value::Array(items) => items.into_iter().enumerate().map(|(i, v)| (format!("{name}[{i}]"), v)).collect(),
        other => vec![(name, other)],
    })
}

/// Checks one document as the API would, locally: its `key`, then the body with the same
/// validation the server runs.
fn check(origin: &str, doc: Value) -> Result<Desired, Vec<String>> {
    let Value::Object(mut body) = doc else {
        return Err(vec![format!("{origin}: a definition is an object with a key")]);
    };
    let key = match body.remove("key") {
        Some(Value::String(k)) => k,
        _ => return Err(vec![format!("{origin}: key is required (a string)")]),
    };
    let origin = format!("{origin} ({key})");
    // The key is the path of `PUT /v1/definitions/{key}`: the server checks it as it does here.
    let mut problems: Vec<String> =
        DefinitionKey::parse(&key).err().map(|e| format!("{origin}: key: {e}")).into_iter().collect();
    let body = Value::Object(body);
    let spec = definition_from_json(&key, &body, latchkey::catalog::provider);
    if let Err(errs) = &spec {
        problems.extend(errs.iter().map(|e| format!("{origin}: {}: {}", e.field, e.message)));
    }
    let spec = match spec {
        Ok(spec) if problems.is_empty() => spec,
        _ => return Err(problems),
    };
    let shown = shown_of_spec(&body, &spec).map_err(|e| vec![format!("{origin}: {e}")])?;
    let keep = spec.keep_secret_defaults.iter().cloned().collect();
    Ok(Desired { key, origin, secret_in_clear: !spec.secret_defaults.is_empty(), keep, body, shown })
}

/// A checked body in the form a read shows it: the well-known OAuth inputs and the catalog's
/// defaults filled in, the verify request in force unless it is the provider's own, every input complete, secret defaults given in clear as `{"set": true}`
/// (those sent as `{"set": true}` are left to [`with_kept_secrets`]), an empty `oauth` block left
/// out. Members the validator does not model are kept as written.
fn shown_of_spec(body: &Value, spec: &DefinitionSpec) -> Result<Value, serde_json::Error> {
    let mut shown = body.as_object().cloned().unwrap_or_default();
    let mut inputs = serde_json::to_value(&spec.inputs)?;
    for name in spec.secret_defaults.keys() {
        inputs[name.as_str()]["default"] = json!({"set": true});
    }
    shown.insert("label".into(), spec.label.clone().into());
    shown.insert("description".into(), spec.description.clone().into());
    shown.insert("auth".into(), serde_json::to_value(spec.auth)?);
    shown.insert("provider".into(), spec.provider.clone().into());
    shown.insert("inputs".into(), inputs);
    shown.insert("redirects".into(), serde_json::to_value(&spec.redirects)?);
    // The verify request in force: written, or the catalog provider's.
    match &spec.verify {
        Some(verify) => shown.insert("verify".into(), serde_json::to_value(verify)?),
        None => shown.remove("verify"),
    };
    if spec.oauth == Default::default() {
        shown.remove("oauth");
    } else {
        shown.insert("oauth".into(), serde_json::to_value(&spec.oauth)?);
    }
    Ok(without_inherited_verify(without_nulls(Value::Object(shown))))
}

/// `shown` (a definition with its verify request in force, as reads show it) with `verify`
/// relative to its catalog provider's (which a definition of the provider's auth inherits by
/// leaving it out): absent when it is the provider's own, inherited or written out alike,
/// `null` when the definition turned the provider's off.
fn without_inherited_verify(mut shown: Value) -> Value {
    let provider = shown["provider"].as_str().and_then(latchkey::catalog::provider);
    let provider = provider.filter(|p| serde_json::to_value(p.auth).ok().as_ref() == shown.get("auth"));
    let inherited = provider.and_then(|p| p.verify.as_ref()).and_then(|v| serde_json::to_value(v).ok());
    if let (Some(inherited), Some(members)) = (inherited, shown.as_object_mut()) {
        match members.get("verify") {
            Some(own) if *own == inherited => {
                members.remove("verify");
            }
            Some(_) => {}
            None => {
                members.insert("verify".into(), Value::Null);
            }
        }
    }
    shown
}

/// `shown` with the secret defaults of `keep` set where `stored` has them: sending
/// `{"set": true}` keeps a stored secret, and sets none where there was none.
fn with_kept_secrets(shown: &Value, keep: &[String], stored: Option<&Value>) -> Value {
    let mut shown = shown.clone();
    let set = json!({"set": true});
    for name in keep {
        if stored.is_some_and(|s| s["inputs"][name.as_str()]["default"] == set) {
            shown["inputs"][name.as_str()]["default"] = set.clone();
        }
    }
    shown
}

/// A stored definition without what the server keeps of its own (key, version, timestamps).
fn shown_of_stored(d: &Definition) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for own in ["key", "version", "created_at", "updated_at"] {
            m.remove(own);
        }
    }
    without_inherited_verify(without_nulls(v))
}

/// `null` members removed at every depth: absent and `null` mean the same in a definition.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Indented JSON with sorted keys, so that a diff shows changes and not reordering.
fn pretty(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect::<Map<_, _>>())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut s = serde_json::to_string_pretty(&sorted(v)).unwrap_or_default();
    s.push('\n');
    s
}

/// A unified diff of two renderings, indented under the definition's line.
fn diff(old: &str, new: &str, key: &str) -> String {
    let text = similar::TextDiff::from_lines(old, new);
    let unified =
        text.unified_diff().context_radius(3).header(&format!("{key} (stored)"), &format!("{key} (file)")).to_string();
    unified.lines().map(|l| format!("    {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(doc: Value) -> Desired {
        check("test.yaml", doc).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn a_short_document_is_shown_complete_as_a_read_would_show_it() {
        let d = desired(json!({"key": "acme", "auth": "api_key",
            "inputs": {"apiKey": {"label": "API Key", "type": "password", "required": true}}}));
        let input = &d.shown["inputs"]["apiKey"];
        assert_eq!(d.shown["label"], "acme", "the key is the default label");
        assert_eq!(input["visibility"], "customer", "defaults are filled in: {input}");
        assert!(d.shown.get("key").is_none() && d.body.get("key").is_none());
        assert!(!d.secret_in_clear);
    }

    #[test]
    fn a_secret_default_is_never_shown_and_marks_the_definition_for_writing() {
        let d = desired(json!({"key": "gh", "auth": "oauth2_authorization_code",
            "inputs": {"clientId": {"label": "Client", "type": "string", "default": "id"},
                       "clientSecret": {"label": "Secret", "type": "password", "default": "s3cr3t_canary"},
                       "authorizeUrl": {"label": "A", "type": "url", "default": "https://gh.example/authorize"},
                       "tokenUrl": {"label": "T", "type": "url", "default": "https://gh.example/token"}}}));
        assert!(d.secret_in_clear);
        assert_eq!(d.shown["inputs"]["clientSecret"]["default"], json!({"set": true}));
        assert!(!pretty(&d.shown).contains("canary"));
        assert!(d.body.to_string().contains("canary"), "the PUT body carries it");
    }

    #[test]
    fn a_provider_verify_request_compares_equal_inherited_or_written_out() {
        let github = latchkey::catalog::provider("github").expect("github is in the catalog");
        let verify = serde_json::to_value(github.verify.as_ref().expect("github has a verify request")).unwrap();
        let short = desired(json!({"key": "crm", "provider": "github"}));
        let written = desired(json!({"key": "crm", "provider": "github", "verify": verify}));
        assert_eq!(short.shown, written.shown, "the same request either way");
        assert!(short.shown.get("verify").is_none(), "{}", short.shown);
        let mut stored = short.shown.clone();
        stored["verify"] = verify;
        assert_eq!(without_inherited_verify(stored), short.shown, "a read showing the inherited request");
        let off = desired(json!({"key": "crm", "provider": "github", "verify": null}));
        assert_eq!(off.shown["verify"], Value::Null, "turned off: a change from inheriting it");
        assert_ne!(off.shown, short.shown);
        let mut stored_off = off.shown.clone();
        stored_off.as_object_mut().unwrap().remove("verify");
        assert_eq!(without_inherited_verify(stored_off), off.shown, "a read of a definition that turned it off");
    }

    #[test]
    fn invalid_documents_name_their_origin_and_field() {
        let errs = check("defs.yaml[1]", json!({"key": "acme", "auth": "nope"})).err().unwrap();
        assert!(errs.iter().any(|e| e.starts_with("defs.yaml[1] (acme): auth:")), "{errs:?}");
        let errs = check("defs.yaml", json!({"auth": "api_key"})).err().unwrap();
        assert_eq!(errs, ["defs.yaml: key is required (a string)"]);
    }

    #[test]
    fn the_diff_shows_only_what_changes() {
        let d = diff(&pretty(&json!({"a": 1, "b": 2})), &pretty(&json!({"b": 3, "a": 1})), "k");
        assert!(d.contains("-  \"b\": 2") && d.contains("+  \"b\": 3"), "{d}");
        assert!(!d.contains("-  \"a\""), "{d}");
    }
}
