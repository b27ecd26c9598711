//! `order-cdc serve` conforms to openapi/openapi.json: schemathesis (installed by
//! `scripts/stack.sh up`, found through ORDER_CDC_SCHEMATHESIS) runs every check against
//! every operation of the document the server itself serves, over demo orders, and the
//! server must come out of it up and without a panic in its log.
//!
//! The seed is not fixed, so every run explores other requests; schemathesis prints the
//! seed it used, and `st run --seed N` with the same arguments replays a failure.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::server::{spawn_serve, ServeProcess, TOKEN};
use common::*;
use serde_json::Value;

/// Test cases per operation and phase: about 1-3 minutes on a shared two-core machine.
const MAX_EXAMPLES: &str = "200";

fn schemathesis() -> String {
    let st = std::env::var("ORDER_CDC_SCHEMATHESIS")
        .expect("ORDER_CDC_SCHEMATHESIS is not set: run the tests with scripts/test.sh (scripts/stack.sh up installs schemathesis)");
    assert!(Path::new(&st).is_file(), "ORDER_CDC_SCHEMATHESIS={st} does not exist: run scripts/stack.sh up to install schemathesis");
    st
}

/// A few cursors the server signed: schemathesis' positive requests continue runs with
/// them (see tests/openapi_conformance/hooks.py).
async fn issued_cursors(base: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut cursors = Vec::new();
    for limit in [1, 2, 7] {
        let mut url = format!("{base}/sales-orders/export?since=0001-01-01&limit={limit}");
        for _ in 0..2 {
            let page: Value = http.get(&url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
            let cursor = page["next_cursor"].as_str().expect("demo orders fill more than one page").to_string();
            url = format!("{base}/sales-orders/export?cursor={cursor}");
            cursors.push(cursor);
        }
    }
    cursors
}

/// The ids of `table`, space-separated: POST /sales-orders' positive requests name rows
/// that exist with them (see tests/openapi_conformance/hooks.py).
async fn ids(client: &tokio_postgres::Client, table: &str) -> String {
    let rows = client.query(&format!("SELECT id::text FROM {table} ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join(" ")
}

/// Every request the server answered, from its /metrics.
fn requests_served(metrics_port: u16) -> u64 {
    let (_, body) = http_get(metrics_port, "/metrics").expect("the metrics listener answers");
    body.lines().filter(|l| l.starts_with("order_cdc_http_requests_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_conforms_to_its_openapi_document() {
    let st = schemathesis();
    let (db, mut client) = TestDb::migrated().await;
    order_cdc::store::demo::load(&mut client, 200, 2).await.expect("demo orders");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let ServeProcess { child: mut serve, base, metrics_port } = spawn_serve(dir.path(), &db.url, Stdio::from(std::fs::File::create(&log).unwrap()));
    let cursors = issued_cursors(&base).await.join(" ");

    // Credentials for every route, and the store handle of the webstore routes (any other
    // is a documented 404, which would keep the fuzzer away from the routes' logic).
    let st_config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &st_config,
        format!(
            "headers = {{ Authorization = \"Bearer {TOKEN}\", X-API-Key = \"{TOKEN}\" }}\n\
             [parameters]\n\"path.store\" = \"acme\"\n"
        ),
    )
    .unwrap();
    let mut run = Command::new(&st);
    run.arg("--config-file")
        .arg(&st_config)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base, "--checks", "all", "--max-examples", MAX_EXAMPLES, "--workers", "1", "--no-color"])
        .args(["--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_conformance/hooks.py"))
        .env("ORDER_CDC_CURSORS", &cursors)
        .env("ORDER_CDC_PRODUCTS", ids(&client, "products").await)
        .env("ORDER_CDC_CUSTOMERS", ids(&client, "customers").await)
        .env("ORDER_CDC_COMPANIES", ids(&client, "companies").await)
        .current_dir(dir.path());
    let output = tokio::task::spawn_blocking(move || run_with_deadline(run, Duration::from_secs(600))).await.unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let served = requests_served(metrics_port);
    println!("schemathesis made {served} requests");
    assert!(output.status.success(), "schemathesis found disagreements between the server and openapi/openapi.json:\n{report}");
    println!("{report}");

    // Still up, still answering, and nothing panicked on the way.
    assert!(serve.try_wait().unwrap().is_none(), "the server exited during the run:\n{}", std::fs::read_to_string(&log).unwrap());
    let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    terminate(&serve);
    let status = wait_for_exit(&mut serve, Duration::from_secs(20), "the server did not stop on SIGTERM", || std::fs::read_to_string(&log).unwrap());
    assert!(status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    db.drop_db().await;
}
