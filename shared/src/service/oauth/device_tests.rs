//! `poll_due_devices` and the device poller's wake-up ([`DeviceWake`]) on SQLite.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::domain::OrgId;
use crate::service::ServiceOptions;

/// A service over a fresh SQLite store, and a pending device-flow connection of it whose
/// device authorization (interval 2 s) has its next poll at `next_poll_in` from now. Its
/// token endpoint refuses connections: a poll fails, and the interval doubles.
async fn pending_device(next_poll_in: time::Duration) -> (Service, Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::on_sqlite(dir.path(), ServiceOptions::default());
    let org = OrgId::parse("acme").unwrap();
    let p = Principal::organization(org.clone());
    let definition = json!({"auth": "oauth2_device_code", "inputs": {
        "deviceAuthorizationUrl": {"type": "url", "default": "http://127.0.0.1:9/device"},
        "tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"},
        "clientId": {"type": "string", "default": "client"}}});
    service.put_definition(&p, "idp-device", &definition).await.unwrap();
    let id = service.create_connection(&p, &json!({"definition": "idp-device", "customer": "c-0"})).await.unwrap().id;
    let mut c = service.store.get_connection(&org, &id).await.unwrap().unwrap();
    assert_eq!(c.due_index_at(), None, "pending, without tokens: not in the due index");
    let now = service.clock.now();
    let ctx = EncryptionContext::connection(&org, &id);
    c.device = Some(DeviceAuthorization {
        device_code: service.envelope.seal(&ctx, b"device-code-0").await.unwrap(),
        user_code: "WDJB-MJHT".to_owned(),
        verification_uri: "http://127.0.0.1:9/activate".to_owned(),
        verification_uri_complete: None,
        expires_at: now + time::Duration::minutes(10),
        interval_secs: 2,
        next_poll_at: now + next_poll_in,
    });
    c.version += 1;
    service.store.update_connection(&c, c.version - 1).await.unwrap();
    (service, c, dir)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A device authorization endpoint answering at once: `interval` 2, ten minutes to live.
struct DeviceEndpoint;

#[async_trait::async_trait]
impl crate::provider::ProviderClient for DeviceEndpoint {
    async fn post_form(
        &self,
        _: &crate::provider::FormPost,
    ) -> std::result::Result<crate::provider::RawAnswer, crate::provider::TransportError> {
        let body = json!({"device_code": "device-code-1", "user_code": "WDJB-MJHT",
            "verification_uri": "http://127.0.0.1:9/activate", "expires_in": 600, "interval": 2});
        Ok(crate::provider::RawAnswer {
            status: 200,
            content_type: Some("application/json".to_owned()),
            retry_after: None,
            body: body.to_string().into_bytes(),
        })
    }
    async fn send(
        &self,
        _: &crate::provider::ApiRequest,
    ) -> std::result::Result<crate::provider::RawAnswer, crate::provider::TransportError> {
        Err(crate::provider::TransportError::Unreachable)
    }
}

#[tokio::test]
async fn a_started_authorization_wakes_the_poller_and_says_when_its_first_poll_is_due() {
    let (service, c, _dir) = pending_device(time::Duration::hours(1)).await;
    let service = service.with_provider_client(Arc::new(DeviceEndpoint));
    let pass = service.poll_due_devices(deadline()).await.unwrap();
    assert_eq!(pass, DevicePollPass { polled: 0, next_in: None }, "nothing due, nothing started");
    assert!(futures_util::FutureExt::now_or_never(service.device_started()).is_none(), "no wake yet");

    let p = Principal::organization(c.org.clone());
    let started = service.authorize_device(&p, &c.id.to_string()).await.unwrap();
    assert_eq!(started.interval, 2);
    assert!(futures_util::FutureExt::now_or_never(service.device_started()).is_some(), "the start woke the poller");
    let pass = service.poll_due_devices(deadline()).await.unwrap();
    assert_eq!(pass.polled, 0, "not before its interval");
    // The first poll, 2 s on and filed under the whole second at or after it.
    let next_in = pass.next_in.expect("the new code's first poll");
    assert!(next_in > Duration::from_secs(1) && next_in <= Duration::from_secs(3), "{next_in:?}");
    let after = service.store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
    assert_eq!(after.version, c.version + 1, "started, neither polled nor claimed");

    // A later look before that second still knows it (the poller's tick may come first).
    let pass = service.poll_due_devices(deadline()).await.unwrap();
    let again = pass.next_in.expect("kept until its second comes");
    assert!(again <= next_in && again + Duration::from_secs(1) > next_in, "{again:?} after {next_in:?}");
}

#[tokio::test]
async fn a_code_the_sweep_polled_wakes_the_poller_with_its_next_poll() {
    // Due (2 s ago), and as far as the poller knows started by another process: only the sweep
    // meets it. Its token endpoint refuses connections, so the poll backs off to 4 s.
    let (service, c, _dir) = pending_device(time::Duration::seconds(-2)).await;
    assert!(futures_util::FutureExt::now_or_never(service.device_started()).is_none(), "no wake yet");
    let summary = service.refresh_sweep(deadline()).await.unwrap();
    assert_eq!(summary.device_polls, 1, "{summary:?}");
    let after = service.store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
    assert_eq!(after.device.as_ref().map(|d| d.interval_secs), Some(4), "backed off");
    assert!(futures_util::FutureExt::now_or_never(service.device_started()).is_some(), "the sweep woke the poller");
    // The poller's next pass knows the next poll (filed under the whole second at or after it).
    let pass = service.poll_due_devices(deadline()).await.unwrap();
    assert_eq!(pass.polled, 0, "not before its interval");
    let next_in = pass.next_in.expect("the next poll of the code the sweep polled");
    assert!(next_in > Duration::from_secs(3) && next_in <= Duration::from_secs(5), "{next_in:?}");
}

#[test]
fn the_wake_keeps_the_earliest_seconds_up_to_its_capacity_and_forgets_the_past() {
    let wake = DeviceWake::default();
    assert_eq!(wake.earliest(), None);
    wake.note(20);
    wake.started(10);
    wake.note(10);
    assert_eq!(wake.earliest(), Some(10));
    wake.forget_through(10);
    assert_eq!(wake.earliest(), Some(20), "seconds up to the pass's are its index query's");
    wake.forget_through(25);
    assert_eq!(wake.earliest(), None);

    for second in 1_000..1_000 + DeviceWake::CAPACITY as i64 {
        wake.note(second);
    }
    wake.note(5_000_000);
    assert_eq!(wake.due().len(), DeviceWake::CAPACITY, "full: a later time is not kept");
    assert!(!wake.due().contains(&5_000_000));
    wake.note(999);
    assert_eq!(wake.due().len(), DeviceWake::CAPACITY, "an earlier one replaces the latest");
    assert_eq!(wake.earliest(), Some(999));
    assert!(!wake.due().contains(&(1_000 + DeviceWake::CAPACITY as i64 - 1)));
}

#[tokio::test]
async fn a_pass_polls_a_due_code_and_says_when_its_next_poll_comes() {
    let (service, c, _dir) = pending_device(time::Duration::seconds(-1)).await;
    let pass = service.poll_due_devices(deadline()).await.unwrap();
    assert_eq!(pass.polled, 1);
    let after = service.store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
    let d = after.device.clone().expect("a failed poll keeps the authorization");
    assert_eq!(d.interval_secs, 4, "the refused connection doubled the interval");
    // Its next poll, 4 s on and rounded up to the whole second: what the pass waits for.
    let next_in = pass.next_in.expect("the next poll is within the lookahead");
    assert!(next_in > Duration::from_secs(3) && next_in <= Duration::from_secs(5), "{next_in:?}");
    assert_eq!(Some(due_second(d.next_poll_at)), after.due_index_second());
}

#[tokio::test]
async fn a_pass_stopped_by_its_deadline_asks_to_look_again_at_once() {
    let (service, c, _dir) = pending_device(time::Duration::seconds(-1)).await;
    let pass = service.poll_due_devices(Instant::now()).await.unwrap();
    assert_eq!(pass, DevicePollPass { polled: 0, next_in: Some(Duration::ZERO) });
    let after = service.store.get_connection(&c.org, &c.id).await.unwrap().unwrap();
    assert_eq!(after.version, c.version, "nothing started after the deadline");
}
