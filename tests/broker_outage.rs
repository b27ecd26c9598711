//! Kafka stops in the middle of a run: the checkpoint does not move while the broker is
//! down; when it is back, the run completes and nothing is missing.
//!
//! The test starts a private single-node broker of its own (same jars, its own ports and
//! data directory: `common::PrivateServer`), so stopping it disturbs no other test and does
//! not depend on who started the shared broker on 9092.

mod common;

use std::time::{Duration, Instant};

use common::private::PrivateServer;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_checkpoint_waits_for_the_broker_and_nothing_is_lost() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 60_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let broker = PrivateServer::kafka();
    let topic = unique("outage");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 250;
    p.brokers = Some(broker.bootstrap());
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run", "--once"]);
    wait_until("the first commit", Duration::from_secs(60), || setup.checkpoint().is_some());

    broker.down();
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
    broker.up();

    let status = wait_for_exit(&mut daemon, Duration::from_secs(300), "the run did not complete after the broker came back", || setup.log());
    assert!(status.success(), "{}", setup.log());
    println!("daemon log: {} lines", setup.log().lines().count());
    let events = read_topic_from(&broker.bootstrap(), &topic);
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
