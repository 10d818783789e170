//! HTTP token lookups against `latchkey serve`, beside the same server's floor (`GET /healthz`),
//! in one run (issue 15; report: `docs/performance.md`, "Lookups over HTTP").
//!
//! Starts the `latchkey serve` binary it is pointed at (embedded backend, a fresh data directory,
//! a free port, a random HS256 secret, logs at `info` to a file), creates one API-key connection,
//! mints a runtime token, checks one lookup answers the credentials, then runs `wrk` against
//! `GET /healthz` and `POST /v1/connections/{id}/token` (a Lua script in a temp file: the body,
//! the bearer token, and a `done` hook that prints the rate, the errors and the latency
//! percentiles). Prints one Markdown row per round: rates, ratio, lookup p50/p99. A run fails if
//! any request failed or answered non-2xx, or if the server wrote fewer audit lines
//! (`credentials read`) than lookups were answered.
//!
//! ```sh
//! cargo build --release --bin latchkey
//! cargo run -p latchkey-bench --bin http -- --server target/release/latchkey
//! cargo run -p latchkey-bench --bin http -- --server target/release/latchkey --cores 1,2,4,8 --svg-dir docs
//! cargo run -p latchkey-bench --bin http -- --server target/release/latchkey --perf /tmp/lookup.data \
//!     --perf-floor /tmp/healthz.data
//! ```
//!
//! `--cores`: the server pinned with `taskset` to the first N cores and wrk to the others, for
//! each N the machine has with at least one core left over (on 2 cores: N = 1 only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use latchkey::http::auth::{Claims, sign_hs256};
use plotters::prelude::*;
use secrecy::SecretString;
use serde_json::{Value, json};

/// Latency percentiles the wrk script prints (of 100).
const PERCENTILES: [f64; 12] = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

#[derive(Parser)]
#[command(about = "HTTP token lookups against latchkey serve, beside its /healthz floor")]
struct Args {
    /// The `latchkey` binary to serve with (build it with `cargo build --release --bin latchkey`).
    #[arg(long, default_value = "target/release/latchkey")]
    server: PathBuf,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds of (healthz, lookup) against the same server; one row each.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Pin the server to the first N cores and wrk to the rest, for each N (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Write `perf-lookup-latency.svg` (and with `--cores`, `perf-lookup-cores.svg`) here.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Record a `perf` profile of the server (DWARF call graphs, 999 Hz) during the first lookup
    /// run into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Record the same profile during the first `/healthz` run into this file: beside `--perf`'s,
    /// what a lookup pays that the floor does not. That round's `/healthz` figures are then
    /// taken under `perf`, as its lookup figures are with `--perf`.
    #[arg(long)]
    perf_floor: Option<PathBuf>,
    /// What the rows' first column says (the build measured).
    #[arg(long, default_value = "latchkey serve")]
    label: String,
}

/// What one wrk run measured.
#[derive(Debug, Clone)]
struct Wrk {
    requests: u64,
    rate: f64,
    /// The server's CPU time (user + system) over the run, per request answered, µs.
    server_cpu_us: f64,
    /// (percentile, microseconds), in [`PERCENTILES`] order.
    latency: Vec<(f64, f64)>,
}

impl Wrk {
    fn at(&self, p: f64) -> f64 {
        self.latency.iter().find(|(q, _)| *q == p).map_or(f64::NAN, |(_, us)| *us)
    }
}

/// One (healthz, lookup) pair against the same server.
struct Round {
    healthz: Wrk,
    lookup: Wrk,
    /// The server's peak resident memory so far (`VmHWM` of `/proc/PID/status`), KiB.
    peak_rss_kib: u64,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.lookup.rate / self.healthz.rate
    }
}

type Error = Box<dyn std::error::Error>;

/// A `latchkey serve` process on a fresh data directory.
struct Server {
    child: Child,
    addr: SocketAddr,
    secret: SecretString,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `bin serve`, pinned to `cpus` (a taskset list) when given, and waits for its
    /// "listening" line.
    fn start(bin: &Path, cpus: Option<&str>) -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let secret = hex_secret();
        let log = dir.path().join("serve.log");
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
            .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
            .env("LATCHKEY_JWT_SECRET", &secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(line) => {
                    if let Some(url) = line?.strip_prefix("latchkey listening on http://") {
                        break url.parse::<SocketAddr>()?;
                    }
                }
                None => return Err(format!("latchkey serve exited; its log: {}", log.display()).into()),
            }
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, addr, secret: SecretString::from(secret), log, _dir: dir })
    }

    fn token(&self, roles: &[&str]) -> Result<String, Error> {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 6 * 3600;
        let claims =
            Claims { org: "bench".into(), customer: None, roles: roles.iter().map(|r| (*r).to_owned()).collect(), exp };
        Ok(sign_hs256(&self.secret, &claims)?)
    }

    /// Lines of the server's log that contain `needle`, counted by `grep -c -F`: the log of an
    /// 8-core run holds millions of lines, which this debug-built bench took over a minute a
    /// round to scan itself (2026-12-04, the 16-core machine of docs/performance.md's "Cores").
    fn log_lines(&self, needle: &str) -> Result<u64, Error> {
        let out = Command::new("grep")
            .args(["-c", "-F", "--", needle])
            .arg(&self.log)
            .output()
            .map_err(|e| format!("cannot run grep ({e})"))?;
        // grep -c exits 1 when no line matched, and still prints 0.
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(
                format!("grep failed on {}: {}", self.log.display(), String::from_utf8_lossy(&out.stderr)).into()
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// 64 hex characters from the OS's random source.
fn hex_secret() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One HTTP/1.1 request on a fresh connection: the status and the JSON body (`Null` if empty).
fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &Value) -> Result<(u16, Value), Error> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.split(' ').nth(1).ok_or("no status")?.parse()?;
    let body = if body.trim().is_empty() { Value::Null } else { serde_json::from_str(body)? };
    Ok((status, body))
}

/// The API-key definition and connection the lookups read; returns the connection's id.
fn seed(server: &Server) -> Result<String, Error> {
    let org = server.token(&[])?;
    let definition = json!({
        "label": "Bench API", "auth": "api_key",
        "inputs": {
            "apiKey": {"label": "API Key", "type": "password", "required": true},
            "endpoint": {"label": "Endpoint", "type": "url", "default": "https://api.example.com"}
        }
    });
    let (status, body) = call(server.addr, "PUT", "/v1/definitions/bench-api", &org, &definition)?;
    if status != 201 && status != 200 {
        return Err(format!("PUT definition: {status} {body}").into());
    }
    let connection =
        json!({"definition": "bench-api", "customer": "c-1", "label": "bench", "values": {"apiKey": "sk_bench_123"}});
    let (status, body) = call(server.addr, "POST", "/v1/connections", &org, &connection)?;
    let id =
        body["id"].as_str().filter(|_| status == 201).ok_or_else(|| format!("POST connection: {status} {body}"))?;
    Ok(id.to_owned())
}

/// The wrk script: method, headers and body of the requests, and a `done` hook printing
/// `LK ...` lines this bench reads.
fn wrk_script(method: &str, token: Option<&str>, body: &str) -> String {
    let mut s = format!("wrk.method = \"{method}\"\n");
    if let Some(t) = token {
        s += &format!("wrk.headers[\"Authorization\"] = \"Bearer {t}\"\n");
        s += "wrk.headers[\"Content-Type\"] = \"application/json\"\n";
        s += &format!("wrk.body = '{body}'\n");
    }
    let ps = PERCENTILES.map(|p| p.to_string()).join(", ");
    s += &format!(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LK done %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
  for _, p in ipairs({{{ps}}}) do
    local v
    if p == 0 then v = latency.min elseif p == 100 then v = latency.max else v = latency:percentile(p) end
    io.write(string.format("LK p %s %d\n", tostring(p), v))
  end
end
"#
    );
    s
}

/// Runs wrk (pinned to `cpus` when given) with `script` against `url`.
fn wrk(args: &Args, cpus: Option<&str>, script: &str, url: &str) -> Result<Wrk, Error> {
    let mut file = tempfile::Builder::new().suffix(".lua").tempfile()?;
    file.write_all(script.as_bytes())?;
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration))
        .arg("-s")
        .arg(file.path())
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run wrk ({e}): install it with `apt-get install -y wrk`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed: {stdout}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mut result = Wrk { requests: 0, rate: 0.0, server_cpu_us: 0.0, latency: Vec::new() };
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["LK", "done", n, us, errors @ ..] => {
                let failed: u64 = errors.iter().map(|e| e.parse::<u64>().unwrap_or(u64::MAX)).sum();
                if failed > 0 {
                    return Err(format!("{url}: {failed} requests failed or answered non-2xx: {stdout}").into());
                }
                result.requests = n.parse()?;
                result.rate = result.requests as f64 / (us.parse::<f64>()? / 1e6);
            }
            ["LK", "p", p, us] => result.latency.push((p.parse()?, us.parse()?)),
            _ => {}
        }
    }
    if result.requests == 0 {
        return Err(format!("wrk printed no result: {stdout}").into());
    }
    Ok(result)
}

/// `perf record` of `pid` for `secs`, started now (returns at once).
fn start_perf(pid: u32, out: &Path, secs: u64) -> Result<Child, Error> {
    Ok(Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run perf: {e}"))?)
}

/// In the first round, a `perf record` of the server into `out` (when given) for the wrk run
/// about to start: one second shorter, so that it ends inside the run.
fn profile(args: &Args, round: u32, out: Option<&Path>, pid: u32) -> Result<Option<Child>, Error> {
    match (out, round) {
        (Some(out), 0) => Ok(Some(start_perf(pid, out, args.duration.saturating_sub(1).max(1))?)),
        _ => Ok(None),
    }
}

/// Starts a server (pinned to `server_cpus`), seeds it, and runs `args.rounds` rounds.
fn measure(args: &Args, server_cpus: Option<&str>, wrk_cpus: Option<&str>) -> Result<Vec<Round>, Error> {
    let server = Server::start(&args.server, server_cpus)?;
    let id = seed(&server)?;
    let runtime = server.token(&["runtime"])?;
    let path = format!("/v1/connections/{id}/token");
    let body = r#"{"min_valid_seconds": 60}"#;
    // The first lookup turns the connection active (a write); the measured ones are reads.
    let (status, answer) = call(server.addr, "POST", &path, &runtime, &serde_json::from_str(body)?)?;
    if status != 200 || answer["fields"]["apiKey"] != "sk_bench_123" {
        return Err(format!("the check lookup answered {status}: {answer}").into());
    }
    let audits_before = server.log_lines("credentials read")?;
    let healthz_script = wrk_script("GET", None, "");
    let lookup_script = wrk_script("POST", Some(&runtime), body);
    let base = format!("http://{}", server.addr);
    let mut rounds = Vec::new();
    let mut looked_up = 0;
    for round in 0..args.rounds {
        let perf = profile(args, round, args.perf_floor.as_deref(), server.child.id())?;
        let cpu = cpu_ticks(server.child.id())?;
        let mut healthz = wrk(args, wrk_cpus, &healthz_script, &format!("{base}/healthz"))?;
        healthz.server_cpu_us =
            (cpu_ticks(server.child.id())? - cpu) as f64 * 1e6 / ticks_per_s() / healthz.requests as f64;
        if let Some(mut perf) = perf {
            perf.wait()?;
        }
        let perf = profile(args, round, args.perf.as_deref(), server.child.id())?;
        let cpu = cpu_ticks(server.child.id())?;
        let mut lookup = wrk(args, wrk_cpus, &lookup_script, &format!("{base}{path}"))?;
        lookup.server_cpu_us =
            (cpu_ticks(server.child.id())? - cpu) as f64 * 1e6 / ticks_per_s() / lookup.requests as f64;
        if let Some(mut perf) = perf {
            perf.wait()?;
        }
        looked_up += lookup.requests;
        rounds.push(Round { healthz, lookup, peak_rss_kib: peak_rss_kib(server.child.id())? });
    }
    // wrk counts only the answers it read; a lookup answered as wrk stopped still logged a line.
    let audits = server.log_lines("credentials read")? - audits_before;
    if audits < looked_up {
        return Err(format!("{looked_up} lookups answered but {audits} audit lines written").into());
    }
    Ok(rounds)
}

/// User + system CPU time of process `pid` so far, in clock ticks (`/proc/PID/stat` fields 14
/// and 15).
fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Peak resident memory of process `pid` so far, KiB (`VmHWM` of `/proc/PID/status`).
fn peak_rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or("no VmHWM in /proc status")?;
    Ok(line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse()?)
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn row(label: &str, r: &Round) -> String {
    format!(
        "| {label} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
        r.healthz.rate,
        r.lookup.rate,
        r.ratio(),
        ms(r.lookup.at(50.0)),
        ms(r.lookup.at(99.0)),
        ms(r.healthz.at(99.0)),
        r.healthz.server_cpu_us,
        r.lookup.server_cpu_us,
        r.peak_rss_kib as f64 / 1024.0,
    )
}

/// The CPU list `a-b`.
fn cpu_range(from: usize, to_inclusive: usize) -> String {
    if from == to_inclusive { from.to_string() } else { format!("{from}-{to_inclusive}") }
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    if !args.server.exists() {
        return Err(format!("{} is missing: cargo build --release --bin latchkey", args.server.display()).into());
    }
    let machine = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "wrk -t{} -c{} -d{}s, {} round(s), {machine} cores, {}",
        args.threads,
        args.connections,
        args.duration,
        args.rounds,
        args.server.display()
    );
    if args.cores.is_empty() {
        let rounds = measure(&args, None, None)?;
        println!(
            "| build | `/healthz` req/s | lookups/s | ratio | lookup p50 ms | lookup p99 ms | healthz p99 ms | server CPU µs/healthz | server CPU µs/lookup | server peak RSS so far, MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &rounds {
            println!("{}", row(&args.label, r));
        }
        if let Some(dir) = &args.svg_dir {
            let best = rounds.iter().max_by(|a, b| a.ratio().total_cmp(&b.ratio())).ok_or("no rounds")?;
            let path = dir.join("perf-lookup-latency.svg");
            draw_latency(&path, best, &args)?;
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
    println!(
        "| server cores | `/healthz` req/s | lookups/s | ratio | lookup p50 ms | lookup p99 ms | healthz p99 ms \
         | server CPU µs/healthz | server CPU µs/lookup | server peak RSS so far, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut points = Vec::new();
    for &n in &args.cores {
        if n == 0 || n >= machine {
            println!("<!-- {n} cores skipped: the machine has {machine}, wrk needs one more -->");
            continue;
        }
        let server = cpu_range(0, n - 1);
        let client = cpu_range(n, machine - 1);
        let rounds = measure(&args, Some(&server), Some(&client))?;
        let best = rounds.into_iter().max_by(|a, b| a.lookup.rate.total_cmp(&b.lookup.rate)).ok_or("no rounds")?;
        println!("{}", row(&n.to_string(), &best));
        points.push((n, best));
    }
    if let Some(dir) = &args.svg_dir {
        let path = dir.join("perf-lookup-cores.svg");
        draw_cores(&path, &points, &args)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A line of the cores picture: its name, colour, and the rate it plots.
type Series = (&'static str, RGBColor, fn(&Round) -> f64);

/// Requests/s of the floor and of lookups against the server's cores.
fn draw_cores(path: &Path, points: &[(usize, Round)], args: &Args) -> Result<(), Error> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = points.iter().map(|(n, _)| *n).max().unwrap_or(1).max(2) as f64;
    let max_y = points.iter().map(|(_, r)| r.healthz.rate.max(r.lookup.rate)).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("latchkey serve: req/s against server cores (wrk -c{}, wrk on the other cores)", args.connections),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..max_x + 0.5, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("server cores (taskset)")
        .y_desc("requests/s")
        .x_labels(points.len().max(2))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let series: [Series; 2] =
        [("GET /healthz (floor)", BLUE, |r| r.healthz.rate), ("token lookups", RED, |r| r.lookup.rate)];
    for (name, color, value) in series {
        let data: Vec<(f64, f64)> = points.iter().map(|(n, r)| (*n as f64, value(r))).collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

/// "Nines" of a percentile: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 (capped at 4.5 for p100).
fn nines(p: f64) -> f64 {
    if p >= 100.0 { 4.5 } else { -(1.0 - p / 100.0).log10() }
}

/// The latency distribution of healthz and lookups (wrk's percentiles, log-spaced nines).
fn draw_latency(path: &Path, r: &Round, args: &Args) -> Result<(), Error> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_y = r.lookup.at(100.0).max(r.healthz.at(100.0)) / 1000.0 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "latchkey serve: latency by percentile (wrk -t{} -c{} -d{}s)",
                args.threads, args.connections, args.duration
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.6, (0.01..max_y.max(1.0)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .x_labels(6)
        .x_label_formatter(&|x: &f64| match (*x * 2.0).round() as i64 {
            0 => "p0".into(),
            2 => "p90".into(),
            4 => "p99".into(),
            6 => "p99.9".into(),
            8 => "p99.99".into(),
            9 => "max".into(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    let series = [("GET /healthz", BLUE, &r.healthz), ("token lookup", RED, &r.lookup)];
    for (name, color, w) in series {
        let data: Vec<(f64, f64)> = w.latency.iter().map(|(p, us)| (nines(*p), (us / 1000.0).max(0.01))).collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(format!("{name}: {:.0} req/s", w.rate))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
