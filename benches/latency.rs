//! The latency benchmark of issue 10 (target 4), run by `scripts/bench.sh` after it has
//! loaded the reference schema: `order-cdc run` at its default configuration (only the
//! database and the topic set) while writers make a steady `BENCH_RATE` (1,000) order
//! updates/s for `BENCH_SECONDS` (20) s, each recording when its commit returned. The topic
//! is read back, every update matched to its event by (order id, `updated_at`), and p50,
//! p99 and max of (Kafka message timestamp − commit time) printed, with how many matched
//! (all must). Then the same with `notify_channel = ""`, the polling baseline.
//!
//! A third pass runs a probe beside the same load and the default daemon. It measures the
//! race the late-commit guard's margin covers (a backend takes its transaction's start time
//! a moment before it shows it in pg_stat_activity): again and again it reads the clock C,
//! then the oldest `xact_start`, then a snapshot, as a run would. An update whose
//! transaction started before C and before the oldest start it was shown, and had not
//! committed at the snapshot, is one a run with a margin below C − start would have lost.
//! The largest such C − start is the margin this run needed. The probe has its own pass
//! because its three queries every 2 ms take a good part of a core from the database:
//! beside the measured passes it doubled their p99 on two cores.

#[path = "common/topics.rs"]
mod topics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use order_cdc::config::{Config, SourceConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use order_cdc::secret::SecretUrl;
use tokio_postgres::Client;

const WRITERS: u64 = 8;
const PIPELINE: &str = "latency";

fn main() {
    let config_path = std::env::var("ORDER_CDC_BENCH_CONFIG").expect("ORDER_CDC_BENCH_CONFIG: run scripts/bench.sh");
    let config = Config::load(Some(Path::new(&config_path))).expect("bench config");
    let (_, pipeline) = config.pipelines.iter().next().expect("one pipeline");
    let SourceConfig::Postgres(source) = &pipeline.source else { panic!("the bench pipeline reads PostgreSQL") };
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let bench = Bench {
        url: source.url.clone(),
        brokers: config.kafka.brokers.clone(),
        rate: env("BENCH_RATE", 1000),
        seconds: env("BENCH_SECONDS", 20),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!("latency: {} updates/s for {} s on the reference schema, order-cdc run at its defaults (poll_interval 5 s)", bench.rate, bench.seconds);
        bench.run("notify (default)", "", Probe::Off).await;
        bench.run("no notify (notify_channel = \"\")", "notify_channel = \"\"", Probe::Off).await;
        bench.run("notify, probe beside it", "", Probe::On).await;
        topics::delete_own(&config.kafka).await;
    });
}

struct Bench {
    url: SecretUrl,
    brokers: String,
    rate: u64,
    seconds: u64,
}

/// An update as its writer saw it.
struct Commit {
    order: i64,
    updated_at: DateTime<Utc>,
    xid: u64,
    committed: DateTime<Utc>,
}

/// One look of the probe: the clock, the oldest open transaction then shown, and the
/// snapshot taken after it (`xmin`, `xmax`, in progress).
struct Look {
    clock: DateTime<Utc>,
    oldest: Option<DateTime<Utc>>,
    xmax: u64,
    running: Vec<u64>,
}

impl Bench {
    async fn run(&self, name: &str, source_extra: &str, probe: Probe) {
        let topic = format!("bench-latency-{}-{}", std::process::id(), Utc::now().timestamp_millis());
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), self.url.expose(), &topic, source_extra);
        let client = connect(&self.url).await;
        // Start at now: the loaded backlog is the throughput bench's business.
        let now: DateTime<Utc> = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
        let status = order_cdc_command(&config).args(["checkpoint", "set", "--pipeline", PIPELINE, "--since", &order_cdc::timestamp::format(now)]).status().unwrap();
        assert!(status.success(), "checkpoint set");
        let daemon = Daemon(
            order_cdc_command(&config)
                .arg("run")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
                .spawn()
                .unwrap(),
        );

        let orders: Vec<i64> = client.query("SELECT id FROM sales_orders ORDER BY id LIMIT 20000", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(!orders.is_empty(), "the bench database has orders (scripts/bench.sh loads them)");
        let events = Arc::new(Mutex::new(Vec::new()));
        let reading = Arc::new(AtomicBool::new(true));
        // One warm-up update, waited for: the daemon has created the topic and runs.
        let warm = update(&client, orders[0], "warm-up").await;
        let reader = {
            let (brokers, topic, events, reading) = (self.brokers.clone(), topic.clone(), events.clone(), reading.clone());
            std::thread::spawn(move || read_events(&brokers, &topic, &events, &reading))
        };
        let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        assert_eq!(wait_for(&events, &[(orders[0].to_string(), warm.updated_at)], Duration::from_secs(60)), 0, "no warm-up event; daemon log: {}", log());

        let probing = Arc::new(AtomicBool::new(true));
        let probe = tokio::spawn(look_again_and_again(connect(&self.url).await, probing.clone(), probe));
        let started = Instant::now();
        let total = self.rate * self.seconds;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = connect(&self.url).await;
            let orders = orders.clone();
            let rate = self.rate;
            writers.push(tokio::spawn(async move {
                let mut commits = Vec::new();
                for i in (w..total).step_by(WRITERS as usize) {
                    tokio::time::sleep_until((started + Duration::from_micros(i * 1_000_000 / rate)).into()).await;
                    commits.push(update(&client, orders[i as usize % orders.len()], &format!("b{i}")).await);
                }
                commits
            }));
        }
        let mut commits = Vec::new();
        for w in writers {
            commits.extend(w.await.unwrap());
        }
        let wrote_for = started.elapsed();
        probing.store(false, Ordering::Relaxed);
        let looks = probe.await.unwrap();
        let keys: Vec<(String, DateTime<Utc>)> = commits.iter().map(|c| (c.order.to_string(), c.updated_at)).collect();
        let missing = wait_for(&events, &keys, Duration::from_secs(60));
        reading.store(false, Ordering::Relaxed);
        reader.join().unwrap();
        drop(daemon);

        let published: HashMap<(String, DateTime<Utc>), i64> = events.lock().unwrap().iter().map(|(k, at, ts)| ((k.clone(), *at), *ts)).collect();
        let mut latencies: Vec<i64> = commits
            .iter()
            .filter_map(|c| published.get(&(c.order.to_string(), c.updated_at)).map(|ts| ts - c.committed.timestamp_millis()))
            .collect();
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
        println!(
            "{name:<34} matched {}/{} ({:.0} updates/s written)  p50 {} ms  p99 {} ms  max {} ms",
            latencies.len(),
            commits.len(),
            commits.len() as f64 / wrote_for.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            latencies.last().unwrap()
        );
        if !looks.is_empty() {
            print_race(&commits, &looks);
        }
        for c in commits.iter().filter(|c| !published.contains_key(&(c.order.to_string(), c.updated_at))) {
            println!("  MISSING order {} updated_at {} committed {} xid {}", c.order, c.updated_at, c.committed, c.xid);
        }
        assert_eq!(missing, 0, "{missing} updates have no event; daemon log: {}", log());
    }
}

/// The daemon under test, stopped however the bench ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn order_cdc_command(config: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_order-cdc"));
    c.arg("--config").arg(config).env("RUST_LOG", "warn");
    c
}

/// The defaults, but for the database, the topic, where checkpoints go and a free metrics
/// port (the bench may run beside other daemons).
fn write_config(dir: &Path, url: &str, topic: &str, source_extra: &str) -> PathBuf {
    let path = dir.join("latency.toml");
    let text = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[checkpoint]\ndir = \"{}\"\n[pipelines.{PIPELINE}]\ntopic = \"{topic}\"\n[pipelines.{PIPELINE}.source]\nkind = \"postgres\"\nurl = \"{url}\"\n{source_extra}\n",
        dir.join("checkpoints").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn connect(url: &SecretUrl) -> Client {
    order_cdc::store::connect(url, Duration::from_secs(10), "order-cdc-bench-latency").await.expect("connect to the bench database")
}

async fn update(client: &Client, order: i64, status: &str) -> Commit {
    let row = client
        .query_one("UPDATE sales_orders SET order_status = $1 WHERE id = $2 RETURNING updated_at, pg_current_xact_id()::text::bigint", &[&status, &order])
        .await
        .expect("update");
    Commit { order, updated_at: row.get(0), xid: row.get::<_, i64>(1) as u64, committed: Utc::now() }
}

/// Every event of the topic as (key, `ce_time`, Kafka timestamp in ms), until told to stop.
fn read_events(brokers: &str, topic: &str, events: &Mutex<Vec<(String, DateTime<Utc>, i64)>>, reading: &AtomicBool) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    // The daemon creates the topic when it starts.
    let end = Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        if !partitions.is_empty() {
            break partitions;
        }
        assert!(Instant::now() < end, "the daemon did not create {topic}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    while reading.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = message.expect("consume");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let time = m.headers().and_then(|h| h.iter().find(|h| h.key == "ce_time").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())));
        let (Some(time), Some(ts)) = (time, m.timestamp().to_millis()) else { continue };
        events.lock().unwrap().push((key, order_cdc::timestamp::parse(&time).expect("ce_time"), ts));
    }
}

/// Waits until every (key, updated_at) has an event, for at most `deadline`; returns how
/// many have none.
fn wait_for(events: &Mutex<Vec<(String, DateTime<Utc>, i64)>>, keys: &[(String, DateTime<Utc>)], deadline: Duration) -> usize {
    let end = Instant::now() + deadline;
    loop {
        let missing = {
            let events = events.lock().unwrap();
            let seen: std::collections::HashSet<(&str, DateTime<Utc>)> = events.iter().map(|(k, at, _)| (k.as_str(), *at)).collect();
            keys.iter().filter(|(k, at)| !seen.contains(&(k.as_str(), *at))).count()
        };
        if missing == 0 || Instant::now() >= end {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a pass runs the guard-race probe beside its load.
#[derive(Clone, Copy, PartialEq)]
enum Probe {
    On,
    Off,
}

/// Looks as a run does (clock, oldest open transaction, then a snapshot), every 2 ms,
/// while `probing` (none when the probe is off).
async fn look_again_and_again(client: Client, probing: Arc<AtomicBool>, probe: Probe) -> Vec<Look> {
    let mut looks = Vec::new();
    while probe == Probe::On && probing.load(Ordering::Relaxed) {
        let clock: DateTime<Utc> = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
        let oldest = order_cdc::store::cutoff::oldest_open_transaction(&client).await.unwrap().map(|t| t.started);
        let snapshot: String = client.query_one("SELECT pg_current_snapshot()::text", &[]).await.unwrap().get(0);
        let mut parts = snapshot.split(':');
        let _xmin = parts.next();
        let xmax = parts.next().and_then(|x| x.parse().ok()).expect("snapshot xmax");
        let running = parts.next().unwrap_or("").split(',').filter_map(|x| x.parse().ok()).collect();
        looks.push(Look { clock, oldest, xmax, running });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    looks
}

/// The guard's race, from the probe's looks: the transactions a run with no margin would
/// have lost, and the margin that would have covered all of them.
fn print_race(commits: &[Commit], looks: &[Look]) {
    let mut by_start: Vec<&Commit> = commits.iter().collect();
    by_start.sort_by_key(|c| c.updated_at);
    let (mut in_flight, mut exposed, mut needed) = (0usize, 0usize, chrono::Duration::zero());
    for look in looks {
        // Only transactions that started within a second before the clock can matter.
        let from = by_start.partition_point(|c| c.updated_at < look.clock - chrono::Duration::seconds(1));
        let to = by_start.partition_point(|c| c.updated_at < look.clock);
        for c in &by_start[from..to] {
            let unseen = look.oldest.is_none_or(|o| c.updated_at < o);
            let uncommitted = c.xid >= look.xmax || look.running.contains(&c.xid);
            in_flight += usize::from(uncommitted);
            if unseen && uncommitted {
                exposed += 1;
                needed = needed.max(look.clock - c.updated_at);
            }
        }
    }
    println!(
        "{:<34} {} looks caught {in_flight} updates started before the clock and uncommitted; {exposed} of them not yet in pg_stat_activity; margin needed {} µs",
        "  guard race probe",
        looks.len(),
        needed.num_microseconds().unwrap_or(0)
    );
}
