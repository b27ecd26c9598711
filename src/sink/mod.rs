//! Sinks: where events go. The pipeline hands a sink a batch and gets back a typed
//! [`Acknowledgement`] that resolves once the broker has answered for every event of it
//! (after vector's `BatchNotifier`/`BatchStatus`); only `kafka.rs` knows rdkafka. The
//! traits are the seam where the pipeline core is tested without a broker.

mod deliveries;
pub mod kafka;
mod polling;

use std::future::Future;

use futures::future::BoxFuture;

use crate::checkpoint::Checkpoint;
use crate::source::Record;

/// A batch whose every event the broker acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Events on the pipeline's topic.
    pub events: u64,
    /// Bad records on the dead-letter topic.
    pub dead_lettered: u64,
}

impl std::ops::AddAssign for Delivered {
    fn add_assign(&mut self, other: Self) {
        self.events += other.events;
        self.dead_lettered += other.dead_lettered;
    }
}

/// Resolves when every event of a batch is acknowledged, or with the first failure.
pub type Acknowledgement = BoxFuture<'static, Result<Delivered, SinkError>>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach Kafka at {brokers}: {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("cannot create topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("invalid Kafka producer configuration: {0}")]
    Config(String),
    #[error("cannot start the producer's polling thread: {0}")]
    PollingThread(String),
    #[error("Kafka refused a message: {0}")]
    Send(String),
    #[error("Kafka did not acknowledge a message: {0}")]
    Delivery(String),
    #[error("the producer went away before reporting a delivery")]
    Canceled,
    #[error("Kafka transaction: {0}")]
    Transaction(String),
    #[error("order {key}: its event value is {bytes} bytes, more than the producer's message.max.bytes; on_bad_record = \"fail\" stops the pipeline here")]
    TooLarge { key: String, bytes: usize },
}

impl SinkError {
    /// A failed or lost delivery is retried from the last checkpoint; a bad configuration,
    /// an unreachable cluster at start-up or a record Kafka can never take is not.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Send(_) | Self::Delivery(_) | Self::Canceled | Self::Transaction(_))
    }

    /// An event was sent and never acknowledged (refused, timed out, or its producer went
    /// away), as opposed to the sink failing to send: counted as a `failed` event.
    pub fn is_delivery(&self) -> bool {
        matches!(self, Self::Delivery(_) | Self::Canceled)
    }
}

/// Publishes batches of records (bad ones to the dead-letter topic).
pub trait Sink: Send + Sync {
    /// Enqueues every record of a batch without waiting for any acknowledgement (thousands
    /// in flight), and hands back the batch's acknowledgement.
    fn send(&self, records: &[Record]) -> impl Future<Output = Result<Acknowledgement, SinkError>> + Send;

    /// After a failure (`failure` when the sink itself failed): why the sink must be rebuilt
    /// before it is used again, if it must.
    fn needs_rebuild(&self, failure: Option<&SinkError>) -> Option<String>;

    /// Replaces the sink's connection with a fresh one.
    fn rebuild(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A sink that publishes batches and their checkpoint atomically (`exactly_once`).
pub trait TransactionalSink: Sink {
    /// Opens a transaction: what is sent until [`commit`](Self::commit) is published
    /// together, or not at all.
    fn begin(&self) -> Result<(), SinkError>;

    /// Adds the checkpoint to the open transaction, and hands back its acknowledgement.
    fn seal(&self, checkpoint: &Checkpoint) -> impl Future<Output = Result<Acknowledgement, SinkError>> + Send;

    /// Commits the open transaction, once every acknowledgement of it (batches and
    /// checkpoint) has arrived. Fails if any event in it was not acknowledged.
    fn commit(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Abandons the open transaction: none of it becomes visible to `read_committed`.
    fn abort(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}
