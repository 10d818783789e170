//! The scale simulation's 10,000-connection run in the test command (docs/scale.md
//! "Simulation"): the real service over the quota-modelling in-memory ports, two simulated hours
//! of the deployed fan-out, `--check`ed against the design's bounds (every token refreshed within
//! the lookahead, nothing left overdue, KMS calls a fraction of the refreshes, no throttle, no
//! dead letter, one provider call per refresh). It runs the `scale` binary cargo built for this
//! test, in the test's own profile and features: no second build.

use std::process::Command;

#[test]
fn ten_thousand_connections_hold_the_design_bounds() {
    let output = Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(["--connections", "10000", "--orgs", "100", "--hours", "2", "--mode", "fanout", "--check"])
        .output()
        .expect("the scale binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "the 10k simulation broke a design bound ({}):\n{stderr}", output.status);
    assert!(stderr.contains("design bounds hold"), "--check reported nothing:\n{stderr}");
    assert!(stdout.contains("| 10000 | 100 |"), "no summary row for 10,000 connections over 100 orgs:\n{stdout}");
}
