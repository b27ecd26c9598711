//! Kafka stops in the middle of a run: the checkpoint does not move while the broker is
//! down; when it is back, the run completes and nothing is missing.
//!
//! This stops the shared local broker, so it is the only test in its binary (cargo runs
//! test binaries one after another).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn stack(action: &str) {
    let status = Command::new("bash").arg(stack_script()).arg(action).status().expect("run stack.sh");
    assert!(status.success(), "stack.sh {action} failed");
}

/// Starts the broker again however the test ends, so later tests find it up.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        stack("kafka-up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checkpoint_waits_for_the_broker_and_nothing_is_lost() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 60_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let topic = unique("outage");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 250;
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run", "--once"]);
    wait_until("the first commit", Duration::from_secs(60), || setup.checkpoint().is_some());

    let back = BrokerBack;
    stack("kafka-down");
    // Acknowledgements received just before the stop may still be committing; after that
    // the checkpoint must stand still for as long as the broker is away.
    wait_until("commits to settle", Duration::from_secs(10), || {
        let a = setup.checkpoint();
        std::thread::sleep(Duration::from_millis(500));
        a == setup.checkpoint()
    });
    let frozen = setup.checkpoint();
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert_eq!(setup.checkpoint(), frozen, "the checkpoint moved while the broker was down");
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon gave up while the broker was down");
        std::thread::sleep(Duration::from_millis(100));
    }
    let frozen_position = frozen.unwrap()["position"].clone();
    assert!(!frozen_position["cutoff"].is_null(), "the run was interrupted mid-way: {frozen_position}");
    drop(back); // broker up again

    let status = wait_for_exit(&mut daemon, Duration::from_secs(300), "the run did not complete after the broker came back", || setup.log());
    assert!(status.success(), "{}", setup.log());
    println!("daemon log: {} lines", setup.log().lines().count());
    let events = read_topic(&topic);
    let latest = latest_by_key(&events);
    let expected = export_documents(&client).await;
    let missing = expected.keys().filter(|k| !latest.contains_key(*k)).count();
    assert_eq!(missing, 0, "orders missing after the outage");
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    println!("broker outage: {} events for {} orders, {} duplicates, 0 missing", events.len(), expected.len(), events.len() - expected.len());
    db.drop_db().await;
}
