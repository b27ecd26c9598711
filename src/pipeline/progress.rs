//! A backfill's progress. A first snapshot of millions of orders is one long run, and an
//! operator wants to know how far it is and when it will be done. Every
//! `progress_interval`, mid-run, the source estimates the orders left in its run (cheaply:
//! a planner estimate or the counts its pages carry) for `order_cdc_backlog_orders`, and
//! while no run has ended for a whole interval the pipeline logs the orders done, the rate
//! over that interval, the estimate and an ETA. A pipeline that keeps up ends a run every
//! poll: it stays quiet and its backlog reads 0.

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::PipelineMetrics;
use crate::source::Source;

/// The longest an estimate may hold the feed up; past it the backlog stays as it was.
const ESTIMATE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Progress {
    interval: Duration,
    /// When the backlog was last estimated, and the orders done by then.
    last: Option<(Instant, u64)>,
    /// A run has ended since `last`: the pipeline was not behind for the whole interval.
    run_ended: bool,
}

impl Progress {
    pub(super) fn new(interval: Duration) -> Self {
        Self { interval, last: None, run_ended: false }
    }

    /// After each batch the source hands over (`ends_run`: the batch ended its run).
    /// Returns the progress it logged, if any.
    pub(super) async fn batch_read<S: Source>(&mut self, source: &mut S, ends_run: bool, metrics: &PipelineMetrics) -> Option<Report> {
        if ends_run {
            // Nothing is left below the run's cutoff.
            metrics.backlog.set(0);
            self.run_ended = true;
            return None;
        }
        let now = Instant::now();
        if self.last.is_some_and(|(at, _)| now.duration_since(at) < self.interval) {
            return None;
        }
        let done = done(metrics);
        let previous = self.last.replace((now, done));
        let behind = !std::mem::take(&mut self.run_ended);
        let left = tokio::time::timeout(ESTIMATE_TIMEOUT, source.backlog()).await.ok().flatten();
        if let Some(left) = left {
            metrics.backlog.set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        let (then, done_then) = previous.filter(|_| behind)?;
        let report = Report::new(done, done - done_then, now.duration_since(then), left);
        tracing::info!(
            pipeline = %metrics.pipeline(),
            orders_done = report.done,
            orders_per_second = report.rate,
            orders_left = %report.left.map_or("unknown".into(), |n| n.to_string()),
            // One word (`1h23m4s`), as every other value of the line.
            eta = %report.eta.map_or("unknown".into(), |eta| humantime_serde::re::humantime::format_duration(eta).to_string().replace(' ', "")),
            "catching up"
        );
        Some(report)
    }
}

/// Orders this process has committed: delivered or dead-lettered.
fn done(metrics: &PipelineMetrics) -> u64 {
    metrics.delivered.get() + metrics.dead_lettered.get()
}

/// One progress line.
#[derive(Debug, PartialEq)]
pub(super) struct Report {
    done: u64,
    /// Orders per second over the interval, rounded.
    rate: u64,
    left: Option<u64>,
    /// At that rate, to the second; unknown without an estimate or without progress.
    eta: Option<Duration>,
}

impl Report {
    fn new(done: u64, done_in_interval: u64, interval: Duration, left: Option<u64>) -> Self {
        let rate = done_in_interval as f64 / interval.as_secs_f64();
        let eta = left.filter(|_| rate > 0.0).map(|left| Duration::from_secs((left as f64 / rate).ceil() as u64));
        Self { done, rate: rate.round() as u64, left, eta }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::source::{Batch, SourceError};

    #[test]
    fn the_eta_is_the_estimate_at_the_last_intervals_rate() {
        let r = Report::new(50_000, 20_000, Duration::from_secs(10), Some(90_000));
        assert_eq!(r, Report { done: 50_000, rate: 2_000, left: Some(90_000), eta: Some(Duration::from_secs(45)) });
        assert_eq!(Report::new(0, 0, Duration::from_secs(10), Some(5)).eta, None, "no progress: no ETA");
        assert_eq!(Report::new(10, 10, Duration::from_secs(10), None).eta, None, "no estimate: no ETA");
    }

    /// A source whose backlog is whatever the test sets, counting how often it is asked.
    struct Estimating {
        left: Option<u64>,
        asked: usize,
    }

    impl Source for Estimating {
        fn restore(&mut self, _: Option<&serde_json::Value>, _: chrono::DateTime<chrono::Utc>) -> Result<(), SourceError> {
            Ok(())
        }

        async fn next_batch(&mut self) -> Result<Batch, SourceError> {
            unreachable!("progress never reads")
        }

        async fn backlog(&mut self) -> Option<u64> {
            self.asked += 1;
            self.left
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_backlog_is_estimated_mid_run_once_an_interval_and_is_zero_when_a_run_ends() {
        let metrics = Metrics::new().pipeline("p");
        let mut source = Estimating { left: Some(7_000), asked: 0 };
        let mut progress = Progress::new(Duration::from_secs(10));
        assert_eq!(progress.batch_read(&mut source, false, &metrics).await, None, "no rate yet");
        assert_eq!((source.asked, metrics.backlog.get()), (1, 7_000), "the first page of a run is estimated at once");
        metrics.delivered.inc_by(400);
        progress.batch_read(&mut source, false, &metrics).await;
        assert_eq!(source.asked, 1, "not again within the interval");
        tokio::time::advance(Duration::from_secs(10)).await;
        source.left = Some(3_000);
        let report = progress.batch_read(&mut source, false, &metrics).await;
        assert_eq!(report, Some(Report { done: 400, rate: 40, left: Some(3_000), eta: Some(Duration::from_secs(75)) }), "behind for a whole interval");
        assert_eq!((source.asked, metrics.backlog.get()), (2, 3_000));
        progress.batch_read(&mut source, true, &metrics).await;
        assert_eq!((source.asked, metrics.backlog.get()), (2, 0), "a run's end leaves nothing, without asking");
        tokio::time::advance(Duration::from_secs(10)).await;
        source.left = None;
        assert_eq!(progress.batch_read(&mut source, false, &metrics).await, None, "a run ended during the interval: caught up, quiet");
        assert_eq!((source.asked, metrics.backlog.get()), (3, 0), "a source that cannot tell leaves the gauge as it was");
        tokio::time::advance(Duration::from_secs(10)).await;
        let report = progress.batch_read(&mut source, false, &metrics).await.expect("behind again");
        assert_eq!((report.left, report.eta), (None, None));
    }
}
