//! The pipeline core, proven without a broker: a fake source, sink and checkpoint store
//! share one `World` that records what was acknowledged, committed and published, and
//! fail on a random schedule (sends, deliveries, checkpoint reads and writes, transaction
//! commits, producers turning fatal, rebuilds, shutdown at any moment). The fake broker
//! acknowledges each batch after its own random delay, whether or not anyone is waiting,
//! so acknowledgements arrive out of order. Every commit checks the ack-before-commit rule
//! as it happens; every attempt starts with the in-flight gauge at 0, no transaction open
//! and no fatal producer; the batches sent and not yet acknowledged (their documents
//! held in the producer's queue) stay within `max_in_flight_batches`; a pipeline that stops cleanly has committed all it sent; and
//! after a fault-free restart every record is delivered (at least once, or exactly once
//! in committed transactions).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::IntGauge;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Pipeline, Settings};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::config::{Delivery, OnBadRecord};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::shutdown;
use crate::sink::{Acknowledgement, Delivered, Sink, SinkError, TransactionalSink};
use crate::source::{Batch, Record, RecordBody, Source, SourceError};

/// How often each fault strikes, in per mille of the chances it gets.
#[derive(Debug, Clone, Copy)]
struct Faults {
    source_error: u32,
    send_error: u32,
    delivery_failure: u32,
    fatal: u32,
    checkpoint_read: u32,
    checkpoint_write: u32,
    commit_failure: u32,
    rebuild_failure: u32,
    /// Trigger shutdown at this virtual time, in milliseconds (`None`: never).
    shutdown_at: Option<u64>,
}

impl Faults {
    const NONE: Self = Self {
        source_error: 0,
        send_error: 0,
        delivery_failure: 0,
        fatal: 0,
        checkpoint_read: 0,
        checkpoint_write: 0,
        commit_failure: 0,
        rebuild_failure: 0,
        shutdown_at: None,
    };
}

/// An open transaction of the fake transactional sink.
#[derive(Default)]
struct OpenTransaction {
    records: Vec<usize>,
    failed: bool,
    checkpoint: Option<Checkpoint>,
}

struct World {
    rng: StdRng,
    faults: Faults,
    records: usize,
    /// This record cannot become an event.
    bad_record: Option<usize>,
    /// Times each record was acknowledged (`at_least_once`).
    acknowledged: Vec<u32>,
    /// Committed transactions' records in order (`exactly_once`).
    published: Vec<usize>,
    transaction: Option<OpenTransaction>,
    checkpoint: Option<Checkpoint>,
    committed_positions: Vec<usize>,
    /// The position after the last batch sent in this attempt.
    sent_through: usize,
    /// A fault failed this attempt (source errors are retried in place and do not).
    faulted: bool,
    /// The producer hit a fatal error: every call fails until it is rebuilt.
    fatal: bool,
    rebuilds: usize,
    aborts: usize,
    in_flight: IntGauge,
    /// Batches sent whose acknowledgement is not yet awaited to the end (nor dropped),
    /// and the most there were at once.
    unacknowledged: usize,
    most_unacknowledged: usize,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

impl World {
    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
    }

    /// Rolls for a fault that fails the attempt.
    fn strikes(&mut self, per_mille: u32) -> bool {
        let strikes = self.roll(per_mille);
        self.faulted |= strikes;
        strikes
    }

    fn fatal(&mut self) -> Result<(), SinkError> {
        self.faulted |= self.fatal;
        match self.fatal {
            true => Err(SinkError::Send("injected: the producer hit a fatal error".into())),
            false => Ok(()),
        }
    }

    fn position(&self) -> usize {
        self.checkpoint.as_ref().map_or(0, position_of)
    }
}

fn index(record: &Record) -> usize {
    record.key.parse().expect("fake keys are indices")
}

fn position_of(cp: &Checkpoint) -> usize {
    cp.position.as_u64().expect("fake positions are numbers") as usize
}

struct FakeSource {
    world: Shared,
    page: usize,
    next: usize,
}

impl Source for FakeSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, _since: DateTime<Utc>) -> Result<(), SourceError> {
        self.next = position.map_or(0, |p| p.as_u64().expect("a number") as usize);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        let (total, bad) = {
            let mut w = self.world.lock().unwrap();
            let rate = w.faults.source_error;
            if w.roll(rate) {
                return Err(SourceError::Query("injected: connection lost".into(), true));
            }
            (w.records, w.bad_record)
        };
        let end = (self.next + self.page).min(total);
        let body = |i| match bad {
            Some(b) if b == i => RecordBody::Bad { reason: "injected".into(), raw: Vec::new() },
            _ => RecordBody::Document(format!("{{\"id\":{i}}}")),
        };
        let records = (self.next..end).map(|i| Record { key: i.to_string(), updated_at: DateTime::from_timestamp(i as i64, 0).unwrap(), body: body(i) }).collect();
        self.next = end;
        Ok(Batch { records, position: serde_json::json!(end), ends_run: end == total, covers_start: true, cutoff_holdback: None, watermark: None })
    }
}

/// A batch's acknowledgement not yet awaited to the end: counted until it is, or until
/// the pipeline drops it.
struct Unacknowledged(Shared);

impl Drop for Unacknowledged {
    fn drop(&mut self) {
        self.0.lock().unwrap().unacknowledged -= 1;
    }
}

struct FakeSink {
    world: Shared,
    transactional: bool,
}

impl Sink for FakeSink {
    async fn send(&self, records: &[Record]) -> Result<Acknowledgement, SinkError> {
        let indices: Vec<usize> = records.iter().map(index).collect();
        let (delay, fail_at) = {
            let mut w = self.world.lock().unwrap();
            w.fatal()?;
            let f = w.faults;
            if w.strikes(f.send_error) {
                return Err(SinkError::Send("injected: queue refused".into()));
            }
            // A producer can turn fatal under a batch that is still delivered.
            if w.strikes(f.fatal) {
                w.fatal = true;
            }
            let fail_at = (!indices.is_empty() && w.strikes(f.delivery_failure)).then(|| w.rng.random_range(0..indices.len()));
            if self.transactional {
                match w.transaction.as_mut() {
                    Some(t) => {
                        t.records.extend(&indices);
                        t.failed |= fail_at.is_some();
                    }
                    None => w.violations.push("sent outside a transaction".into()),
                }
            }
            if let Some(&last) = indices.last() {
                w.sent_through = last + 1;
            }
            w.unacknowledged += 1;
            w.most_unacknowledged = w.most_unacknowledged.max(w.unacknowledged);
            (Duration::from_millis(w.rng.random_range(0..50)), fail_at)
        };
        // The broker answers on its own time, whether or not anyone awaits it yet.
        let (world, transactional) = (self.world.clone(), self.transactional);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let delivered = &indices[..fail_at.unwrap_or(indices.len())];
            if !transactional {
                let mut w = world.lock().unwrap();
                for &i in delivered {
                    w.acknowledged[i] += 1;
                }
            }
            let _ = tx.send(match fail_at {
                Some(_) => Err(SinkError::Delivery("injected: message timed out".into())),
                None => Ok(Delivered { events: delivered.len() as u64, dead_lettered: 0 }),
            });
        });
        let pending = Unacknowledged(self.world.clone());
        Ok(Box::pin(async move {
            let _pending = pending;
            rx.await.unwrap_or(Err(SinkError::Canceled))
        }))
    }

    fn needs_rebuild(&self, failure: Option<&SinkError>) -> Option<String> {
        let w = self.world.lock().unwrap();
        (w.fatal || failure.is_some()).then(|| "injected".to_string())
    }

    async fn rebuild(&mut self) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        let rate = w.faults.rebuild_failure;
        if w.roll(rate) {
            return Err(SinkError::Unreachable { brokers: "fake".into(), reason: "injected".into() });
        }
        // A fresh transactional producer's init_transactions aborts what was left open.
        w.transaction = None;
        w.fatal = false;
        w.rebuilds += 1;
        Ok(())
    }
}

impl TransactionalSink for FakeSink {
    fn begin(&self) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        w.fatal()?;
        if w.transaction.is_some() {
            return Err(SinkError::Transaction("a transaction is already open".into()));
        }
        w.transaction = Some(OpenTransaction::default());
        Ok(())
    }

    async fn seal(&self, cp: &Checkpoint) -> Result<Acknowledgement, SinkError> {
        let mut w = self.world.lock().unwrap();
        w.fatal()?;
        match &mut w.transaction {
            Some(t) => t.checkpoint = Some(cp.clone()),
            None => return Err(SinkError::Transaction("no open transaction".into())),
        }
        Ok(Box::pin(async { Ok(Delivered::default()) }))
    }

    async fn commit(&self) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        w.fatal()?;
        let rate = w.faults.commit_failure;
        if w.strikes(rate) {
            // The transaction stays open, to be aborted.
            return Err(SinkError::Transaction("injected: commit failed".into()));
        }
        let Some(t) = w.transaction.take() else {
            return Err(SinkError::Transaction("no open transaction".into()));
        };
        if t.failed {
            w.violations.push("committed a transaction with a failed delivery".into());
        }
        let Some(cp) = t.checkpoint else {
            return Err(SinkError::Transaction("committed without a checkpoint".into()));
        };
        w.published.extend(t.records);
        let position = position_of(&cp);
        if w.published != (0..position).collect::<Vec<_>>() {
            let violation = format!("transaction committed position {position} with records {:?}", w.published);
            w.violations.push(violation);
        }
        w.committed_positions.push(position);
        w.checkpoint = Some(cp);
        Ok(())
    }

    async fn abort(&self) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        w.fatal()?;
        w.transaction = None;
        w.aborts += 1;
        Ok(())
    }
}

struct FakeStore {
    world: Shared,
}

impl CheckpointStore for FakeStore {
    /// The start of an attempt: what the last one left behind is checked here.
    async fn load(&self, _pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut w = self.world.lock().unwrap();
        if w.in_flight.get() != 0 {
            let violation = format!("an attempt starts with {} events in flight", w.in_flight.get());
            w.violations.push(violation);
        }
        if w.transaction.is_some() {
            w.violations.push("an attempt starts with a transaction open".into());
        }
        if w.fatal {
            w.violations.push("an attempt starts on a producer with a fatal error".into());
        }
        let rate = w.faults.checkpoint_read;
        if w.strikes(rate) {
            return Err(CheckpointError::Kafka("injected: read failed".into()));
        }
        w.sent_through = w.position();
        w.faulted = false;
        Ok(w.checkpoint.clone())
    }

    async fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let mut w = self.world.lock().unwrap();
        let rate = w.faults.checkpoint_write;
        if w.strikes(rate) {
            return Err(CheckpointError::Kafka("injected: write failed".into()));
        }
        let position = position_of(cp);
        if let Some(unacknowledged) = (0..position).find(|&i| w.acknowledged[i] == 0) {
            w.violations.push(format!("committed position {position} before record {unacknowledged} was acknowledged"));
        }
        if let Some(&last) = w.committed_positions.last().filter(|&&last| position < last) {
            w.violations.push(format!("committed position {position} after {last}"));
        }
        w.committed_positions.push(position);
        w.checkpoint = Some(cp.clone());
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Case {
    delivery: Delivery,
    records: usize,
    page: usize,
    in_flight: usize,
    per_transaction: usize,
    faults: Faults,
    seed: u64,
}

fn world(case: &Case, metrics: &PipelineMetrics) -> Shared {
    Arc::new(Mutex::new(World {
        rng: StdRng::seed_from_u64(case.seed),
        faults: case.faults,
        records: case.records,
        bad_record: None,
        acknowledged: vec![0; case.records],
        published: Vec::new(),
        transaction: None,
        checkpoint: None,
        committed_positions: Vec::new(),
        sent_through: 0,
        faulted: false,
        fatal: false,
        rebuilds: 0,
        aborts: 0,
        in_flight: metrics.in_flight.clone(),
        unacknowledged: 0,
        most_unacknowledged: 0,
        violations: Vec::new(),
    }))
}

fn pipeline(world: &Shared, case: &Case, on_bad_record: OnBadRecord, metrics: PipelineMetrics) -> Pipeline<FakeSource, FakeSink, FakeStore> {
    Pipeline {
        name: "p".into(),
        source: FakeSource { world: world.clone(), page: case.page, next: 0 },
        source_identity: "fake".into(),
        sink: FakeSink { world: world.clone(), transactional: case.delivery == Delivery::ExactlyOnce },
        store: FakeStore { world: world.clone() },
        settings: Settings {
            delivery: case.delivery,
            poll_interval: Duration::from_secs(1),
            progress_interval: Duration::from_secs(10),
            max_in_flight_batches: case.in_flight,
            batches_per_transaction: case.per_transaction,
            on_bad_record,
            initial_since: DateTime::UNIX_EPOCH,
        },
        metrics,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

/// Runs the pipeline under the case's faults (it stops at the end of the run, on
/// shutdown, or when it gives up), then once more without faults, and returns what the
/// world saw.
fn play(case: &Case) -> World {
    let metrics = Metrics::new().pipeline("p");
    let world = world(case, &metrics);
    runtime().block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        if let Some(at) = case.faults.shutdown_at {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(at)).await;
                trigger.trigger();
            });
        }
        let stopped = shutdown.clone();
        match pipeline(&world, case, OnBadRecord::DeadLetter, metrics.clone()).run(true, shutdown).await {
            // A pipeline whose last attempt stopped cleanly (shutdown, or the end of the
            // run) has committed everything it sent.
            Ok(()) => {
                let mut w = world.lock().unwrap();
                if !w.faulted && w.position() != w.sent_through {
                    let violation = format!("stopped at position {} having sent through {}", w.position(), w.sent_through);
                    w.violations.push(violation);
                }
            }
            // A failure after shutdown was asked for ends the pipeline instead of a retry.
            Err(e) => assert!(e.is_retriable() && stopped.is_triggered(), "gave up: {e}"),
        }
        // A pipeline that stops leaves no transaction open (unless even the abort failed).
        {
            let mut w = world.lock().unwrap();
            if w.transaction.is_some() && !w.fatal {
                w.violations.push("the pipeline stopped with a transaction open".into());
            }
        }
        // Recovery: a fresh process (a new producer) without faults.
        {
            let mut w = world.lock().unwrap();
            w.faults = Faults::NONE;
            w.fatal = false;
            w.transaction = None;
        }
        let (_trigger, shutdown) = shutdown::channel();
        pipeline(&world, case, OnBadRecord::DeadLetter, metrics.clone()).run(true, shutdown).await.expect("a run without faults succeeds");
    });
    Arc::try_unwrap(world).ok().expect("the pipelines are gone").into_inner().unwrap()
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let world = play(case);
    prop_assert!(world.violations.is_empty(), "{:?}", world.violations);
    prop_assert_eq!(world.in_flight.get(), 0, "the in-flight gauge drifted");
    // Under at_least_once the channel holds max_in_flight_batches; the committer awaits
    // one more and the feed holds one it cannot hand over yet.
    let bound = match case.delivery {
        Delivery::AtLeastOnce => case.in_flight + 2,
        Delivery::ExactlyOnce => case.in_flight,
    };
    prop_assert!(world.most_unacknowledged <= bound, "{} batches unacknowledged at once", world.most_unacknowledged);
    prop_assert_eq!(world.checkpoint.as_ref().map(position_of), Some(case.records), "the recovery run ends at the last record");
    match case.delivery {
        Delivery::AtLeastOnce => {
            let missing: Vec<usize> = (0..case.records).filter(|&i| world.acknowledged[i] == 0).collect();
            prop_assert!(missing.is_empty(), "never acknowledged: {:?}", missing);
        }
        Delivery::ExactlyOnce => prop_assert_eq!(world.published, (0..case.records).collect::<Vec<_>>()),
    }
    Ok(())
}

fn faults() -> impl Strategy<Value = Faults> {
    (0u32..150, 0u32..60, 0u32..150, 0u32..40, 0u32..150, 0u32..150, 0u32..150, 0u32..300, proptest::option::weighted(0.3, 0u64..3000)).prop_map(
        |(source_error, send_error, delivery_failure, fatal, checkpoint_read, checkpoint_write, commit_failure, rebuild_failure, shutdown_at)| Faults {
            source_error,
            send_error,
            delivery_failure,
            fatal,
            checkpoint_read,
            checkpoint_write,
            commit_failure,
            rebuild_failure,
            shutdown_at,
        },
    )
}

fn cases(delivery: Delivery) -> impl Strategy<Value = Case> {
    (0usize..80, 1usize..8, 1usize..6, 1usize..5, faults(), any::<u64>()).prop_map(move |(records, page, in_flight, per_transaction, faults, seed)| Case {
        delivery,
        records,
        page,
        in_flight,
        per_transaction,
        faults,
        seed,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn at_least_once_never_commits_past_an_unacknowledged_event(case in cases(Delivery::AtLeastOnce)) {
        check(&case)?;
    }

    #[test]
    fn exactly_once_publishes_every_record_once(case in cases(Delivery::ExactlyOnce)) {
        check(&case)?;
    }
}

/// The property tests could pass vacuously if no fault ever struck: with every fault
/// frequent, attempts must fail, producers be rebuilt and transactions aborted, and the
/// error counter must show it.
#[test]
fn faults_do_strike() {
    let faults = Faults { source_error: 200, send_error: 100, delivery_failure: 300, fatal: 50, checkpoint_read: 100, checkpoint_write: 200, commit_failure: 200, rebuild_failure: 200, shutdown_at: None };
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        let case = Case { delivery, records: 200, page: 5, in_flight: 3, per_transaction: 2, faults, seed: 7 };
        let world = play(&case);
        assert!(world.violations.is_empty(), "{:?}", world.violations);
        assert_eq!(world.in_flight.get(), 0);
        assert!(world.rebuilds > 0, "no producer was rebuilt");
        match delivery {
            Delivery::AtLeastOnce => assert!(world.acknowledged.iter().any(|&n| n > 1), "no record was redelivered"),
            Delivery::ExactlyOnce => {
                assert!(world.aborts > 0, "no transaction was aborted");
                assert_eq!(world.published, (0..200).collect::<Vec<_>>());
            }
        }
    }
}

/// A pipeline that stops inside a transaction (here: a bad record under `on_bad_record =
/// "fail"`) aborts it, so `read_committed` consumers are not held up until it times out,
/// and nothing of it is published.
#[test]
fn a_pipeline_stopped_inside_a_transaction_aborts_it() {
    let case = Case { delivery: Delivery::ExactlyOnce, records: 40, page: 2, in_flight: 1, per_transaction: 4, faults: Faults::NONE, seed: 1 };
    let metrics = Metrics::new().pipeline("p");
    let world = world(&case, &metrics);
    world.lock().unwrap().bad_record = Some(13); // the 3rd batch of the 2nd transaction
    let (_trigger, shutdown) = shutdown::channel();
    let stopped = runtime().block_on(pipeline(&world, &case, OnBadRecord::Fail, metrics.clone()).run(true, shutdown));
    assert!(matches!(stopped, Err(super::PipelineError::BadRecord { .. })), "{stopped:?}");
    let w = world.lock().unwrap();
    assert!(w.transaction.is_none(), "the transaction was left open");
    assert_eq!(w.published, (0..8).collect::<Vec<_>>());
    assert_eq!(metrics.in_flight.get(), 0);
}
