//! A real `order-cdc serve` on 127.0.0.1:0 over a test database, in process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use order_cdc::config::{CutoffKind, ServerConfig};
use order_cdc::metrics::Metrics;
use order_cdc::secret::{Secret, SecretUrl};

pub const TOKEN: &str = "test-token-0123456789";
pub const KEY_1: &str = "key-one-0123456789-0123456789-0123456789";
pub const KEY_2: &str = "key-two-0123456789-0123456789-0123456789";

pub fn config(db_url: &str) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tenant: "acme".into(),
        database_url: SecretUrl::new(db_url),
        tokens: vec![Secret::new(TOKEN)],
        cursor_keys: BTreeMap::from([("k1".to_string(), Secret::new(KEY_1))]),
        cursor_key: "k1".into(),
        cursor_ttl: std::time::Duration::from_secs(3600),
        max_body_bytes: 64 * 1024,
        pool_size: 4,
        cutoff: CutoffKind::Xact,
        cutoff_lag: std::time::Duration::from_secs(5),
        cutoff_max_hold: std::time::Duration::from_secs(900),
    }
}

/// The `serve` binary as a process: its API's base URL and its metrics port.
pub struct ServeProcess {
    pub child: Child,
    pub base: String,
    pub metrics_port: u16,
}

/// Starts `order-cdc serve` from a configuration file in `dir` (tenant acme, the test token
/// and cursor key k1) over `db_url`, its stderr to `stderr`; returns once it listens.
pub fn spawn_serve(dir: &Path, db_url: &str, stderr: Stdio) -> ServeProcess {
    let (api_port, metrics_port) = (super::free_port(), super::free_port());
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[server]\nlisten = \"127.0.0.1:{api_port}\"\ntenant = \"acme\"\n\
             database_url = \"{db_url}\"\ntokens = [\"{TOKEN}\"]\ncursor_keys = {{ k1 = \"{KEY_1}\" }}\ncursor_key = \"k1\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(super::binary()).arg("--config").arg(&path).arg("serve").stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
    super::wait_until("the server to listen", std::time::Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok());
    ServeProcess { child, base: format!("http://127.0.0.1:{api_port}"), metrics_port }
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> Self {
        let max_body = cfg.max_body_bytes;
        let state = Arc::new(order_cdc::server::state(&cfg, Metrics::new()).await.expect("server state"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, order_cdc::server::router(state, max_body)).await });
        Self { base: format!("http://{address}"), http: reqwest::Client::new() }
    }

    /// GET with the token; returns status and JSON body.
    pub async fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(format!("{}{path_and_query}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON body"))
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON body"))
    }

    /// Any request with a bearer token (or none): status, whether a `Date` header came,
    /// and the body's text.
    pub async fn send(&self, method: reqwest::Method, path_and_query: &str, token: Option<&str>, body: Option<&serde_json::Value>) -> (u16, bool, String) {
        let mut request = self.http.request(method, format!("{}{path_and_query}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let dated = r.headers().contains_key(reqwest::header::DATE);
        (r.status().as_u16(), dated, r.text().await.unwrap())
    }

    /// A whole export run from `since`: every page's data, the pages' count and the
    /// first page's meta.cutoff.
    pub async fn run(&self, since: &str, limit: usize) -> (Vec<serde_json::Value>, usize, String) {
        let (status, first) = self.get(&format!("/sales-orders/export?since={since}&limit={limit}")).await;
        assert_eq!(status, 200, "{first}");
        let cutoff = first["meta"]["cutoff"].as_str().unwrap().to_string();
        let mut orders = Vec::new();
        let mut page = first;
        let mut pages = 1;
        loop {
            let data = page["data"].as_array().unwrap();
            assert_eq!(page["meta"]["rows"].as_u64().unwrap() as usize, data.len());
            assert_eq!(page["meta"]["cutoff"], cutoff.as_str(), "the cutoff is fixed for the run");
            orders.extend(data.iter().cloned());
            if !page["has_more"].as_bool().unwrap() {
                assert!(page["next_cursor"].is_null());
                break;
            }
            let cursor = page["next_cursor"].as_str().unwrap().to_string();
            let (status, next) = self.get(&format!("/sales-orders/export?cursor={cursor}")).await;
            assert_eq!(status, 200, "{next}");
            page = next;
            pages += 1;
        }
        (orders, pages, cutoff)
    }
}

/// EXPLAIN ANALYZE of a listing's count and page queries, with their parameters, as the
/// server runs them: the plans as text.
pub async fn plans(
    client: &tokio_postgres::Client,
    (count_sql, count_params): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
    (page_sql, page_params): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
) -> (String, String) {
    let explain = |sql: &str| format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) {sql}");
    let text = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n");
    let count = text(client.query(&explain(count_sql), count_params).await.unwrap());
    let page = text(client.query(&explain(page_sql), page_params).await.unwrap());
    (count, page)
}
