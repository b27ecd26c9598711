//! The dashboard and the alert rules (docker/) against a running daemon: every metric they
//! query exists in its /metrics, so a renamed metric cannot silently blank a panel or
//! disarm an alert; and promtool accepts the rules. (The Compose CLI's check of the compose
//! file that loads them is in scripts/container.sh, with the image it runs.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// Every `order_cdc_…` name in a file.
fn metric_names(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("order_cdc_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_alerts_query_is_served() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 20, "'2024-01-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let topic = unique("observability");
    let port = free_port();
    let mut p = Pipeline::new(&db.url, &topic);
    p.metrics_port = port;
    // A second pipeline whose API is not there, so the retry and error series exist too.
    p.extra = other_pipeline(&unique("observability-other"), "kind = \"export_api\"\nbase_url = \"http://127.0.0.1:1\"\ntoken = \"t\"");
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run"]);
    wait_until("a commit and a retry", Duration::from_secs(60), || {
        metric(port, "order_cdc_checkpoint_commits_total", &[("pipeline", "p")]).is_some_and(|n| n > 0)
            && metric(port, "order_cdc_source_retries_total", &[("pipeline", "other")]).is_some_and(|n| n > 0)
    });
    let (_, served) = http_get(port, "/metrics").unwrap();
    terminate(&daemon);
    wait_for_exit(&mut daemon, Duration::from_secs(30), "the daemon", || setup.log());

    let served: BTreeSet<&str> = served.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let dashboard = metric_names("docker/grafana/dashboards/order-cdc.json");
    let alerts = metric_names("docker/alerts.yml");
    assert!(dashboard.len() >= 8 && alerts.len() >= 5, "the files are read: {dashboard:?} {alerts:?}");
    let missing: Vec<&String> = dashboard.iter().chain(&alerts).filter(|name| !served.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "queried but not served: {missing:?}; served: {served:?}");
    db.drop_db().await;
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", concat!(env!("CARGO_MANIFEST_DIR"), "/docker/alerts.yml")])
        .output()
        .expect("promtool (Debian's prometheus package; scripts/stack.sh up installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
