//! Logging setup: `tracing` to stderr, JSON on Lambda (or with `LATCHKEY_LOG_FORMAT=json`),
//! filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let json = std::env::var("LATCHKEY_LOG_FORMAT").map(|v| v == "json").unwrap_or(false)
        || std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
