//! The scale simulation (docs/scale.md "Simulation"): the real service over in-memory ports that
//! model DynamoDB's, KMS's and Lambda's quotas, on a simulated clock.
//!
//! ```text
//! cargo run -p latchkey-bench --bin scale -- --connections 10000 --orgs 100 --hours 2 --check
//! cargo run --release -p latchkey-bench --bin scale -- --connections 1000000 --orgs 2000 --hours 1.5 --svg docs/scale-1m.svg
//! ```
//! Prints the summary row and the detail in Markdown; `--check` exits 1 when the design's
//! bounds break (the test command's 10k run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use latchkey_bench::sim::answers;
use latchkey_bench::sim::report::{self, Bounds, Figures};
use latchkey_bench::sim::run::{self, Mode, Scenario};

#[derive(Parser, Debug)]
#[command(about = "Latchkey's scale simulation: the real service over quota-modelling in-memory ports")]
struct Args {
    /// Connections (the whole population).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Organizations they belong to (Zipf-distributed sizes).
    #[arg(long, default_value_t = 100)]
    orgs: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 2.0)]
    hours: f64,
    /// `fanout`: the deployed tick dispatches to SQS workers above 1,000 due; `inline`: one
    /// sweep per tick refreshes every due connection itself (before the fan-out).
    #[arg(long, default_value = "fanout")]
    mode: String,
    /// Simulate one of this many identical slices and multiply (for populations whose records
    /// do not fit in memory).
    #[arg(long, default_value_t = 1)]
    slices: usize,
    /// Throttle every DynamoDB partition at 1,000 WCU / 3,000 RCU, not only the due index's.
    #[arg(long)]
    strict_partitions: bool,
    /// Worker invocations at once (the SQS event source's MaximumConcurrency; deployed: 200).
    #[arg(long, default_value_t = 200)]
    workers: usize,
    /// One KMS data key per sealed record (before the per-organization branch keys).
    #[arg(long)]
    no_branch_keys: bool,
    /// Write the picture here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Fail (exit 1) when the design's bounds break.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The service's lines for answers it gave up writing are counted (and nothing else logged).
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(answers::give_ups());
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            eprintln!("a tracing subscriber was already set: given-up answers are not counted");
        }
    }
    let slices = args.slices.max(1);
    let mut scn = Scenario::deployed(
        args.connections / slices,
        (args.orgs / slices).max(1),
        Duration::from_secs_f64(args.hours * 3_600.0),
    );
    scn.mode = match args.mode.as_str() {
        "inline" => Mode::Inline,
        "fanout" | "fan-out" => Mode::Fanout,
        other => {
            eprintln!("unknown mode {other:?}");
            return ExitCode::FAILURE;
        }
    };
    scn.slices = slices;
    scn.branch_keys = !args.no_branch_keys;
    // Worker concurrency is account-wide too: a slice gets its share (at least one).
    scn.workers = (args.workers / slices).max(1);
    scn.limits.strict_all = args.strict_partitions;
    // A slice gets its share of the account-wide quotas. Not of each due-index shard's: a
    // per-second budget divided by the slices throttles the slice's own bursts (8 commits of
    // one worker in one second) that the whole population spreads; the shards' figures are
    // reported multiplied by the slices instead (an upper bound: the slices' peaks need not
    // coincide), against the full 1,000 WCU.
    scn.limits.kms_rps /= slices as f64;
    let outcome = run::run(&scn);
    let figures = Figures::of(&outcome);
    println!("{}", report::SUMMARY_HEADER);
    println!("{}\n", report::summary_row(&outcome, &figures));
    println!("{}", report::detail(&outcome, &figures));
    if let Some(path) = &args.svg {
        let title =
            format!("{} connections, {} mode: refreshes, KMS calls and due backlog", args.connections, scn.mode.name());
        if let Err(e) = report::draw(&outcome, path, &title) {
            eprintln!("drawing {} failed: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if args.check {
        // Every token refreshed before it expires (within the 600 s lookahead of its due time),
        // and KMS calls a fraction of the refreshes (2 each without branch keys).
        let bounds = Bounds {
            lag_max: latchkey::service::RefreshPolicy::default().lookahead.as_secs_f64(),
            kms_per_refresh: 0.5,
            stale_after: scn.stale_after().as_secs_f64(),
            store_throttles_per_refresh: 0.05,
        };
        if let Err(broken) = report::check(&outcome, &figures, &bounds) {
            for b in broken {
                eprintln!("design bound broken: {b}");
            }
            return ExitCode::FAILURE;
        }
        eprintln!("design bounds hold");
    }
    ExitCode::SUCCESS
}
