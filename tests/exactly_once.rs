//! `delivery = "exactly_once"`: each batch and its checkpoint are one Kafka transaction,
//! so a `read_committed` consumer sees every change exactly once, even when the daemon is
//! killed mid-run again and again.

mod common;

use std::time::Duration;

use common::*;
use rand::Rng;

/// An `exactly_once` pipeline with a transactional id of its own (tests run in parallel,
/// and two producers with one id fence each other).
fn exactly_once<'a>(db_url: &'a str, topic: &'a str) -> Pipeline<'a> {
    let mut p = Pipeline::new(db_url, topic);
    p.batch_size = 250;
    let extra = format!("delivery = \"exactly_once\"\ntransactional_id = \"{}\"", unique("order-cdc.test"));
    p.pipeline_extra = Box::leak(extra.into_boxed_str());
    p
}

/// The pipeline's checkpoint as `checkpoint show` prints it (it lives in Kafka).
fn shown_checkpoint(setup: &Setup) -> Option<serde_json::Value> {
    let out = setup.command(&["checkpoint", "show", "--pipeline", "p"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_order_once_and_the_checkpoint_in_kafka() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 10_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 4) * interval '1 ms'").await;
    let topic = unique("eos");
    let p = exactly_once(&db.url, &topic);
    let setup = Setup::new(&p);
    setup.run_once();

    let events = read_topic(&topic);
    let expected = export_documents(&client).await;
    assert_eq!(events.len(), expected.len(), "each order exactly once");
    let latest = latest_by_key(&events);
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    assert!(setup.checkpoint().is_none(), "no checkpoint file: exactly_once commits its checkpoints to Kafka");
    let cp = shown_checkpoint(&setup).expect("a checkpoint in the Kafka store");
    assert_eq!(cp["pipeline"], "p");
    assert!(cp["position"]["cutoff"].is_null(), "the run completed: {cp}");

    // The next run brings exactly the change made since.
    client.batch_execute("UPDATE sales_orders SET order_status = 'shipped' WHERE id = 42").await.unwrap();
    wait_for_cutoff_past_writes(&client).await;
    setup.run_once();
    let events = read_topic(&topic);
    assert_eq!(events.len(), expected.len() + 1);
    assert!(latest_by_key(&events)["42"].text().contains("shipped"));

    // checkpoint reset: the next run starts over (all orders again, once more each).
    let out = setup.command(&["checkpoint", "reset", "--pipeline", "p"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoint deleted"));
    assert!(shown_checkpoint(&setup).is_none());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_leaves_no_duplicate_for_read_committed_consumers() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms'").await;
    let topic = unique("eos-crash");
    let mut p = exactly_once(&db.url, &topic);
    p.metrics_port = free_port();
    let setup = Setup::new(&p);
    let committed_batches = || metric(p.metrics_port, "order_cdc_batches_total", &[("pipeline", "p")]);

    let mut kills = 0;
    for _ in 0..4 {
        let mut daemon = setup.spawn(&["run", "--once"]);
        // Let it commit a transaction, then kill it a random moment later.
        wait_until("progress", Duration::from_secs(120), || committed_batches().is_some_and(|n| n > 0) || daemon.try_wait().unwrap().is_some());
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..400)));
        match daemon.try_wait().unwrap() {
            None => {
                daemon.kill().unwrap(); // SIGKILL, possibly inside a transaction
                kills += 1;
            }
            Some(status) => assert!(status.success(), "{}", setup.log()),
        }
        daemon.wait().unwrap();
    }
    assert!(kills >= 2, "the run should have been killed mid-way at least twice, was {kills}");
    setup.run_once();

    let committed = read_topic(&topic);
    let everything = read_topic_as(&brokers(), &topic, "read_uncommitted");
    let expected = export_documents(&client).await;
    let counts = counts_by_key(&committed);
    let missing = expected.keys().filter(|k| !counts.contains_key(*k)).count();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    println!(
        "exactly_once, kill -9 x{kills}: read_committed {} events for {} orders ({missing} missing, {duplicated} duplicated); read_uncommitted {} (aborted transactions included)",
        committed.len(),
        expected.len(),
        everything.len()
    );
    assert_eq!(missing, 0, "orders missing");
    assert_eq!(duplicated, 0, "read_committed consumers see each change once");
    let latest = latest_by_key(&committed);
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    db.drop_db().await;
}
