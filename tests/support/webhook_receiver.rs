//! A webhook endpoint on loopback for the tests of `webhook-deliver` and the wiring of its
//! queue: answers `POST /hook` with the scripted statuses in turn (then 200) and keeps every
//! request's status, headers and body, for the test to verify (with the `standardwebhooks`
//! crate) and count.

use std::sync::{Arc, Mutex};

/// One request the endpoint got: the status it answered, the request's headers and body.
pub type Received = (u16, http::HeaderMap, axum::body::Bytes);

/// The endpoint's state, shared with its server task; cloning shares it.
#[derive(Clone, Default)]
pub struct Receiver {
    /// Statuses still to answer, the next one last.
    script: Arc<Mutex<Vec<u16>>>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves the endpoint on a free loopback port until the test's runtime ends: its URL
    /// (`http://127.0.0.1:{port}/hook`) and its state. `script`: the statuses of the first
    /// requests, in order; every later request gets 200.
    pub async fn start(script: &[u16]) -> (String, Self) {
        let receiver = Receiver::default();
        receiver.script.lock().unwrap().extend(script.iter().rev());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let status = state.script.lock().unwrap().pop().unwrap_or(200);
                    state.got.lock().unwrap().push((status, headers, body));
                    http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, receiver)
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}
