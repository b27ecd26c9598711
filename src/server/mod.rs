//! `order-cdc serve`: the order API of the seed documents over the reference schema.
//! It shares the schema, the export document and the late-commit cutoff with the
//! Postgres source (`store/`): one implementation, two faces.

pub mod auth;
pub mod create;
pub mod cursor;
pub mod error;
pub mod export;
pub mod orders;
pub mod webstore;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::config::{CutoffKind, ServerConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::cutoff::{self, CutoffMode};
use crate::store::{self, document, StoreError};
use cursor::CursorCodec;
use error::ApiError;

/// The OpenAPI 3 description of this server, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listener {address}: {source}")]
    Listen { address: String, source: std::io::Error },
}

/// The SQL of the export, over the schema that holds `sales_orders`.
pub struct ExportSql {
    pub first: String,
    pub next: String,
}

impl ExportSql {
    fn new(schema: &str) -> Self {
        let select = format!(
            "SELECT t.id, t.updated_at, ({})::text\n  FROM {schema}.sales_orders t\n WHERE t.status = 'Active' AND t.updated_at >= $1 AND t.updated_at < $2",
            document::export_document(schema)
        );
        let order = "\n ORDER BY t.updated_at, t.id\n LIMIT $3";
        Self { first: format!("{select}{order}"), next: format!("{select}\n   AND (t.updated_at, t.id) > ($4, $5){order}") }
    }
}

pub struct AppState {
    pub pool: Pool,
    pub cursors: CursorCodec,
    pub cursor_ttl: chrono::Duration,
    pub cutoff_mode: CutoffMode,
    pub sql: ExportSql,
    pub schema: String,
    /// `meta.tenant_id` of the orders listing, and the webstore's store handle.
    pub tenant: String,
    /// The webstore dialect's SQL (seed 003).
    pub webstore: webstore::Sql,
    pub tokens: auth::Tokens,
    pub metrics: Arc<Metrics>,
}

/// Connects, checks the schema and the role, and builds the shared state.
pub async fn state(cfg: &ServerConfig, metrics: Arc<Metrics>) -> Result<AppState, ServeError> {
    let probe = store::connect(&cfg.database_url, Duration::from_secs(10), "order-cdc/serve").await?;
    let schema: String = probe
        .query_opt(
            "SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('sales_orders')",
            &[],
        )
        .await
        .map_err(StoreError::db("looking up sales_orders"))?
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::Schema("table sales_orders does not exist: run `order-cdc migrate` first".into()))?;
    let cutoff_mode = match cfg.cutoff {
        CutoffKind::Lag => CutoffMode::Lag(cfg.cutoff_lag),
        CutoffKind::Xact if cutoff::can_see_other_sessions(&probe).await? => CutoffMode::Xact { max_hold: cfg.cutoff_max_hold },
        CutoffKind::Xact => {
            tracing::warn!(lag = ?cfg.cutoff_lag, "the database role cannot see other sessions' transactions (grant it pg_read_all_stats): export cutoffs fall back to cutoff_lag");
            CutoffMode::Lag(cfg.cutoff_lag)
        }
    };
    let (pg_config, tls) = store::tls::connector(&cfg.database_url)?;
    let manager = Manager::from_config(pg_config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(cfg.pool_size).build().expect("a pool without a runtime-specific hook builds");
    Ok(AppState {
        pool,
        cursors: CursorCodec::new(cfg.cursor_keys.clone(), cfg.cursor_key.clone(), cfg.tenant.clone()),
        cursor_ttl: chrono::Duration::from_std(cfg.cursor_ttl).unwrap_or(chrono::Duration::hours(24)),
        cutoff_mode,
        sql: ExportSql::new(&schema),
        webstore: webstore::Sql::new(&schema),
        schema,
        tenant: cfg.tenant.clone(),
        tokens: auth::Tokens::new(&cfg.tokens),
        metrics,
    })
}

/// A body that starts with `head` and goes on with the JSON documents of `rows` (in
/// `column`) comma-separated, with room for `tail` bytes more: bodies are assembled
/// from the database's text, never parsed and encoded again.
fn documents_body(head: &str, rows: &[tokio_postgres::Row], column: usize, tail: usize) -> String {
    let size: usize = rows.iter().map(|r| r.get::<_, &str>(column).len() + 1).sum();
    let mut body = String::with_capacity(head.len() + size + tail);
    body.push_str(head);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(row.get::<_, &str>(column));
    }
    body
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/sales-orders/export", get(export::export))
        .route("/sales-orders", post(create::create))
        // Seed 003: the store handle is `[server].tenant` (another is a 404), after auth.
        .route("/{store}/api/v2/sales/orders.json", get(webstore::list))
        .route("/{store}/api/v2/sales/orders/count.json", get(webstore::count))
        .route("/{store}/api/v2/sales/orders/{file}", get(webstore::get).put(webstore::put).delete(webstore::delete))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_bearer));
    Router::new()
        .merge(api)
        // Seed 002 authenticates by API key (header or parameter), checked in the handler.
        .route("/api/orders/", get(orders::list))
        .route("/api/orders", get(orders::list))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request by route and status, and times it.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Serves until shutdown.
pub async fn serve(cfg: &ServerConfig, metrics: Arc<Metrics>, mut shutdown: Shutdown) -> Result<(), ServeError> {
    let state = Arc::new(state(cfg, metrics).await?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen { address: cfg.listen.to_string(), source })?;
    let address: SocketAddr = listener.local_addr().map_err(|source| ServeError::Listen { address: cfg.listen.to_string(), source })?;
    tracing::info!(%address, tenant = %cfg.tenant, "serving the sales-order API");
    axum::serve(listener, router(state, cfg.max_body_bytes))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(|source| ServeError::Listen { address: address.to_string(), source })
}
