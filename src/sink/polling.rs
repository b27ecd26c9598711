//! A producer whose delivery reports are served by a thread of its own, as rust-rdkafka's
//! `ThreadedProducer` serves them, with a shorter poll.
//!
//! `ThreadedProducer`'s drop joins its thread, which polls for a fixed 100 ms at a time
//! (rust-rdkafka's `BaseProducer::poll` keeps serving events until its timeout is up), so
//! every `run --once` waited most of 100 ms between its last checkpoint and its exit. Here
//! a poll lasts `POLL`. The drop still joins the thread, so the producer is torn down
//! before the process exits, as before: librdkafka's threads (and OpenSSL under them) are
//! never left running while the process tears itself down. (Letting go of the thread
//! without joining it saved the whole wait, but left that teardown racing the exit.)

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, ProducerContext};

/// How long one poll serves reports: at most this long between a drop and the thread's
/// end. Not shorter: a poll that served a report ends in up to a millisecond of polls
/// that do not wait (rust-rdkafka rounds the time left down to whole milliseconds), and at
/// 20 ms that cost the export source's `run --once` about 0.08 s more CPU in 5 s.
const POLL: Duration = Duration::from_millis(50);

pub struct Polled<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> Polled<C> {
    pub fn start(producer: BaseProducer<C>) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("producer polling".into()).spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                polled.poll(POLL);
            }
        })?;
        Ok(Self { producer, stop, thread: Some(thread) })
    }

    /// The producer itself, for blocking calls made off the async workers.
    pub fn shared(&self) -> Arc<BaseProducer<C>> {
        self.producer.clone()
    }
}

impl<C: ProducerContext + 'static> Deref for Polled<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for Polled<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(Err(_)) = self.thread.take().map(JoinHandle::join) {
            tracing::error!("the producer's polling thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use rdkafka::config::ClientConfig;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;

    /// Once dropped, nothing holds the producer: its thread has ended and librdkafka's
    /// handle is destroyed before the drop returns (the process may exit right after).
    #[test]
    fn drop_ends_the_thread_and_destroys_the_producer() {
        // Nothing listens on port 1: the thread has connection errors to serve meanwhile.
        let producer: BaseProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap();
        let polled = Polled::start(producer).unwrap();
        let producer: Weak<BaseProducer<DefaultProducerContext>> = Arc::downgrade(&polled.producer);
        assert_eq!(producer.strong_count(), 2, "the thread holds the producer while it runs");
        drop(polled);
        assert_eq!(producer.strong_count(), 0);
    }
}
