//! Change notifications wake the Postgres source: with `poll_interval` at a minute, a
//! change still goes out within seconds because the trigger of `order-cdc migrate`
//! NOTIFYs the pipeline's listener; losing the listener loses no change, and it comes back.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Longer than every deadline below: only a wake-up can deliver in time.
const POLL_INTERVAL: &str = "60s";
const DEADLINE: Duration = Duration::from_secs(10);
const LISTENER: &str = "order-cdc/p/listen";

/// The daemon with a minute between polls; its stderr goes to `setup.log()`.
fn spawn_slow_poller(setup: &Setup) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(setup.log_path()).expect("daemon log");
    setup
        .command(&["run"])
        .env("ORDER_CDC__PIPELINES__P__POLL_INTERVAL", POLL_INTERVAL)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn order-cdc")
}

/// Waits until the topic holds an event of `order` whose document contains `text`.
fn wait_for_event(tail: &mut TopicTail, order: &str, text: &str, setup: &Setup) -> Duration {
    let begun = Instant::now();
    let mut seen = false;
    wait_until(&format!("order {order} with {text:?} (log: {})", setup.log()), DEADLINE, || {
        seen = seen || tail.read_new().iter().any(|e| e.key == order && e.text().contains(text));
        seen
    });
    begun.elapsed()
}

/// The pid of the daemon's listener backend, other than `not`, once it is listening.
async fn listener_pid(client: &tokio_postgres::Client, not: Option<i32>) -> i32 {
    let end = Instant::now() + DEADLINE;
    loop {
        let row = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = $1
                    AND query ILIKE 'LISTEN%' AND pid IS DISTINCT FROM $2",
                &[&LISTENER, &not],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(Instant::now() < end, "no listener (other than {not:?}) within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A slow-polling daemon over 20 orders, past its first run, with its listener up.
struct Running {
    db: TestDb,
    client: tokio_postgres::Client,
    topic: String,
    setup: Setup,
    daemon: Child,
    tail: TopicTail,
    listener: i32,
}

impl Running {
    async fn start(prefix: &str) -> Self {
        let (db, client) = TestDb::migrated().await;
        insert_orders(&client, 1, 20, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
        let topic = unique(prefix);
        let setup = Setup::new(&Pipeline::new(&db.url, &topic));
        let daemon = spawn_slow_poller(&setup);
        wait_until("the first run", DEADLINE, || read_topic(&topic).len() == 20);
        let mut tail = TopicTail::new(&topic);
        tail.read_new();
        let listener = listener_pid(&client, None).await;
        Self { db, client, topic, setup, daemon, tail, listener }
    }

    /// Changes an order and waits for its event; how long that took.
    async fn change(&mut self, order: i64, status: &str) -> Duration {
        self.client.execute("UPDATE sales_orders SET order_status = $1 WHERE id = $2", &[&status, &order]).await.unwrap();
        wait_for_event(&mut self.tail, &order.to_string(), status, &self.setup)
    }

    /// Stops the daemon; the topic's latest event of every order is its document.
    async fn stop_and_compare(mut self) {
        terminate(&self.daemon);
        wait_for_exit(&mut self.daemon, DEADLINE, "order-cdc", || self.setup.log());
        let latest = latest_by_key(&read_topic(&self.topic));
        for (id, doc) in export_documents(&self.client).await {
            assert_eq!(latest[&id].text(), doc, "order {id}");
        }
        self.db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_goes_out_long_before_the_poll_interval() {
    let mut running = Running::start("notify").await;
    let took = running.change(7, "woken").await;
    println!("an update with poll_interval = {POLL_INTERVAL} went out in {took:?}");
    // A second change, after the woken run: the listener keeps waking runs.
    running.change(8, "woken-again").await;
    running.stop_and_compare().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_listener_loses_no_change_and_it_reconnects() {
    let mut running = Running::start("notify-loss").await;
    let first = running.listener;
    let terminated: bool = running.client.query_one("SELECT pg_terminate_backend($1)", &[&first]).await.unwrap().get(0);
    assert!(terminated);
    // Changed at once, while the listener is most likely gone: its notification reaches
    // nobody, and the change still arrives.
    running.change(3, "while-deaf").await;
    listener_pid(&running.client, Some(first)).await;
    // And the new listener wakes runs as the first did.
    running.change(4, "heard-again").await;
    assert!(running.setup.log().contains("change-notification listener lost its connection"), "{}", running.setup.log());
    running.stop_and_compare().await;
}

#[test]
fn a_bad_notify_channel_is_refused_naming_the_key() {
    let topic = unique("notify-bad");
    let mut p = Pipeline::new("postgres://app:s3cret-pw@127.0.0.1:1/db", &topic);
    p.source_extra = "notify_channel = \"orders changed\"";
    assert_config_error(&p, "notify_channel", "s3cret-pw");
}
