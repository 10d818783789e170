//! Counts for CloudWatch, written by the Lambda functions as log lines in CloudWatch's embedded
//! metric format (EMF): CloudWatch Logs turns each into a data point of a custom metric, with no
//! metric filter, API call or permission (Lambda sends standard output to the function's log
//! group, and CloudWatch Logs extracts the metrics of every EMF line in it).
//!
//! Source: Amazon CloudWatch User Guide, "Specification: Embedded metric format" and "Using the
//! embedded metric format with Lambda".
//!
//! The code does not call this module: it logs an event with a counted field set to `true`
//! ([`COUNTED`]: `kms_throttled`, `lost_answer`), and [`EmbeddedMetrics`], a `tracing` layer
//! installed on Lambda only (`telemetry::init`), writes one EMF line for it to standard output,
//! beside the JSON log line itself (standard error). The deployed stack's alarms watch the
//! metrics (infra/template.yaml: `KmsThrottledAlarm`, `LostAnswersAlarm`).

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// The CloudWatch namespace of every metric Latchkey writes (and of the sweep's
/// `RefreshFailures`, which a metric filter writes).
pub const NAMESPACE: &str = "Latchkey";

/// A log field that counts: an event logged with `field = true` adds 1 to the metric
/// `Latchkey/<metric>`, unit `Count`, without dimensions (one metric for all functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The boolean field of the log event, e.g. `kms_throttled`.
    pub field: &'static str,
    /// The CloudWatch metric name, e.g. `KmsThrottled`.
    pub metric: &'static str,
}

/// What is counted:
/// - `kms_throttled`: KMS still refused a request after the SDK's retries (`adapters::aws::kms`;
///   KMS publishes no throttling metric per key);
/// - `lost_answer`: a provider's token answer could not be written before its refresh lease ended
///   (`service::refresh::lease`): with a provider that rotates refresh tokens, the connection
///   needs a reconnect.
pub const COUNTED: [Counted; 2] = [
    Counted { field: "kms_throttled", metric: "KmsThrottled" },
    Counted { field: "lost_answer", metric: "LostAnswers" },
];

/// A `tracing` layer writing one EMF line ([`emf_line`]) to `W` for each [`COUNTED`] field an
/// event carries as `true`. Events the subscriber's filter drops never reach it. Write errors
/// are ignored: a metric is never worth failing the work it counts.
pub struct EmbeddedMetrics<W> {
    writer: W,
}

impl<W> EmbeddedMetrics<W> {
    /// Writes to `writer`: `std::io::stdout` on Lambda.
    pub fn new(writer: W) -> Self {
        EmbeddedMetrics { writer }
    }
}

impl<S, W> Layer<S> for EmbeddedMetrics<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Most events carry none of the fields: their callsite says so without visiting values.
        let fields = event.metadata().fields();
        if !COUNTED.iter().any(|c| fields.field(c.field).is_some()) {
            return;
        }
        let mut set = SetFields::default();
        event.record(&mut set);
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        for (i, counted) in COUNTED.iter().enumerate() {
            if set.0 & (1 << i) != 0 {
                let _ = self.writer.make_writer().write_all(emf_line(counted.metric, at).as_bytes());
            }
        }
    }
}

/// The [`COUNTED`] fields an event carries as `true`, a bit each.
#[derive(Default)]
struct SetFields(u8);

impl Visit for SetFields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if let Some(i) = COUNTED.iter().position(|c| c.field == field.name())
            && value
        {
            self.0 |= 1 << i;
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// One EMF line adding 1 to `Latchkey/<metric>` at `at_ms` (milliseconds since the Unix epoch),
/// ending in `\n`:
///
/// ```json
/// {"_aws":{"Timestamp":1764583200000,"CloudWatchMetrics":[{"Namespace":"Latchkey",
///   "Dimensions":[[]],"Metrics":[{"Name":"LostAnswers","Unit":"Count"}]}]},"LostAnswers":1}
/// ```
///
/// `Dimensions: [[]]` is one empty dimension set: the metric has no dimensions, as the alarm
/// that watches it names none.
pub fn emf_line(metric: &str, at_ms: u128) -> String {
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": at_ms as u64,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[]],
                "Metrics": [{"Name": metric, "Unit": "Count"}],
            }],
        },
        metric: 1,
    })
    .to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Captured;
    use tracing_subscriber::layer::SubscriberExt;

    fn counted_while(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let metrics = Captured::default();
        let subscriber = tracing_subscriber::registry().with(EmbeddedMetrics::new(metrics.clone()));
        tracing::subscriber::with_default(subscriber, f);
        metrics.lines()
    }

    /// The document's members as the specification requires them: `_aws` with an integer
    /// `Timestamp` and one directive naming the namespace, its dimension sets (arrays of
    /// strings) and the metric with its unit; the metric's value a number at the root.
    fn assert_counts_one(line: &serde_json::Value, metric: &str) {
        let aws = &line["_aws"];
        let at = aws["Timestamp"].as_u64().expect("milliseconds since the epoch");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now - at < 60_000, "{at} is now");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1, "{line}");
        assert_eq!(directives[0]["Namespace"], NAMESPACE);
        assert_eq!(directives[0]["Dimensions"], serde_json::json!([[]]));
        assert_eq!(directives[0]["Metrics"], serde_json::json!([{"Name": metric, "Unit": "Count"}]));
        assert_eq!(line[metric], 1, "{line}");
        assert_eq!(line.as_object().unwrap().len(), 2, "nothing else: {line}");
    }

    #[test]
    fn a_lost_answer_is_counted() {
        let lines = counted_while(|| {
            tracing::error!(org = "acme", connection_id = "con_1", lost_answer = true, "lost");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_counts_one(&lines[0], "LostAnswers");
    }

    #[test]
    fn kms_throttling_is_counted() {
        let lines = counted_while(|| tracing::warn!(kms_throttled = true, "throttled"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_counts_one(&lines[0], "KmsThrottled");
    }

    #[test]
    fn only_fields_set_true_count_and_each_counts_once() {
        let lines = counted_while(|| {
            tracing::info!("a request");
            tracing::warn!(kms_throttled = false, "not throttled");
            tracing::warn!(lost_answer = "true", "a string is not the flag");
            tracing::warn!(kms_throttled = true, lost_answer = true, "both");
        });
        let names: Vec<_> =
            lines.iter().map(|l| l["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"].clone()).collect();
        assert_eq!(names, ["KmsThrottled", "LostAnswers"], "{lines:?}");
    }

    #[test]
    fn a_line_is_one_json_object_ending_in_a_newline() {
        let line = emf_line("LostAnswers", 1_764_583_200_000);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "{line:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_764_583_200_000_u64);
    }
}
