//! A webhook receiver on loopback: answers each delivery as scripted (status, `Retry-After`),
//! then with its fallback status, and records every request it got for the test to verify with
//! the `standardwebhooks` crate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

use crate::harness::eventually;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("a delivery body is JSON ({e}): {}", self.body))
    }

    /// Verifies the delivery with `secret` as a receiver would (Standard Webhooks: signature,
    /// timestamp within 5 minutes, id).
    pub fn verify(&self, secret: &str) -> Result<(), standardwebhooks::WebhookError> {
        standardwebhooks::Webhook::new(secret)?.verify(self.body.as_bytes(), &self.headers)
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<(u16, Option<String>)>,
    fallback: u16,
    /// Bodies containing the text are answered with the status, before the script.
    rules: Vec<(String, u16)>,
    /// How long to hold the next requests before answering, in turn (a receiver too slow for
    /// the sender's attempt timeout).
    holds: VecDeque<Duration>,
    received: Vec<Received>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// A receiver answering `script` in turn (status, optional `Retry-After`), then 200.
    pub async fn start(script: &[(u16, Option<&str>)]) -> Self {
        let state = Arc::new(Mutex::new(State {
            script: script.iter().map(|(s, r)| (*s, r.map(str::to_owned))).collect(),
            fallback: 200,
            rules: Vec::new(),
            holds: VecDeque::new(),
            received: Vec::new(),
        }));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = shared.clone();
                async move {
                    let (hold, status, retry_after) = {
                        let mut s = state.lock().unwrap();
                        let rule =
                            s.rules.iter().find(|(text, _)| body.contains(text.as_str())).map(|(_, status)| *status);
                        s.received.push(Received { headers, body, at: Instant::now() });
                        let hold = s.holds.pop_front();
                        let (status, retry_after) = match rule {
                            Some(status) => (status, None),
                            None => s.script.pop_front().unwrap_or((s.fallback, None)),
                        };
                        (hold, status, retry_after)
                    };
                    if let Some(hold) = hold {
                        tokio::time::sleep(hold).await;
                    }
                    let mut res = StatusCode::from_u16(status).unwrap().into_response();
                    if let Some(r) = retry_after {
                        res.headers_mut().insert("retry-after", HeaderValue::from_str(&r).unwrap());
                    }
                    res
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// From now on, answer every request not scripted with `status`.
    pub fn answer(&self, status: u16) {
        self.state.lock().unwrap().fallback = status;
    }

    /// From now on, answer every request whose body contains `text` with `status` (before the
    /// script and the fallback): one event failing at an endpoint that takes the others.
    pub fn answer_when(&self, text: &str, status: u16) {
        self.state.lock().unwrap().rules.push((text.to_owned(), status));
    }

    /// Stops answering by body text ([`Receiver::answer_when`]): the script and the fallback
    /// answer everything again.
    pub fn forget_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Holds the next request `hold` before answering it (the answer it gets then is the usual
    /// one): a receiver slower than the sender's attempt timeout.
    pub fn hold_next(&self, hold: Duration) {
        self.state.lock().unwrap().holds.push_back(hold);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits (30 s at most) until `n` requests have come, and returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(Duration::from_secs(30), &format!("{n} webhook deliveries"), || async {
            self.received().len() >= n
        })
        .await;
        self.received()
    }
}
