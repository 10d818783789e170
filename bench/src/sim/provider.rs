//! A provider's token endpoint, modelled: every refresh answers a new access token (and a
//! rotated refresh token) after a latency drawn from a log-normal distribution, on the simulated
//! clock. No sockets: what is measured is Latchkey's side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey::provider::{ApiRequest, FormPost, ProviderClient, RawAnswer, TransportError};

use super::answers::{self, Answers};

/// A small deterministic generator (SplitMix64): runs are repeatable without a dependency.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The modelled token endpoint: latency log-normal with median `median` and the 99th
/// percentile at `p99` (capped at 15 s, the client's timeout), access tokens valid for
/// `expires_in`.
pub struct SimProvider {
    median: Duration,
    sigma: f64,
    expires_in: u64,
    rng: Mutex<Rng>,
    calls: AtomicU64,
    /// Where each answer is reported ([`SimProvider::recording`]).
    answers: Option<Arc<Answers>>,
}

impl SimProvider {
    pub fn new(median: Duration, p99: Duration, expires_in: u64, seed: u64) -> Self {
        // p99 = median * exp(2.326 sigma)
        let sigma = (p99.as_secs_f64() / median.as_secs_f64()).max(1.0).ln() / 2.326;
        Self { median, sigma, expires_in, rng: Mutex::new(Rng::new(seed)), calls: AtomicU64::new(0), answers: None }
    }

    /// This provider reporting each refresh's answer to `answers`, its rotated refresh token
    /// naming the connection (`answers::refresh_token`), so that lost answers are counted.
    pub fn recording(mut self, answers: Arc<Answers>) -> Self {
        self.answers = Some(answers);
        self
    }

    /// Token requests answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn latency(&self) -> Duration {
        let z = self.rng.lock().unwrap_or_else(|p| p.into_inner()).normal();
        self.median.mul_f64((self.sigma * z).exp()).min(Duration::from_secs(15))
    }
}

#[async_trait]
impl ProviderClient for SimProvider {
    async fn post_form(&self, post: &FormPost) -> Result<RawAnswer, TransportError> {
        tokio::time::sleep(self.latency()).await;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let connection = post.field("refresh_token").and_then(answers::connection_of);
        let refresh_token = match (connection, &self.answers) {
            (Some(i), Some(answers)) => {
                answers.answered(i);
                answers::refresh_token(i, n)
            }
            _ => format!("sim-rt-{n:016x}-000000000000000000000000000000"),
        };
        let body = format!(
            r#"{{"access_token":"sim-at-{n:016x}-padded-to-a-typical-provider-length-000000000000","token_type":"Bearer","expires_in":{},"refresh_token":"{refresh_token}","scope":"read write"}}"#,
            self.expires_in
        );
        Ok(RawAnswer {
            status: 200,
            content_type: Some("application/json".into()),
            retry_after: None,
            body: body.into_bytes(),
        })
    }

    async fn send(&self, _request: &ApiRequest) -> Result<RawAnswer, TransportError> {
        tokio::time::sleep(self.latency()).await;
        Ok(RawAnswer {
            status: 200,
            content_type: Some("application/json".into()),
            retry_after: None,
            body: b"{}".to_vec(),
        })
    }
}
