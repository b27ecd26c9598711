//! A backfill shows its progress: while a pipeline is behind, `order_cdc_backlog_orders`
//! carries the source's estimate of the orders left and a line is logged every
//! `progress_interval` (orders done, rate, orders left, ETA); once it has caught up the
//! backlog reads 0 and the log is quiet. The PostgreSQL estimate is the planner's, so it
//! is checked against the true count along a run.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// The planner's estimate of the keys left, at every tenth page of a run over 20,000
/// orders whose changes are bunched (a tenth of the days hold half of them): within 10 %
/// of the true count, each in a few milliseconds; between runs there is none.
#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_estimate_follows_the_true_count_along_a_run() {
    use order_cdc::config::{Config, SourceConfig};
    use order_cdc::source::{postgres::PostgresSource, Source};

    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 20_000, "'2024-01-01'::timestamptz + (CASE WHEN g % 2 = 0 THEN g % 10 ELSE g % 100 END) * interval '1 day' + g * interval '1 ms'").await;
    client.batch_execute("ANALYZE sales_orders").await.unwrap();
    let setup = Setup::new(&Pipeline::new(&db.url, "unused"));
    let config = Config::load(Some(&setup.config)).unwrap();
    let SourceConfig::Postgres(cfg) = &config.pipelines["p"].source else { unreachable!() };
    let metrics = order_cdc::metrics::Metrics::new().pipeline("p");
    let mut source = PostgresSource::open(cfg.clone(), "p", 500, metrics, false).await.unwrap();
    source.restore(None, order_cdc::timestamp::epoch()).unwrap();

    let (mut read, mut page, mut worst, mut slowest) = (0u64, 0, 0.0f64, Duration::ZERO);
    loop {
        let batch = source.next_batch().await.unwrap();
        read += batch.records.len() as u64;
        page += 1;
        if batch.ends_run {
            assert_eq!(read, 20_000);
            assert_eq!(source.backlog().await, None, "between runs there is no window to estimate");
            break;
        }
        if page % 10 == 1 {
            let begun = Instant::now();
            let estimate = source.backlog().await.expect("an estimate mid-run");
            slowest = slowest.max(begun.elapsed());
            let left = 20_000 - read;
            let error = (estimate as f64 - left as f64).abs() / 20_000.0;
            worst = worst.max(error);
            assert!(error <= 0.1, "page {page}: estimated {estimate} orders left, {left} are");
        }
    }
    println!("the estimate was off by at most {:.1} % of the table; the slowest took {slowest:?}", worst * 100.0);
    assert!(slowest < Duration::from_millis(500), "an estimate is a plan, not a scan: {slowest:?}");
    db.drop_db().await;
}

/// A daemon backfills 4,000 orders whose documents take a millisecond each to build (one
/// connection, pages of 50), so it is behind for seconds: the backlog is above 0 while it
/// is, the progress lines say how far it is, and once it has caught up the backlog reads
/// 0 and further runs log no progress.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_reports_its_backlog_and_progress_then_falls_quiet() {
    const ORDERS: u64 = 4_000;
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, note text);
             CREATE INDEX ON orders (updated_at, id);
             INSERT INTO orders SELECT g, '2024-01-01'::timestamptz + g * interval '1 s', 'order ' || g FROM generate_series(1, {ORDERS}) g;
             ANALYZE orders;
             CREATE FUNCTION slow_document(t orders) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.001); RETURN to_jsonb(t); END $$;"
        ))
        .await
        .unwrap();
    let topic = unique("progress");
    let port = free_port();
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 50;
    p.metrics_port = port;
    p.pipeline_extra = "progress_interval = \"300ms\"";
    p.source_extra = "table = \"orders\"\ndocument = \"slow_document(t)\"\nparallelism = 1";
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    let series = |name: &str| metric(port, name, &[("pipeline", "p")]);
    let delivered = || metric(port, "order_cdc_events_total", &[("pipeline", "p"), ("outcome", "delivered")]).unwrap_or(0);

    let mut behind = None;
    wait_until("a backlog above 0 while orders are left", Duration::from_secs(60), || {
        let (backlog, done) = (series("order_cdc_backlog_orders").unwrap_or(0), delivered());
        behind = Some((backlog, done));
        backlog > 0 && done < ORDERS
    });
    let (backlog, done) = behind.unwrap();
    assert!(backlog <= ORDERS + 200, "the estimate ({backlog}) is about what is left (at most {ORDERS} less {done} done)");
    wait_until("every order delivered and the backlog at 0", Duration::from_secs(120), || {
        delivered() >= ORDERS && series("order_cdc_backlog_orders") == Some(0)
    });

    let lines = progress_lines(&setup.log());
    assert!(!lines.is_empty(), "no progress line in the log:\n{}", setup.log());
    for line in &lines {
        assert_eq!(line["pipeline"], "p", "{line:?}");
        assert!(line["orders_done"].parse::<u64>().unwrap() <= ORDERS, "{line:?}");
        assert!(line.contains_key("orders_per_second") && line.contains_key("eta"), "{line:?}");
    }
    assert!(
        lines.iter().any(|l| l["orders_left"].parse::<u64>().is_ok_and(|left| left > 0) && l["orders_per_second"].parse::<u64>().is_ok_and(|r| r > 0) && l["eta"] != "unknown"),
        "a line with orders left, a rate and an ETA: {lines:?}"
    );

    // Caught up: runs go on every poll_interval and say nothing more.
    let runs = series("order_cdc_run_duration_seconds_count").unwrap_or(0);
    wait_until("five more runs", Duration::from_secs(30), || series("order_cdc_run_duration_seconds_count").unwrap_or(0) >= runs + 5);
    assert_eq!(progress_lines(&setup.log()).len(), lines.len(), "a pipeline that keeps up logs no progress:\n{}", setup.log());
    assert_eq!(series("order_cdc_backlog_orders"), Some(0));
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let expected: HashMap<String, String> =
        client.query("SELECT id::text, to_jsonb(t)::text FROM orders t", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_topic_matches(&topic, &expected);
    println!("{} progress lines over the backfill, e.g. {:?}", lines.len(), lines[lines.len() / 2]);
    db.drop_db().await;
}

/// The fields of each progress line of a daemon's log (the human format: `key=value`).
fn progress_lines(log: &str) -> Vec<HashMap<String, String>> {
    log.lines()
        .filter(|l| l.contains("catching up"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        })
        .collect()
}
