//! The pipeline: fetch a page → send every event → await the batch's acknowledgement →
//! commit the page's position, so the checkpoint never passes an event the broker has not
//! acknowledged. How a batch and its checkpoint are committed is the delivery mode, one
//! file each (after arroyo's `ConsistencyMode`):
//!
//! - `at_least_once`: the checkpoint store is written once every event of a batch is
//!   acknowledged; batches are pipelined and committed strictly in order.
//! - `exactly_once`: batches and their checkpoint go to Kafka in one transaction.
//!
//! This file is the supervisor both share: an attempt runs from the last committed
//! checkpoint until something fails; a retriable failure rebuilds the sink where it must
//! be, waits a backoff and starts a new attempt from the checkpoint (duplicates, never
//! loss). `runs.rs` fetches and paces the batches; `in_flight.rs` keeps the gauge;
//! `progress.rs` reports a backfill's progress.

mod at_least_once;
mod exactly_once;
mod in_flight;
mod progress;
mod runs;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::backoff::Backoff;
use crate::checkpoint::{self, CheckpointError, CheckpointStore};
use crate::config::{Delivery, OnBadRecord};
use crate::metrics::{ErrorKind, PipelineMetrics, PipelineState};
use crate::shutdown::Shutdown;
use crate::sink::{Acknowledgement, Delivered, SinkError, TransactionalSink};
use crate::source::{Source, SourceError};

use runs::Runs;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("order {key} cannot become an event ({reason}); on_bad_record = \"fail\" stops the pipeline here")]
    BadRecord { key: String, reason: String },
}

impl PipelineError {
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Source(e) => e.is_retriable(),
            Self::Sink(e) => e.is_retriable(),
            Self::Checkpoint(e) => e.is_retriable(),
            Self::BadRecord { .. } => false,
        }
    }

    /// The `kind` label it is counted under in `order_cdc_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Source(e) => e.kind(),
            Self::Sink(SinkError::TooLarge { .. }) | Self::BadRecord { .. } => ErrorKind::BadRecord,
            Self::Sink(e) if e.is_delivery() => ErrorKind::Delivery,
            Self::Sink(_) => ErrorKind::Kafka,
            Self::Checkpoint(_) => ErrorKind::Checkpoint,
        }
    }
}

pub struct Settings {
    pub delivery: Delivery,
    pub poll_interval: Duration,
    /// How often a pipeline that is behind estimates its backlog and logs its progress.
    pub progress_interval: Duration,
    /// `at_least_once`: batches sent and not yet committed.
    pub max_in_flight_batches: usize,
    /// `exactly_once`: batches per transaction (fewer at the end of a run or on shutdown).
    pub batches_per_transaction: usize,
    pub on_bad_record: OnBadRecord,
    pub initial_since: DateTime<Utc>,
}

pub struct Pipeline<S, K, C> {
    pub name: String,
    pub source: S,
    /// The source's identity: its checkpoints carry its fingerprint.
    pub source_identity: String,
    pub sink: K,
    /// Where the checkpoint is read back from; `at_least_once` also commits to it
    /// (`exactly_once` commits through the sink's transaction).
    pub store: C,
    pub settings: Settings,
    pub metrics: PipelineMetrics,
}

impl<S: Source, K: TransactionalSink, C: CheckpointStore> Pipeline<S, K, C> {
    /// Runs until shutdown, a permanent error, or (`once`) the end of a run that covers
    /// every change committed before the source started.
    pub async fn run(mut self, once: bool, mut shutdown: Shutdown) -> Result<(), PipelineError> {
        let mut backoff = Backoff::default();
        self.metrics.set_state(PipelineState::Running);
        loop {
            let error = match self.attempt(once, shutdown.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.metrics.error(error.kind());
            if !error.is_retriable() || shutdown.is_triggered() {
                return Err(error);
            }
            tracing::warn!(pipeline = %self.name, error = %error, "resuming from the last checkpoint");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            let failure = match &error {
                PipelineError::Sink(e) => Some(e),
                _ => None,
            };
            if let Some(reason) = self.sink.needs_rebuild(failure) {
                tracing::warn!(pipeline = %self.name, %reason, "building a new producer");
                while let Err(e) = self.sink.rebuild().await {
                    self.metrics.error(ErrorKind::Kafka);
                    tracing::warn!(pipeline = %self.name, error = %e, "building a new producer failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.wait() => return Ok(()),
                    }
                }
            }
        }
    }

    /// One attempt: from the last committed checkpoint, publish and commit batches until
    /// something fails.
    async fn attempt(&mut self, once: bool, shutdown: Shutdown) -> Result<(), PipelineError> {
        let checkpoint = checkpoint::load_for(&self.store, &self.name, &self.source_identity).await?;
        self.source.restore(checkpoint.as_ref().map(|c| &c.position), self.settings.initial_since)?;
        let runs = Runs::new(&self.settings, &self.metrics, once, shutdown, self.source.wakeups());
        let target = CommitContext { pipeline: &self.name, source_identity: &self.source_identity, metrics: &self.metrics };
        match self.settings.delivery {
            Delivery::AtLeastOnce => at_least_once::attempt(&mut self.source, &self.sink, &self.store, target, runs).await,
            Delivery::ExactlyOnce => exactly_once::attempt(&mut self.source, &self.sink, target, runs).await,
        }
    }
}

/// What a delivery mode commits for: the pipeline's checkpoint identity and its metrics.
#[derive(Clone, Copy)]
struct CommitContext<'a> {
    pipeline: &'a str,
    source_identity: &'a str,
    metrics: &'a PipelineMetrics,
}

impl CommitContext<'_> {
    fn checkpoint(&self, position: serde_json::Value) -> checkpoint::Checkpoint {
        checkpoint::Checkpoint::new(self.pipeline, self.source_identity, position)
    }

    /// A batch's acknowledgement; a delivery the broker refused counts as a failed event.
    async fn acknowledged(&self, ack: Acknowledgement) -> Result<Delivered, SinkError> {
        ack.await.inspect_err(|e| {
            if e.is_delivery() {
                self.metrics.failed.inc();
            }
        })
    }

    /// What a commit of `batches` batches adds to the metrics.
    fn committed(&self, batches: u64, delivered: Delivered, sent_at: Instant, watermark: Option<DateTime<Utc>>) {
        let m = self.metrics;
        m.delivery_latency.observe(sent_at.elapsed().as_secs_f64());
        m.delivered.inc_by(delivered.events);
        m.dead_lettered.inc_by(delivered.dead_lettered);
        m.batches.inc_by(batches);
        m.commits.inc();
        m.last_commit.set(Utc::now().timestamp_millis() as f64 / 1000.0);
        if let Some(w) = watermark {
            m.lag.set((Utc::now() - w).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
}
