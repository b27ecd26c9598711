//! Bad configuration, an unreachable database or broker: one clear line on stderr naming
//! the problem, a non-zero exit, never a panic, never a password.

mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "s3cret-pw";

fn run_with(config: &str, args: &[&str]) -> (bool, String) {
    run_with_env(config, args, &[])
}

fn run_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("--config").arg(&path).args(args).env("RUST_LOG", "warn").envs(env.iter().copied());
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn config(pipeline: &str, source: &str) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[checkpoint]\ndir = \"{}\"\n[pipelines.p]\ntopic = \"{}\"\n{pipeline}\n[pipelines.p.source]\n{source}\n",
        std::env::temp_dir().join(unique("cp")).display(),
        unique("t")
    )
}

fn assert_one_clear_line(stderr: &str, needles: &[&str]) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "a password reached the output: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in: {stderr}");
    }
}

fn good_source(url: &str) -> String {
    format!("kind = \"postgres\"\nurl = \"{url}\"")
}

#[test]
fn unknown_source_kind() {
    let (ok, err) = run_with(&config("", "kind = \"mysql\"\nurl = \"x\""), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["mysql", "pipelines.p.source"]);
}

#[test]
fn missing_url() {
    let (ok, err) = run_with(&config("", "kind = \"postgres\""), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["url", "pipelines.p.source"]);
}

#[test]
fn bad_duration() {
    let (ok, err) = run_with(&config("poll_interval = \"often\"", &good_source(&database_url())), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["pipelines.p.poll_interval"]);
}

#[test]
fn bad_value_from_the_environment() {
    let env = [("ORDER_CDC__PIPELINES__P__BATCH_SIZE", "lots")];
    let (ok, err) = run_with_env(&config("", &good_source(&database_url())), &["run", "--once"], &env);
    assert!(!ok);
    assert_one_clear_line(&err, &["batch_size"]);
}

/// Numbers and durations from the environment are parsed like the file's (a broker list or
/// a password made of digits stays a string).
#[test]
fn typed_values_from_the_environment() {
    let env = [
        ("ORDER_CDC__PIPELINES__P__BATCH_SIZE", "250"),
        ("ORDER_CDC__PIPELINES__P__SOURCE__PARALLELISM", "3"),
        ("ORDER_CDC__PIPELINES__P__POLL_INTERVAL", "1s"),
        ("ORDER_CDC__PIPELINES__P__TOPIC", "12345"),
    ];
    let (ok, err) = run_with_env(&config("", &good_source(&database_url())), &["checkpoint", "show", "--pipeline", "p"], &env);
    assert!(ok, "{err}");
}

#[test]
fn unknown_key() {
    let (ok, err) = run_with(&config("batchsize = 10", &good_source(&database_url())), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["batchsize"]);
}

#[test]
fn unreachable_database() {
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/nowhere");
    let (ok, err) = run_with(&config("", &good_source(&url)), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["cannot connect to PostgreSQL", "127.0.0.1:1"]);
}

#[test]
fn missing_table() {
    let (ok, err) = run_with(&config("", &format!("{}\ntable = \"no_such_table\"", good_source(&database_url()))), &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["no_such_table", "does not exist"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_broker() {
    let (db, _client) = TestDb::migrated().await;
    let cfg = format!("[kafka]\nbrokers = \"127.0.0.1:1\"\n{}", config("", &good_source(&db.url)));
    let (ok, err) = run_with(&cfg, &["run", "--once"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["cannot reach Kafka", "127.0.0.1:1"]);
    db.drop_db().await;
}

#[test]
fn unknown_pipeline() {
    let (ok, err) = run_with(&config("", &good_source(&database_url())), &["run", "--once", "--pipeline", "nope"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["pipelines.nope", "no such pipeline"]);
}

#[test]
fn migrate_without_a_database_url() {
    let (ok, err) = run_with(&config("", &good_source(&database_url())), &["migrate"]);
    assert!(!ok);
    assert_one_clear_line(&err, &["database.url"]);
}
