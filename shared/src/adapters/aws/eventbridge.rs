//! The EventBridge event sink: `PutEvents` with source `latchkey`, retrying the entries that
//! failed (PutEvents can fail per entry while the call succeeds).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::domain::Event;
use crate::ports::{EventError, EventSink};

/// The `source` of every Latchkey event.
pub const SOURCE: &str = "latchkey";
const ATTEMPTS: u32 = 4;

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

#[async_trait]
impl EventSink for EventBridgeSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let entry = self.entry(event)?;
        for attempt in 0..ATTEMPTS {
            let out =
                self.client.put_events().entries(entry.clone()).send().await.map_err(|e| EventError(Box::new(e)))?;
            if out.failed_entry_count() == 0 {
                return Ok(());
            }
            let code = out.entries().first().and_then(|e| e.error_code()).map(str::to_owned);
            if !retryable(code.as_deref()) || attempt + 1 == ATTEMPTS {
                return Err(EventError(
                    format!("EventBridge refused the event ({})", code.as_deref().unwrap_or("unknown error")).into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        unreachable!("the last attempt returns")
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
