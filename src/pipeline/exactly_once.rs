//! `exactly_once`: batches, their dead letters and the checkpoint after the last of them
//! are published in one Kafka transaction, so `read_committed` consumers see each change
//! once. A transaction holds up to `batches_per_transaction` batches and is committed
//! sooner at the end of a run and on shutdown. Like arroyo's Kafka sink, every
//! acknowledgement is awaited (the flush) before the transaction commits. Any failure
//! abandons the open transaction; the next attempt resumes from the checkpoint committed
//! with the last transaction.
//!
//! A producer has one transaction at a time, so nothing can be sent while a commit is in
//! flight; what can overlap it is everything before sending: the next batch is fetched
//! (and the pause between runs waited) while the last transaction commits. Within a
//! transaction, as under `at_least_once`, at most `max_in_flight_batches` batches are
//! unacknowledged: a transaction of 16 batches sent without waiting could hold 16
//! batches of documents in librdkafka's queue at once.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::in_flight::InFlight;
use super::{CommitContext, PipelineError, Runs};
use crate::sink::{Acknowledgement, Delivered, TransactionalSink};
use crate::source::{Batch, Source};

pub(super) async fn attempt<S: Source, K: TransactionalSink>(source: &mut S, sink: &K, target: CommitContext<'_>, mut runs: Runs<'_>) -> Result<(), PipelineError> {
    let mut open = false;
    let result = transact(source, sink, target, &mut runs, &mut open).await;
    if let (Err(error), true) = (&result, open) {
        // Whatever it held stays invisible to read_committed consumers, also when this
        // attempt was the pipeline's last (shutdown, a bad record). An abort that fails
        // leaves it to the producer's transaction timeout, or to the next producer's
        // init_transactions.
        if let Err(abort) = sink.abort().await {
            tracing::warn!(pipeline = %target.pipeline, %error, %abort, "aborting the open transaction failed");
        }
    }
    result
}

/// Publishes batches until shutdown or the end of `--once`. `open` says whether a
/// transaction is begun and not yet committed (the caller aborts it on failure).
async fn transact<S: Source, K: TransactionalSink>(
    source: &mut S,
    sink: &K,
    target: CommitContext<'_>,
    runs: &mut Runs<'_>,
    open: &mut bool,
) -> Result<(), PipelineError> {
    let mut filling: Option<Transaction> = None;
    let mut closed: Option<Transaction> = None;
    let mut last: Option<(bool, bool)> = None;
    loop {
        let fetch = async {
            if let Some((ends_run, covers_start)) = last {
                if !runs.go_on(ends_run, covers_start).await {
                    return Ok(None);
                }
            }
            runs.next(source).await
        };
        let (committed, fetched) = tokio::join!(commit(closed.take(), sink, target), fetch);
        committed?;
        if filling.is_none() {
            *open = false;
        }
        let Some(batch) = fetched? else { break };
        let txn = match &mut filling {
            Some(txn) => txn,
            None => {
                sink.begin()?;
                *open = true;
                filling.insert(Transaction::new(target))
            }
        };
        last = Some((batch.ends_run, batch.covers_start));
        let ends_run = txn.send(batch, sink, target, runs.settings.max_in_flight_batches).await?;
        if ends_run || txn.batches >= runs.settings.batches_per_transaction {
            closed = filling.take();
        }
    }
    // Shutdown or the end of `--once`: what is published so far is consistent with its
    // checkpoint.
    commit(filling.take(), sink, target).await?;
    *open = false;
    Ok(())
}

/// Commits a transaction, if there is one.
async fn commit<K: TransactionalSink>(txn: Option<Transaction>, sink: &K, target: CommitContext<'_>) -> Result<(), PipelineError> {
    match txn {
        Some(txn) => txn.commit(sink, target).await, // and with it, its events leave the in-flight gauge
        None => Ok(()),
    }
}

/// An open transaction's batches.
struct Transaction {
    sent_at: Instant,
    batches: usize,
    /// The acknowledgements not yet awaited, oldest first, and what the awaited ones
    /// delivered.
    acks: VecDeque<Acknowledgement>,
    delivered: Delivered,
    /// The position after its last batch: the checkpoint it commits.
    position: serde_json::Value,
    watermark: Option<DateTime<Utc>>,
    in_flight: InFlight,
}

impl Transaction {
    /// An empty transaction; its first batch sets the position.
    fn new(target: CommitContext<'_>) -> Self {
        Self { sent_at: Instant::now(), batches: 0, acks: VecDeque::new(), delivered: Delivered::default(), position: serde_json::Value::Null, watermark: None, in_flight: InFlight::new(&target.metrics.in_flight) }
    }

    /// Sends a batch in the transaction, once fewer than `max_in_flight` of its batches
    /// are unacknowledged; true when the batch ends a run, which commits it.
    async fn send<K: TransactionalSink>(&mut self, batch: Batch, sink: &K, target: CommitContext<'_>, max_in_flight: usize) -> Result<bool, PipelineError> {
        while self.acks.len() >= max_in_flight {
            let oldest = self.acks.pop_front().expect("max_in_flight_batches is at least 1");
            self.delivered += target.acknowledged(oldest).await?;
        }
        self.in_flight.add(batch.records.len());
        self.acks.push_back(sink.send(&batch.records).await?);
        self.batches += 1;
        self.position = batch.position;
        self.watermark = batch.watermark.or(self.watermark);
        Ok(batch.ends_run)
    }

    /// Adds the checkpoint at once (its record travels with the last batches rather than
    /// after their acknowledgements), awaits every acknowledgement, then commits.
    async fn commit<K: TransactionalSink>(mut self, sink: &K, target: CommitContext<'_>) -> Result<(), PipelineError> {
        let batches = self.batches as u64;
        let checkpoint = sink.seal(&target.checkpoint(std::mem::take(&mut self.position))).await?;
        let mut delivered = std::mem::take(&mut self.delivered);
        for ack in std::mem::take(&mut self.acks) {
            delivered += target.acknowledged(ack).await?;
        }
        checkpoint.await?;
        let committing = Instant::now();
        sink.commit().await?;
        tracing::debug!(pipeline = target.pipeline, batches, events = delivered.events, commit = ?committing.elapsed(), open = ?self.sent_at.elapsed(), "transaction committed");
        target.committed(batches, delivered, self.sent_at, self.watermark);
        Ok(())
    }
}
