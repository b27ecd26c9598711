//! The benchmark of issue #2, run by `scripts/bench.sh` (which loads the database first):
//! in one run, on one machine, it measures
//!   (a) `order-cdc run --once` end to end, from PostgreSQL to acknowledged events;
//!   (b) the document query alone: the same keyset pages, read by the Postgres source;
//!   (c) rdkafka alone: producing the same payload bytes with the same producer settings;
//! and prints orders/s, MB/s and the ratio a / min(b, c). Each is the best of `ROUNDS`.
//! (a) and (b) are measured for each kind of document: the export document (assembled in
//! Rust), the same built by PostgreSQL's SQL (the fallback, for the comparison), the
//! whole row (`row`) and an SQL expression; (c) for each with its own documents, each with
//! its own ratio a / min(b, c), and the peak RSS of each `run --once`.

use std::time::{Duration, Instant};

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/topics.rs"]
mod topics;

use order_cdc::config::{Config, PipelineConfig, PostgresSourceConfig, SourceConfig};
use order_cdc::metrics::Metrics;
use order_cdc::sink::kafka::client_config;
use order_cdc::source::postgres::PostgresSource;
use order_cdc::source::{RecordBody, Source};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};

const ROUNDS: usize = 2;

fn main() {
    let config_path = std::env::var("ORDER_CDC_BENCH_CONFIG").expect("ORDER_CDC_BENCH_CONFIG: run scripts/bench.sh");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench(std::path::PathBuf::from(config_path)));
}

struct Figure {
    name: &'static str,
    orders: usize,
    bytes: usize,
    elapsed: Duration,
    /// The machine's cores busy on average meanwhile (`cpu`).
    cores: f64,
    /// Of those, this process's: order-cdc's own share when the stage runs in the bench
    /// (b and c); the rest is PostgreSQL and the broker.
    own_cores: Option<f64>,
    /// The peak resident set of the `run --once` child (the largest of its rounds).
    peak_rss: Option<u64>,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_per_order(&self) -> f64 {
        cpu::per_order(self.cores, self.elapsed, self.orders)
    }
    fn print(&self) {
        let rss = self.peak_rss.map(|kb| format!(" {:>5} MB peak RSS", kb / 1024)).unwrap_or_default();
        let own = self.own_cores.map(|c| format!(" ({c:.2} in order-cdc)")).unwrap_or_default();
        println!(
            "{:<58} {:>8} orders {:>7.2} s {:>9.0} orders/s {:>7.1} MB/s {:>5.2} cores busy{own} {:>6.1} core-µs/order{rss}",
            self.name,
            self.orders,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64(),
            self.cores,
            self.cpu_per_order()
        );
    }
}

async fn bench(config_path: std::path::PathBuf) {
    let config = Config::load(Some(&config_path)).expect("bench config");
    let (name, pipeline) = config.pipelines.iter().next().expect("one pipeline");
    let SourceConfig::Postgres(source_cfg) = &pipeline.source else { panic!("the bench pipeline reads PostgreSQL") };

    // (b) the source alone.
    let (b, documents) = source_alone(source_cfg, name, pipeline.batch_size, "(b) document query alone (Postgres source)").await;

    // (c) rdkafka alone, same settings, same bytes, same partitions.
    let c = producer_alone(&config, pipeline, &documents, "export", "(c) rdkafka producer alone").await;

    // (a) the binary end to end, from a fresh checkpoint to a fresh topic each round;
    // (x) the same with delivery = "exactly_once" (a Kafka transaction per batch).
    let a = end_to_end(&config_path, name, "(a) order-cdc run --once, end to end", &[], &b);
    let delivery = (format!("ORDER_CDC__PIPELINES__{}__DELIVERY", name.to_uppercase()), "exactly_once".to_string());
    let x = end_to_end(&config_path, name, "(x) the same, delivery = exactly_once", &[delivery], &b);

    // The other kinds of document, each against its own query.
    let kinds = [
        ("sql", "the export document built by PostgreSQL's SQL", order_cdc::store::document::export_document("public")),
        ("row", "document = \"row\"", "row".to_string()),
        ("expr", "an SQL expression", "json_build_object('id', t.id, 'number', t.order_number, 'status', t.order_status, 'total', t.total_amount, 'updated_at', t.updated_at)".to_string()),
    ];
    let mut others = Vec::new();
    for (short, what, document) in kinds {
        let mut cfg = source_cfg.clone();
        cfg.document = Some(document.clone());
        let (b_k, documents_k) = source_alone(&cfg, name, pipeline.batch_size, leak(format!("(b_{short}) {what}, query alone"))).await;
        // Its own payloads: a small document costs the producer far less per order.
        let c_k = producer_alone(&config, pipeline, &documents_k, short, leak(format!("(c_{short}) rdkafka producer alone, these documents"))).await;
        let env = [(format!("ORDER_CDC__PIPELINES__{}__SOURCE__DOCUMENT", name.to_uppercase()), document)];
        let a_k = end_to_end(&config_path, name, leak(format!("(a_{short}) the same, end to end")), &env, &b_k);
        others.push((short, b_k, c_k, a_k));
    }

    println!();
    println!(
        "batch_size {} | parallelism {} | max_in_flight_batches {} | kafka properties {:?}",
        pipeline.batch_size, source_cfg.parallelism, pipeline.max_in_flight_batches, config.kafka.properties
    );
    println!("average document: {} bytes", b.bytes / b.orders.max(1));
    b.print();
    c.print();
    a.print();
    let floor = b.rate().min(c.rate());
    println!("ratio a / min(b, c) = {:.2}", a.rate() / floor);
    println!("ratio a / serial(b, c) = {:.2}", a.rate() / serial(&b, &c));
    cpu_estimate("a", &a, &b, &c);
    x.print();
    println!("ratio x / a = {:.2}", x.rate() / a.rate());
    for (short, b_k, c_k, a_k) in &others {
        b_k.print();
        c_k.print();
        a_k.print();
        println!("ratio a_{short} / min(b_{short}, c_{short}) = {:.2}", a_k.rate() / b_k.rate().min(c_k.rate()));
        println!("ratio a_{short} / serial(b_{short}, c_{short}) = {:.2}", a_k.rate() / serial(b_k, c_k));
        cpu_estimate(&format!("a_{short}"), a_k, b_k, c_k);
    }
    let sql = &others[0].1;
    println!("ratio b / b_sql (export document: Rust assembly over PostgreSQL's JSON) = {:.2}", b.rate() / sql.rate());
    topics::delete_own(&config.kafka).await;
}

/// The rate of b and c one after the other, 1 / (1/b + 1/c): what end to end reaches when
/// the two stages share every core and overlap perfectly (each alone keeps both cores
/// busy: PostgreSQL in b, the broker and librdkafka in c). Above 1: idle time overlapped.
fn serial(b: &Figure, c: &Figure) -> f64 {
    1.0 / (1.0 / b.rate() + 1.0 / c.rate())
}

/// What the machine's cores allow end to end: an order costs about the CPU it costs in b
/// plus what it costs in c, so with every core busy the rate is about
/// cores / (cpu_b + cpu_c). An estimate, not a bound: each figure's CPU moves with what
/// else the machine did meanwhile. Printed with a's own CPU per order (its pipeline's
/// overhead on top of b + c) and the a / min(b, c) that estimate gives.
fn cpu_estimate(a_name: &str, a: &Figure, b: &Figure, c: &Figure) {
    let cores = cpu::cores();
    let estimate = cores * 1e6 / (b.cpu_per_order() + c.cpu_per_order());
    println!(
        "CPU: {a_name} {:.1} core-µs/order against b + c {:.1}; on {cores} cores about {:.0} orders/s ({a_name} / that {:.2}), so {a_name} / min(b, c) ≈ {:.2} here",
        a.cpu_per_order(),
        b.cpu_per_order() + c.cpu_per_order(),
        estimate,
        a.rate() / estimate,
        estimate / b.rate().min(c.rate())
    );
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The Postgres source alone over the whole table, best of `ROUNDS`, with the documents
/// of the last round (the producer bench sends them).
async fn source_alone(cfg: &PostgresSourceConfig, name: &str, batch_size: usize, label: &'static str) -> (Figure, Vec<(String, String)>) {
    let mut documents = Vec::new();
    let mut best: Option<Figure> = None;
    for _ in 0..ROUNDS {
        let metrics = Metrics::new().pipeline(name);
        let started = Instant::now();
        let clock = cpu::Clock::start();
        let mut source = PostgresSource::open(cfg.clone(), name, batch_size, metrics, false).await.expect("source");
        source.restore(None, order_cdc::timestamp::epoch()).unwrap();
        let mut docs = Vec::new();
        loop {
            let batch = source.next_batch().await.expect("page");
            for r in batch.records {
                if let RecordBody::Document(d) = r.body {
                    docs.push((r.key, d));
                }
            }
            if batch.ends_run {
                break;
            }
        }
        let busy = clock.cores_busy();
        let f = Figure { name: label, orders: docs.len(), bytes: docs.iter().map(|d| d.1.len()).sum(), elapsed: started.elapsed(), cores: busy.all, own_cores: Some(busy.this_process), peak_rss: None };
        if best.as_ref().is_none_or(|b| f.elapsed < b.elapsed) {
            best = Some(f);
        }
        documents = docs;
    }
    (best.unwrap(), documents)
}

/// The raw rdkafka producer sending `documents` (their keys and bytes) with order-cdc's
/// producer settings to a fresh topic of the pipeline's partitions (named for `kind`),
/// best of `ROUNDS`.
async fn producer_alone(config: &Config, pipeline: &PipelineConfig, documents: &[(String, String)], kind: &str, label: &'static str) -> Figure {
    let bytes = documents.iter().map(|d| d.1.len()).sum();
    let mut best: Option<Figure> = None;
    for round in 0..ROUNDS {
        let topic = format!("bench-raw-{}-{kind}-{round}", std::process::id());
        let cfg = client_config(&config.kafka, "bench");
        let admin: AdminClient<_> = cfg.create().unwrap();
        admin
            .create_topics(&[NewTopic::new(&topic, pipeline.partitions, TopicReplication::Fixed(pipeline.replication_factor))], &AdminOptions::new())
            .await
            .unwrap();
        let producer: FutureProducer = cfg.create().unwrap();
        let started = Instant::now();
        let clock = cpu::Clock::start();
        let mut pending = Vec::with_capacity(documents.len());
        for (key, doc) in documents {
            loop {
                match producer.send_result(FutureRecord::to(&topic).key(key).payload(doc)) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
        for d in pending {
            d.await.unwrap().expect("delivered");
        }
        let busy = clock.cores_busy();
        let f = Figure { name: label, orders: documents.len(), bytes, elapsed: started.elapsed(), cores: busy.all, own_cores: Some(busy.this_process), peak_rss: None };
        if best.as_ref().is_none_or(|c| f.elapsed < c.elapsed) {
            best = Some(f);
        }
    }
    best.unwrap()
}

/// The binary end to end, best of `ROUNDS`, each from a fresh checkpoint (file or
/// Kafka) to a fresh topic.
fn end_to_end(config_path: &std::path::Path, name: &str, label: &'static str, env: &[(String, String)], b: &Figure) -> Figure {
    let mut best: Option<Figure> = None;
    let mut peak_rss = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let fresh = format!("{}-{}-{round}", std::process::id(), label.len());
        let topic = format!("bench-e2e-{fresh}");
        let started = Instant::now();
        let clock = cpu::Clock::start();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_order-cdc"))
            .arg("--config")
            .arg(config_path)
            .args(["run", "--once"])
            .env(format!("ORDER_CDC__PIPELINES__{}__TOPIC", name.to_uppercase()), &topic)
            .env("ORDER_CDC__CHECKPOINT__DIR", dir.path())
            .env("ORDER_CDC__CHECKPOINT__TOPIC", format!("bench-checkpoints-{fresh}"))
            .env(format!("ORDER_CDC__PIPELINES__{}__TRANSACTIONAL_ID", name.to_uppercase()), format!("order-cdc.bench-{fresh}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let (status, max_rss_kb) = wait_with_peak_rss(child);
        assert!(status.success(), "{label}: run --once failed ({status})");
        peak_rss = peak_rss.max(max_rss_kb);
        let f = Figure { name: label, orders: b.orders, bytes: b.bytes, elapsed: started.elapsed(), cores: clock.cores_busy().all, own_cores: None, peak_rss: None };
        if best.as_ref().is_none_or(|a| f.elapsed < a.elapsed) {
            best = Some(f);
        }
    }
    Figure { peak_rss: Some(peak_rss), ..best.unwrap() }
}

/// Waits for a child and returns its exit status and peak RSS in KB: VmHWM of
/// /proc/<pid>/status, sampled every 10 ms while it runs (the high-water mark only grows,
/// so the last sample misses at most the final 10 ms). getrusage's ru_maxrss would count
/// this bench's own memory: the child carries it over from before its exec.
fn wait_with_peak_rss(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    }
}
