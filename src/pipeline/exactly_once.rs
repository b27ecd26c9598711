//! `exactly_once`: batches, their dead letters and the checkpoint after the last of them
//! are published in one Kafka transaction, so `read_committed` consumers see each change
//! once. A transaction holds up to `batches_per_transaction` batches and is committed
//! sooner at the end of a run and on shutdown. Like arroyo's Kafka sink, every
//! acknowledgement is awaited (the flush) before the checkpoint joins and the transaction
//! commits. Any failure abandons the open transaction; the next attempt resumes from the
//! checkpoint committed with the last transaction.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::in_flight::InFlight;
use super::{CommitContext, PipelineError, Runs};
use crate::sink::{Acknowledgement, Delivered, TransactionalSink};
use crate::source::Source;

pub(super) async fn attempt<S: Source, K: TransactionalSink>(source: &mut S, sink: &K, target: CommitContext<'_>, mut runs: Runs<'_>) -> Result<(), PipelineError> {
    let mut open = None;
    let result = transact(source, sink, target, &mut runs, &mut open).await;
    if let (Err(error), Some(_)) = (&result, open) {
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

async fn transact<S: Source, K: TransactionalSink>(
    source: &mut S,
    sink: &K,
    target: CommitContext<'_>,
    runs: &mut Runs<'_>,
    open: &mut Option<Transaction>,
) -> Result<(), PipelineError> {
    while let Some(batch) = runs.next(source).await? {
        let txn = match open {
            Some(txn) => txn,
            None => {
                sink.begin()?;
                open.insert(Transaction::new(target))
            }
        };
        txn.in_flight.add(batch.records.len());
        txn.acks.push(sink.send(&batch.records).await?);
        txn.position = batch.position;
        txn.watermark = batch.watermark.or(txn.watermark);
        if batch.ends_run || txn.acks.len() >= runs.settings.batches_per_transaction {
            commit(open, sink, target).await?;
        }
        if !runs.go_on(batch.ends_run, batch.covers_start).await {
            break;
        }
    }
    // Shutdown: what is published so far is consistent with its checkpoint.
    commit(open, sink, target).await
}

/// Commits the open transaction, if any. It stays open (for the abort) until the commit
/// has succeeded.
async fn commit<K: TransactionalSink>(open: &mut Option<Transaction>, sink: &K, target: CommitContext<'_>) -> Result<(), PipelineError> {
    if let Some(txn) = open {
        txn.commit(sink, target).await?;
        *open = None; // and with it, its events leave the in-flight gauge
    }
    Ok(())
}

/// An open transaction's batches.
struct Transaction {
    sent_at: Instant,
    acks: Vec<Acknowledgement>,
    /// The position after its last batch: the checkpoint it commits.
    position: serde_json::Value,
    watermark: Option<DateTime<Utc>>,
    in_flight: InFlight,
}

impl Transaction {
    /// An empty transaction; its first batch sets the position.
    fn new(target: CommitContext<'_>) -> Self {
        Self { sent_at: Instant::now(), acks: Vec::new(), position: serde_json::Value::Null, watermark: None, in_flight: InFlight::new(&target.metrics.in_flight) }
    }

    /// Awaits every acknowledgement, then adds the checkpoint and commits.
    async fn commit<K: TransactionalSink>(&mut self, sink: &K, target: CommitContext<'_>) -> Result<(), PipelineError> {
        let batches = self.acks.len() as u64;
        let mut delivered = Delivered::default();
        for ack in std::mem::take(&mut self.acks) {
            delivered += target.acknowledged(ack).await?;
        }
        let committing = Instant::now();
        sink.commit(&target.checkpoint(self.position.clone())).await?;
        tracing::debug!(pipeline = target.pipeline, batches, events = delivered.events, commit = ?committing.elapsed(), open = ?self.sent_at.elapsed(), "transaction committed");
        target.committed(batches, delivered, self.sent_at, self.watermark);
        Ok(())
    }
}
