//! The export API source against the real `order-cdc serve`, PostgreSQL and Kafka, with a
//! fault-injecting proxy in between for the fault paths.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::proxy::{Fault, Proxy};
use common::server::*;
use common::*;
use order_cdc::secret::Secret;
use tokio::task::block_in_place;

/// The export documents of the active orders, by id: the bytes the API serves.
async fn active_documents(client: &tokio_postgres::Client) -> HashMap<String, String> {
    let active: Vec<String> = client.query("SELECT id::text FROM sales_orders WHERE status = 'Active'", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let mut docs = export_documents(client).await;
    docs.retain(|id, _| active.contains(id));
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_orders_arrive_byte_equal_and_the_next_run_starts_at_meta_cutoff() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 20_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 3) * interval '1 ms'").await;
    client.batch_execute("BEGIN; SET LOCAL session_replication_role = replica; UPDATE sales_orders SET status = 'Archived' WHERE id % 50 = 0; COMMIT;").await.unwrap();
    let server = TestServer::start(config(&db.url)).await;
    let topic = unique("api");
    let mut p = Pipeline::export_api(&topic, &server.base, TOKEN, "limit = 700");
    p.batch_size = 700;
    let setup = Setup::new(&p);
    block_in_place(|| setup.run_once());
    let expected = active_documents(&client).await;
    assert_eq!(expected.len(), 19_600);
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    assert_eq!(duplicates, 0, "a clean run sends each order once");
    let e = &read_topic(&topic)[0];
    assert_eq!(e.headers["ce_type"], "sales_order.changed");
    assert_eq!(e.headers["ce_source"], format!("{}/sales-orders/export", server.base));
    assert_eq!(e.headers["ce_subject"], e.key);
    println!("{events} events for {} orders", expected.len());

    // The checkpoint's since is the first page's meta.cutoff: a run from it is empty.
    let cp = setup.checkpoint().unwrap();
    let since = cp["position"]["since"].as_str().unwrap().to_string();
    assert!(cp["position"]["cursor"].is_null());
    let (orders, _, _) = server.run(&since, 1000).await;
    assert!(orders.is_empty(), "nothing changed since the cutoff");
    // A change after the cutoff is what the next run brings.
    client.batch_execute("UPDATE sales_orders SET order_status = 'shipped' WHERE id = 7").await.unwrap();
    wait_for_cutoff_past_writes(&client).await;
    block_in_place(|| setup.run_once());
    let latest = latest_by_key(&read_topic(&topic));
    assert!(latest["7"].text().contains("shipped"));
    assert_eq!(read_topic(&topic).len(), 19_601);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_created_and_updated_while_the_daemon_runs_arrive() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 2_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    client.batch_execute("INSERT INTO products (id, sku, name) VALUES (123, 'A', 'A'), (124, 'B', 'B')").await.unwrap();
    let server = TestServer::start(config(&db.url)).await;
    let topic = unique("live");
    let setup = Setup::new(&Pipeline::export_api(&topic, &server.base, TOKEN, ""));
    let mut daemon = setup.spawn(&["run"]);
    for i in 0..20 {
        let mut order = serde_json::json!({
            "channel_id": 1, "order_number": format!("LIVE-{i}"), "order_date": "2024-05-01", "order_status": "pending",
            "bill_to": {"name": "A"}, "ship_to": {"name": "B"}, "items": [{"product_id": 123, "quantity": 1, "unit_price": 5}]
        });
        if i % 2 == 0 {
            order["tags"] = serde_json::json!(["live"]);
        }
        assert_eq!(server.post("/sales-orders", &order).await.0, 201);
        client.batch_execute(&format!("UPDATE sales_orders SET order_status = 'processing' WHERE id = {}", i * 97 + 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the writers, not synchronising
    }
    let expected = active_documents(&client).await;
    assert_eq!(expected.len(), 2_020);
    let check = || {
        let latest = latest_by_key(&read_topic(&topic));
        expected.iter().all(|(id, doc)| latest.get(id).is_some_and(|e| e.text() == doc))
    };
    block_in_place(|| wait_until("every created and updated order with its newest document", Duration::from_secs(60), check));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    db.drop_db().await;
}

/// 429 (seconds and HTTP date), 500, 502 with HTML, resets, replies slower than the
/// timeout, truncated JSON, and a cursor refused mid-run because the key rotated away:
/// nothing is missing at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_ends_with_nothing_missing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 12_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let server = TestServer::start(config(&db.url)).await;
    // The same API after a key rotation that dropped k1: cursors signed by k1 are refused.
    let mut rotated_cfg = config(&db.url);
    rotated_cfg.cursor_keys = BTreeMap::from([("k2".to_string(), Secret::new(KEY_2))]);
    rotated_cfg.cursor_key = "k2".into();
    let rotated = TestServer::start(rotated_cfg).await;
    let proxy = Proxy::start(&server.base).await;
    let date = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc2822().replace("+0000", "GMT");
    let date: &'static str = Box::leak(date.into_boxed_str());
    proxy.inject(
        vec![
            Fault::TooManyRequests("1"),
            Fault::ServerError,
            Fault::BadGatewayHtml,
            Fault::Reset,
            Fault::Slow(Duration::from_secs(3)),
            Fault::Truncated,
            Fault::TooManyRequests(date),
            Fault::Truncated,
            Fault::Reset,
        ],
        2,
    );
    let topic = unique("faults");
    let mut p = Pipeline::export_api(&topic, &proxy.base, TOKEN, "limit = 500\nrequest_timeout = \"1s\"");
    p.batch_size = 500;
    p.metrics_port = free_port();
    let setup = Setup::new(&p);
    // The daemon keeps running, so its metrics can be read once a run has completed.
    let mut daemon = setup.spawn(&["run"]);
    block_in_place(|| wait_until("every fault injected", Duration::from_secs(120), || proxy.pending_faults() == 0));
    // Mid-run, the API's key rotates: the next cursor is refused; the run restarts from since.
    block_in_place(|| wait_until("a run in progress", Duration::from_secs(60), || setup.checkpoint().is_some_and(|c| !c["position"]["cursor"].is_null())));
    proxy.set_upstream(&rotated.base);
    block_in_place(|| {
        wait_until("a completed run", Duration::from_secs(180), || {
            setup.checkpoint().is_some_and(|c| c["position"]["cursor"].is_null() && !c["position"]["since"].as_str().unwrap_or("").starts_with("1970"))
        })
    });
    // Every retry is counted, by what failed.
    let metrics = http_get(p.metrics_port, "/metrics").expect("metrics").1;
    let retries = |reason: &str| metric(p.metrics_port, "order_cdc_source_retries_total", &[("pipeline", "p"), ("reason", reason)]).unwrap_or(0);
    assert_eq!(retries("429"), 2, "{metrics}");
    assert!(retries("500") >= 1 && retries("502") >= 1, "{metrics}");
    assert!(retries("connection") >= 3, "two resets and a timeout: {metrics}");
    assert!(retries("malformed_page") >= 2, "two truncated pages: {metrics}");
    assert!(retries("400") >= 1, "the refused cursor: {metrics}");
    // Each failure is counted once in order_cdc_errors_total: a refused cursor as
    // cursor_refused and not also as source (one snapshot, so the counts agree).
    let sum = |name: &str, label: &str| -> u64 {
        let series = format!("{name}{{");
        metrics
            .lines()
            .filter(|l| l.starts_with(&series) && l.contains(r#"pipeline="p""#) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let refused = sum("order_cdc_errors_total", r#"kind="cursor_refused""#);
    assert!(refused >= 1, "{metrics}");
    let retried = sum("order_cdc_source_retries_total", "reason=");
    assert_eq!(refused + sum("order_cdc_errors_total", r#"kind="source""#), retried, "one error per retry: {metrics}");
    terminate(&daemon);
    let status = block_in_place(|| wait_for_exit(&mut daemon, Duration::from_secs(60), "the daemon did not stop on SIGTERM", || setup.log()));
    let stderr = setup.log();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("refused the cursor"), "the refused cursor is logged: {stderr}");
    assert!(!stderr.contains(TOKEN), "the token never reaches the logs");
    assert_eq!(proxy.injected().len(), 9, "{:?}", proxy.injected());
    let expected = active_documents(&client).await;
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    println!("faults {:?}: {events} events for {} orders, {duplicates} duplicates, 0 missing", proxy.injected(), expected.len());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_50000_order_export_loses_nothing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 50_000, "'2024-03-01T00:00:00Z'::timestamptz + (g / 2) * interval '1 ms'").await;
    let server = TestServer::start(config(&db.url)).await;
    let topic = unique("apicrash");
    let mut p = Pipeline::export_api(&topic, &server.base, TOKEN, "limit = 500");
    p.batch_size = 500;
    let setup = Setup::new(&p);
    let mut kills = 0;
    for _ in 0..5 {
        let before = setup.checkpoint();
        let mut daemon = setup.spawn(&["run", "--once"]);
        block_in_place(|| {
            wait_until("progress", Duration::from_secs(60), || setup.checkpoint() != before || daemon.try_wait().unwrap().is_some());
            std::thread::sleep(Duration::from_millis(rand::random_range(0..300)));
        });
        if daemon.try_wait().unwrap().is_none() {
            daemon.kill().unwrap();
            kills += 1;
        }
        daemon.wait().unwrap();
    }
    assert!(kills >= 3, "killed mid-run only {kills} times");
    block_in_place(|| setup.run_once());
    let expected = active_documents(&client).await;
    let (events, duplicates) = block_in_place(|| assert_topic_matches(&topic, &expected));
    println!("kill -9 x{kills}: {events} events for {} orders, {duplicates} duplicates, 0 missing", expected.len());
    db.drop_db().await;
}

/// A wrong token stops that pipeline with a clear error and keeps /health/ready false,
/// while another pipeline goes on; nothing is published for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_stops_the_pipeline_unready_and_publishes_nothing() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 300, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let server = TestServer::start(config(&db.url)).await;
    let topic = unique("denied");
    let other_topic = unique("other");
    let mut p = Pipeline::export_api(&topic, &server.base, "wrong-token-0123456789", "");
    p.metrics_port = free_port();
    p.extra = format!(
        "[pipelines.other]\ntopic = \"{other_topic}\"\npoll_interval = \"200ms\"\n[pipelines.other.source]\nkind = \"export_api\"\nbase_url = \"{}\"\ntoken = \"{TOKEN}\"\n",
        server.base
    );
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    let port = p.metrics_port;
    block_in_place(|| {
        wait_until("the bad pipeline to fail", Duration::from_secs(30), || {
            http_get(port, "/health/ready").is_some_and(|(status, body)| status == 503 && body.contains("failed"))
        });
        let (_, body) = http_get(port, "/health/ready").unwrap();
        assert!(body.contains("refused the token") && body.contains("source.token"), "{body}");
        assert!(!body.contains("wrong-token"), "{body}");
        wait_until("the other pipeline to deliver", Duration::from_secs(30), || read_topic(&other_topic).len() == 300);
        assert!(read_topic(&topic).is_empty(), "nothing published for the refused pipeline");
    });
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon goes on with the other pipeline");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // --once: the same pipeline alone exits non-zero with one clear line.
    let out = block_in_place(|| run_with_deadline(setup.command(&["run", "--once", "--pipeline", "p"]), Duration::from_secs(60)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: pipeline p:") && stderr.contains("refused the token"), "{stderr}");
    db.drop_db().await;
}

/// A record without order_id goes to the dead-letter topic with the reason, and the run
/// goes on; with on_bad_record = "fail" the pipeline stops before that page's checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_without_order_id_is_dead_lettered_or_stops_the_pipeline() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 1_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let server = TestServer::start(config(&db.url)).await;
    let proxy = Proxy::start(&server.base).await;
    proxy.inject(vec![Fault::StripOrderId], 3); // the third page
    let topic = unique("dlq");
    let mut p = Pipeline::export_api(&topic, &proxy.base, TOKEN, "limit = 100");
    p.batch_size = 100;
    block_in_place(|| Setup::new(&p).run_once());
    let dead = block_in_place(|| read_topic(&format!("{topic}.dlq")));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["order_cdc_error"], "the record has no order_id");
    assert!(dead[0].text().contains("\"order_ref\":201"), "the raw record is kept: {}", dead[0].text());
    let mut expected = active_documents(&client).await;
    expected.remove("201");
    block_in_place(|| assert_topic_matches(&topic, &expected));

    proxy.inject(vec![Fault::StripOrderId], 1);
    let failing_topic = unique("dlqfail");
    let mut p = Pipeline::export_api(&failing_topic, &proxy.base, TOKEN, "limit = 100");
    p.pipeline_extra = "on_bad_record = \"fail\"";
    let setup = Setup::new(&p);
    let out = block_in_place(|| run_with_deadline(setup.command(&["run", "--once"]), Duration::from_secs(60)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot become an event") && stderr.contains("no order_id"), "{stderr}");
    assert!(setup.checkpoint().is_none(), "nothing committed past the bad record");
    assert!(block_in_place(|| read_topic(&failing_topic)).is_empty());
    db.drop_db().await;
}
