//! `run --once` delivers every change committed before the command started: batch users
//! (a scheduler that syncs, then reads the topic) count on it. The late-commit guard
//! holds the cutoff below the database clock (a margin, or an open transaction), so the
//! command waits, bounded by `once_max_wait`, until its window covers its start. And when
//! a transaction holds the cutoff back, the logs name it (pid, age), never its query.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;

/// The export document and `updated_at` of one order, as the source reads them.
async fn version(client: &tokio_postgres::Client, id: i64) -> (String, DateTime<Utc>) {
    let sql = format!(
        "SELECT ({})::text, t.updated_at FROM sales_orders t WHERE t.id = $1",
        order_cdc::store::document::export_document("public")
    );
    let row = client.query_one(&sql, &[&id]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Rounds of "commit a change, then at once `run --once`": after each, the change is on the
/// topic (its document and its updated_at). Returns how long each `run --once` took.
async fn commit_then_run_once(client: &tokio_postgres::Client, setup: &Setup, topic: &str, rounds: i64) -> Vec<Duration> {
    setup.run_once();
    let mut tail = TopicTail::new(topic);
    tail.read_new();
    let mut took = Vec::new();
    for round in 1..=rounds {
        let id = round % 10 + 1;
        // The trigger stamps updated_at with the transaction's start, a moment ago.
        client.execute("UPDATE sales_orders SET order_status = $1 WHERE id = $2", &[&format!("round-{round}"), &id]).await.unwrap();
        let begun = Instant::now();
        setup.run_once();
        took.push(begun.elapsed());
        let (document, updated_at) = version(client, id).await;
        let events = tail.read_new();
        let latest = events.iter().rev().find(|e| e.key == id.to_string()).unwrap_or_else(|| {
            panic!("round {round}: the change to order {id} is not on the topic after run --once ({} other events)", events.len())
        });
        assert_eq!(latest.text(), document, "round {round}: order {id}");
        assert_eq!(latest.headers["ce_time"], order_cdc::timestamp::format(updated_at), "round {round}");
    }
    took.sort();
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_committed_just_before_run_once_is_on_the_topic_when_it_exits() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 10, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let topic = unique("once");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    let took = commit_then_run_once(&client, &setup, &topic, 100).await;
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    println!("100 rounds of commit, then run --once: the change was delivered every time; run --once took {median:?} median, {max:?} at most");
    assert!(median < Duration::from_secs(2), "run --once should take well under 2 s when nothing holds it: median {median:?}");
    db.drop_db().await;
}

/// The source in process, where nothing but the source's own start-up lies between the
/// commit and the first cutoff (the binary's start-up takes longer than the guard's
/// margin on a loaded machine, which hides the margin): a source opened for `--once`
/// waits the margin out, and its first run holds the change. A daemon's source does not
/// wait, and says whether its run covered the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_once_source_waits_out_the_margin_and_its_first_run_holds_a_change_committed_a_moment_before() {
    use order_cdc::config::{Config, SourceConfig};
    use order_cdc::source::{postgres::PostgresSource, Source};

    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 10, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let topic = unique("unused");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    let config = Config::load(Some(&setup.config)).unwrap();
    let SourceConfig::Postgres(cfg) = &config.pipelines["p"].source else { unreachable!() };
    let metrics = order_cdc::metrics::Metrics::new().pipeline("p");

    // The first run of a source, and whether it says it covers the start.
    let first_run = |once: bool| {
        let (cfg, metrics) = (cfg.clone(), metrics.clone());
        async move {
            let mut source = PostgresSource::open(cfg, "p", 1000, metrics, once).await.unwrap();
            source.restore(None, "2024-03-02T00:00:00Z".parse().unwrap()).unwrap();
            let mut records = Vec::new();
            loop {
                let batch = source.next_batch().await.unwrap();
                records.extend(batch.records);
                if batch.ends_run {
                    return (records, batch.covers_start);
                }
            }
        }
    };
    let mut daemon_missed = 0;
    for round in 1..=20i64 {
        for once in [true, false] {
            let id = round % 10 + 1;
            client.execute("UPDATE sales_orders SET order_status = $1 WHERE id = $2", &[&format!("round-{round}-{once}"), &id]).await.unwrap();
            let (_, updated_at) = version(&client, id).await;
            let (records, covers_start) = first_run(once).await;
            let held = records.iter().any(|r| r.key == id.to_string() && r.updated_at == updated_at);
            if once {
                assert!(held && covers_start, "round {round}: the first run of a --once source holds the change");
            } else {
                assert!(held || !covers_start, "round {round}: a run without the change does not claim to cover the start");
                daemon_missed += usize::from(!held);
            }
        }
    }
    println!("without waiting (a daemon's first run), {daemon_missed} of 20 first runs ended before a change committed a moment before the source opened");
    db.drop_db().await;
}

/// With `cutoff = "lag"` the cutoff sits a whole `cutoff_lag` below the clock, so every
/// change of the last second is past a window taken at once: `run --once` waits it out.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_waits_out_cutoff_lag() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 10, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let topic = unique("once-lag");
    let mut p = Pipeline::new(&db.url, &topic);
    p.source_extra = "cutoff = \"lag\"\ncutoff_lag = \"1s\"";
    let setup = Setup::new(&p);
    let took = commit_then_run_once(&client, &setup, &topic, 5).await;
    assert!(took[0] >= Duration::from_millis(500), "run --once waited for the lag: {took:?}");
    db.drop_db().await;
}

/// A `run --once` resumed from a checkpoint left mid-run has that run's cutoff, an earlier
/// process's, which does not cover the command's start. The run that does follows it at
/// once, not a `poll_interval` later (an hour here), and holds the change made before the
/// command.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_resumed_mid_run_goes_on_at_once_with_a_run_that_covers_its_start() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 30, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let topic = unique("once-resumed");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 10;
    p.poll_interval = "1h";
    let setup = Setup::new(&p);
    setup.run_once();
    // What an earlier process leaves after the first page of a run whose cutoff was taken
    // the day after the orders.
    let (_, tenth) = version(&client, 10).await;
    let mut checkpoint = setup.checkpoint().expect("a checkpoint");
    checkpoint["position"] = serde_json::json!({"v": 1, "since": "2024-01-01T00:00:00Z", "cutoff": "2024-03-02T00:00:00Z", "after": [tenth, "10"]});
    std::fs::write(setup.checkpoint_path(), checkpoint.to_string()).unwrap();
    client.execute("UPDATE sales_orders SET order_status = 'changed before the command' WHERE id = 20", &[]).await.unwrap();

    setup.run_once();
    let (events, _) = assert_topic_matches(&topic, &export_documents(&client).await);
    // 30 from the first command; 19 again from the resumed run (orders 11 to 30 but 20,
    // changed past its cutoff), and order 20's change from the run after it.
    assert_eq!(events, 30 + 19 + 1);
    db.drop_db().await;
}

/// Opens a transaction that changes `order` and stays open; returns it and its backend's pid.
async fn open_transaction(db: &TestDb, order: i64, status: &str) -> (tokio_postgres::Client, i32) {
    let late = db.client().await;
    late.batch_execute(&format!("BEGIN; UPDATE sales_orders SET order_status = '{status}' WHERE id = {order}")).await.unwrap();
    let pid: i32 = late.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    (late, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_waits_for_a_transaction_that_holds_its_cutoff_then_delivers_what_was_committed_before_it() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 100, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let (late, pid) = open_transaction(&db, 5, "late-commit").await;
    // Committed before the command, after the open transaction began: the guard holds
    // the cutoff below it while that transaction is open.
    client.batch_execute("UPDATE sales_orders SET order_status = 'before-the-command' WHERE id = 6").await.unwrap();

    let topic = unique("once-wait");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    let mut once = setup.spawn(&["run", "--once"]);
    wait_until("run --once to say which transaction it waits for", Duration::from_secs(30), || {
        setup.log().lines().any(|l| l.contains("waits for an open transaction") && l.contains(&format!("pid={pid}")))
    });
    assert!(once.try_wait().unwrap().is_none(), "run --once finished while the transaction held its cutoff");
    late.batch_execute("COMMIT").await.unwrap();
    let status = wait_for_exit(&mut once, Duration::from_secs(30), "run --once did not finish after the transaction ended", || setup.log());
    assert!(status.success(), "{}", setup.log());

    let latest = latest_by_key(&read_topic(&topic));
    assert_eq!(latest.len(), 100);
    assert!(latest["6"].text().contains("before-the-command"), "the change committed before the command: {}", latest["6"].text());
    assert!(latest["5"].text().contains("late-commit"), "the transaction committed while the command waited");
    assert!(!setup.log().contains("UPDATE sales_orders"), "no query text in the logs");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_finishes_after_once_max_wait_naming_the_transaction_that_held_it() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 100, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let (late, pid) = open_transaction(&db, 5, "never-committed").await;
    let topic = unique("once-bound");
    let mut p = Pipeline::new(&db.url, &topic);
    p.source_extra = "once_max_wait = \"1s\"";
    let setup = Setup::new(&p);
    let begun = Instant::now();
    let out = setup.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(begun.elapsed() >= Duration::from_secs(1), "it waited once_max_wait");
    let warning = stderr.lines().find(|l| l.contains("finishes while an open transaction still holds the cutoff")).unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(warning.contains(&format!("pid={pid}")) && warning.contains("age=") && warning.contains("held_for="), "{warning}");
    assert!(!stderr.contains("never-committed"), "no query text in the logs: {stderr}");
    assert_eq!(read_topic(&topic).len(), 100, "what the held cutoff allows is delivered");
    late.batch_execute("ROLLBACK").await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_names_a_transaction_that_holds_its_cutoff_and_says_when_it_lets_go() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 10, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let (late, pid) = open_transaction(&db, 5, "held-in-the-daemon").await;
    let topic = unique("daemon-hold");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    let mut daemon = setup.spawn(&["run"]);
    wait_until("the daemon to name the transaction that holds its cutoff", Duration::from_secs(60), || {
        setup.log().lines().any(|l| l.contains("holds the cutoff at its start") && l.contains(&format!("pid={pid}")) && l.contains("held_for="))
    });
    late.batch_execute("COMMIT").await.unwrap();
    wait_until("the daemon to say the hold ended", Duration::from_secs(30), || {
        setup.log().lines().any(|l| l.contains("no longer does") && l.contains(&format!("pid={pid}")))
    });
    wait_until("the late change on the topic", Duration::from_secs(30), || {
        latest_by_key(&read_topic(&topic)).get("5").is_some_and(|e| e.text().contains("held-in-the-daemon"))
    });
    terminate(&daemon);
    assert!(wait_for_exit(&mut daemon, Duration::from_secs(30), "the daemon did not stop on SIGTERM", || setup.log()).success());
    assert!(!setup.log().contains("UPDATE sales_orders"), "no query text in the logs");
    db.drop_db().await;
}
