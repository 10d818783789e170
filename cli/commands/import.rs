//! `latchkey import FILE`: connections with tokens obtained elsewhere (another platform, an
//! earlier system), created in bulk with `POST /v1/connections` (SPEC section 10, "Import").

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use latchkey_client::{Client, Error as ClientError, NewConnection};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Failure, Remote};

/// `latchkey import`.
#[derive(Debug, Args)]
pub struct Import {
    /// JSON lines, or one JSON array, of `{definition, customer, scope?, instance_id?, label?,
    /// values?, tokens?: {access_token, refresh_token?, expires_at | expires_in, scopes?,
    /// token_type?}}` (the body of POST /v1/connections). `-` reads stdin.
    pub file: PathBuf,
    /// How many records are sent at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    #[command(flatten)]
    pub remote: Remote,
}

/// One record of the file: where it is, and what it says (or why it cannot be read).
struct Record {
    /// `line 7` (JSON lines) or `record 7` (an array), 1-based.
    at: String,
    parsed: Result<NewConnection, String>,
}

/// What became of one record.
struct Outcome {
    at: String,
    result: Result<String, String>,
}

/// Imports every record, `concurrency` at a time, with a progress bar on a terminal. Prints
/// `{"at", "connection_id"}` per imported record on stdout, then a summary of the failures
/// (where, and the API's problem) on stderr.
///
/// # Errors
/// An unreadable file, or any record not imported (after all were tried).
pub async fn run(args: Import) -> Result<(), Failure> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?
    };
    let records = parse(&text)?;
    if records.is_empty() {
        return Err("the file holds no record".into());
    }
    let client = Arc::new(args.remote.client()?);
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} imported, {msg} [{elapsed}, eta {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("0 failed");
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(records.len());
    let mut failed = 0usize;
    let mut results = futures_util::stream::iter(records)
        .map(|r| {
            let client = client.clone();
            async move { import_one(&client, r).await }
        })
        .buffer_unordered(usize::from(args.concurrency));
    while let Some(outcome) = results.next().await {
        match &outcome.result {
            Ok(id) => bar.suspend(|| super::line(serde_json::json!({"at": outcome.at, "connection_id": id})))?,
            Err(_) => {
                failed += 1;
                bar.set_message(format!("{failed} failed"));
            }
        }
        bar.inc(1);
        outcomes.push(outcome);
    }
    bar.finish_and_clear();

    let total = outcomes.len();
    eprintln!("imported {} of {total}", total - failed);
    if failed == 0 {
        return Ok(());
    }
    // In file order, whatever order they finished in.
    outcomes.sort_by_key(|o| o.at.split(' ').nth(1).and_then(|n| n.parse::<usize>().ok()));
    for o in &outcomes {
        if let Err(why) = &o.result {
            eprintln!("  {}: {why}", o.at);
        }
    }
    Err(format!("{failed} of {total} records were not imported").into())
}

async fn import_one(client: &Client, record: Record) -> Outcome {
    let result = match record.parsed {
        Err(why) => Err(why),
        Ok(body) => client
            .create_connection_idempotent(&body, &idempotency_key(&record.at, &body))
            .await
            .map(|c| c.id)
            .map_err(|e| describe(&e)),
    };
    Outcome { at: record.at, result }
}

/// The `Idempotency-Key` of the record at `at` (`line 3`): `import-` and the hex SHA-256 of
/// its place and of whom it is for (definition, customer, scope, instance_id, label), each
/// length-prefixed. Running the same file again within the server's 24 h therefore answers
/// the connections already made instead of creating them twice; two records of one file never
/// share a key (their places differ). Values and tokens are left out on purpose: the server
/// keeps a hash of the key in clear, and a hash of a record's secrets would let a reader of its
/// table test guesses of a weak one. A record at the same place for the same definition and
/// customer with other contents is refused (422, the key was used with another body).
fn idempotency_key(at: &str, record: &NewConnection) -> String {
    let parts = [
        Some(at),
        Some(record.definition.as_str()),
        record.customer.as_deref(),
        record.scope.as_deref(),
        record.instance_id.as_deref(),
        record.label.as_deref(),
    ];
    let mut h = Sha256::new();
    for part in parts {
        // Absent and empty differ: a marker byte, then the length and the bytes.
        match part {
            None => h.update([0]),
            Some(p) => {
                h.update([1]);
                h.update((p.len() as u64).to_be_bytes());
                h.update(p.as_bytes());
            }
        }
    }
    format!("import-{}", hex::encode(h.finalize()))
}

/// A failure in Latchkey's words (they never carry a secret), with each invalid field.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Api(api) if !api.errors.is_empty() => {
            let fields: Vec<String> = api.errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
            format!("{} ({})", api, fields.join("; "))
        }
        other => other.to_string(),
    }
}

/// The records of `text`: one JSON array, or JSON lines (blank lines skipped). A record that
/// cannot be read is kept as a failure at its place; the reason never quotes its content (it
/// holds tokens).
fn parse(text: &str) -> Result<Vec<Record>, Failure> {
    let record = |at: String, value: Result<Value, serde_json::Error>| Record {
        at,
        parsed: value.map_err(|e| unreadable(&e)).and_then(|v| {
            serde_path_to_error::deserialize::<_, NewConnection>(v).map_err(|e| match e.inner().classify() {
                serde_json::error::Category::Data => format!(
                    "not a connection record ({}): expected {{definition, customer, values?, tokens?: \
                     {{access_token, refresh_token?, expires_at | expires_in, scopes?, token_type?}}}}",
                    at_path(&e.path().to_string(), &data_error_shape(e.inner()))
                ),
                _ => unreadable(e.inner()),
            })
        }),
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON array: {}", unreadable(&e)))?;
        return Ok(items.into_iter().enumerate().map(|(i, v)| record(format!("record {}", i + 1), Ok(v))).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| record(format!("line {}", i + 1), serde_json::from_str(l)))
        .collect())
}

/// Where JSON could not be read, without its content.
fn unreadable(e: &serde_json::Error) -> String {
    format!("not JSON (column {})", e.column())
}

/// `tokens.expires_in: invalid type, expected i64`: where in the record (the JSON path of
/// the member, `.` for the record itself), then what is wrong.
fn at_path(path: &str, shape: &str) -> String {
    if path == "." { shape.to_owned() } else { format!("{path}: {shape}") }
}

/// serde's data error without the value it quotes (a token, maybe): "missing field
/// `definition`" is kept; "invalid type: string \"...\", expected i64" becomes "invalid type,
/// expected i64"; a message of another shape (a type's own) is reduced to "a wrong value".
fn data_error_shape(e: &serde_json::Error) -> String {
    let message = e.to_string();
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        // `unknown field `x`, expected one of ...` quotes a member's name, never a value.
        return message.split(" at line").next().unwrap_or_default().to_owned();
    }
    const KINDS: [&str; 4] = ["invalid type", "invalid value", "invalid length", "unknown variant"];
    let Some(kind) = KINDS.into_iter().find(|k| message.starts_with(k)) else {
        return "a wrong value".to_owned();
    };
    // The value is quoted between the kind and the last ", expected ", which serde writes
    // after it from the type (never from the input).
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!("{kind}, expected {}", expected.split(" at line").next().unwrap_or_default()),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_their_line_numbers_and_bad_lines_stay_failures() {
        let text = "{\"definition\":\"a\",\"customer\":\"c\"}\n\n{not json\n{\"customer\":\"c\"}\n\
                    {\"definition\":\"a\",\"tokens\":{\"access_token\":42}}\n";
        let records = parse(text).unwrap();
        let at: Vec<&str> = records.iter().map(|r| r.at.as_str()).collect();
        assert_eq!(at, ["line 1", "line 3", "line 4", "line 5"]);
        assert!(records[0].parsed.is_ok());
        assert!(records[1].parsed.as_ref().err().unwrap().starts_with("not JSON"));
        assert!(records[2].parsed.as_ref().err().unwrap().contains("missing field `definition`"));
        let wrong_type = records[3].parsed.as_ref().err().unwrap();
        assert!(wrong_type.contains("tokens.access_token: invalid type, expected"), "names the member: {wrong_type}");
        assert!(!wrong_type.contains("42"), "{wrong_type}");
    }

    #[test]
    fn the_idempotency_key_follows_the_place_and_the_owner_never_the_secrets() {
        let record = |text: &str| serde_json::from_str::<NewConnection>(text).unwrap();
        let plain = record(r#"{"definition":"a","customer":"c","tokens":{"access_token":"at-1"}}"#);
        let key = idempotency_key("line 1", &plain);
        assert!(key.starts_with("import-") && key.len() == 7 + 64, "{key}");
        assert_eq!(key, idempotency_key("line 1", &plain), "the same record again: the same key");
        let other_tokens = record(r#"{"definition":"a","customer":"c","tokens":{"access_token":"at-2"}}"#);
        assert_eq!(key, idempotency_key("line 1", &other_tokens), "secrets are not in the key");
        assert_ne!(key, idempotency_key("line 2", &plain), "another place");
        assert_ne!(key, idempotency_key("line 1", &record(r#"{"definition":"a","customer":"d"}"#)));
        let labelled = record(r#"{"definition":"a","customer":"c","label":""}"#);
        assert_ne!(key, idempotency_key("line 1", &labelled), "an empty label is not no label");
    }

    #[test]
    fn an_array_is_numbered_by_record() {
        let records = parse("[{\"definition\":\"a\"}, {\"definition\":\"b\"}]").unwrap();
        assert_eq!(records.iter().map(|r| r.at.as_str()).collect::<Vec<_>>(), ["record 1", "record 2"]);
    }

    #[test]
    fn a_token_never_appears_in_a_reason() {
        let records =
            parse("{\"definition\":\"a\",\"tokens\":{\"access_token\":\"at_canary\",\"expires_in\":\"x\"}}").unwrap();
        let why = records[0].parsed.as_ref().err().unwrap();
        assert!(why.contains("tokens.expires_in: invalid type"), "names the member: {why}");
        assert!(!why.contains("canary") && !why.contains("\"x\""), "{why}");
        // A token where a number belongs: named by its place, never quoted.
        let records = parse(
            "[{\"definition\":\"a\",\"customer\":\"c\",\"tokens\":{\"access_token\":\"at\",\
                             \"expires_in\":\"at_canary, expected u64\"}}]",
        )
        .unwrap();
        let why = records[0].parsed.as_ref().err().unwrap();
        assert!(why.contains("tokens.expires_in: invalid type, expected"), "{why}");
        assert!(!why.contains("canary"), "{why}");
    }
}
