//! The EventBridge event sink: `PutEvents` with source `latchkey`, retrying the entries that
//! failed (PutEvents can fail per entry while the call succeeds). Events are best effort and
//! published inline by the request that caused them, so a publish is bounded more tightly than
//! the other AWS calls: an EventBridge that does not answer costs a request at most
//! [`PUBLISH_BUDGET`], and the event is logged as lost.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use backon::{BackoffBuilder, ExponentialBuilder};

use crate::domain::Event;
use crate::ports::{EventError, EventSink};

/// The `source` of every Latchkey event.
pub const SOURCE: &str = "latchkey";
const ATTEMPTS: u32 = 4;
/// One `PutEvents` attempt (EventBridge answers in tens of milliseconds).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// One `PutEvents` call, the SDK's retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// All of one publish, the retries of failed entries included: the most an event adds to the
/// request that emits it.
pub const PUBLISH_BUDGET: Duration = Duration::from_secs(3);

pub struct EventBridgeSink {
    client: Client,
    bus: String,
}

impl EventBridgeSink {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self { client, bus: bus.into() }
    }

    fn entry(&self, event: &Event) -> Result<PutEventsRequestEntry, EventError> {
        // `Event` holds identifiers and a status only: no secret can be serialized here.
        let detail = serde_json::to_string(event).map_err(|e| EventError(Box::new(e)))?;
        Ok(PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(event.kind.detail_type())
            .detail(detail)
            .event_bus_name(&self.bus)
            .build())
    }
}

/// Whether a failed entry is worth another try.
pub fn retryable(error_code: Option<&str>) -> bool {
    matches!(error_code, Some("ThrottlingException" | "InternalFailure" | "InternalException") | None)
}

impl EventBridgeSink {
    async fn put(&self, event: &Event) -> Result<(), EventError> {
        let entry = self.entry(event)?;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(super::CONNECT_TIMEOUT.min(ATTEMPT_TIMEOUT))
            .read_timeout(ATTEMPT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        // 50 ms, doubling, with jitter, between the tries of entries PutEvents failed.
        let mut waits = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_times(ATTEMPTS as usize - 1)
            .with_jitter()
            .build();
        for attempt in 0..ATTEMPTS {
            let out = self
                .client
                .put_events()
                .entries(entry.clone())
                .customize()
                .config_override(aws_sdk_eventbridge::config::Builder::default().timeout_config(timeouts.clone()))
                .send()
                .await
                .map_err(|e| EventError(Box::new(e)))?;
            if out.failed_entry_count() == 0 {
                return Ok(());
            }
            let code = out.entries().first().and_then(|e| e.error_code()).map(str::to_owned);
            if !retryable(code.as_deref()) || attempt + 1 == ATTEMPTS {
                return Err(EventError(
                    format!("EventBridge refused the event ({})", code.as_deref().unwrap_or("unknown error")).into(),
                ));
            }
            tokio::time::sleep(waits.next().unwrap_or_default()).await;
        }
        unreachable!("the last attempt returns")
    }
}

#[async_trait]
impl EventSink for EventBridgeSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        match tokio::time::timeout(PUBLISH_BUDGET, self.put(event)).await {
            Ok(published) => published,
            Err(_) => Err(EventError(format!("EventBridge did not answer within {PUBLISH_BUDGET:?}").into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_entry_failures_are_retried() {
        assert!(retryable(Some("ThrottlingException")));
        assert!(retryable(Some("InternalFailure")));
        assert!(!retryable(Some("AccessDeniedException")));
        assert!(!retryable(Some("ValidationException")));
    }
}
