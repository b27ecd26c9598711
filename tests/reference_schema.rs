//! The reference schema as writers meet it. Migration 6: a change to an order never
//! queues in a GIN index's pending list, whose merge made one writer's statement run for
//! up to a second and held every pipeline's cutoff behind it (README, latency).

mod common;

use common::*;

/// The entries queued in the pending list of the order search index.
async fn pending(client: &tokio_postgres::Client) -> i64 {
    let row = client.query_one("SELECT pending_tuples::bigint FROM pgstatginindex('sales_orders_search')", &[]).await.unwrap();
    row.get(0)
}

async fn update_every_order(client: &tokio_postgres::Client, status: &str) {
    client.execute("UPDATE sales_orders SET order_status = $1", &[&status]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn order_changes_never_queue_in_the_search_index() {
    let (db, client) = TestDb::migrated().await;
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS pgstattuple").await.unwrap();
    insert_orders(&client, 1, 300, "now()").await;
    // An update changes updated_at, which is indexed: not a HOT update, so every index of
    // the row gets an entry, the search index too.
    update_every_order(&client, "shipped").await;
    assert_eq!(pending(&client).await, 0, "with fastupdate off, no entry waits in the pending list");

    // The measure can fail: the same writes with GIN's default queue up.
    client.batch_execute("ALTER INDEX sales_orders_search SET (fastupdate = on)").await.unwrap();
    update_every_order(&client, "delivered").await;
    assert!(pending(&client).await > 0, "with fastupdate on, the entries queue");
    db.drop_db().await;
}
