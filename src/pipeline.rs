//! The pipeline: fetch a page → send every event → await every acknowledgement → commit
//! the page's position. The next page is fetched and sent while earlier ones are in
//! flight (at most `max_in_flight_batches`), and positions are committed strictly in
//! order, so the checkpoint never passes an event the broker has not acknowledged.
//!
//! A failed delivery stops committing at once: the attempt ends, the producer is rebuilt
//! (a fatal error, or a failure that may come from a stale view of the cluster), and the
//! pipeline resumes from the last committed position (duplicates, never loss).
//!
//! `exactly_once` pipelines publish each batch in a Kafka transaction together with its
//! checkpoint (a record of the Kafka checkpoint store): both are committed or neither.
//! Any failure drops the producer; the new one's `init_transactions` aborts what was
//! open, and the pipeline resumes from the checkpoint committed with the last batch, so
//! `read_committed` consumers see every change once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::checkpoint::{self, Checkpoint, CheckpointError, FileStore, KafkaStore, Store};
use crate::config::OnBadRecord;
use crate::metrics::{PipelineMetrics, PipelineState};
use crate::shutdown::Shutdown;
use crate::sink::kafka::{Pending, PublishError, Publisher, PublisherSpec};
use crate::source::{Batch, RecordBody, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("order {key} cannot become an event ({reason}); on_bad_record = \"fail\" stops the pipeline here")]
    BadRecord { key: String, reason: String },
}

impl PipelineError {
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Source(e) => e.is_retriable(),
            Self::Publish(e) => e.is_retriable(),
            Self::Checkpoint(e) => e.is_retriable(),
            Self::BadRecord { .. } => false,
        }
    }

    /// The `kind` label of `order_cdc_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Source(_) => "source",
            Self::Publish(PublishError::Delivery(_) | PublishError::Canceled) => "delivery",
            Self::Publish(PublishError::TooLarge { .. }) => "bad_record",
            Self::Publish(_) => "kafka",
            Self::Checkpoint(_) => "checkpoint",
            Self::BadRecord { .. } => "bad_record",
        }
    }
}

pub struct Settings {
    pub poll_interval: Duration,
    pub max_in_flight_batches: usize,
    pub on_bad_record: OnBadRecord,
    pub initial_since: DateTime<Utc>,
}

pub struct Pipeline<S: Source> {
    pub name: String,
    pub source: S,
    /// The source's identity: its checkpoints carry its fingerprint.
    pub source_identity: String,
    pub publisher: Publisher,
    pub publisher_spec: PublisherSpec,
    /// A file for `at_least_once`, the Kafka topic for `exactly_once`.
    pub store: Store,
    pub settings: Settings,
    pub metrics: PipelineMetrics,
}

/// A batch whose events are in flight.
struct InFlight {
    pending: Vec<Pending>,
    position: serde_json::Value,
    watermark: Option<DateTime<Utc>>,
    sent_at: Instant,
}

impl<S: Source> Pipeline<S> {
    /// Runs until shutdown, a permanent error, or (`once`) the end of a run with a fresh
    /// cutoff.
    pub async fn run(mut self, once: bool, mut shutdown: Shutdown) -> Result<(), PipelineError> {
        let mut backoff = Backoff::default();
        self.metrics.set_state(PipelineState::Running);
        loop {
            let result = self.attempt(once, shutdown.clone()).await;
            let error = match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retriable() && !shutdown.is_triggered() => e,
                Err(e) => return Err(e),
            };
            self.metrics.error(error.kind());
            tracing::warn!(pipeline = %self.name, error = %error, "resuming from the last checkpoint");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            // A fatal error leaves the producer unusable. A message librdkafka refused or
            // gave up on may come from a stale view of the cluster (after a broker
            // restart it can believe a topic is missing until its next metadata refresh,
            // minutes away), so any publishing failure gets a fresh producer too.
            let reason = match (self.publisher.fatal_error(), &error) {
                (Some(fatal), _) => Some(format!("fatal producer error: {fatal}")),
                (None, PipelineError::Publish(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(reason) = reason {
                tracing::warn!(pipeline = %self.name, %reason, "building a new producer");
                let fresh = loop {
                    match Publisher::connect(&self.publisher_spec).await {
                        Ok(p) => break p,
                        Err(e) => {
                            self.metrics.error("kafka");
                            tracing::warn!(pipeline = %self.name, error = %e, "building a new producer failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff.next_delay()) => {}
                                _ = shutdown.wait() => return Ok(()),
                            }
                        }
                    }
                };
                // Tearing the old one down waits for its threads: not on an async worker.
                let old = std::mem::replace(&mut self.publisher, fresh);
                tokio::task::spawn_blocking(move || drop(old));
            }
        }
    }

    /// One attempt: from the last committed checkpoint, publish and commit batches until
    /// something fails.
    async fn attempt(&mut self, once: bool, shutdown: Shutdown) -> Result<(), PipelineError> {
        let checkpoint = checkpoint::load_for(&self.store, &self.name, &self.source_identity).await?;
        self.source.restore(checkpoint.as_ref().map(|c| &c.position), self.settings.initial_since)?;
        let runs = Runs::new(&self.settings, &self.metrics, once, shutdown);
        match &self.store {
            Store::File(file) => {
                let (tx, rx) = mpsc::channel::<InFlight>(self.settings.max_in_flight_batches);
                let feed = feed(&mut self.source, &self.publisher, &self.metrics, tx, runs);
                let commit = commit(file, &self.name, &self.source_identity, &self.metrics, rx);
                tokio::pin!(feed, commit);
                tokio::select! {
                    fed = &mut feed => {
                        // The feed is done (its sender dropped): commit what is in flight,
                        // then report the first problem.
                        let committed = commit.await;
                        committed.and(fed)
                    }
                    committed = &mut commit => {
                        // The committer only stops early on a failed delivery or commit;
                        // the feed is dropped with it, so nothing past the failure is
                        // fetched.
                        committed?;
                        feed.await
                    }
                }
            }
            Store::Kafka(store) => transact(&mut self.source, &self.publisher, store, &self.name, &self.source_identity, &self.metrics, runs).await,
        }
    }
}

/// Fetches batches run after run: retries transient source errors in place, refuses a
/// batch with a bad record under `on_bad_record = "fail"`, and paces runs by
/// `poll_interval`.
struct Runs<'a> {
    settings: &'a Settings,
    metrics: &'a PipelineMetrics,
    once: bool,
    shutdown: Shutdown,
    backoff: Backoff,
    started: Instant,
}

impl<'a> Runs<'a> {
    fn new(settings: &'a Settings, metrics: &'a PipelineMetrics, once: bool, shutdown: Shutdown) -> Self {
        Self { settings, metrics, once, shutdown, backoff: Backoff::default(), started: Instant::now() }
    }

    /// The next batch; `None` once shutdown is asked for.
    async fn next<S: Source>(&mut self, source: &mut S) -> Result<Option<Batch>, PipelineError> {
        loop {
            let batch: Batch = tokio::select! {
                fetched = source.next_batch() => match fetched {
                    Ok(batch) => { self.backoff.reset(); batch }
                    Err(e) if e.is_retriable() => {
                        self.metrics.error("source");
                        self.metrics.source_retry(&e.retry_reason());
                        let delay = e.retry_after().unwrap_or_else(|| self.backoff.next_delay());
                        tracing::warn!(error = %e, retry_in = ?delay, "source request failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = self.shutdown.wait() => return Ok(None),
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
                _ = self.shutdown.wait() => return Ok(None),
            };
            if self.settings.on_bad_record == OnBadRecord::Fail {
                if let Some((key, reason)) = batch.records.iter().find_map(|r| match &r.body {
                    RecordBody::Bad { reason, .. } => Some((r.key.clone(), reason.clone())),
                    _ => None,
                }) {
                    return Err(PipelineError::BadRecord { key, reason });
                }
            }
            if let Some(holdback) = batch.cutoff_holdback {
                self.metrics.cutoff_holdback.set(holdback.as_secs_f64());
            }
            return Ok(Some(batch));
        }
    }

    /// After a batch is handed over: whether to go on. At the end of a run, `--once` is
    /// done once a run that covers the source's start has ended; otherwise the next run starts a poll
    /// interval after this one started.
    async fn go_on(&mut self, ends_run: bool, covers_start: bool) -> bool {
        if !ends_run {
            return true;
        }
        self.metrics.run_duration.observe(self.started.elapsed().as_secs_f64());
        if self.once && covers_start {
            return false;
        }
        let next = self.started + self.settings.poll_interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = self.shutdown.wait() => return false,
        }
        self.started = Instant::now();
        true
    }
}

/// What a committed batch adds to the metrics.
fn record_commit(metrics: &PipelineMetrics, batches: u64, delivered: u64, dead_lettered: u64, sent_at: Instant, watermark: Option<DateTime<Utc>>) {
    metrics.delivery_latency.observe(sent_at.elapsed().as_secs_f64());
    metrics.delivered.inc_by(delivered);
    metrics.dead_lettered.inc_by(dead_lettered);
    metrics.batches.inc_by(batches);
    metrics.commits.inc();
    if let Some(w) = watermark {
        metrics.lag.set((Utc::now() - w).num_milliseconds().max(0) as f64 / 1000.0);
    }
}

/// `exactly_once`: batches, their dead letters and the checkpoint after the last of them
/// in one transaction. A transaction holds up to `max_in_flight_batches` batches (the
/// same bound on what is published but not committed as under `at_least_once`) and is
/// committed sooner at the end of a run and on shutdown.
async fn transact<S: Source>(
    source: &mut S,
    publisher: &Publisher,
    store: &KafkaStore,
    pipeline: &str,
    source_identity: &str,
    metrics: &PipelineMetrics,
    mut runs: Runs<'_>,
) -> Result<(), PipelineError> {
    // Whatever an earlier attempt had in flight was aborted with its producer.
    metrics.in_flight.set(0);
    let mut open: Option<Transaction> = None;
    while let Some(batch) = runs.next(source).await? {
        let sent_at = Instant::now();
        if open.is_none() {
            publisher.begin_transaction()?;
        }
        let pending = publisher.send_batch(&batch.records).await?;
        metrics.in_flight.add(pending.len() as i64);
        let txn = match open.take() {
            Some(txn) => txn.with(&pending, batch.position, batch.watermark),
            None => Transaction::of(sent_at, &pending, batch.position, batch.watermark),
        };
        if batch.ends_run || txn.batches >= runs.settings.max_in_flight_batches {
            txn.commit(publisher, store, pipeline, source_identity, metrics).await?;
        } else {
            open = Some(txn);
        }
        if !runs.go_on(batch.ends_run, batch.covers_start).await {
            break;
        }
    }
    // Shutdown: what is published so far is consistent with its checkpoint.
    match open {
        Some(txn) => txn.commit(publisher, store, pipeline, source_identity, metrics).await,
        None => Ok(()),
    }
}

/// An open transaction's batches.
struct Transaction {
    sent_at: Instant,
    batches: usize,
    events: u64,
    dead_lettered: u64,
    /// The position after its last batch: the checkpoint it commits.
    position: serde_json::Value,
    watermark: Option<DateTime<Utc>>,
}

impl Transaction {
    /// A transaction of one batch.
    fn of(sent_at: Instant, pending: &[Pending], position: serde_json::Value, watermark: Option<DateTime<Utc>>) -> Self {
        let dead_lettered = pending.iter().filter(|p| p.dead_letter).count() as u64;
        Self { sent_at, batches: 1, events: pending.len() as u64, dead_lettered, position, watermark }
    }

    /// This transaction with one more batch.
    fn with(self, pending: &[Pending], position: serde_json::Value, watermark: Option<DateTime<Utc>>) -> Self {
        let next = Self::of(self.sent_at, pending, position, watermark.or(self.watermark));
        Self { batches: self.batches + 1, events: self.events + next.events, dead_lettered: self.dead_lettered + next.dead_lettered, ..next }
    }

    /// Adds the checkpoint of the last batch and commits: every message in the
    /// transaction is acknowledged, or the commit fails (and a fresh producer aborts it).
    async fn commit(self, publisher: &Publisher, store: &KafkaStore, pipeline: &str, source_identity: &str, metrics: &PipelineMetrics) -> Result<(), PipelineError> {
        publisher.send_checkpoint(store.topic(), &Checkpoint::new(pipeline, source_identity, self.position)).await?;
        let committing = Instant::now();
        let committed = publisher.commit_transaction().await;
        tracing::debug!(pipeline, batches = self.batches, events = self.events, commit = ?committing.elapsed(), open = ?self.sent_at.elapsed(), "transaction committed");
        metrics.in_flight.sub(self.events as i64);
        committed?;
        record_commit(metrics, self.batches as u64, self.events - self.dead_lettered, self.dead_lettered, self.sent_at, self.watermark);
        Ok(())
    }
}

async fn feed<S: Source>(
    source: &mut S,
    publisher: &Publisher,
    metrics: &PipelineMetrics,
    tx: mpsc::Sender<InFlight>,
    mut runs: Runs<'_>,
) -> Result<(), PipelineError> {
    while let Some(batch) = runs.next(source).await? {
        let sent_at = Instant::now();
        let pending = publisher.send_batch(&batch.records).await?;
        metrics.in_flight.add(pending.len() as i64);
        let (ends_run, covers_start) = (batch.ends_run, batch.covers_start);
        let in_flight = InFlight { pending, position: batch.position, watermark: batch.watermark, sent_at };
        if tx.send(in_flight).await.is_err() {
            return Ok(()); // the committer stopped; it reports why
        }
        if !runs.go_on(ends_run, covers_start).await {
            return Ok(());
        }
    }
    Ok(())
}

async fn commit(
    store: &FileStore,
    pipeline: &str,
    source_identity: &str,
    metrics: &PipelineMetrics,
    mut rx: mpsc::Receiver<InFlight>,
) -> Result<(), PipelineError> {
    while let Some(batch) = rx.recv().await {
        let (mut delivered, mut dead_lettered) = (0u64, 0u64);
        let total = batch.pending.len();
        for (i, pending) in batch.pending.into_iter().enumerate() {
            match pending.delivery.await {
                Ok(Ok(_)) if pending.dead_letter => dead_lettered += 1,
                Ok(Ok(_)) => delivered += 1,
                outcome => {
                    metrics.in_flight.sub((total - i) as i64);
                    metrics.failed.inc();
                    return Err(match outcome {
                        Ok(Err((e, _))) => PublishError::Delivery(e),
                        _ => PublishError::Canceled,
                    }
                    .into());
                }
            }
            metrics.in_flight.dec();
        }
        let cp = Checkpoint::new(pipeline, source_identity, batch.position);
        let writer = store.clone();
        tokio::task::spawn_blocking(move || writer.commit(&cp)).await.expect("checkpoint writer does not panic")?;
        record_commit(metrics, 1, delivered, dead_lettered, batch.sent_at, batch.watermark);
    }
    Ok(())
}
