//! kill -9 at random points of a 50,000-order run, several times: after a final clean run
//! nothing is missing. Duplicates are allowed (at least once), counted and printed.

mod common;

use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms'").await;
    let topic = unique("crash");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 250;
    let setup = Setup::new(&p);

    let mut kills = 0;
    for _ in 0..5 {
        let before = setup.checkpoint();
        let mut daemon = setup.spawn(&["run", "--once"]);
        // Let it make progress (a new checkpoint), then kill it a random moment later.
        wait_until("progress", Duration::from_secs(60), || {
            setup.checkpoint() != before || daemon.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..400)));
        if daemon.try_wait().unwrap().is_none() {
            daemon.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        daemon.wait().unwrap();
        // A half-written checkpoint would not parse: the temp-file-and-rename holds.
        setup.checkpoint();
    }
    assert!(kills >= 3, "the run should have been killed mid-way at least 3 times, was {kills}");
    setup.run_once();

    let events = read_topic(&topic);
    let latest = latest_by_key(&events);
    let expected = export_documents(&client).await;
    let missing: Vec<_> = expected.keys().filter(|k| !latest.contains_key(*k)).collect();
    assert!(missing.is_empty(), "{} orders missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    let duplicates = events.len() - expected.len();
    println!("kill -9 x{kills}: {} events for {} orders, {duplicates} duplicates, 0 missing", events.len(), expected.len());
    db.drop_db().await;
}
