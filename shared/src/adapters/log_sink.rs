//! The embedded event sink: events go to the log and to in-process subscribers (the revoker in
//! `latchkey serve`).

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::Event;
use crate::ports::{EventError, EventSink};

pub struct LogEventSink {
    tx: broadcast::Sender<Event>,
}

impl Default for LogEventSink {
    fn default() -> Self {
        Self { tx: broadcast::channel(1_024).0 }
    }
}

impl LogEventSink {
    /// Receives every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl EventSink for LogEventSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        tracing::info!(
            event = event.kind.detail_type(),
            org = %event.org,
            connection_id = event.connection_id().map(|id| id.as_str()),
            definition = event.connection.as_ref().map(|c| c.definition.as_str()),
            status = event.connection.as_ref().map(|c| c.status.as_str()),
            webhook_id = event.webhook_id.as_ref().map(|id| id.as_str()),
            reason = event.reason.as_deref(),
            "event published"
        );
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
        Ok(())
    }
}
