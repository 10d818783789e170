//! Logging setup: `tracing` to stderr, JSON on Lambda (or with `LATCHKEY_LOG_FORMAT=json`),
//! filtered by `RUST_LOG` (default `info`); on Lambda also the counts CloudWatch extracts from
//! standard output ([`metrics`]).

mod lines;
pub mod metrics;

pub(crate) use lines::gathering;
pub use lines::{Destination, LineWriter, Lines, PIPE_BUF, Stderr};
use lines::{init_gathering, write_gathered_on_panic};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Dependencies whose trace events print what they send or receive (the AWS SDK dumps every
/// DynamoDB and EventBridge response body, whole items included): capped at `debug` whatever
/// `RUST_LOG` asks, so that no log level writes stored records to the log. Their debug output
/// names phases only.
const CAPPED: [&str; 3] = ["aws_smithy_runtime=debug", "aws_smithy_runtime_api=debug", "aws_sigv4=debug"];

/// The target of the audit line every credential read writes (`audit = "credentials_read"`,
/// SPEC section 11, `service::lookup`): kept at `info` whatever `RUST_LOG` says ([`log_filter`]).
pub const AUDIT_TARGET: &str = "latchkey::audit";

/// Lines the deployed stack's alarms read, with the least verbose level that keeps them: the
/// sweep summary (the refresh-failure metric filter reads its `message` and `failed`) and KMS
/// throttling (counted by [`metrics::EmbeddedMetrics`], which sees only the lines the filter
/// keeps). Where `RUST_LOG` is a bare level less verbose than one of these, that target is
/// added at its level; a more verbose level (`debug`) applies to them too.
const KEPT: [(&str, LevelFilter); 2] =
    [("latchkey::service::refresh", LevelFilter::INFO), ("latchkey::adapters::aws::kms", LevelFilter::WARN)];

fn filter() -> EnvFilter {
    log_filter(std::env::var("RUST_LOG").ok().as_deref())
}

/// The log filter of the process whose `RUST_LOG` is `rust_log` (`info` when unset, empty or
/// invalid): [`KEPT`]'s targets added where it is a bare level (`error`, `warn`) below theirs,
/// any other filter taken as written (`off` too) but for the audit line, which every filter
/// keeps at `info` ([`AUDIT_TARGET`]), and [`CAPPED`]'s where it asks for `trace`. The deployed
/// stack sets `RUST_LOG` to its `LogLevel` parameter.
pub fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let rust_log = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let mut filter = EnvFilter::try_new(rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    if let Ok(level) = rust_log.parse::<LevelFilter>() {
        for (target, kept) in KEPT.iter().filter(|(_, kept)| level != LevelFilter::OFF && level < *kept) {
            filter = filter.add_directive(format!("{target}={kept}").parse().expect("a valid directive"));
        }
    }
    // Last, so that it also overrides a directive of the filter's own for that target.
    filter = filter.add_directive(format!("{AUDIT_TARGET}=info").parse().expect("a valid directive"));
    if filter.max_level_hint().is_some_and(|max| max <= LevelFilter::DEBUG) {
        return filter;
    }
    CAPPED.iter().fold(filter, |f, cap| f.add_directive(cap.parse().expect("a valid directive")))
}

/// Installs the process's subscriber: JSON lines when `json` (`LATCHKEY_LOG_FORMAT=json`, see
/// `config::Settings`) or on Lambda, text lines otherwise; written to standard error by
/// [`Lines`], one `write(2)` a line, or a request's lines together ([`gathering`], off on
/// Lambda). On Lambda, events carrying a counted field ([`metrics::COUNTED`]) also write an
/// embedded-metric-format line to standard output ([`lambda_subscriber`]). Installs a panic hook
/// that writes the panicking request's gathered lines first.
pub fn init(json: bool) {
    let lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let json = json || lambda;
    // On Lambda a request cut off at the function's timeout keeps the lines it wrote.
    init_gathering(!lambda);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Release builds abort on panic: the panicking request's lines go out before its message.
        write_gathered_on_panic();
        previous(info);
    }));
    // A second init (tests) keeps the first subscriber: the error says only that.
    if lambda {
        let subscriber = lambda_subscriber(filter(), Lines::stderr(), std::io::stdout);
        let _ = tracing::subscriber::set_global_default(subscriber);
    } else if json {
        let _ = tracing::subscriber::set_global_default(json_subscriber(filter(), Lines::stderr()));
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(Lines::stderr())
            .with_ansi(false)
            .try_init();
    }
}

/// The JSON log lines of the Lambda functions: one object per line, the event's fields at the
/// top level beside `message`. The deployed stack's metric filter reads those fields
/// (infra/template.yaml: `$.message` and `$.failed` of the sweep summary).
///
/// A line written inside a span carries that span under `span`: its `name` and the ids it has
/// recorded, `{"name": "request", "request_id": "...", "org": "acme", "connection_id":
/// "con_..."}` for an HTTP request (see `http::trace::trace_request`), `{"name": "invocation",
/// "request_id": "...", ...}` for a Lambda invocation (see `lambda`). Only the innermost span is
/// written: Latchkey opens one per request or invocation, and the dependencies' own spans (the
/// AWS SDK's) are `debug`, so at the default level it is Latchkey's.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .finish()
}

/// The Lambda functions' subscriber: [`json_subscriber`]'s lines to `writer`, and for every
/// event it keeps that carries a [`metrics::COUNTED`] field as `true`, one CloudWatch
/// embedded-metric-format line to `metrics` ([`metrics::EmbeddedMetrics`]; standard output on
/// Lambda).
pub fn lambda_subscriber<W, M>(
    filter: EnvFilter,
    writer: W,
    metrics: M,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    json_subscriber(filter, writer).with(metrics::EmbeddedMetrics::new(metrics))
}

/// Lines written to memory, for tests of what the code logs (secrets never, the fields the
/// metric filter and the counted metrics read always) and of the metric lines it writes.
#[cfg(any(test, feature = "conformance"))]
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "conformance"))]
impl Captured {
    /// The JSON lines written so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

#[cfg(any(test, feature = "conformance"))]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "conformance"))]
impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line at each level, `error` to `trace`, each saying its level, under `target`
    /// (a literal: `tracing` takes a target as a constant).
    macro_rules! every_level {
        ($target:literal) => {{
            tracing::error!(target: $target, "error");
            tracing::warn!(target: $target, "warn");
            tracing::info!(target: $target, "info");
            tracing::debug!(target: $target, "debug");
            tracing::trace!(target: $target, "trace");
        }};
    }

    /// The levels of `target` the filter of `rust_log` keeps, from `error` to `trace`.
    fn kept(rust_log: Option<&str>, target: &str) -> Vec<&'static str> {
        let logs = Captured::default();
        let subscriber = json_subscriber(log_filter(rust_log), logs.clone());
        tracing::subscriber::with_default(subscriber, || match target {
            "latchkey::service::refresh" => every_level!("latchkey::service::refresh"),
            "latchkey::adapters::aws::kms" => every_level!("latchkey::adapters::aws::kms"),
            "latchkey::audit" => every_level!("latchkey::audit"),
            _ => every_level!("latchkey::http"),
        });
        let lines = logs.lines();
        ["error", "warn", "info", "debug", "trace"]
            .into_iter()
            .filter(|level| lines.iter().any(|l| l["message"] == *level))
            .collect()
    }

    #[test]
    fn the_lines_the_alarms_read_are_kept_at_any_level_and_follow_a_more_verbose_one() {
        let refresh = "latchkey::service::refresh";
        let kms = "latchkey::adapters::aws::kms";
        // The template's LogLevel values: RUST_LOG is the bare level.
        assert_eq!(kept(Some("error"), refresh), ["error", "warn", "info"]);
        assert_eq!(kept(Some("error"), kms), ["error", "warn"]);
        assert_eq!(kept(Some("error"), "other"), ["error"]);
        assert_eq!(kept(Some("warn"), refresh), ["error", "warn", "info"]);
        assert_eq!(kept(Some("warn"), kms), ["error", "warn"]);
        assert_eq!(kept(Some("warn"), "other"), ["error", "warn"]);
        assert_eq!(kept(Some("info"), refresh), ["error", "warn", "info"]);
        assert_eq!(kept(Some("info"), kms), ["error", "warn", "info"]);
        // A pinned `refresh=info` kept these at info even at `debug`.
        assert_eq!(kept(Some("debug"), refresh), ["error", "warn", "info", "debug"]);
        assert_eq!(kept(Some("debug"), kms), ["error", "warn", "info", "debug"]);
        assert_eq!(kept(Some("TRACE"), refresh), ["error", "warn", "info", "debug", "trace"]);
        assert_eq!(kept(None, refresh), ["error", "warn", "info"]);
        assert_eq!(kept(Some(""), "other"), ["error", "warn", "info"]);
        // Anything but a bare level is the operator's own filter, taken as written.
        assert_eq!(kept(Some("warn,latchkey::http=debug"), refresh), ["error", "warn"]);
        assert_eq!(kept(Some("warn,latchkey::http=debug"), "other"), ["error", "warn", "info", "debug"]);
        assert_eq!(kept(Some("off"), refresh), Vec::<&str>::new());
    }

    /// SPEC section 11: every credential read writes its audit line, whatever the level.
    #[test]
    fn the_audit_line_is_kept_by_every_filter() {
        assert_eq!(AUDIT_TARGET, "latchkey::audit", "every_level! below names it literally");
        for rust_log in [None, Some("error"), Some("warn"), Some("off"), Some("warn,latchkey::http=debug")] {
            assert_eq!(kept(rust_log, AUDIT_TARGET), ["error", "warn", "info"], "{rust_log:?}");
        }
        assert_eq!(kept(Some("warn,latchkey::audit=off"), AUDIT_TARGET), ["error", "warn", "info"]);
        assert_eq!(kept(Some("error"), "other"), ["error"]);
        assert_eq!(kept(Some("trace"), AUDIT_TARGET), ["error", "warn", "info"]);
    }
}
