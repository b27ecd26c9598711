//! PostgreSQL → Kafka end to end, against the real broker and database: every test reads
//! its topic back and compares it with the table.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// 10,000 orders, 3,000 of them sharing one updated_at, pages of 500: the tie spans six
/// page boundaries, and every order must arrive exactly once with its document, key and
/// CloudEvents headers.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_orders_with_a_shared_updated_at_arrive_once_each() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 3_500, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    insert_orders(&client, 3_501, 3_000, "'2024-03-01T00:00:05.123456Z'::timestamptz").await;
    insert_orders(&client, 6_501, 3_500, "'2024-03-01T00:00:10Z'::timestamptz + g * interval '1 us'").await;
    let topic = unique("orders");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 500;
    let setup = Setup::new(&p);
    setup.run_once();

    let events = read_topic(&topic);
    let expected = export_documents(&client).await;
    assert_eq!(expected.len(), 10_000);
    let counts = counts_by_key(&events);
    let duplicates: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicates.is_empty(), "duplicates in a clean run: {:?}", &duplicates[..duplicates.len().min(5)]);
    assert_eq!(events.len(), 10_000, "events on the topic");
    for e in &events {
        let doc = expected.get(&e.key).unwrap_or_else(|| panic!("unknown key {}", e.key));
        assert_eq!(e.text(), doc, "value of order {} is the table's document, byte for byte", e.key);
        let parsed: serde_json::Value = serde_json::from_str(e.text()).unwrap();
        assert_eq!(parsed["order_id"].to_string(), e.key);
        assert_eq!(e.headers["ce_specversion"], "1.0");
        assert_eq!(e.headers["ce_type"], "sales_order.changed");
        assert_eq!(e.headers["ce_subject"], e.key);
        assert_eq!(e.headers["ce_time"], parsed["updated_at"].as_str().unwrap());
        assert_eq!(e.headers["content-type"], "application/json");
        assert!(e.headers["ce_id"].starts_with(&format!("{}@", e.key)));
        assert!(e.headers["ce_source"].ends_with("/sales_orders") && !e.headers["ce_source"].contains("postgres:postgres"));
    }
    // The shared-timestamp orders carry it to the microsecond.
    let tied = events.iter().find(|e| e.key == "5000").unwrap();
    assert_eq!(tied.headers["ce_time"], "2024-03-01T00:00:05.123456Z");
    // The checkpoint ends the run: the next one starts at its cutoff.
    let cp = setup.checkpoint().expect("a checkpoint");
    assert!(cp["position"]["cutoff"].is_null() && cp["position"]["after"].is_null(), "{cp}");
    db.drop_db().await;
}

/// Orders changed while a run is in progress arrive (in that run or the next) with their
/// newer document, and the second run re-sends nothing that did not change.
#[tokio::test(flavor = "multi_thread")]
async fn orders_updated_during_a_run_arrive_with_the_newer_document() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 30_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let topic = unique("orders");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 200;
    let setup = Setup::new(&p);
    let mut run = setup.spawn(&["run", "--once"]);
    wait_until("the first commit", Duration::from_secs(60), || setup.checkpoint().is_some());
    // Updates through the triggers, as an application makes them: updated_at = now().
    client.batch_execute("UPDATE sales_orders SET order_status = 'shipped' WHERE id % 1000 = 0").await.unwrap();
    client.batch_execute("UPDATE sales_order_items SET quantity_shipped = 1 WHERE sales_order_id % 1000 = 500").await.unwrap();
    assert!(run.wait().unwrap().success());
    setup.run_once();

    let events = read_topic(&topic);
    let latest = latest_by_key(&events);
    let expected = export_documents(&client).await;
    assert_eq!(latest.len(), 30_000);
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc, "the newest event of order {id} is its current document");
    }
    for id in ["1000", "30000"] {
        assert!(latest[id].text().contains(r#""order_status" : "shipped""#) || latest[id].text().contains(r#""order_status":"shipped""#));
    }
    // Only changed orders are sent twice.
    let twice = counts_by_key(&events).values().filter(|&&n| n > 1).count();
    assert!(twice <= 60, "{twice} orders were sent more than once");
    db.drop_db().await;
}

/// Another table, other column names, a uuid id, a second-precision `timestamp` column,
/// the `row` document, a deleted predicate (tombstones), a filter, and records whose
/// document is NULL (dead-letter topic with the reason).
#[tokio::test(flavor = "multi_thread")]
async fn any_table_with_row_documents_tombstones_and_dead_letters() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE SCHEMA shop;
             CREATE TABLE shop.\"Orders\" (
                 order_ref uuid PRIMARY KEY,
                 changed timestamp(0) NOT NULL,
                 state text NOT NULL,
                 tenant int NOT NULL,
                 payload jsonb);
             CREATE INDEX ON shop.\"Orders\" (changed, order_ref);
             INSERT INTO shop.\"Orders\"
               SELECT md5(g::text)::uuid, timestamp '2024-05-01' + (g / 7) * interval '1 second',
                      CASE WHEN g % 10 = 0 THEN 'gone' ELSE 'live' END, g % 2,
                      CASE WHEN g % 13 = 0 THEN NULL ELSE jsonb_build_object('n', g) END
                 FROM generate_series(1, 2000) g;",
        )
        .await
        .unwrap();
    let topic = unique("shop");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 100;
    p.source_extra = r#"table = "shop.\"Orders\""
id_column = "order_ref"
updated_at_column = "changed"
filter = "t.tenant = 1"
document = "t.payload"
deleted = "t.state = 'gone'""#;
    let setup = Setup::new(&p);
    setup.run_once();

    let events = read_topic(&topic);
    let rows = client
        .query("SELECT order_ref::text, state, payload::text FROM shop.\"Orders\" WHERE tenant = 1", &[])
        .await
        .unwrap();
    assert_eq!(events.len() + count_dead(&format!("{topic}.dlq"), &rows), rows.len());
    let by_key = latest_by_key(&events);
    for row in &rows {
        let (id, state, payload): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        match (state.as_str(), payload) {
            ("gone", _) => {
                let e = &by_key[&id];
                assert!(e.value.is_none(), "a deleted order is a tombstone");
                assert_eq!(e.headers["ce_type"], "sales_order.deleted");
            }
            (_, Some(doc)) => assert_eq!(by_key[&id].text(), doc),
            (_, None) => assert!(!by_key.contains_key(&id), "a NULL document is not an event"),
        }
    }
    db.drop_db().await;
}

/// A `sales_orders` table that is not the reference schema gets `row` documents by
/// default (the export document needs the tables of `order-cdc migrate`).
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_sales_orders_table_defaults_to_row_documents() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE SCHEMA erp;
             CREATE TABLE erp.sales_orders (id bigint PRIMARY KEY, modified_at timestamptz NOT NULL, customer text);
             INSERT INTO erp.sales_orders
               SELECT g, timestamptz '2024-05-01' + g * interval '1 ms', 'customer ' || g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let topic = unique("erp");
    let mut p = Pipeline::new(&db.url, &topic);
    p.source_extra = "table = \"erp.sales_orders\"\nupdated_at_column = \"modified_at\"";
    let setup = Setup::new(&p);
    setup.run_once();
    let rows = client.query("SELECT id::text, to_jsonb(t)::text FROM erp.sales_orders t", &[]).await.unwrap();
    let latest = latest_by_key(&read_topic(&topic));
    assert_eq!(latest.len(), rows.len());
    for row in &rows {
        assert_eq!(latest[row.get::<_, &str>(0)].text(), row.get::<_, &str>(1));
    }
    db.drop_db().await;
}

/// A document larger than Kafka takes (librdkafka's message.max.bytes, 1,000,000 by
/// default) cannot be published: it goes to the dead-letter topic, key and reason without
/// the document, and the run goes on; with `on_bad_record = "fail"` it stops the pipeline
/// and names the order.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_too_large_for_kafka_is_dead_lettered_or_stops_the_pipeline() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, updated_at timestamptz NOT NULL, body text NOT NULL);
             INSERT INTO notes SELECT g, timestamptz '2024-05-01' + g * interval '1 ms',
                                      CASE WHEN g = 150 THEN repeat('x', 1500000) ELSE 'note ' || g END
                                 FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    let topic = unique("notes");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 100;
    p.source_extra = "table = \"notes\"\ndocument = \"json_build_object('id', t.id, 'body', t.body)\"";
    let setup = Setup::new(&p);
    setup.run_once();
    let events = latest_by_key(&read_topic(&topic));
    assert_eq!(events.len(), 299, "every other order is published");
    assert!(!events.contains_key("150"));
    let dead = read_topic(&format!("{topic}.dlq"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "150");
    assert!(dead[0].headers["order_cdc_error"].contains("message.max.bytes"), "{:?}", dead[0].headers);
    assert!(dead[0].value.as_deref().unwrap_or_default().is_empty(), "the document is left out");

    let topic = unique("notes-fail");
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 100;
    p.pipeline_extra = "on_bad_record = \"fail\"";
    p.source_extra = "table = \"notes\"\ndocument = \"json_build_object('id', t.id, 'body', t.body)\"";
    let setup = Setup::new(&p);
    let out = setup.command(&["run", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("order 150") && stderr.contains("message.max.bytes"), "{stderr}");
    let cp = setup.checkpoint().expect("the pages before it were committed");
    assert!(cp["position"]["after"][1].as_str().unwrap().parse::<i64>().unwrap() < 150, "{cp}");
    db.drop_db().await;
}

/// Orders written by hand with only the columns DESIGN.md names (or none at all) are
/// valid rows of the reference schema, and are exported.
#[tokio::test(flavor = "multi_thread")]
async fn orders_inserted_with_the_fewest_columns_are_exported() {
    let (db, client) = TestDb::migrated().await;
    client
        .batch_execute(
            "INSERT INTO sales_orders (id, status, order_status) VALUES (7, 'Active', 'pending');
             INSERT INTO sales_orders DEFAULT VALUES;",
        )
        .await
        .unwrap();
    let topic = unique("fewest");
    Setup::new(&Pipeline::new(&db.url, &topic)).run_once();
    let latest = latest_by_key(&read_topic(&topic));
    assert_eq!(latest.len(), 2);
    let doc: serde_json::Value = serde_json::from_str(latest["7"].text()).unwrap();
    assert_eq!(doc["order_number"], "SO-7", "a default order number");
    assert_eq!(doc["order_status"], "pending");
    db.drop_db().await;
}

fn count_dead(topic: &str, rows: &[tokio_postgres::Row]) -> usize {
    let dead = read_topic(topic);
    let expected: HashSet<String> = rows
        .iter()
        .filter(|r| r.get::<_, &str>(1) != "gone" && r.get::<_, Option<String>>(2).is_none())
        .map(|r| r.get(0))
        .collect();
    assert!(!expected.is_empty());
    let got: HashSet<String> = dead.iter().map(|e| e.key.clone()).collect();
    assert_eq!(got, expected, "dead letters are exactly the records without a document");
    for e in &dead {
        assert_eq!(e.headers["order_cdc_error"], "the document expression yielded NULL");
    }
    dead.len()
}

/// The structured envelope: the value is a CloudEvent with the document as `data`.
#[tokio::test(flavor = "multi_thread")]
async fn structured_envelope_wraps_the_document() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 s'").await;
    client.batch_execute("UPDATE sales_orders SET status = 'Archived' WHERE id = 7").await.unwrap();
    let topic = unique("structured");
    let mut p = Pipeline::new(&db.url, &topic);
    p.pipeline_extra = r#"envelope = "structured""#;
    Setup::new(&p).run_once();
    let events = read_topic(&topic);
    let expected = export_documents(&client).await;
    assert_eq!(events.len(), 50);
    for e in &events {
        let v: serde_json::Value = serde_json::from_str(e.text()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["subject"], e.key.as_str());
        if e.key == "7" {
            assert_eq!(v["type"], "sales_order.deleted");
            assert!(v["data"].is_null());
        } else {
            assert_eq!(v["type"], "sales_order.changed");
            let doc: serde_json::Value = serde_json::from_str(&expected[&e.key]).unwrap();
            assert_eq!(v["data"], doc);
        }
    }
    db.drop_db().await;
}

/// The daemon keeps polling; /metrics counts exactly the events on the topic; readiness is
/// reported; SIGTERM drains and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_metrics_match_the_topic_and_sigterm_exits_cleanly() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 3_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let topic = unique("metrics");
    let mut p = Pipeline::new(&db.url, &topic);
    p.metrics_port = free_port();
    p.batch_size = 250;
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    let port = p.metrics_port;
    let delivered = |port| metric(port, "order_cdc_events_total", &[("pipeline", "p"), ("outcome", "delivered")]).unwrap_or(0);
    wait_until("3,000 delivered", Duration::from_secs(60), || delivered(port) >= 3_000);
    // A change while the daemon runs arrives in a later run.
    client.batch_execute("UPDATE sales_orders SET order_status = 'cancelled' WHERE id = 42").await.unwrap();
    wait_until("the update delivered", Duration::from_secs(60), || delivered(port) >= 3_001);
    let (status, ready) = http_get(port, "/health/ready").unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(http_get(port, "/health/live").unwrap().0, 200);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for family in ["order_cdc_batches_total", "order_cdc_checkpoint_commits_total", "order_cdc_lag_seconds", "order_cdc_cutoff_holdback_seconds", "order_cdc_source_requests_total", "order_cdc_delivery_duration_seconds", "order_cdc_run_duration_seconds", "order_cdc_in_flight_events", "order_cdc_build_info"] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    assert!(!metrics.contains("postgres:postgres"), "no credentials in metrics");
    let events = read_topic(&topic);
    assert_eq!(delivered(port), events.len() as u64, "metrics count what the topic holds");
    let latest = latest_by_key(&events);
    assert!(latest["42"].text().contains("cancelled"));

    // SIGTERM: drains, commits, exits 0.
    terminate(&daemon);
    let exit = wait_for_exit(&mut daemon, Duration::from_secs(30), "daemon did not stop on SIGTERM", || setup.log());
    assert!(exit.success(), "exit status {exit:?}");
    db.drop_db().await;
}

/// checkpoint show / set / reset on a real checkpoint, and a replay after `set`.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_commands_show_set_and_reset() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 100, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 h'").await;
    let topic = unique("cp");
    let setup = Setup::new(&Pipeline::new(&db.url, &topic));
    setup.run_once();
    let show = setup.command(&["checkpoint", "show", "--pipeline", "p"]).output().unwrap();
    assert!(show.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["pipeline"], "p");
    assert!(shown["position"]["since"].is_string());

    // Rewind to the 51st order's time: the next run re-sends orders 51..100.
    let set = setup.command(&["checkpoint", "set", "--pipeline", "p", "--since", "2024-03-03 03:00:00"]).output().unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    setup.run_once();
    let counts = counts_by_key(&read_topic(&topic));
    assert_eq!(counts["50"], 1);
    assert_eq!(counts["51"], 2);
    assert_eq!(counts["100"], 2);

    let bad = setup.command(&["checkpoint", "set", "--pipeline", "p", "--since", "last tuesday"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("last tuesday"));

    let reset = setup.command(&["checkpoint", "reset", "--pipeline", "p"]).output().unwrap();
    assert!(reset.status.success());
    assert!(setup.checkpoint().is_none());
    setup.run_once();
    assert_eq!(counts_by_key(&read_topic(&topic))["1"], 2, "after a reset everything is sent again");
    db.drop_db().await;
}

/// The export document has the shape of seed 001's example, escapes text, writes NULL as
/// null and money as the shortest number, and keeps microseconds.
#[tokio::test(flavor = "multi_thread")]
async fn the_export_document_has_the_seed_001_shape() {
    let (db, client) = TestDb::migrated().await;
    client
        .batch_execute(
            r#"INSERT INTO products (id, sku, name, upc) VALUES (123, 'WIDGET-001', 'Premium "Widget"', '123456789012');
               INSERT INTO sales_orders (id, order_number, order_status, total_amount, total_tax, total_shipping, total_paid,
                                         customer_id, customer_username, customer_email, order_date)
                    VALUES (1001, 'ORD-2024-001', 'awaiting_shipment', 128.23, 15.75, 12.50, 128.23, 42, 'johndoe', NULL, '2024-01-15');
               INSERT INTO sales_order_items (sales_order_id, line_number, product_id, sku, name, quantity, unit_price, tax)
                    VALUES (1001, 1, 123, 'WIDGET-001', 'Premium "Widget"', 2, 49.99, 7.5);
               INSERT INTO shipments (sales_order_id, carrier, tracking_number, status) VALUES (1001, E'UPS\\Ground\n', NULL, 'pending');
               INSERT INTO fulfillment_orders (sales_order_id, order_number, status, warehouse_group_id) VALUES (1001, 'ORD-2024-001-A', 'pending', 3);"#,
        )
        .await
        .unwrap();
    let topic = unique("shape");
    Setup::new(&Pipeline::new(&db.url, &topic)).run_once();
    let events = read_topic(&topic);
    assert_eq!(events.len(), 1);
    let doc: serde_json::Value = serde_json::from_str(events[0].text()).expect("valid JSON");
    let updated_at: chrono::DateTime<chrono::Utc> =
        client.query_one("SELECT updated_at FROM sales_orders WHERE id = 1001", &[]).await.unwrap().get(0);
    assert_eq!(doc["order_id"], 1001);
    assert_eq!(doc["order_number"], "ORD-2024-001");
    assert_eq!(doc["status"], "Active");
    assert_eq!(doc["order_status"], "awaiting_shipment");
    assert_eq!(doc["total_amount"], 128.23);
    assert_eq!(doc["total_shipping"], 12.5);
    assert_eq!(doc["customer_id"], 42);
    assert!(doc["customer_email"].is_null());
    assert_eq!(doc["order_date"], "2024-01-15");
    assert_eq!(doc["updated_at"], order_cdc::timestamp::format(updated_at));
    assert_eq!(doc["items"][0]["name"], "Premium \"Widget\"");
    assert_eq!(doc["items"][0]["price"], 49.99);
    assert_eq!(doc["items"][0]["quantity"], 2);
    assert_eq!(doc["shipments"][0]["carrier"], "UPS\\Ground\n");
    assert!(doc["shipments"][0]["tracking_number"].is_null());
    assert!(doc["shipments"][0]["shipped_at"].is_null());
    assert_eq!(doc["fulfillment_orders"][0]["warehouse_group_id"], 3);
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    for key in ["order_id", "order_number", "status", "order_status", "total_amount", "total_tax", "total_shipping", "total_paid", "customer_id", "customer_username", "customer_email", "order_date", "created_at", "updated_at", "items", "shipments", "fulfillment_orders"] {
        assert!(keys.contains(&key), "{key} missing");
    }
    db.drop_db().await;
}
