//! Fetching batches run after run, shared by both delivery modes: transient source errors
//! are retried in place (with `Retry-After` or backoff), a batch with a bad record is
//! refused under `on_bad_record = "fail"`, runs are paced by `poll_interval` or started
//! sooner by the source's change notifications (`source::notify`), and a long run
//! reports its progress (`progress.rs`).

use std::time::Instant;

use super::progress::Progress;
use super::{PipelineError, Settings};
use crate::backoff::Backoff;
use crate::config::OnBadRecord;
use crate::metrics::PipelineMetrics;
use crate::shutdown::Shutdown;
use crate::source::notify::Wakeups;
use crate::source::{Batch, RecordBody, Source};

pub(super) struct Runs<'a> {
    pub(super) settings: &'a Settings,
    metrics: &'a PipelineMetrics,
    once: bool,
    shutdown: Shutdown,
    backoff: Backoff,
    started: Instant,
    progress: Progress,
    wakeups: Option<Wakeups>,
    /// The source said at the end of the last run that its next run covers its start.
    next_run_covers_start: bool,
}

impl<'a> Runs<'a> {
    pub(super) fn new(settings: &'a Settings, metrics: &'a PipelineMetrics, once: bool, shutdown: Shutdown, wakeups: Option<Wakeups>) -> Self {
        let progress = Progress::new(settings.progress_interval);
        Self { settings, metrics, once, shutdown, backoff: Backoff::default(), started: Instant::now(), progress, wakeups, next_run_covers_start: false }
    }

    /// The next batch; `None` once shutdown is asked for.
    pub(super) async fn next<S: Source>(&mut self, source: &mut S) -> Result<Option<Batch>, PipelineError> {
        loop {
            let batch: Batch = tokio::select! {
                // Shutdown first: a page that is ready at once (prefetched) must not win
                // the race against a shutdown already asked for.
                biased;
                _ = self.shutdown.wait() => return Ok(None),
                fetched = source.next_batch() => match fetched {
                    Ok(batch) => { self.backoff.reset(); batch }
                    Err(e) if e.is_retriable() => {
                        self.metrics.error(e.kind());
                        self.metrics.source_retry(&e.retry_reason());
                        // What the source asks for is a floor: a server that keeps asking
                        // for a second (a 503 in maintenance) still meets a growing backoff.
                        let delay = e.retry_after().unwrap_or_default().max(self.backoff.next_delay());
                        tracing::warn!(error = %e, retry_in = ?delay, "source request failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = self.shutdown.wait() => return Ok(None),
                        }
                    }
                    Err(e) => return Err(e.into()),
                },
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
            self.progress.batch_read(source, batch.ends_run, self.metrics).await;
            self.next_run_covers_start = batch.ends_run && source.next_run_covers_start();
            return Ok(Some(batch));
        }
    }

    /// After a batch is handed over: whether to go on. At the end of a run, `--once` is
    /// done once a run that covers the source's start has ended, and one that did not is
    /// followed at once by a run that will, where the source can start one; otherwise the
    /// next run starts a poll interval after this one started, or as soon as it can read a
    /// change notified since.
    pub(super) async fn go_on(&mut self, ends_run: bool, covers_start: bool) -> bool {
        if !ends_run {
            return true;
        }
        self.metrics.run_duration.observe(self.started.elapsed().as_secs_f64());
        if self.once && covers_start {
            return false;
        }
        if self.once && self.next_run_covers_start {
            self.started = Instant::now();
            return true;
        }
        let poll = self.started + self.settings.poll_interval;
        let next = match &self.wakeups {
            None => poll,
            Some(wakeups) => loop {
                if let Some(due) = wakeups.due(self.started) {
                    break due.min(poll);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(poll.into()) => break poll,
                    _ = wakeups.notified() => {}
                    _ = self.shutdown.wait() => return false,
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = self.shutdown.wait() => return false,
        }
        self.started = Instant::now();
        true
    }
}
