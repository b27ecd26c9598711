//! The pipeline core, proven without a broker: a fake source, sink and checkpoint store
//! share one `World` that records what was acknowledged, committed and published, and
//! fail on a random schedule (deliveries, sends, acknowledgements out of order, checkpoint
//! reads and writes, producer fatal errors and rebuilds, shutdown at any step). Every
//! commit checks the ack-before-commit rule as it happens; after a fault-free recovery run
//! every record must be delivered (at least once, or exactly once in committed
//! transactions), and the in-flight gauge must be back at 0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Pipeline, Settings};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::config::{Delivery, OnBadRecord};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::shutdown::{self, ShutdownTrigger};
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
    /// Trigger shutdown after this many sends (`None`: never).
    shutdown_after_sends: Option<usize>,
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
        shutdown_after_sends: None,
    };
}

/// An open transaction of the fake transactional sink.
#[derive(Default)]
struct OpenTransaction {
    records: Vec<usize>,
    failed: bool,
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
    sends: usize,
    fatal: bool,
    shutdown: Option<ShutdownTrigger>,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

impl World {
    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
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

struct FakeSink {
    world: Shared,
    transactional: bool,
}

impl Sink for FakeSink {
    async fn send(&self, records: &[Record]) -> Result<Acknowledgement, SinkError> {
        let indices: Vec<usize> = records.iter().map(index).collect();
        let (delay, fail_at) = {
            let mut w = self.world.lock().unwrap();
            w.sends += 1;
            if w.faults.shutdown_after_sends == Some(w.sends) {
                w.shutdown.take().expect("one shutdown").trigger();
            }
            let f = w.faults;
            if w.roll(f.fatal) {
                w.fatal = true;
                return Err(SinkError::Send("injected: fatal producer error".into()));
            }
            if w.roll(f.send_error) {
                return Err(SinkError::Send("injected: queue refused".into()));
            }
            if self.transactional {
                match w.transaction.as_mut() {
                    Some(t) => t.records.extend(&indices),
                    None => w.violations.push("sent outside a transaction".into()),
                }
            }
            let fail_at = (!indices.is_empty() && w.roll(f.delivery_failure)).then(|| w.rng.random_range(0..indices.len()));
            // Acknowledgements of different batches arrive in any order.
            (Duration::from_millis(w.rng.random_range(0..50)), fail_at)
        };
        let (world, transactional) = (self.world.clone(), self.transactional);
        Ok(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let mut w = world.lock().unwrap();
            let delivered = &indices[..fail_at.unwrap_or(indices.len())];
            if !transactional {
                for &i in delivered {
                    w.acknowledged[i] += 1;
                }
            }
            match fail_at {
                Some(_) => {
                    if let Some(t) = w.transaction.as_mut() {
                        t.failed = true;
                    }
                    Err(SinkError::Delivery("injected: message timed out".into()))
                }
                None => Ok(Delivered { events: delivered.len() as u64, dead_lettered: 0 }),
            }
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
        Ok(())
    }
}

impl TransactionalSink for FakeSink {
    fn begin(&self) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        if w.transaction.is_some() {
            return Err(SinkError::Transaction("a transaction is already open".into()));
        }
        w.transaction = Some(OpenTransaction::default());
        Ok(())
    }

    async fn commit(&self, cp: &Checkpoint) -> Result<(), SinkError> {
        let mut w = self.world.lock().unwrap();
        let rate = w.faults.commit_failure;
        if w.roll(rate) {
            w.transaction = None; // Kafka aborts a transaction whose commit fails
            return Err(SinkError::Transaction("injected: commit failed".into()));
        }
        let Some(t) = w.transaction.take() else {
            return Err(SinkError::Transaction("no open transaction".into()));
        };
        if t.failed {
            w.violations.push("committed a transaction with a failed delivery".into());
        }
        w.published.extend(t.records);
        let position = position_of(cp);
        if w.published != (0..position).collect::<Vec<_>>() {
            let violation = format!("transaction committed position {position} with records {:?}", w.published);
            w.violations.push(violation);
        }
        w.committed_positions.push(position);
        w.checkpoint = Some(cp.clone());
        Ok(())
    }

    async fn abort(&self) -> Result<(), SinkError> {
        self.world.lock().unwrap().transaction = None;
        Ok(())
    }
}

struct FakeStore {
    world: Shared,
}

impl CheckpointStore for FakeStore {
    async fn load(&self, _pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut w = self.world.lock().unwrap();
        let rate = w.faults.checkpoint_read;
        if w.roll(rate) {
            return Err(CheckpointError::Kafka("injected: read failed".into()));
        }
        Ok(w.checkpoint.clone())
    }

    async fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let mut w = self.world.lock().unwrap();
        let rate = w.faults.checkpoint_write;
        if w.roll(rate) {
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

fn world(case: &Case) -> Shared {
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
        sends: 0,
        fatal: false,
        shutdown: None,
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
/// world saw and the gauge.
fn play(case: &Case) -> (World, i64) {
    let metrics = Metrics::new().pipeline("p");
    let world = world(case);
    runtime().block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        world.lock().unwrap().shutdown = Some(trigger);
        if let Err(e) = pipeline(&world, case, OnBadRecord::DeadLetter, metrics.clone()).run(true, shutdown).await {
            // A failure after shutdown was asked for ends the pipeline instead of a retry.
            assert!(e.is_retriable() && world.lock().unwrap().shutdown.is_none(), "gave up: {e}");
        }
        // Recovery: a fresh process without faults.
        let (_trigger, shutdown) = shutdown::channel();
        world.lock().unwrap().faults = Faults::NONE;
        pipeline(&world, case, OnBadRecord::DeadLetter, metrics.clone()).run(true, shutdown).await.expect("a run without faults succeeds");
    });
    let world = Arc::try_unwrap(world).ok().expect("the pipelines are gone").into_inner().unwrap();
    (world, metrics.in_flight.get())
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (world, in_flight) = play(case);
    prop_assert!(world.violations.is_empty(), "{:?}", world.violations);
    prop_assert_eq!(in_flight, 0, "the in-flight gauge drifted");
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
    (0u32..150, 0u32..60, 0u32..150, 0u32..40, 0u32..150, 0u32..150, 0u32..150, 0u32..300, proptest::option::weighted(0.3, 1usize..40)).prop_map(
        |(source_error, send_error, delivery_failure, fatal, checkpoint_read, checkpoint_write, commit_failure, rebuild_failure, shutdown_after_sends)| Faults {
            source_error,
            send_error,
            delivery_failure,
            fatal,
            checkpoint_read,
            checkpoint_write,
            commit_failure,
            rebuild_failure,
            shutdown_after_sends,
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
/// frequent, attempts must fail and recover, and the error counter must show it.
#[test]
fn faults_do_strike() {
    let faults = Faults { source_error: 200, send_error: 100, delivery_failure: 300, fatal: 50, checkpoint_read: 100, checkpoint_write: 200, commit_failure: 200, rebuild_failure: 200, shutdown_after_sends: None };
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        let case = Case { delivery, records: 200, page: 5, in_flight: 3, per_transaction: 2, faults, seed: 7 };
        let (world, in_flight) = play(&case);
        assert!(world.violations.is_empty(), "{:?}", world.violations);
        assert_eq!(in_flight, 0);
        match delivery {
            Delivery::AtLeastOnce => assert!(world.acknowledged.iter().any(|&n| n > 1), "no record was redelivered: no fault struck"),
            Delivery::ExactlyOnce => assert_eq!(world.published, (0..200).collect::<Vec<_>>()),
        }
        assert!(world.committed_positions.len() > 200 / 5 / 2, "commits: {:?}", world.committed_positions);
    }
}

/// A pipeline that stops inside a transaction (here: a bad record under `on_bad_record =
/// "fail"`) aborts it, so `read_committed` consumers are not held up until it times out,
/// and nothing of it is published.
#[test]
fn a_pipeline_stopped_inside_a_transaction_aborts_it() {
    let case = Case { delivery: Delivery::ExactlyOnce, records: 40, page: 2, in_flight: 1, per_transaction: 4, faults: Faults::NONE, seed: 1 };
    let world = world(&case);
    world.lock().unwrap().bad_record = Some(13); // the 3rd batch of the 2nd transaction
    let metrics = Metrics::new().pipeline("p");
    let (_trigger, shutdown) = shutdown::channel();
    let stopped = runtime().block_on(pipeline(&world, &case, OnBadRecord::Fail, metrics.clone()).run(true, shutdown));
    assert!(matches!(stopped, Err(super::PipelineError::BadRecord { .. })), "{stopped:?}");
    let w = world.lock().unwrap();
    assert!(w.transaction.is_none(), "the transaction was left open");
    assert_eq!(w.published, (0..8).collect::<Vec<_>>());
    assert_eq!(metrics.in_flight.get(), 0);
}
