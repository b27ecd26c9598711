//! One batch's deliveries, settled when the producer has reported every message of it.
//!
//! Each message of a batch carries the batch's `Arc<Deliveries>` as its delivery opaque,
//! and lets go of it when its report comes (on librdkafka's polling thread), or at once
//! when librdkafka refuses to take it. As vector's `BatchNotifier` does, the batch is
//! settled by the last one to let go (the sender, once the whole batch is handed over,
//! holds it until then), so the `Arc`'s own count is the count of messages outstanding.
//! This takes the place of a channel and a future per message (rust-rdkafka's
//! `FutureProducer`), which with a small document were about 6 % of order-cdc's CPU
//! samples: two allocations, a wake-up and a poll per event, where a batch needs one
//! answer.

use std::sync::{Arc, Mutex};

use futures::channel::oneshot;

use super::SinkError;

pub struct Deliveries {
    /// Fired once: with the first failure as soon as it is reported, or with none when
    /// the last holder lets go.
    settled: Mutex<Option<oneshot::Sender<Option<String>>>>,
}

/// Resolves once every message of the batch is reported.
pub struct Settled(oneshot::Receiver<Option<String>>);

impl Deliveries {
    /// A batch being sent: each message takes a clone as its delivery opaque, and the
    /// sender drops its own once the whole batch is handed over.
    pub fn begin() -> (Arc<Self>, Settled) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Self { settled: Mutex::new(Some(tx)) }), Settled(rx))
    }

    /// One message's delivery report: `Some` why it failed. A failure fails the batch at
    /// once, as awaiting its messages in order did: the rest of the batch may take until
    /// `message.timeout.ms` to be reported, and the pipeline resends from its checkpoint.
    pub fn report(&self, failure: Option<String>) {
        if failure.is_some() {
            self.settle(failure);
        }
    }

    /// The first to settle the batch decides it.
    fn settle(&self, failure: Option<String>) {
        if let Some(tx) = self.settled.lock().expect("no panic while held").take() {
            let _ = tx.send(failure);
        }
    }
}

impl Drop for Deliveries {
    /// The last holder let go: every message is reported (or was refused), and the
    /// sender has handed over the whole batch.
    fn drop(&mut self) {
        self.settle(None);
    }
}

impl Settled {
    /// Every message acknowledged, or the first failure.
    pub async fn wait(self) -> Result<(), SinkError> {
        // Settling on drop fires the sender on every path; a report librdkafka never
        // made would leave this waiting, as it would a per-message future.
        match self.0.await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(SinkError::Delivery(why)),
            Err(_) => Err(SinkError::Canceled),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_batch_settles_when_its_last_report_is_in_and_the_sender_has_let_go() {
        let (d, settled) = Deliveries::begin();
        let mut settled = Box::pin(settled.wait());
        let (first, second, refused) = (d.clone(), d.clone(), d.clone());
        first.report(None);
        drop(first);
        drop(refused);
        second.report(None);
        drop(second);
        assert!(settled.as_mut().now_or_never().is_none(), "the sender still holds it: more may come");
        drop(d);
        assert!(matches!(settled.now_or_never(), Some(Ok(()))));
    }

    #[test]
    fn the_first_failure_fails_the_batch_at_once() {
        let (d, settled) = Deliveries::begin();
        let messages = [d.clone(), d.clone(), d.clone()];
        messages[0].report(None);
        messages[1].report(Some("first".into()));
        assert!(matches!(settled.wait().now_or_never(), Some(Err(SinkError::Delivery(why))) if why == "first"), "before the rest is reported or the batch is even sent");
        messages[2].report(Some("second".into()));
    }

    #[test]
    fn an_empty_batch_settles_at_once() {
        let (d, settled) = Deliveries::begin();
        drop(d);
        assert!(matches!(settled.wait().now_or_never(), Some(Ok(()))));
    }
}
