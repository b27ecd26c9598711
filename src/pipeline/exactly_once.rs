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
use super::{PipelineError, Runs, Target};
use crate::sink::{Acknowledgement, Delivered, TransactionalSink};
use crate::source::Source;

pub(super) async fn attempt<S: Source, K: TransactionalSink>(source: &mut S, sink: &K, target: Target<'_>, mut runs: Runs<'_>) -> Result<(), PipelineError> {
    let mut open = None;
    let result = transact(source, sink, target, &mut runs, &mut open).await;
    if let (Err(error), Some(_)) = (&result, open) {
        // Whatever it held stays invisible to read_committed consumers; if even the abort
        // fails, the next attempt's begin fails too and the supervisor rebuilds the producer.
        if let Err(abort) = sink.abort().await {
            tracing::warn!(pipeline = %target.pipeline, %error, %abort, "aborting the open transaction failed");
        }
    }
    result
}

async fn transact<S: Source, K: TransactionalSink>(
    source: &mut S,
    sink: &K,
    target: Target<'_>,
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
            open.take().expect("a transaction is open").commit(sink, target).await?;
        }
        if !runs.go_on(batch.ends_run, batch.covers_start).await {
            break;
        }
    }
    // Shutdown: what is published so far is consistent with its checkpoint.
    match open.take() {
        Some(txn) => txn.commit(sink, target).await,
        None => Ok(()),
    }
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
    fn new(target: Target<'_>) -> Self {
        Self { sent_at: Instant::now(), acks: Vec::new(), position: serde_json::Value::Null, watermark: None, in_flight: InFlight::new(&target.metrics.in_flight) }
    }

    /// Awaits every acknowledgement, then adds the checkpoint and commits.
    async fn commit<K: TransactionalSink>(self, sink: &K, target: Target<'_>) -> Result<(), PipelineError> {
        let Self { sent_at, acks, position, watermark, in_flight } = self;
        let batches = acks.len() as u64;
        let mut delivered = Delivered::default();
        for ack in acks {
            delivered += target.acknowledged(ack).await?;
        }
        let committing = Instant::now();
        sink.commit(&target.checkpoint(position)).await?;
        drop(in_flight);
        tracing::debug!(pipeline = target.pipeline, batches, events = delivered.events, commit = ?committing.elapsed(), open = ?sent_at.elapsed(), "transaction committed");
        target.committed(batches, delivered, sent_at, watermark);
        Ok(())
    }
}
