//! A run's figures: derived rates, the monthly cost at on-demand prices, the Markdown the report
//! quotes, the SVG of due entries and refreshes over simulated time, and the checks the test
//! command runs.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::run::Outcome;

/// AWS on-demand list prices, us-east-1 (USD). DynamoDB's are those in force since its
/// 2024-11-01 on-demand price cut; the rest are the long-standing list prices. Not re-checked
/// from this machine (no internet): see docs/scale.md for the date and source.
pub mod prices {
    /// Per million write request units.
    pub const DYNAMODB_WRU: f64 = 0.625;
    /// Per million read request units.
    pub const DYNAMODB_RRU: f64 = 0.125;
    /// Per 10,000 KMS requests.
    pub const KMS_10K: f64 = 0.03;
    /// Per GB-second of arm64 Lambda.
    pub const LAMBDA_GB_S: f64 = 0.000_013_333_4;
    /// Per million Lambda requests.
    pub const LAMBDA_REQUESTS: f64 = 0.20;
    /// Per million EventBridge custom events.
    pub const EVENTBRIDGE: f64 = 1.00;
    /// Per million SQS requests (standard queue).
    pub const SQS: f64 = 0.40;
    /// The date and source, as the report states them.
    pub const AS_OF: &str = "us-east-1 list prices: DynamoDB on-demand since 2024-11-01 (after its 50% cut), KMS, Lambda arm64, EventBridge, SQS as listed 2024-2025; not re-checked from this machine (no internet)";
}

/// Seconds in a 30-day month.
const MONTH: f64 = 30.0 * 86_400.0;

/// The figures of one run, derived.
#[derive(Debug, Clone)]
pub struct Figures {
    pub refreshes: u64,
    /// Mean refreshes per simulated second over the run, and the busiest minute's.
    pub refreshes_per_s: f64,
    pub refreshes_per_s_peak: f64,
    pub lag_p50: f64,
    pub lag_p99: f64,
    pub lag_max: f64,
    pub kms_calls: u64,
    pub kms_per_s: f64,
    pub kms_per_s_peak: f64,
    /// KMS calls per refresh: the design's claim is that this falls toward zero.
    pub kms_per_refresh: f64,
    pub wcu_per_s: f64,
    pub rcu_per_s: f64,
    pub store_throttles: u64,
    pub kms_throttles: u64,
    /// The provider's answers: committed, lost (never committed: a rotated refresh token would
    /// be lost), cut off by the run's end (`sim::answers`).
    pub answers: super::answers::AnswerTally,
    pub due_peak_wcu: f64,
    pub cost: Cost,
}

/// Monthly cost at on-demand prices (USD), extrapolated from the simulated rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub dynamodb: f64,
    pub kms: f64,
    pub lambda: f64,
    pub events: f64,
    pub sqs: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.dynamodb + self.kms + self.lambda + self.events + self.sqs
    }
}

fn pct(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() { 0.0 } else { f64::from(crate::percentile(sorted, p)) }
}

impl Figures {
    pub fn of(o: &Outcome) -> Self {
        let secs = o.scenario.duration.as_secs_f64().max(1.0);
        let t = &o.meter.totals;
        let mut lags = o.meter.lags.clone();
        lags.sort_by(f32::total_cmp);
        let kms_calls = t.kms_generate + t.kms_decrypt;
        let busiest =
            |f: &dyn Fn(&super::quota::Minute) -> f64| o.meter.minutes.iter().map(f).fold(0.0, f64::max) / 60.0;
        let per_month = MONTH / secs;
        let gb = f64::from(o.scenario.memory_mb) / 1024.0;
        let cost = Cost {
            dynamodb: (t.wcu * prices::DYNAMODB_WRU + t.rcu * prices::DYNAMODB_RRU) / 1e6 * per_month,
            kms: kms_calls as f64 / 1e4 * prices::KMS_10K * per_month,
            lambda: (o.lambda_seconds * gb * prices::LAMBDA_GB_S
                + o.invocations as f64 / 1e6 * prices::LAMBDA_REQUESTS)
                * per_month,
            events: t.events as f64 / 1e6 * prices::EVENTBRIDGE * per_month,
            sqs: o.sqs_requests as f64 / 1e6 * prices::SQS * per_month,
        };
        Self {
            refreshes: t.refreshes,
            refreshes_per_s: t.refreshes as f64 / secs,
            refreshes_per_s_peak: busiest(&|m| m.refreshes as f64),
            lag_p50: pct(&lags, 0.50),
            lag_p99: pct(&lags, 0.99),
            lag_max: lags.last().copied().map_or(0.0, f64::from),
            kms_calls,
            kms_per_s: kms_calls as f64 / secs,
            kms_per_s_peak: busiest(&|m| (m.kms_generate + m.kms_decrypt) as f64),
            kms_per_refresh: kms_calls as f64 / (t.refreshes.max(1)) as f64,
            wcu_per_s: t.wcu / secs,
            rcu_per_s: t.rcu / secs,
            store_throttles: t.store_throttles,
            kms_throttles: t.kms_throttles,
            answers: o.meter.answers,
            due_peak_wcu: o.meter.minutes.iter().map(|m| m.due_shard_peak_wcu).fold(0.0, f64::max),
            cost,
        }
    }
}

/// The header of the summary table.
pub const SUMMARY_HEADER: &str = "| connections | orgs | mode | simulated | refreshes/s (mean / peak min) | due lag p50 / p99 / max | KMS calls/s (mean / peak min) | KMS per refresh | WCU/s | RCU/s | hottest due shard WCU/s | throttles (store / KMS) | provider answers lost (given up) / cut off by the end | invocations (cold) | $/month | wall |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One row of the summary table.
pub fn summary_row(o: &Outcome, f: &Figures) -> String {
    let s = &o.scenario;
    format!(
        "| {} | {} | {} | {:.1} h | {:.1} / {:.1} | {:.0} s / {:.0} s / {:.0} s | {:.2} / {:.1} | {:.4} | {:.0} | {:.0} | {:.0} | {} / {} | {} ({}) / {} | {} ({}) | {:.0} | {:.0} s |",
        o.seeded * o.slices,
        s.orgs * o.slices,
        mode(o),
        s.duration.as_secs_f64() / 3600.0,
        f.refreshes_per_s * o.slices as f64,
        f.refreshes_per_s_peak * o.slices as f64,
        f.lag_p50,
        f.lag_p99,
        f.lag_max,
        f.kms_per_s * o.slices as f64,
        f.kms_per_s_peak * o.slices as f64,
        f.kms_per_refresh,
        f.wcu_per_s * o.slices as f64,
        f.rcu_per_s * o.slices as f64,
        f.due_peak_wcu * o.slices as f64,
        f.store_throttles * o.slices as u64,
        f.kms_throttles * o.slices as u64,
        f.answers.lost * o.slices as u64,
        f.answers.given_up * o.slices as u64,
        f.answers.cut_off * o.slices as u64,
        o.invocations,
        o.cold_starts,
        f.cost.total() * o.slices as f64,
        o.wall_secs,
    )
}

/// The mode, with the workers' concurrency of a fan-out and the key scheme.
fn mode(o: &Outcome) -> String {
    let s = &o.scenario;
    let keys = if s.branch_keys { "" } else { ", key per record" };
    match s.mode {
        super::run::Mode::Fanout => format!("fan-out, {} workers{keys}", s.workers * o.slices),
        super::run::Mode::Inline => format!("inline{keys}"),
    }
}

/// The detail of one run: peaks per partition class, cost lines, memory.
pub fn detail(o: &Outcome, f: &Figures) -> String {
    let k = o.slices as f64;
    let mut out = String::new();
    let s = &o.scenario;
    let _ = writeln!(
        out,
        "{} connections over {} organizations ({} mode{}), {:.1} simulated hours, in {:.0} s of wall time; {:.0} bytes of resident memory per seeded connection.\n",
        o.seeded * o.slices,
        s.orgs * o.slices,
        mode(o),
        if o.slices > 1 {
            format!(", simulated as 1 of {} identical slices, see below", o.slices)
        } else {
            String::new()
        },
        s.duration.as_secs_f64() / 3600.0,
        o.wall_secs,
        o.bytes_per_connection
    );
    let _ = writeln!(out, "| partition class | peak WCU/s (key) | peak RCU/s (key) |\n|---|---|---|");
    for (class, p) in &o.meter.peaks {
        let _ = writeln!(
            out,
            "| {class} | {:.0} (`{}`) | {:.0} (`{}`) |",
            p.wcu,
            short(&p.wcu_key),
            p.rcu,
            short(&p.rcu_key)
        );
    }
    let c = &f.cost;
    let _ = writeln!(
        out,
        "\nPer month at on-demand prices: DynamoDB ${:.0}, KMS ${:.0}, Lambda ${:.0}, EventBridge ${:.0}, SQS ${:.0}: **${:.0}** (storage and the KMS key's $1/month not included). Lambda: {} invocations, {} cold, {} dropped behind a running one; provider token requests {} for {} refreshes committed ({} answers lost, never committed, {} of them given up by the service and logged, the others dropped with an invocation cut off at its timeout; {} cut off by the run's end); {} entries still due 6 minutes after their time at the end; {} messages dead-lettered.",
        c.dynamodb * k,
        c.kms * k,
        c.lambda * k,
        c.events * k,
        c.sqs * k,
        c.total() * k,
        o.invocations,
        o.cold_starts,
        o.throttled_invocations,
        o.provider_calls,
        f.refreshes,
        f.answers.lost,
        f.answers.given_up,
        f.answers.cut_off,
        o.stale_at_end,
        o.dead_lettered,
    );
    out
}

fn short(key: &str) -> String {
    if key.len() > 48 { format!("{}...", &key[..45]) } else { key.to_owned() }
}

/// Draws due entries (backlog) and refreshes per minute over simulated time.
pub fn draw(o: &Outcome, path: &Path, title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let minutes = &o.meter.minutes;
    let n = minutes.len().max(2) as f64;
    let backlog_max = minutes.iter().map(|m| m.backlog as f64).fold(1.0, f64::max);
    let refresh_max = minutes.iter().map(|m| m.refreshes as f64 / 60.0).fold(1.0, f64::max);
    let kms_max = minutes.iter().map(|m| (m.kms_generate + m.kms_decrypt) as f64 / 60.0).fold(0.0, f64::max);
    let top = refresh_max.max(kms_max) * 1.15;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..top)?
        .set_secondary_coord(0.0..n, 0.0..backlog_max * 1.15);
    chart.configure_mesh().x_desc("simulated minutes").y_desc("per second (minute mean)").draw()?;
    chart.configure_secondary_axes().y_desc("due entries waiting").draw()?;
    let series = |f: &dyn Fn(&super::quota::Minute) -> f64| -> Vec<(f64, f64)> {
        minutes.iter().enumerate().map(|(i, m)| (i as f64, f(m))).collect()
    };
    chart
        .draw_series(LineSeries::new(series(&|m| m.refreshes as f64 / 60.0), &BLUE))?
        .label("refreshes/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(&|m| (m.kms_generate + m.kms_decrypt) as f64 / 60.0), &RED))?
        .label("KMS calls/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_secondary_series(LineSeries::new(series(&|m| m.backlog as f64), &BLACK))?
        .label("due entries waiting (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}

/// What the test command checks of a run: the design holds (`Err` lists what broke).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// No refresh later than this after its due time: the refresh lookahead (600 s), so every
    /// token is refreshed before it expires.
    pub lag_max: f64,
    /// KMS calls per refresh at most this: one data key per record costs 2 (a `Decrypt` of the
    /// old tokens' key, a `GenerateDataKey` for the new), branch keys one call per organization
    /// a container touches per cache lifetime.
    pub kms_per_refresh: f64,
    /// Entries still due this long after their time at the end: none.
    pub stale_after: f64,
    /// Throttled store calls per committed refresh at most this. Each container's adaptive
    /// limit (`service/refresh/limit.rs`) takes throttling as its signal, so a burst above the
    /// due index's capacity meets some throttled (and retried) writes before the fleet slows
    /// down to it: that is how it finds the capacity, not a failure. What must not happen is a
    /// lost answer (checked on its own) or a fleet that keeps hammering a throttled index (the
    /// 1M burst before the limit: 0.91 throttled calls a refresh; with it, 0.016).
    pub store_throttles_per_refresh: f64,
}

pub fn check(o: &Outcome, f: &Figures, b: &Bounds) -> Result<(), Vec<String>> {
    let mut broken = Vec::new();
    if o.dead_lettered > 0 {
        broken.push(format!("{} messages dead-lettered", o.dead_lettered));
    }
    if f.refreshes < o.seeded as u64 {
        broken.push(format!("{} refreshes for {} connections that all came due", f.refreshes, o.seeded));
    }
    if f.lag_max > b.lag_max {
        broken.push(format!("due lag max {:.0} s over the bound of {:.0} s", f.lag_max, b.lag_max));
    }
    if o.stale_at_end > 0 {
        broken.push(format!("{} entries still due {:.0} s after their time at the end", o.stale_at_end, b.stale_after));
    }
    if f.kms_per_refresh > b.kms_per_refresh {
        broken.push(format!(
            "{} KMS calls for {} refreshes ({:.2} each, bound {}): KMS calls scale with connections",
            f.kms_calls, f.refreshes, f.kms_per_refresh, b.kms_per_refresh
        ));
    }
    if f.answers.lost > 0 {
        broken.push(format!(
            "{} provider answers lost, never committed ({} given up by the service): a provider that rotates refresh tokens has spent the old ones",
            f.answers.lost, f.answers.given_up
        ));
    }
    let throttles_per_refresh = f.store_throttles as f64 / f.refreshes.max(1) as f64;
    if throttles_per_refresh > b.store_throttles_per_refresh {
        broken.push(format!(
            "throttled: {} store calls for {} refreshes ({throttles_per_refresh:.3} each, bound {}): the fleet does not slow down to the index",
            f.store_throttles, f.refreshes, b.store_throttles_per_refresh
        ));
    }
    if f.kms_throttles > 0 {
        broken.push(format!("throttled: {} KMS calls (the account's shared quota)", f.kms_throttles));
    }
    if o.provider_calls > f.refreshes + f.refreshes / 100 + 16 {
        broken.push(format!("{} provider calls for {} refreshes: duplicate refreshes", o.provider_calls, f.refreshes));
    }
    if broken.is_empty() { Ok(()) } else { Err(broken) }
}
