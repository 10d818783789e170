//! Function init: process start to the first poll of the Lambda Runtime API, for each function
//! binary (issue 15; report: `docs/performance.md`, "Function init and binary size").
//!
//! A stand-in Runtime API listens on 127.0.0.1 (a free port). Each run spawns one function with
//! `AWS_LAMBDA_RUNTIME_API` pointing at it and the environment the SAM template gives the
//! functions (aws backend, table, key id, event bus, JWT issuer and audience, lookup auth), fake
//! credentials and `AWS_ENDPOINT_URL` at a closed loopback port: init must not call AWS, and a
//! function that did would fail or stall here rather than look fast. The time is taken from just
//! before the spawn to the moment the stand-in has read the request line
//! `GET /2018-06-01/runtime/invocation/next`; the process is then killed. Runs go round-robin
//! over the functions (so background load spreads evenly), after one discarded warm-up run each.
//! A run fails if a function exits before polling, or polls nothing within 5 s.
//!
//! Beside that wall time, each run takes the function's own CPU time up to its first poll: when
//! the poll arrives (the function then blocks on it), the sum over its threads of the first field
//! of `/proc/PID/task/TID/schedstat`, the nanoseconds each thread has run (exec and the dynamic
//! loader included). Wall time grows with whatever else the machine runs; CPU time much less
//! (caches and frequency still move it), so it is the figure to compare between runs taken under
//! different load. `utime + stime` of `/proc/PID/stat` would say the same in clock ticks of
//! 10 ms, too coarse for an init of a few milliseconds. A thread that ended before the poll
//! would be missed (the functions' threads live on: tokio's workers and blocking pool).
//!
//! Prints a Markdown table (binary size, then median, p90 and max of the wall init in ms, then
//! median and p90 of the CPU time in ms) and with `--svg` draws the distribution of wall init
//! times per function (`docs/perf-init.svg`).
//!
//! ```sh
//! # in a function's directory, so that the functions' profile (functions/.cargo/config.toml) applies
//! cd functions/connections-api && CARGO_TARGET_DIR=$PWD/../../target/size-init cargo build --release \
//!     -p connections-api -p oauth-callback -p token-lookup -p token-refresh -p token-revoke -p webhook-deliver
//! cd ../.. && cargo run -p latchkey-bench --bin init -- --bin-dir target/size-init/release --runs 50 --svg docs/perf-init.svg
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use latchkey_bench::percentile;
use plotters::prelude::*;

/// The path a function polls for its next invocation.
const NEXT: &str = "/2018-06-01/runtime/invocation/next";
/// How long a function may take to poll before the run fails.
const POLL_DEADLINE: Duration = Duration::from_secs(5);
/// The target of issue 15: every function's init under this.
const TARGET_MS: f64 = 10.0;

#[derive(Parser)]
#[command(about = "Function init: process start to the first poll of a stand-in Lambda Runtime API")]
struct Args {
    /// Where the function binaries are (each named as its function, or `<dir>/<function>/bootstrap`
    /// as `cargo lambda build` leaves them).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The functions to start (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connections-api,oauth-callback,token-lookup,token-refresh,token-revoke,webhook-deliver"
    )]
    functions: Vec<String>,
    /// Measured runs per function (after one discarded warm-up run).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Draw the init time distribution here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// A label for the table and the picture (the build measured: profile, target).
    #[arg(long, default_value = "release, x86_64")]
    label: String,
    /// More environment for the functions, `KEY=VALUE`, repeatable: e.g. `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`, to start them with the root certificates laid out as on Lambda's image.
    #[arg(long = "env", value_parser = parse_env)]
    extra_env: Vec<(String, String)>,
}

/// `KEY=VALUE` of `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// One function's binary and its measured init times in milliseconds, sorted: wall (spawn to
/// first poll) and the function's CPU time up to its first poll.
struct Measured {
    name: String,
    bytes: u64,
    sorted_ms: Vec<f64>,
    sorted_cpu_ms: Vec<f64>,
}

/// One run: wall milliseconds from just before the spawn to the first poll, and the function's
/// CPU milliseconds (all its threads) when that poll arrived.
struct Run {
    wall_ms: f64,
    cpu_ms: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let binaries: Vec<(String, PathBuf)> =
        args.functions.iter().map(|f| Ok((f.clone(), binary(&args.bin_dir, f)?))).collect::<Result<_, String>>()?;
    let api = StandIn::start()?;
    let mut samples: Vec<Vec<Run>> = binaries.iter().map(|_| Vec::with_capacity(args.runs)).collect();
    for round in 0..=args.runs {
        for ((name, path), runs) in binaries.iter().zip(&mut samples) {
            let run = api.init(name, path, &args.extra_env)?;
            if round > 0 {
                runs.push(run);
            }
        }
    }
    let measured: Vec<Measured> = binaries
        .iter()
        .zip(samples)
        .map(|((name, path), runs)| {
            let sorted = |f: fn(&Run) -> f64| {
                let mut ms: Vec<f64> = runs.iter().map(f).collect();
                ms.sort_by(f64::total_cmp);
                ms
            };
            Ok(Measured {
                name: name.clone(),
                bytes: std::fs::metadata(path)?.len(),
                sorted_ms: sorted(|r| r.wall_ms),
                sorted_cpu_ms: sorted(|r| r.cpu_ms),
            })
        })
        .collect::<Result<_, std::io::Error>>()?;

    println!("Init, process spawn to the first `GET {NEXT}` ({} runs each, {}):\n", args.runs, args.label);
    println!("| function | binary (KiB) | median (ms) | p90 (ms) | max (ms) | CPU median (ms) | CPU p90 (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for m in &measured {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.name,
            m.bytes / 1024,
            percentile(&m.sorted_ms, 0.5),
            percentile(&m.sorted_ms, 0.9),
            percentile(&m.sorted_ms, 1.0),
            percentile(&m.sorted_cpu_ms, 0.5),
            percentile(&m.sorted_cpu_ms, 0.9)
        );
    }
    if let Some(path) = &args.svg {
        draw(path, &measured, &args)?;
        println!("\nwrote {}", path.display());
    }
    let slow: Vec<&str> =
        measured.iter().filter(|m| percentile(&m.sorted_ms, 0.5) >= TARGET_MS).map(|m| m.name.as_str()).collect();
    if !slow.is_empty() {
        return Err(format!("median init at or above {TARGET_MS} ms: {}", slow.join(", ")).into());
    }
    Ok(())
}

/// `<dir>/<function>`, else `<dir>/<function>/bootstrap`.
fn binary(dir: &Path, function: &str) -> Result<PathBuf, String> {
    [dir.join(function), dir.join(function).join("bootstrap")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no binary for {function} in {} (build it first)", dir.display()))
}

/// The stand-in Runtime API: accepts connections on loopback and reports the instant each
/// request line is read. It never answers, so a function blocks on its first poll until killed.
struct StandIn {
    addr: String,
    polls: mpsc::Receiver<(String, Instant)>,
}

impl StandIn {
    fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let (tx, polls) = mpsc::channel();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = conn.set_nodelay(true);
                    let mut line = String::new();
                    if BufReader::new(&conn).read_line(&mut line).is_ok() {
                        let _ = tx.send((line.trim_end().to_owned(), Instant::now()));
                    }
                    // Held open until the function is killed (its read then ends).
                    let _ = BufReader::new(&conn).read_line(&mut String::new());
                });
            }
        });
        Ok(Self { addr, polls })
    }

    /// One run of `path`: from just before the spawn to its first poll, and its CPU time then.
    fn init(&self, name: &str, path: &Path, extra_env: &[(String, String)]) -> Result<Run, String> {
        while self.polls.try_recv().is_ok() {} // anything left from a killed run
        let mut command = Command::new(path);
        command
            .env_clear()
            .envs(lambda_env(name, &self.addr))
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| format!("{name}: cannot start {}: {e}", path.display()))?;
        let waited = loop {
            match self.polls.recv_timeout(Duration::from_millis(50)) {
                Ok((line, at)) if line.starts_with(&format!("GET {NEXT} ")) => {
                    // The function now waits for the answer, so its CPU time stands still.
                    break cpu_ns(child.id())
                        .map(|ns| Run { wall_ms: (at - started).as_secs_f64() * 1_000.0, cpu_ms: ns as f64 / 1e6 })
                        .map_err(|e| format!("{name}: its CPU time: {e}"));
                }
                Ok((line, _)) => break Err(format!("{name}: first request was `{line}`, not the next poll")),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        break Err(format!("{name} exited ({status}) before polling"));
                    }
                    if started.elapsed() > POLL_DEADLINE {
                        break Err(format!("{name} did not poll within {POLL_DEADLINE:?}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err("the stand-in Runtime API stopped".into()),
            }
        };
        let _ = child.kill();
        let output = child.wait_with_output().map_err(|e| format!("{name}: {e}"))?;
        waited.map_err(|e| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            format!("{e}; its stderr: {}", stderr.chars().take(2_000).collect::<String>())
        })
    }
}

/// The CPU time of process `pid` so far, in nanoseconds: the sum over its live threads of the
/// first field of `/proc/PID/task/TID/schedstat` (time spent running, from the scheduler's
/// clock).
fn cpu_ns(pid: u32) -> std::io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other(format!("unreadable schedstat `{}`", stat.trim())))?;
    }
    Ok(total)
}

/// What the template and Lambda give a function (infra/template.yaml's Globals), with AWS
/// pointed at a closed loopback port and fake credentials.
fn lambda_env(function: &str, runtime_api: &str) -> Vec<(&'static str, String)> {
    let fixed = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHINIT"),
        ("AWS_SECRET_ACCESS_KEY", "bench-init-not-a-secret"),
        ("AWS_SESSION_TOKEN", "bench-init-session"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("LATCHKEY_BACKEND", "aws"),
        ("LATCHKEY_TABLE", "latchkey-bench"),
        ("LATCHKEY_KMS_KEY_ID", "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"),
        ("LATCHKEY_EVENT_BUS", "latchkey-bench"),
        ("LATCHKEY_REFRESH_LOOKAHEAD_SECS", "600"),
        ("LATCHKEY_JWT_ISSUER", "https://issuer.invalid"),
        ("LATCHKEY_JWT_AUDIENCE", "latchkey"),
        ("LATCHKEY_LOOKUP_AUTH", "iam"),
        ("LATCHKEY_CONNECT_FRAME_ANCESTORS", "'none'"),
        ("RUST_LOG", "info,latchkey::service::refresh=info,latchkey::adapters::aws::kms=warn"),
    ];
    let mut env: Vec<(&'static str, String)> = fixed.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
    env.push(("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()));
    env
}

/// The empirical distribution (share of runs at or under each time) of every function's init,
/// with the 10 ms target.
fn draw(path: &Path, measured: &[Measured], args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = measured.iter().filter_map(|m| m.sorted_ms.last().copied()).fold(TARGET_MS, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Function init: spawn to first Runtime API poll ({} runs, {})", args.runs, args.label),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_x, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("init, ms")
        .y_desc("share of runs at or under")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, m) in measured.iter().enumerate() {
        let color = colors[i % colors.len()];
        let n = m.sorted_ms.len() as f64;
        let steps: Vec<(f64, f64)> = m.sorted_ms.iter().enumerate().map(|(k, ms)| (*ms, (k + 1) as f64 / n)).collect();
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(format!("{} (median {:.1} ms)", m.name, percentile(&m.sorted_ms, 0.5)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let target = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new([(TARGET_MS, 0.0), (TARGET_MS, 1.0)], target.stroke_width(1)))?
        .label("target: 10 ms")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], target.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
