//! Unit tests of verification: the gate, the verdicts, the scheduling.
use serde_json::Value;

use super::*;

fn policy() -> VerifyPolicy {
    VerifyPolicy {
        interval: Duration::from_secs(3_600),
        base_backoff: Duration::from_secs(60),
        concurrency: 2,
        breaker_threshold: 3,
    }
}

#[test]
fn an_origin_that_keeps_failing_is_left_alone_with_a_growing_backoff() {
    let gate = VerifyGate::new(&policy());
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let origin = "https://api.acme.com";
    gate.record(origin, true, t0);
    gate.record(origin, true, t0);
    assert_eq!(gate.open_until(origin, t0), None, "two failures: still tried");
    gate.record(origin, true, t0);
    assert_eq!(gate.open_until(origin, t0), Some(t0 + Duration::from_secs(60)));
    assert_eq!(gate.open_until("https://other.example", t0), None, "per origin");
    gate.record(origin, true, t0);
    assert_eq!(gate.open_until(origin, t0), Some(t0 + Duration::from_secs(120)), "doubles");
    for _ in 0..20 {
        gate.record(origin, true, t0);
    }
    let cap = Duration::from_secs(300);
    assert_eq!(gate.open_until(origin, t0), Some(t0 + cap), "at most a few minutes, not the interval");
    assert!(!gate.admit(origin, t0 + cap - Duration::from_secs(1)), "held back while open");
    assert_eq!(gate.open_until(origin, t0 + cap), None, "open again after it");
    gate.record(origin, false, t0);
    assert_eq!(gate.open_until(origin, t0), None, "an answer resets it");
}

#[test]
fn after_the_backoff_one_probe_goes_and_its_answer_decides() {
    let gate = VerifyGate::new(&VerifyPolicy { interval: Duration::from_secs(86_400), ..policy() });
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let origin = "https://api.acme.com";
    for _ in 0..30 {
        gate.record(origin, true, t0);
    }
    let cap = Duration::from_secs(300);
    assert_eq!(gate.open_until(origin, t0), Some(t0 + cap), "a day's interval still waits 5 minutes at most");
    let later = t0 + cap;
    assert!(gate.admit(origin, later), "the probe goes");
    assert!(!gate.admit(origin, later), "the others wait for it");
    assert!(!gate.admit(origin, later + Duration::from_secs(60)));
    // The probe failed: open again for the capped backoff, then another single probe.
    gate.record(origin, true, later);
    assert!(!gate.admit(origin, later + Duration::from_secs(1)));
    let again = later + cap;
    assert!(gate.admit(origin, again));
    assert!(!gate.admit(origin, again));
    // The probe was answered: closed, everything goes.
    gate.record(origin, false, again);
    assert!(gate.admit(origin, again) && gate.admit(origin, again));
    assert!(gate.admit("https://other.example", t0), "another origin was never held back");
}

#[tokio::test]
async fn no_more_than_the_concurrency_are_in_flight() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let gate = Arc::new(VerifyGate::new(&policy()));
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (release, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (gate, now, peak, mut go) = (gate.clone(), now.clone(), peak.clone(), release.subscribe());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.permits.acquire().await.unwrap();
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let _ = go.recv().await;
            now.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    // Wait until the permits are all taken, then let them go one round at a time.
    while gate.permits.available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        let _ = release.send(());
        tokio::task::yield_now().await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[test]
fn template_values_prefer_the_connections_own_and_render_numbers_as_text() {
    let defaults = Values {
        plain: [("region".to_owned(), Value::from("eu")), ("n".to_owned(), Value::from(3))].into(),
        secret: Default::default(),
    };
    let own = Values {
        plain: [("region".to_owned(), Value::from("us"))].into(),
        secret: [("apiKey".to_owned(), SecretString::from("k".to_owned()))].into(),
    };
    let source = template_source(defaults, &own, Some(SecretString::from("at".to_owned())));
    use secrecy::ExposeSecret;
    let get = |n: &str| source(n).map(|s| s.expose_secret().to_owned());
    assert_eq!(get("region").as_deref(), Some("us"));
    assert_eq!(get("n").as_deref(), Some("3"));
    assert_eq!(get("apiKey").as_deref(), Some("k"));
    assert_eq!(get(ACCESS_TOKEN).as_deref(), Some("at"));
    assert_eq!(get("nope"), None);
}
