//! kill -9 at random points of a 50,000-order run, several times: after a final clean run
//! nothing is missing. Duplicates are allowed (at least once), counted and printed.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_loses_nothing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms'").await;
    let topic = unique("crash");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 250;
    let setup = Setup::new(&p);

    // A half-written checkpoint would not parse: the temp-file-and-rename holds.
    let kills = kill_9_rounds(&setup, 5, || setup.checkpoint());
    assert!(kills >= 3, "the run should have been killed mid-way at least 3 times, was {kills}");
    setup.run_once();

    let expected = export_documents(&client).await;
    let (events, duplicates) = assert_topic_matches(&topic, &expected);
    println!("kill -9 x{kills}: {events} events for {} orders, {duplicates} duplicates, 0 missing", expected.len());
    db.drop_db().await;
}
