//! `[checkpoint] store = "postgres"` on the real server: the row's round trip, the table
//! created when missing, a foreign or unreadable row refused, a lost or unreachable
//! database a retriable error without the password; end to end through the binary
//! (`run`, `checkpoint show|set|reset`), and kill -9 rounds after which nothing is missing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use order_cdc::checkpoint::{self, Checkpoint, CheckpointError, CheckpointStore, PostgresStore, Store};
use order_cdc::secret::SecretUrl;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TABLE: &str = "order_cdc_checkpoints";
const PASSWORD: &str = "s3cret-pw";

fn store(db: &TestDb, table: &str) -> PostgresStore {
    PostgresStore::new(SecretUrl::new(&db.url), table)
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.unwrap().get(0)
}

/// The source identity of the reference table in a test database.
fn identity(db: &TestDb) -> String {
    let url = url::Url::parse(&db.url).unwrap();
    format!("postgresql://{}:{}/{}/sales_orders", url.host_str().unwrap(), url.port().unwrap_or(5432), db.name)
}

fn position(since: &str) -> serde_json::Value {
    json!({"v": 1, "since": since, "cutoff": null, "after": null})
}

#[tokio::test]
async fn upserts_loads_and_resets_one_row_per_pipeline() {
    let db = TestDb::create().await;
    let client = db.client().await;
    let store = store(&db, TABLE);
    assert!(!table_exists(&client, TABLE).await);
    assert!(store.load("p").await.unwrap().is_none());
    assert!(table_exists(&client, TABLE).await, "the first use creates the table");

    let identity = "postgresql://db:5432/x/sales_orders";
    let first = Checkpoint::new("p", identity, position("2024-01-01T00:00:00Z"));
    store.commit(&first).await.unwrap();
    assert_eq!(store.load("p").await.unwrap(), Some(first));
    let second = Checkpoint::new("p", identity, json!({"v": 1, "since": "2024-01-01T00:00:00Z", "cutoff": "2024-02-01T00:00:00.123456Z", "after": ["2024-01-15T00:00:00Z", "42"]}));
    store.commit(&second).await.unwrap();
    let other = Checkpoint::new("q", identity, position("2023-01-01T00:00:00Z"));
    store.commit(&other).await.unwrap();
    assert_eq!(store.load("p").await.unwrap().as_ref(), Some(&second), "the upsert replaced the row");
    assert_eq!(store.load("q").await.unwrap(), Some(other));

    // One row per pipeline, with typed columns a DBA can query.
    let rows = client.query(&format!("SELECT pipeline, position->>'cutoff', fingerprint, committed_at FROM {TABLE} ORDER BY pipeline"), &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, &str>(0), "p");
    assert_eq!(rows[0].get::<_, &str>(1), "2024-02-01T00:00:00.123456Z");
    assert_eq!(rows[0].get::<_, &str>(2), checkpoint::fingerprint(identity));
    assert_eq!(rows[0].get::<_, chrono::DateTime<chrono::Utc>>(3), second.committed_at);

    assert!(store.reset("p").await.unwrap());
    assert!(!store.reset("p").await.unwrap());
    assert!(store.load("p").await.unwrap().is_none());
    assert!(store.load("q").await.unwrap().is_some(), "a reset deletes only its pipeline's row");
    db.drop_db().await;
}

/// Pipelines starting together each find the missing table and create it at once: one
/// creates it, the others wait and use it.
#[tokio::test(flavor = "multi_thread")]
async fn pipelines_starting_together_create_the_table_once() {
    let db = TestDb::create().await;
    let stores: Vec<PostgresStore> = (0..6).map(|_| store(&db, TABLE)).collect();
    let loads = futures::future::join_all(stores.iter().map(|s| s.load("p"))).await;
    for loaded in loads {
        assert!(loaded.unwrap().is_none());
    }
    assert!(table_exists(&db.client().await, TABLE).await);
    db.drop_db().await;
}

#[tokio::test]
async fn refuses_a_foreign_or_unreadable_row() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client.batch_execute("CREATE SCHEMA ops").await.unwrap();
    let table = "ops.cdc_checkpoints";
    let store = Store::Postgres(store(&db, table));
    store.commit(&Checkpoint::new("p", "postgresql://a:5432/x/t", position("2024-01-01T00:00:00Z"))).await.unwrap();
    assert!(table_exists(&client, table).await, "a schema-qualified table is created in its schema");

    let e = checkpoint::load_for(&store, "p", "postgresql://b:5432/x/t").await.unwrap_err();
    assert!(matches!(e, CheckpointError::ForeignSource { .. }), "{e}");
    assert!(e.to_string().contains("checkpoint reset"), "{e}");
    assert!(checkpoint::load_for(&store, "p", "postgresql://a:5432/x/t").await.unwrap().is_some());

    client.batch_execute(&format!("UPDATE {table} SET version = 2")).await.unwrap();
    let e = store.load("p").await.unwrap_err();
    assert!(!e.is_retriable() && e.to_string().contains("version 2 is not supported"), "{e}");

    // A table of another shape is a clear error that needs an operator.
    let mismatched = store_in(&db, "mismatched");
    client.batch_execute("CREATE TABLE mismatched (pipeline text PRIMARY KEY, position text)").await.unwrap();
    let e = mismatched.commit(&Checkpoint::new("p", "x", position("2024-01-01T00:00:00Z"))).await.unwrap_err();
    assert!(!e.is_retriable() && e.to_string().contains("writing the checkpoint"), "{e}");
    // A schema that does not exist is not created.
    let e = store_in(&db, "nosuch.checkpoints").load("p").await.unwrap_err();
    assert!(!e.is_retriable() && e.to_string().contains("checkpoint.table"), "{e}");
    db.drop_db().await;
}

fn store_in(db: &TestDb, table: &str) -> Store {
    Store::Postgres(store(db, table))
}

#[tokio::test]
async fn a_lost_connection_is_retriable_and_the_next_call_reconnects() {
    let db = TestDb::create().await;
    let admin = db.client().await;
    let store = store(&db, TABLE);
    let cp = Checkpoint::new("p", "x", position("2024-01-01T00:00:00Z"));
    store.commit(&cp).await.unwrap();
    let backend = "SELECT pid FROM pg_stat_activity WHERE application_name = 'order-cdc/checkpoints' AND datname = current_database()";
    let before: i32 = admin.query_one(backend, &[]).await.unwrap().get(0);
    admin.execute("SELECT pg_terminate_backend($1)", &[&before]).await.unwrap();

    // The call that finds the connection gone fails retriably (or reconnects at once);
    // one of the next ones works on a new connection.
    let mut failures = 0;
    let loaded = loop {
        match store.load("p").await {
            Ok(loaded) => break loaded,
            Err(e) => {
                assert!(e.is_retriable(), "a lost connection is retriable: {e}");
                failures += 1;
                assert!(failures < 3, "the store did not reconnect: {e}");
            }
        }
    };
    assert_eq!(loaded, Some(cp));
    let after: i32 = admin.query_one(backend, &[]).await.unwrap().get(0);
    assert_ne!(before, after, "a new connection");
    db.drop_db().await;
}

/// A TCP forwarder to the test database that can turn into a black hole, as a network
/// partition does: what is sent is dropped, nothing comes back, no connection is reset.
struct Partition {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Partition {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = url::Url::parse(&database_url()).unwrap();
        let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5432));
        let cut = Arc::new(AtomicBool::new(false));
        let shared = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let ((client_rx, client_tx), (server_rx, server_tx)) = (client.into_split(), server.into_split());
                tokio::spawn(Self::pump(client_rx, server_tx, shared.clone()));
                tokio::spawn(Self::pump(server_rx, client_tx, shared.clone()));
            }
        });
        Self { port, cut }
    }

    async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// The test database's URL through the forwarder.
    fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

#[tokio::test]
async fn a_database_that_stops_answering_is_retriable_within_the_deadline() {
    let db = TestDb::create().await;
    let partition = Partition::start().await;
    let timeout = Duration::from_secs(1);
    let store = PostgresStore::new(SecretUrl::new(partition.url(&db)), TABLE).with_timeout(timeout);
    store.commit(&Checkpoint::new("p", "x", position("2024-01-01T00:00:00Z"))).await.unwrap();

    partition.cut.store(true, Ordering::SeqCst);
    let begun = Instant::now();
    let e = store.commit(&Checkpoint::new("p", "x", position("2024-02-01T00:00:00Z"))).await.unwrap_err();
    assert!(e.is_retriable() && e.to_string().contains("took longer than"), "{e}");
    assert!(begun.elapsed() < timeout * 5, "the deadline held: {:?}", begun.elapsed());
    // Reconnecting while the network is still cut keeps to the deadline too.
    let e = store.load("p").await.unwrap_err();
    assert!(e.is_retriable(), "{e}");

    partition.cut.store(false, Ordering::SeqCst);
    let last = Checkpoint::new("p", "x", position("2024-03-01T00:00:00Z"));
    store.commit(&last).await.unwrap();
    assert_eq!(store.load("p").await.unwrap(), Some(last), "a new connection once the network is back");
    db.drop_db().await;
}

#[tokio::test]
async fn an_unreachable_database_is_retriable_and_hides_the_password() {
    let mut url = url::Url::parse(&database_url()).unwrap();
    url.set_port(Some(free_port())).unwrap();
    url.set_password(Some(PASSWORD)).unwrap();
    let store = PostgresStore::new(SecretUrl::new(url.as_str()), TABLE);
    for e in [store.load("p").await.unwrap_err(), store.commit(&Checkpoint::new("p", "x", json!({}))).await.unwrap_err()] {
        let message = e.to_string();
        assert!(e.is_retriable(), "{message}");
        assert!(message.contains("PostgreSQL") && message.contains("***") && !message.contains(PASSWORD), "{message}");
    }
}

/// A pipeline `p` on the postgres store (default url: the source database).
fn postgres_store<'a>(db_url: &'a str, topic: &'a str) -> Pipeline<'a> {
    let mut p = Pipeline::new(db_url, topic);
    p.checkpoint_extra = "store = \"postgres\"";
    p
}

/// A command of the binary that must succeed; its stdout.
fn succeed(setup: &Setup, args: &[&str]) -> String {
    let out = run_with_deadline(setup.command(args), Duration::from_secs(60));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_on_the_postgres_store_end_to_end() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 3_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 min'").await;
    let topic = unique("pgstore");
    let mut p = postgres_store(&db.url, &topic);
    p.batch_size = 500;
    let setup = Setup::new(&p);
    setup.run_once();

    let (events, duplicates) = assert_topic_matches(&topic, &export_documents(&client).await);
    assert_eq!(duplicates, 0, "each order once");
    assert!(setup.checkpoint().is_none(), "no checkpoint file");

    // The row is in the source database, and `checkpoint show` prints it.
    let row = store(&db, TABLE).load("p").await.unwrap().expect("a checkpoint row");
    assert_eq!(row.source, identity(&db));
    assert_eq!(row.fingerprint, checkpoint::fingerprint(&row.source));
    assert!(row.position["cutoff"].is_null(), "the run completed: {row:?}");
    let shown: Checkpoint = serde_json::from_str(&succeed(&setup, &["checkpoint", "show", "--pipeline", "p"])).unwrap();
    assert_eq!(shown, row);

    // Rewind to the 2,001st order's time: the next run sends orders 2001..3000 again.
    succeed(&setup, &["checkpoint", "set", "--pipeline", "p", "--since", "2024-03-02 09:21:00"]);
    let set = store(&db, TABLE).load("p").await.unwrap().unwrap();
    assert_eq!(set.position["since"], "2024-03-02T09:21:00Z");
    setup.run_once();
    let counts = counts_by_key(&read_topic(&topic));
    assert_eq!((counts["2000"], counts["2001"], counts["3000"]), (1, 2, 2));

    assert!(succeed(&setup, &["checkpoint", "reset", "--pipeline", "p"]).contains("checkpoint deleted"));
    assert!(store(&db, TABLE).load("p").await.unwrap().is_none());
    assert!(succeed(&setup, &["checkpoint", "show", "--pipeline", "p"]).contains("has no checkpoint"));

    // A checkpoint of another source is refused before anything is published.
    store(&db, TABLE).commit(&Checkpoint::new("p", "postgresql://elsewhere:5432/x/sales_orders", position("2024-01-01T00:00:00Z"))).await.unwrap();
    let out = run_with_deadline(setup.command(&["run", "--once"]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("another source"), "{stderr}");
    assert_eq!(read_topic(&topic).len(), events + 1_000, "nothing more published");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_api_pipeline_names_the_checkpoint_database() {
    let setup = Setup::new(&{
        let mut p = Pipeline::export_api("unused", "http://127.0.0.1:9/api", "t0ken", "");
        p.checkpoint_extra = "store = \"postgres\"";
        p
    });
    let out = run_with_deadline(setup.command(&["checkpoint", "show", "--pipeline", "p"]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("checkpoint.url"), "{stderr}");

    // With a url its checkpoints live there (`set` needs no API).
    let db = TestDb::create().await;
    let checkpoint_extra = format!("store = \"postgres\"\nurl = \"{}\"\ntable = \"api_checkpoints\"", db.url);
    let mut p = Pipeline::export_api("unused", "http://127.0.0.1:9/api", "t0ken", "");
    p.checkpoint_extra = &checkpoint_extra;
    let setup = Setup::new(&p);
    succeed(&setup, &["checkpoint", "set", "--pipeline", "p", "--since", "2024-01-01"]);
    let cp = store(&db, "api_checkpoints").load("p").await.unwrap().expect("the row");
    assert_eq!(cp.position["since"], "2024-01-01T00:00:00Z");
    db.drop_db().await;
}

/// kill -9 at random points of a 50,000-order run, several times: every checkpoint row
/// left behind is whole and of this source, and after a final clean run nothing is missing.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms'").await;
    let topic = unique("pgstore-crash");
    let mut p = postgres_store(&db.url, &topic);
    p.batch_size = 250;
    let setup = Setup::new(&p);
    let checkpoints = Store::Postgres(store(&db, TABLE));
    let identity = identity(&db);
    let row = || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(checkpoint::load_for(&checkpoints, "p", &identity)).expect("a whole checkpoint row of this source")
        })
    };

    let kills = kill_9_rounds(&setup, 5, row);
    assert!(kills >= 3, "the run should have been killed mid-way at least 3 times, was {kills}");
    setup.run_once();
    assert!(row().expect("a checkpoint").position["cutoff"].is_null(), "the final run completed");

    let expected = export_documents(&client).await;
    let (events, duplicates) = assert_topic_matches(&topic, &expected);
    println!("postgres store, kill -9 x{kills}: {events} events for {} orders, {duplicates} duplicates, 0 missing", expected.len());
    db.drop_db().await;
}
