//! `at_least_once`: the feed sends batch after batch without waiting (at most
//! `max_in_flight_batches` unacknowledged), and the committer awaits each batch's
//! acknowledgement in order, then writes its position to the checkpoint store. A failed
//! delivery or commit ends the attempt at once: nothing after it is committed, and the
//! next attempt resumes from the last committed position. A crash between an
//! acknowledgement and its commit repeats at most the batches in flight.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::in_flight::InFlight;
use super::{CommitContext, PipelineError, Runs};
use crate::checkpoint::CheckpointStore;
use crate::sink::{Acknowledgement, Sink};
use crate::source::Source;

/// A batch whose events are in flight.
struct Sent {
    ack: Acknowledgement,
    position: serde_json::Value,
    watermark: Option<DateTime<Utc>>,
    sent_at: Instant,
    in_flight: InFlight,
}

pub(super) async fn attempt<S: Source, K: Sink, C: CheckpointStore>(
    source: &mut S,
    sink: &K,
    store: &C,
    target: CommitContext<'_>,
    runs: Runs<'_>,
) -> Result<(), PipelineError> {
    let (tx, rx) = mpsc::channel::<Sent>(runs.settings.max_in_flight_batches);
    let feed = feed(source, sink, target, tx, runs);
    let commit = commit(store, target, rx);
    tokio::pin!(feed, commit);
    tokio::select! {
        fed = &mut feed => {
            // The feed is done (its sender dropped): commit what is in flight, then report
            // the first problem.
            let committed = commit.await;
            committed.and(fed)
        }
        committed = &mut commit => {
            // The committer only stops early on a failed delivery or commit; the feed is
            // dropped with it, so nothing past the failure is fetched.
            committed?;
            feed.await
        }
    }
}

async fn feed<S: Source, K: Sink>(source: &mut S, sink: &K, target: CommitContext<'_>, tx: mpsc::Sender<Sent>, mut runs: Runs<'_>) -> Result<(), PipelineError> {
    while let Some(batch) = runs.next(source).await? {
        let sent_at = Instant::now();
        let mut in_flight = InFlight::new(&target.metrics.in_flight);
        in_flight.add(batch.records.len());
        let ack = sink.send(&batch.records).await?;
        let (ends_run, covers_start) = (batch.ends_run, batch.covers_start);
        let sent = Sent { ack, position: batch.position, watermark: batch.watermark, sent_at, in_flight };
        if tx.send(sent).await.is_err() {
            return Ok(()); // the committer stopped; it reports why
        }
        if !runs.go_on(ends_run, covers_start).await {
            return Ok(());
        }
    }
    Ok(())
}

async fn commit<C: CheckpointStore>(store: &C, target: CommitContext<'_>, mut rx: mpsc::Receiver<Sent>) -> Result<(), PipelineError> {
    while let Some(Sent { ack, position, watermark, sent_at, in_flight }) = rx.recv().await {
        let acknowledged = target.acknowledged(ack).await;
        drop(in_flight);
        let delivered = acknowledged?;
        store.commit(&target.checkpoint(position)).await?;
        target.committed(1, delivered, sent_at, watermark);
    }
    Ok(())
}
