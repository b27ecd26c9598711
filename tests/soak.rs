//! The soak: many orders under a steady stream of updates while the daemon is killed
//! (`kill -9`) at random moments, the broker is restarted and PostgreSQL is restarted
//! (crash-stopped); after the updates stop and a final `run --once` drains, the newest
//! version of every order must be the last event for its key. It counts what is missing,
//! what is stale and how many events repeat one already on the topic.
//!
//! Broker and database are private servers of the test (`common::PrivateServer`), never
//! the shared ones. `soak` is `#[ignore]`d and sized by `SOAK_*` variables
//! (`scripts/soak.sh` runs it for each delivery mode); `short_soak` is the small one CI
//! runs. The topic is read one event at a time: millions of events do not fit in memory.

mod common;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::private::PrivateServer;
use common::*;
use futures::TryStreamExt;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio_postgres::NoTls;

/// How big and how rough a soak is.
#[derive(Debug, Clone)]
struct Sizes {
    orders: i64,
    kills: usize,
    broker_restarts: usize,
    pg_restarts: usize,
    updates_per_s: u64,
    delivery: String,
}

impl Sizes {
    /// `SOAK_ORDERS`, `SOAK_KILLS`, `SOAK_BROKER_RESTARTS`, `SOAK_PG_RESTARTS`,
    /// `SOAK_UPDATES_PER_S`, `SOAK_DELIVERY`; the defaults are the full soak.
    fn from_env() -> Self {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
                Err(_) => default,
            }
        }
        let delivery = std::env::var("SOAK_DELIVERY").unwrap_or_else(|_| "at_least_once".into());
        assert!(["at_least_once", "exactly_once"].contains(&delivery.as_str()), "SOAK_DELIVERY must be at_least_once or exactly_once, got {delivery:?}");
        Self {
            orders: number("SOAK_ORDERS", 1_000_000),
            kills: number("SOAK_KILLS", 50),
            broker_restarts: number("SOAK_BROKER_RESTARTS", 10),
            pg_restarts: number("SOAK_PG_RESTARTS", 3),
            updates_per_s: number("SOAK_UPDATES_PER_S", 2_000),
            delivery,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: scripts/soak.sh runs it, sized by SOAK_* variables"]
async fn soak() {
    run(Sizes::from_env()).await.assert_complete();
}

/// The soak CI can afford (about 3 minutes here; both modes took 6): `exactly_once`,
/// whose transactions and fencing no other test puts through broker restarts
/// (`crash` and `broker_outage` cover `at_least_once`).
#[tokio::test(flavor = "multi_thread")]
async fn short_soak() {
    let sizes = Sizes { orders: 100_000, kills: 10, broker_restarts: 2, pg_restarts: 1, updates_per_s: 2_000, delivery: "exactly_once".into() };
    run(sizes).await.assert_complete();
}

/// Everything a soak measured.
struct Report {
    sizes: Sizes,
    events: u64,
    missing: u64,
    stale: u64,
    duplicates: u64,
    duplicate_runs: u64,
    duplicates_read_ahead: u64,
    unknown_keys: u64,
    examples: Vec<String>,
    updates: UpdateStats,
    chaos: ChaosStats,
    load: Duration,
    soak: Duration,
    drain: Duration,
    check: Duration,
    total: Duration,
}

impl Report {
    fn assert_complete(&self) {
        let s = &self.sizes;
        println!(
            "soak {}: {} orders, {} updates ({:.0}/s; {} failed batches, {} connections), {} kill -9, {} broker restarts, \
             {} PostgreSQL restarts, {} daemon starts ({} exited on their own)",
            s.delivery,
            s.orders,
            self.updates.rows,
            self.updates.rows as f64 / self.soak.as_secs_f64(),
            self.updates.failed_batches,
            self.updates.connections,
            self.chaos.kills,
            self.chaos.broker_restarts,
            self.chaos.pg_restarts,
            self.chaos.starts,
            self.chaos.exits,
        );
        println!(
            "soak {}: servers up and orders loaded {:.0}s, soak {:.0}s, drain {:.0}s, check {:.0}s",
            s.delivery,
            self.load.as_secs_f64(),
            self.soak.as_secs_f64(),
            self.drain.as_secs_f64(),
            self.check.as_secs_f64()
        );
        println!(
            "SOAK RESULT {} (read_committed): events {}, missing {}, stale {}, duplicates {}, total {:.0}s",
            s.delivery,
            self.events,
            self.missing,
            self.stale,
            self.duplicates,
            self.total.as_secs_f64()
        );
        println!(
            "soak {}: duplicates in {} runs of consecutive repeats; {} repeat a version first published ahead of its run",
            s.delivery, self.duplicate_runs, self.duplicates_read_ahead
        );
        for example in &self.examples {
            println!("  {example}");
        }
        assert_eq!(self.unknown_keys, 0, "keys on the topic that are no order");
        assert_eq!((self.missing, self.stale), (0, 0), "orders missing or stale on the topic");
        if s.delivery == "exactly_once" {
            assert_eq!(self.duplicates, 0, "a read_committed consumer saw a version twice under exactly_once");
        }
    }
}

async fn run(sizes: Sizes) -> Report {
    let start = Instant::now();
    let pg = PrivateServer::postgres();
    let broker = PrivateServer::kafka();
    let client = connect(&pg.url("postgres")).await;
    client.batch_execute("CREATE DATABASE soak").await.unwrap();
    let url = pg.url("soak");
    let mut client = connect(&url).await;
    order_cdc::store::schema::migrate(&mut client).await.expect("migrate");
    const CHUNK: i64 = 100_000;
    for first in (1..=sizes.orders).step_by(CHUNK as usize) {
        let count = CHUNK.min(sizes.orders - first + 1);
        insert_orders(&client, first, count, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    }
    drop(client);
    let load = start.elapsed();

    let topic = unique("soak");
    let mut p = Pipeline::new(&url, &topic);
    p.brokers = Some(broker.bootstrap());
    let delivery = format!("delivery = \"{}\"\ntransactional_id = \"{}\"", sizes.delivery, unique("order-cdc.soak"));
    p.pipeline_extra = &delivery;
    let setup = Setup::new(&p);

    let soak_start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let updater = tokio::spawn(update_orders(url.clone(), sizes.orders, sizes.updates_per_s, stop.clone()));
    let chaos = tokio::task::block_in_place(|| disrupt(&sizes, &setup, &broker, &pg));
    stop.store(true, Ordering::Relaxed);
    let updates = updater.await.unwrap();
    let soak = soak_start.elapsed();

    let drain_start = Instant::now();
    let client = connect(&url).await;
    wait_for_cutoff_past_writes(&client).await;
    let out = run_with_deadline(setup.command(&["run", "--once"]), Duration::from_secs(3600));
    keep_log(&setup, &sizes.delivery);
    assert!(out.status.success(), "the final run --once failed: {}", String::from_utf8_lossy(&out.stderr));
    let drain = drain_start.elapsed();

    let check_start = Instant::now();
    let expected = newest_versions(&client).await;
    let topic_state = tokio::task::block_in_place(|| TopicState::read(&broker.bootstrap(), &topic));
    let mut report = Report {
        events: topic_state.events,
        duplicates: topic_state.duplicates,
        duplicate_runs: topic_state.duplicate_runs,
        duplicates_read_ahead: topic_state.duplicates_read_ahead,
        unknown_keys: topic_state.last.keys().filter(|k| !expected.contains_key(*k)).count() as u64,
        missing: 0,
        stale: 0,
        examples: Vec::new(),
        sizes,
        updates,
        chaos,
        load,
        soak,
        drain,
        check: Duration::ZERO,
        total: Duration::ZERO,
    };
    for (id, (digest, updated_at)) in &expected {
        let problem = match topic_state.last.get(id) {
            None => {
                report.missing += 1;
                "missing"
            }
            Some(last) if last.digest != Some(*digest) => {
                report.stale += 1;
                "stale"
            }
            Some(_) => continue,
        };
        if report.examples.len() < 10 {
            let last_time = topic_state.last.get(id).map(|l| l.time.as_str()).unwrap_or("-");
            report.examples.push(format!("{problem}: order {id}, updated_at {updated_at}, last event's ce_time {last_time}"));
        }
    }
    report.check = check_start.elapsed();
    report.total = start.elapsed();
    report
}

/// The daemon's log outlives the test's temp dir, for a look after a failed soak.
fn keep_log(setup: &Setup, delivery: &str) {
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{delivery}-daemon.log"));
    let _ = std::fs::copy(setup.log_path(), &kept);
    println!("daemon log: {}", kept.display());
}

#[derive(Default)]
struct UpdateStats {
    rows: u64,
    failed_batches: u64,
    connections: u64,
}

/// Updates random orders at `per_second` (ten batches a second) until `stop`, through
/// every database restart: a failed batch drops the connection and the next batch
/// reconnects.
async fn update_orders(url: String, orders: i64, per_second: u64, stop: Arc<AtomicBool>) -> UpdateStats {
    const TICK: Duration = Duration::from_millis(100);
    let per_batch = (per_second * TICK.as_millis() as u64 / 1000).max(1) as usize;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = UpdateStats::default();
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    client = Some(c);
                    stats.connections += 1;
                }
                Err(_) => {
                    stats.failed_batches += 1;
                    continue;
                }
            }
        }
        let ids: Vec<i64> = {
            let mut rng = rand::rng();
            (0..per_batch).map(|_| rng.random_range(1..=orders)).collect()
        };
        let update = "UPDATE sales_orders SET total_amount = total_amount + 1 WHERE id = ANY($1)";
        match client.as_ref().unwrap().execute(update, &[&ids]).await {
            Ok(n) => stats.rows += n,
            Err(_) => {
                stats.failed_batches += 1;
                client = None;
            }
        }
    }
    stats
}

#[derive(Clone, Copy)]
enum Disruption {
    Kill,
    BrokerRestart,
    PgRestart,
}

#[derive(Default)]
struct ChaosStats {
    kills: usize,
    broker_restarts: usize,
    pg_restarts: usize,
    starts: usize,
    exits: usize,
}

/// The daemon, kept running as a service manager would: restarted (at most once a second)
/// whenever it exits, e.g. when it started while the broker or the database was down.
struct Supervised<'a> {
    setup: &'a Setup,
    child: Child,
    started: Instant,
    stats: ChaosStats,
}

impl<'a> Supervised<'a> {
    fn start(setup: &'a Setup) -> Self {
        Self { setup, child: setup.spawn(&["run"]), started: Instant::now(), stats: ChaosStats { starts: 1, ..Default::default() } }
    }

    fn respawn(&mut self) {
        self.child = self.setup.spawn(&["run"]);
        self.started = Instant::now();
        self.stats.starts += 1;
    }

    /// Lets time pass, restarting the daemon when it has exited.
    fn supervise_for(&mut self, span: Duration) {
        let end = Instant::now() + span;
        while Instant::now() < end {
            if self.child.try_wait().unwrap().is_some() && self.started.elapsed() > Duration::from_secs(1) {
                self.stats.exits += 1;
                self.respawn();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.child.kill().unwrap();
            self.stats.kills += 1;
        } else {
            self.stats.exits += 1;
        }
        self.child.wait().unwrap();
        self.respawn();
    }

    /// SIGTERM: the daemon commits what was acknowledged and exits.
    fn stop(mut self) -> ChaosStats {
        if self.child.try_wait().unwrap().is_none() {
            terminate(&self.child);
            wait_for_exit(&mut self.child, Duration::from_secs(120), "the daemon did not stop on SIGTERM", || self.setup.log());
        }
        self.stats
    }
}

/// Every disruption of the plan in a random order, at random moments, the daemon kept
/// running throughout.
fn disrupt(sizes: &Sizes, setup: &Setup, broker: &PrivateServer, pg: &PrivateServer) -> ChaosStats {
    let mut plan: Vec<Disruption> = std::iter::repeat_n(Disruption::Kill, sizes.kills)
        .chain(std::iter::repeat_n(Disruption::BrokerRestart, sizes.broker_restarts))
        .chain(std::iter::repeat_n(Disruption::PgRestart, sizes.pg_restarts))
        .collect();
    plan.shuffle(&mut rand::rng());
    let pause = || Duration::from_millis(rand::rng().random_range(500..6_000));
    let outage = || Duration::from_millis(rand::rng().random_range(0..5_000));
    let start = Instant::now();
    let mut daemon = Supervised::start(setup);
    for (n, disruption) in plan.into_iter().enumerate() {
        daemon.supervise_for(pause());
        match disruption {
            Disruption::Kill => daemon.kill_9(),
            Disruption::BrokerRestart => {
                broker.down();
                daemon.supervise_for(outage());
                broker.up();
                daemon.stats.broker_restarts += 1;
            }
            Disruption::PgRestart => {
                pg.down();
                daemon.supervise_for(outage());
                pg.up();
                daemon.stats.pg_restarts += 1;
            }
        }
        if n % 10 == 9 {
            println!("soak: {} disruptions done after {:.0}s", n + 1, start.elapsed().as_secs_f64());
        }
    }
    daemon.supervise_for(pause());
    daemon.stop()
}

fn digest(parts: &[&[u8]]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// The newest version of every order: the digest of its export document (the bytes the
/// source publishes) and its `updated_at`, by id.
async fn newest_versions(client: &tokio_postgres::Client) -> HashMap<String, (u64, String)> {
    let sql = format!(
        "SELECT t.id::text, ({})::text, t.updated_at::text FROM sales_orders t",
        order_cdc::store::document::export_document("public")
    );
    let rows = client.query_raw(&sql, Vec::<String>::new()).await.expect("documents");
    futures::pin_mut!(rows);
    let mut versions = HashMap::new();
    while let Some(row) = rows.try_next().await.expect("documents") {
        let document: &str = row.get(1);
        versions.insert(row.get(0), (digest(&[document.as_bytes()]), row.get(2)));
    }
    versions
}

/// The last event of a key on the topic.
struct Last {
    partition: i32,
    offset: i64,
    digest: Option<u64>,
    time: String,
}

/// What the topic holds, as a `read_committed` consumer sees it.
struct TopicState {
    events: u64,
    /// Events equal (key and bytes) to an earlier one: the same version delivered again.
    duplicates: u64,
    /// Runs of consecutive duplicates in a partition: a batch delivered again shows as one
    /// long run, a version read twice by two polls as runs of one.
    duplicate_runs: u64,
    /// Duplicates whose first copy was published ahead of its run: its `ce_time` is later
    /// than the next event's in the partition, so its document was read newer than its key.
    duplicates_read_ahead: u64,
    last: HashMap<String, Last>,
}

impl TopicState {
    fn read(bootstrap: &str, topic: &str) -> Self {
        let mut state = Self { events: 0, duplicates: 0, duplicate_runs: 0, duplicates_read_ahead: 0, last: HashMap::new() };
        let mut seen = HashSet::new();
        let mut in_run: HashSet<i32> = HashSet::new();
        let mut previous: HashMap<i32, (u64, String)> = HashMap::new();
        let mut ahead = HashSet::new();
        scan_topic(bootstrap, topic, "read_committed", Duration::from_secs(3600), |e| {
            state.events += 1;
            let value = e.value.as_deref().map(|v| digest(&[v]));
            let version = digest(&[e.key.as_bytes(), e.value.as_deref().unwrap_or_default()]);
            let time = e.headers.get("ce_time").cloned().unwrap_or_default();
            if seen.insert(version) {
                in_run.remove(&e.partition);
            } else {
                state.duplicates += 1;
                state.duplicate_runs += u64::from(in_run.insert(e.partition));
                state.duplicates_read_ahead += u64::from(ahead.contains(&version));
            }
            // ce_time is fixed-width RFC 3339 in UTC: text order is time order.
            if let Some((before, before_time)) = previous.insert(e.partition, (version, time.clone())) {
                if before_time > time {
                    ahead.insert(before);
                }
            }
            let newer = state.last.get(&e.key).is_none_or(|l| (e.partition, e.offset) > (l.partition, l.offset));
            if newer {
                state.last.insert(e.key, Last { partition: e.partition, offset: e.offset, digest: value, time });
            }
        });
        state
    }
}
