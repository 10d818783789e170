//! `latchkey serve`'s event sink: events go to the log and to in-process subscribers (its
//! revoker), and on the aws backend on to EventBridge.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::Event;
use crate::ports::{EventError, EventSink};

/// Logs each event (`event published`, ids and status only) and hands it to the receivers of
/// [`LogEventSink::subscribe`]; [`LogEventSink::forwarding`] publishes it to another sink too.
pub struct LogEventSink {
    tx: broadcast::Sender<Event>,
    /// Where each event is published first: EventBridge, for `latchkey serve` on the aws backend.
    forward: Option<Arc<dyn EventSink>>,
}

impl Default for LogEventSink {
    /// The embedded backend's sink: the log and the subscribers are where events go.
    fn default() -> Self {
        Self { tx: broadcast::channel(1_024).0, forward: None }
    }
}

impl LogEventSink {
    /// Hands each event to the subscribers, then publishes it to `to` (its error is the answer,
    /// and the log line is left out): `latchkey serve` on the aws backend, whose
    /// revoker runs a disconnect's job at once as on the embedded one, whether or not the bus
    /// took the event (the job is stored before the event is published).
    pub fn forwarding(to: Arc<dyn EventSink>) -> Self {
        Self { forward: Some(to), ..Self::default() }
    }

    /// Receives every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl EventSink for LogEventSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        // The subscribers first: the bus's answer takes up to its budget, and a request dropped
        // meanwhile (its client gone) would otherwise never reach them. No subscriber is not an
        // error.
        let _ = self.tx.send(event.clone());
        let forwarded = match &self.forward {
            Some(to) => to.publish(event).await,
            None => Ok(()),
        };
        if forwarded.is_ok() {
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
        }
        forwarded
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::{OrgId, WebhookId};

    /// A bus that keeps what it took, or refuses everything.
    #[derive(Default)]
    struct Bus {
        down: bool,
        took: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl EventSink for Bus {
        async fn publish(&self, event: &Event) -> Result<(), EventError> {
            if self.down {
                return Err(EventError("the bus is down".into()));
            }
            self.took.lock().unwrap().push(event.event_id.clone());
            Ok(())
        }
    }

    fn event() -> Event {
        Event::webhook_disabled(
            &OrgId::parse("acme").unwrap(),
            &WebhookId::parse("hook-1").unwrap(),
            "deliveries_failing",
        )
    }

    #[tokio::test]
    async fn a_forwarding_sink_publishes_to_the_bus_and_to_its_subscribers() {
        let bus = Arc::new(Bus::default());
        let sink = LogEventSink::forwarding(bus.clone());
        let mut rx = sink.subscribe();
        let e = event();
        sink.publish(&e).await.expect("published");
        assert_eq!(*bus.took.lock().unwrap(), vec![e.event_id.clone()]);
        assert_eq!(rx.try_recv().expect("the subscriber's copy").event_id, e.event_id);
    }

    /// The subscriber (`latchkey serve`'s revoker) acts on its own events whether or not the
    /// bus took them; the caller still learns that publishing failed.
    #[tokio::test]
    async fn subscribers_get_the_event_the_bus_refused_and_the_caller_gets_the_error() {
        let sink = LogEventSink::forwarding(Arc::new(Bus { down: true, ..Bus::default() }));
        let mut rx = sink.subscribe();
        let e = event();
        assert!(sink.publish(&e).await.is_err(), "the bus's error is the answer");
        assert_eq!(rx.try_recv().expect("the subscriber's copy").event_id, e.event_id);
    }
}
