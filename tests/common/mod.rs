//! Shared test helpers: a fresh database per test on the real PostgreSQL, a random topic
//! per test on the real Kafka broker, the real binary, and reading a topic back.
//!
//! The stack comes from `scripts/stack.sh up` (the README's test command runs it first).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_postgres::{Client, NoTls};

pub fn database_url() -> String {
    std::env::var("ORDER_CDC_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/order_cdc".into())
}

pub fn brokers() -> String {
    std::env::var("ORDER_CDC_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_order-cdc")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| {
        panic!("cannot connect to PostgreSQL at {url}: {e}; start the stack with scripts/stack.sh up")
    });
    tokio::spawn(connection);
    client
}

/// A database of its own for one test: the late-commit guard looks at the transactions of
/// the current database only, so tests never hold each other's cutoffs back.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = connect(&database_url()).await;
        let name = unique("t");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let mut url = url::Url::parse(&database_url()).unwrap();
        url.set_path(&name);
        Self { name, url: url.to_string() }
    }

    /// A database with the reference schema.
    pub async fn migrated() -> (Self, Client) {
        let db = Self::create().await;
        let mut client = db.client().await;
        order_cdc::store::schema::migrate(&mut client).await.expect("migrate");
        (db, client)
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn drop_db(self) {
        let admin = connect(&database_url()).await;
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

/// Inserts orders `first..first+count` into the reference schema with two items each,
/// all with `updated_at` from the SQL expression `updated_at` (over `g`, the order number),
/// bypassing the triggers so tests control the timestamps.
pub async fn insert_orders(client: &Client, first: i64, count: i64, updated_at: &str) {
    let sql = format!(
        "BEGIN;
         SET LOCAL session_replication_role = replica;
         INSERT INTO products (sku, name, upc) VALUES ('SKU-T', 'Test product', '000000000001') ON CONFLICT DO NOTHING;
         INSERT INTO sales_orders (id, order_number, channel_id, customer_email, total_amount, updated_at, created_at)
           SELECT g, 'T-' || g, 1, 'c' || g || '@example.com', g % 997, {updated_at}, '2024-01-01'
             FROM generate_series({first}, {last}) g;
         INSERT INTO sales_order_items (sales_order_id, line_number, product_id, sku, name, quantity, unit_price)
           SELECT g, l, (SELECT id FROM products WHERE sku = 'SKU-T'), 'SKU-T', 'Test product', l, 9.99
             FROM generate_series({first}, {last}) g, generate_series(1, 2) l;
         SELECT setval(pg_get_serial_sequence('sales_orders', 'id'), (SELECT max(id) FROM sales_orders));
         COMMIT;",
        last = first + count - 1
    );
    client.batch_execute(&sql).await.expect("insert orders");
}

/// The export document of every order, as the source builds it, by id.
pub async fn export_documents(client: &Client) -> HashMap<String, String> {
    let sql = format!("SELECT t.id::text, ({})::text FROM sales_orders t", order_cdc::store::document::export_document("public"));
    client.query(&sql, &[]).await.expect("documents").iter().map(|r| (r.get(0), r.get(1))).collect()
}

pub struct Pipeline<'a> {
    pub db_url: &'a str,
    pub topic: &'a str,
    pub batch_size: usize,
    /// Extra lines for `[pipelines.p]` (e.g. `envelope = "structured"`).
    pub pipeline_extra: &'a str,
    /// Extra lines for `[pipelines.p.source]`.
    pub source_extra: &'a str,
    pub metrics_port: u16,
    /// A whole `[pipelines.p.source]` body instead of the Postgres one.
    pub source: Option<String>,
    /// More TOML appended to the file (e.g. a second pipeline).
    pub extra: String,
    /// Another cluster than the local broker.
    pub brokers: Option<String>,
    /// Lines for `[kafka]`.
    pub kafka_extra: &'a str,
    /// Lines for `[checkpoint]` (e.g. `store = "postgres"`).
    pub checkpoint_extra: &'a str,
    /// `poll_interval` of `[pipelines.p]` (200ms unless a test needs another).
    pub poll_interval: &'a str,
}

impl<'a> Pipeline<'a> {
    pub fn new(db_url: &'a str, topic: &'a str) -> Self {
        Self { db_url, topic, batch_size: 1000, pipeline_extra: "", source_extra: "", metrics_port: 0, source: None, extra: String::new(), brokers: None, kafka_extra: "", checkpoint_extra: "", poll_interval: "200ms" }
    }

    /// A pipeline that polls an export API.
    pub fn export_api(topic: &'a str, base_url: &str, token: &str, extra: &str) -> Self {
        let mut p = Self::new("", topic);
        p.source = Some(format!("kind = \"export_api\"\nbase_url = \"{base_url}\"\ntoken = \"{token}\"\n{extra}"));
        p
    }
}

/// A temporary directory with a configuration file for one pipeline named `p`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(p: &Pipeline) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("order-cdc.toml");
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
{kafka_extra}

[metrics]
listen = "127.0.0.1:{port}"

[checkpoint]
dir = "{checkpoints}"
topic = "{checkpoint_topic}"
{checkpoint_extra}

[pipelines.p]
topic = "{topic}"
batch_size = {batch}
poll_interval = "{poll_interval}"
partitions = 3
{pipeline_extra}

[pipelines.p.source]
{source}
{extra}
"#,
            brokers = p.brokers.clone().unwrap_or_else(brokers),
            kafka_extra = p.kafka_extra,
            port = p.metrics_port,
            checkpoints = dir.path().join("checkpoints").display(),
            // Tests share the broker and all name their pipeline `p`.
            checkpoint_topic = unique("checkpoints"),
            checkpoint_extra = p.checkpoint_extra,
            topic = p.topic,
            batch = p.batch_size,
            poll_interval = p.poll_interval,
            pipeline_extra = p.pipeline_extra,
            source = p.source.clone().unwrap_or_else(|| format!("kind = \"postgres\"\nurl = \"{}\"\n{}", p.db_url, p.source_extra)),
            extra = p.extra,
        );
        std::fs::File::create(&config).unwrap().write_all(text.as_bytes()).unwrap();
        Self { dir, config }
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.path().join("checkpoints").join("p.json")
    }

    pub fn checkpoint(&self) -> Option<serde_json::Value> {
        std::fs::read(self.checkpoint_path()).ok().map(|b| serde_json::from_slice(&b).expect("checkpoint JSON"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.arg("--config").arg(&self.config).args(args).env("RUST_LOG", "warn,order_cdc=info");
        c
    }

    /// `order-cdc run --once`, which must succeed within the deadline.
    pub fn run_once(&self) -> Output {
        let out = run_with_deadline(self.command(&["run", "--once"]), Duration::from_secs(300));
        assert!(out.status.success(), "run --once failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Starts the daemon in the background. Its stderr goes to `log()`'s file, not a pipe:
    /// a pipe nobody reads fills up and blocks the daemon's logging.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("daemon log");
        self.command(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn order-cdc")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Everything the daemons started with `spawn` wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let end = Instant::now() + deadline;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("command did not finish within {deadline:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a spawned daemon to exit; past the deadline it is killed and the test fails
/// with `what` and the daemon's log.
pub fn wait_for_exit(child: &mut Child, deadline: Duration, what: &str, log: impl Fn() -> String) -> std::process::ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{what} (within {deadline:?}); its log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a condition, polling, with a deadline.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ready() {
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Event {
    pub fn text(&self) -> &str {
        std::str::from_utf8(self.value.as_deref().expect("a value")).expect("UTF-8")
    }
}

/// Every message on the topic, partition by partition in offset order: reads until each
/// partition reaches the high watermark it had when reading began.
pub fn read_topic(topic: &str) -> Vec<Event> {
    read_topic_from(&brokers(), topic)
}

/// `read_topic` on another cluster (librdkafka's mock cluster).
pub fn read_topic_from(bootstrap: &str, topic: &str) -> Vec<Event> {
    read_topic_as(bootstrap, topic, "read_committed")
}

/// Every event of a topic, as a consumer with this `isolation.level` sees it: reads each
/// partition to its end (for `read_committed`, the end of the committed transactions).
pub fn read_topic_as(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Event> {
    let mut events = Vec::new();
    scan_topic(bootstrap, topic, isolation, Duration::from_secs(120), |e| events.push(e));
    events
}

/// `read_topic_as` one event at a time, each partition in offset order, for topics too
/// large to hold in memory (the soak's millions of events).
pub fn scan_topic(bootstrap: &str, topic: &str, isolation: &str, deadline: Duration, mut each: impl FnMut(Event)) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    // Transactional topics end with control records no consumer is given, so the end is
    // librdkafka's end-of-partition event, not the last offset.
    let mut open: HashSet<i32> = partitions.into_iter().collect();
    let end = Instant::now() + deadline;
    while !open.is_empty() {
        assert!(Instant::now() < end, "reading {topic} timed out; partitions left: {open:?}");
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(other) => each(event(&other.expect("consume"))),
        }
    }
}

fn event(m: &rdkafka::message::BorrowedMessage) -> Event {
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
        .unwrap_or_default();
    Event {
        partition: m.partition(),
        offset: m.offset(),
        key: String::from_utf8(m.key().expect("a key").to_vec()).expect("UTF-8 key"),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Reads a topic (of the local broker, not transactional) as it grows: each `read_new`
/// returns the events added since the last call, up to the end the topic had when it was
/// called. One consumer for many reads, where `read_topic` would start over each time.
pub struct TopicTail {
    consumer: BaseConsumer,
    topic: String,
    /// Each partition's next offset to read.
    next: HashMap<i32, i64>,
}

impl TopicTail {
    /// From the beginning of a topic that exists.
    pub fn new(topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("test"))
            .set("enable.auto.commit", "false")
            // Asked often for a few new events: no waiting on the broker for more.
            .set("fetch.wait.max.ms", "10")
            .set("fetch.error.backoff.ms", "10")
            .create()
            .expect("consumer");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        for p in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
            next.insert(p.id(), 0);
        }
        consumer.assign(&assignment).expect("assign");
        Self { consumer, topic: topic.to_string(), next }
    }

    pub fn read_new(&mut self) -> Vec<Event> {
        let mut ends = HashMap::new();
        for &p in self.next.keys() {
            let (_, high) = self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)).expect("watermarks");
            ends.insert(p, high);
        }
        let mut events = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        while self.next.iter().any(|(p, next)| *next < ends[p]) {
            assert!(Instant::now() < end, "reading {} timed out", self.topic);
            if let Some(m) = self.consumer.poll(Duration::from_millis(200)) {
                let e = event(&m.expect("consume"));
                self.next.insert(e.partition, e.offset + 1);
                events.push(e);
            }
        }
        events
    }
}

/// The last event of each key (per-key order is partition order).
pub fn latest_by_key(events: &[Event]) -> HashMap<String, Event> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| (e.partition, e.offset));
    sorted.into_iter().map(|e| (e.key.clone(), e.clone())).collect()
}

/// Every expected order is on the topic, its newest event byte-equal to its document, and
/// no other key is; returns how many events there are, and how many of them are duplicates.
pub fn assert_topic_matches(topic: &str, expected: &HashMap<String, String>) -> (usize, usize) {
    let events = read_topic(topic);
    let latest = latest_by_key(&events);
    let missing: Vec<&String> = expected.keys().filter(|k| !latest.contains_key(*k)).collect();
    assert!(missing.is_empty(), "{} orders missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    for (id, doc) in expected {
        assert_eq!(latest[id].text(), doc, "order {id}: the value is the source's document, byte for byte");
    }
    assert_eq!(latest.len(), expected.len(), "no order the source did not export");
    (events.len(), events.len() - expected.len())
}

/// `rounds` times: starts `run --once`, waits until `checkpoint()` changes (progress) or
/// the run ends, then SIGKILLs it a random moment later and reads `checkpoint()` again
/// (a store that tears its checkpoint fails there). Returns how many runs were killed.
pub fn kill_9_rounds<T: PartialEq>(setup: &Setup, rounds: usize, mut checkpoint: impl FnMut() -> T) -> usize {
    let mut kills = 0;
    for _ in 0..rounds {
        let before = checkpoint();
        let mut daemon = setup.spawn(&["run", "--once"]);
        wait_until("progress", Duration::from_secs(60), || checkpoint() != before || daemon.try_wait().unwrap().is_some());
        // A random point of the run, soon after its first progress: a later one often
        // found the run over on a quiet machine (a 50,000-order run resumed twice is
        // left with a few hundred milliseconds of work).
        std::thread::sleep(Duration::from_millis(rand::random_range(0..150)));
        if daemon.try_wait().unwrap().is_none() {
            daemon.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        daemon.wait().unwrap();
        checkpoint();
    }
    kills
}

/// Counts by key.
pub fn counts_by_key(events: &[Event]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in events {
        *counts.entry(e.key.clone()).or_insert(0) += 1;
    }
    counts
}

pub fn stack_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack.sh")
}

/// A port nobody listens on right now, for a daemon's metrics listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One sample of a daemon's `/metrics`: the series `name` whose labels include every
/// `labels` pair (in any order); `None` while nothing answers or the series is absent.
pub fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    sample(port, name, labels)
}

/// The same for a gauge that is not a whole number (seconds).
pub fn gauge(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(port, name, labels)
}

fn sample<T: std::str::FromStr>(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<T> {
    let (_, body) = http_get(port, "/metrics")?;
    let series = format!("{name}{{");
    body.lines()
        .filter(|l| l.starts_with(&series) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// SIGTERM: the graceful stop a container runtime sends.
pub fn terminate(child: &std::process::Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success(), "kill -TERM {}", child.id());
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}
pub mod double;
pub mod portal;
pub mod private;
pub mod proxy;
pub mod server;
pub mod webstore;

/// Waits until the database clock has moved far enough past the newest order change that
/// a fresh cutoff (held 100 ms below the clock) covers it.
pub async fn wait_for_cutoff_past_writes(client: &Client) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let row = client
            .query_one("SELECT clock_timestamp() - interval '150 ms' > coalesce(max(updated_at), '-infinity') FROM sales_orders", &[])
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            return;
        }
        assert!(Instant::now() < end, "the database clock did not pass the last write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[pipelines.other]` with this source body, polling often: the pipeline that keeps a
/// daemon (and /health/ready) up while pipeline `p` fails.
pub fn other_pipeline(topic: &str, source: &str) -> String {
    format!("[pipelines.other]\ntopic = \"{topic}\"\npoll_interval = \"200ms\"\n[pipelines.other.source]\n{source}")
}

/// Pipeline `p` of `setup`, whose API refuses its credential, beside an `other_pipeline`
/// that works: the daemon (at debug, stdout and stderr in its log) marks `p` failed in
/// /health/ready naming `key`, while `other` delivers `other_orders` keys to `other_topic`
/// and the daemon goes on; then `run --once --pipeline p` exits 1 with an error naming
/// `key`. Returns every text the credential could leak into, by where it was read.
pub fn refused_credential(setup: &Setup, metrics_port: u16, other_topic: &str, other_orders: usize, key: &str) -> Vec<(&'static str, String)> {
    let log = std::fs::File::create(setup.log_path()).unwrap();
    let mut daemon = setup
        .command(&["run"])
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn order-cdc");
    wait_until("the pipeline to fail", Duration::from_secs(30), || {
        http_get(metrics_port, "/health/ready").is_some_and(|(status, body)| status == 503 && body.contains("failed"))
    });
    wait_until("the other pipeline to deliver", Duration::from_secs(60), || latest_by_key(&read_topic(other_topic)).len() == other_orders);
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon goes on with the other pipeline");
    let (_, ready) = http_get(metrics_port, "/health/ready").unwrap();
    assert!(ready.contains(key), "{ready}");
    let (_, metrics) = http_get(metrics_port, "/metrics").unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let out = run_with_deadline(setup.command(&["run", "--once", "--pipeline", "p"]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: pipeline p:") && stderr.contains(key), "{stderr}");
    vec![
        ("/health/ready", ready),
        ("/metrics", metrics),
        ("the daemon's output", setup.log()),
        ("run --once's stderr", stderr),
        ("run --once's stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
    ]
}

/// `run --once` of pipeline `p` with a bad source value: one line naming `key` under
/// `pipelines.p.source`, exit code 1, neither a panic nor `secret`.
pub fn assert_config_error(p: &Pipeline, key: &str, secret: &str) {
    let setup = Setup::new(p);
    let out = run_with_deadline(setup.command(&["run", "--once"]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{key}: one line, got {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(key) && lines[0].contains("pipelines.p.source"), "{key}: {stderr}");
    assert!(!stderr.contains(secret) && !stderr.contains("panicked"), "{stderr}");
}
