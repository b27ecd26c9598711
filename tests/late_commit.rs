//! The late-commit hole: a transaction that started before a run's cutoff and commits
//! after the run writes rows below the cutoff. The guard (`cutoff = "xact"`) holds the
//! cutoff below the oldest open transaction, so the next run still sees them.

mod common;

use chrono::{DateTime, Utc};
use common::*;

async fn open_late_transaction(db: &TestDb, order: i64) -> (tokio_postgres::Client, DateTime<Utc>) {
    let late = db.client().await;
    late.batch_execute(&format!("BEGIN; UPDATE sales_orders SET order_status = 'late-commit' WHERE id = {order}")).await.unwrap();
    let started: DateTime<Utc> = late.query_one("SELECT now()", &[]).await.unwrap().get(0);
    (late, started)
}

fn since_of(setup: &Setup) -> DateTime<Utc> {
    let cp = setup.checkpoint().expect("a checkpoint");
    cp["position"]["since"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_delivers_a_change_committed_after_the_run() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 500, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let (late, started) = open_late_transaction(&db, 5).await;
    // A change committed after the late transaction began: the run may not pass it either.
    client.batch_execute("UPDATE sales_orders SET order_status = 'after' WHERE id = 6").await.unwrap();

    let topic = unique("late");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    setup.run_once();
    assert!(since_of(&setup) <= started, "the cutoff was held at or below the open transaction's start");
    // Order 5 goes out in its committed (old) version; order 6 changed after the held
    // cutoff and waits for the next run.
    let first = latest_by_key(&read_topic(&topic));
    assert_eq!(first.len(), 499, "every order but 6");
    assert!(!first.contains_key("6") && !first["5"].text().contains("late-commit"));

    late.batch_execute("COMMIT").await.unwrap();
    setup.run_once();
    let latest = latest_by_key(&read_topic(&topic));
    assert!(latest["5"].text().contains("late-commit"), "the late commit arrived: {}", latest["5"].text());
    assert!(latest["6"].text().contains("after"));
    let expected = export_documents(&client).await;
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    db.drop_db().await;
}

/// The same scenario with a plain lag, as timestamp pollers do: the run moves its
/// checkpoint past the open transaction's start while that transaction is uncommitted, so
/// its change lands behind the checkpoint. Printed, not asserted as wanted behaviour.
#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_lag_moves_past_an_open_transaction() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 500, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let (late, started) = open_late_transaction(&db, 5).await;
    let topic = unique("lag");
    let mut p = Pipeline::new(&db.url, &topic);
    p.source_extra = "cutoff = \"lag\"\ncutoff_lag = \"1ms\"";
    let setup = Setup::new(&p);
    setup.run_once();
    let since = since_of(&setup);
    assert!(since > started, "with a fixed lag the checkpoint passes the open transaction ({since} > {started})");
    late.batch_execute("COMMIT").await.unwrap();
    setup.run_once();
    let latest = latest_by_key(&read_topic(&topic));
    let missed = !latest["5"].text().contains("late-commit");
    println!("cutoff = \"lag\": the change committed late was {}", if missed { "LOST (the hole the xact guard closes)" } else { "delivered" });
    db.drop_db().await;
}

/// A role that cannot see other sessions cannot run the guard: order-cdc says so at
/// start-up and falls back to cutoff_lag.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_pg_read_all_stats_falls_back_to_the_lag_with_a_warning() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 100, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    let role = unique("reader");
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}';
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
        ))
        .await
        .unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&format!("pw-{role}"))).unwrap();
    let url = url.to_string();
    let topic = unique("limited");
    let setup = Setup::new(&Pipeline::new(&url, &topic));
    let out = setup.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot see other sessions"), "{stderr}");
    assert!(!stderr.contains(&format!("pw-{role}")), "the password never reaches the logs");
    assert_eq!(read_topic(&topic).len(), 100);
    db.drop_db().await;
    let _ = client.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

/// A connection that only LISTENs reads each notification in a short transaction of its
/// own while it is `idle`, and pg_stat_activity shows that transaction with the start of
/// the connection's last statement: the LISTEN, long ago. It writes nothing, so the guard
/// must not take it for an open transaction; it did, and while notifications flowed it
/// held runs' cutoffs back to the LISTEN (seen in `benches/latency.rs` as stalls).
#[tokio::test(flavor = "multi_thread")]
async fn a_listening_connection_does_not_hold_the_cutoff() {
    use order_cdc::store::cutoff::{self, CutoffMode};
    let (db, client) = TestDb::migrated().await;
    let listener = db.client().await;
    let pid: i32 = listener.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    listener.batch_execute("LISTEN guard_test").await.unwrap();
    let listened: DateTime<Utc> = client.query_one("SELECT clock_timestamp()", &[]).await.unwrap().get(0);
    // The LISTEN must lie further back than the guard's margin for a hold to show.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client.query_one("SELECT clock_timestamp() > $1::timestamptz + interval '1 s'", &[&listened]).await.unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < end, "the database clock did not pass the LISTEN");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let notifier = db.client().await;
    let flood = tokio::spawn(async move {
        for i in 0..10_000 {
            notifier.execute("SELECT pg_notify('guard_test', $1)", &[&i.to_string()]).await.unwrap();
        }
    });
    let guard = db.client().await;
    let mode = CutoffMode::Xact { max_hold: std::time::Duration::from_secs(3600) };
    let (mut looks, mut held) = (0, 0);
    while !flood.is_finished() {
        let c = cutoff::cutoff(&guard, mode).await.unwrap();
        looks += 1;
        held += usize::from(c.held_by.is_some_and(|t| t.pid == pid));
    }
    flood.await.unwrap();
    assert!(looks >= 50, "only {looks} cutoffs were taken during the notifications");
    assert_eq!(held, 0, "{held} of {looks} cutoffs were held back by a connection that only listens");
    drop(listener);
    db.drop_db().await;
}
