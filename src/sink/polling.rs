//! A producer whose delivery reports are served by a thread of its own, as rust-rdkafka's
//! `ThreadedProducer` serves them, but let go of without waiting for that thread.
//!
//! `ThreadedProducer`'s drop joins its thread, which sleeps in polls of a fixed 100 ms
//! once nothing is left to report: every `run --once` paid most of that 100 ms between its
//! last checkpoint and its exit (and a rebuilt producer paid it on a worker thread). Here
//! the thread stops at the end of its current poll and takes the producer's last
//! reference with it, so librdkafka's own teardown happens there too, off every path
//! that waits. A process that exits meanwhile loses nothing: a checkpoint only ever
//! follows the acknowledgements it covers.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, ProducerContext};

/// How long one poll waits for a report when there is none.
const POLL: Duration = Duration::from_millis(100);

pub struct Polled<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> Polled<C> {
    pub fn start(producer: BaseProducer<C>) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new().name("producer polling".into()).spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                polled.poll(POLL);
            }
        })?;
        Ok(Self { producer, stop })
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
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Mutex;

    use rdkafka::client::ClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::error::KafkaError;
    use rdkafka::producer::DeliveryResult;

    use super::*;

    /// Holds the polling thread inside its first error report until `release` is dropped.
    struct Stuck {
        entered: Mutex<Sender<()>>,
        release: Mutex<Receiver<()>>,
    }

    impl ClientContext for Stuck {
        fn error(&self, _: KafkaError, _: &str) {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self.release.lock().unwrap().recv();
        }
    }

    impl ProducerContext for Stuck {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
    }

    /// Dropping returns while the thread is still busy with the producer, and the thread
    /// lets go of it once it is free.
    #[test]
    fn drop_does_not_wait_for_the_polling_thread() {
        let (entered, in_report) = channel();
        let (release, held) = channel();
        let context = Stuck { entered: Mutex::new(entered), release: Mutex::new(held) };
        // Nothing listens on port 1: the refused connection is the error report.
        let producer = ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create_with_context(context).unwrap();
        let polled = Polled::start(producer).unwrap();
        let producer = Arc::downgrade(&polled.producer);
        in_report.recv_timeout(Duration::from_secs(10)).expect("librdkafka reports the refused connection");

        let (dropped, done) = channel();
        std::thread::spawn(move || {
            drop(polled);
            dropped.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(10)).expect("dropping waited for the busy polling thread");
        assert_eq!(producer.strong_count(), 1, "the polling thread still holds the producer");

        drop(release);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while producer.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the polling thread never let go of the producer");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
