//! The Postgres source: a keyset walk over `(updated_at, id)` in a fixed window
//! `[since, cutoff)`, with the cutoff from the late-commit guard (`store::cutoff`).
//!
//! A run computes its cutoff once, then reads pages of
//! `updated_at >= since AND updated_at < cutoff AND (updated_at, id) > after
//!  ORDER BY updated_at, id LIMIT n`; a short page ends it, and the next run starts at the
//! cutoff. The id tie-breaker makes the order total, so any number of rows sharing one
//! `updated_at` cross page boundaries intact.

use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::{Batch, Record, RecordBody, Source, SourceError};
use crate::config::{CutoffKind, PostgresSourceConfig};
use crate::metrics::PipelineMetrics;
use crate::store::cutoff::{self, CutoffMode};
use crate::store::{self, document, StoreError};

/// The position of a Postgres pipeline, as it is checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Format version of this position.
    pub v: u32,
    /// The window's lower bound (inclusive).
    pub since: DateTime<Utc>,
    /// The run's upper bound (exclusive); `None` between runs.
    pub cutoff: Option<DateTime<Utc>>,
    /// The last `(updated_at, id)` read in this run; `None` at the start of a run.
    pub after: Option<(DateTime<Utc>, String)>,
}

impl Position {
    const VERSION: u32 = 1;

    pub fn at(since: DateTime<Utc>) -> Self {
        Self { v: Self::VERSION, since, cutoff: None, after: None }
    }
}

/// Who the source is, for fingerprints and the CloudEvents `source`: host, port, database
/// and table, never the user or the password.
pub fn identity(cfg: &PostgresSourceConfig) -> String {
    let (host, port, db) = match cfg.url.expose().parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            (host, port, c.get_dbname().unwrap_or("").to_string())
        }
        Err(_) => ("unknown".into(), 5432, String::new()),
    };
    format!("postgresql://{host}:{port}/{db}/{}", cfg.table)
}

/// The SQL of a page, built once the table has been looked up.
struct PageSql {
    first: String,
    next: String,
}

struct Connected {
    client: Client,
    first: Statement,
    next: Statement,
    mode: CutoffMode,
    /// Fractional digits the updated_at column keeps (6 unless declared `timestamp(p)`).
    precision: u16,
}

pub struct PostgresSource {
    cfg: PostgresSourceConfig,
    pipeline: String,
    batch_size: i64,
    conn: Option<Connected>,
    read: Position,
    fresh_run: bool,
    metrics: PipelineMetrics,
}

impl PostgresSource {
    /// Connects and checks the table, so a bad URL, table or expression fails start-up.
    pub async fn open(cfg: PostgresSourceConfig, pipeline: &str, batch_size: usize, metrics: PipelineMetrics) -> Result<Self, SourceError> {
        let mut source = Self {
            cfg,
            pipeline: pipeline.to_string(),
            batch_size: batch_size as i64,
            conn: None,
            read: Position::at(crate::timestamp::epoch()),
            fresh_run: false,
            metrics,
        };
        source.connect(true).await?;
        Ok(source)
    }

    async fn connect(&mut self, announce: bool) -> Result<(), SourceError> {
        let app = format!("order-cdc/{}", self.pipeline);
        let client = store::connect(&self.cfg.url, self.cfg.connect_timeout, &app).await.map_err(store_error)?;
        let (sql, precision) = self.page_sql(&client).await?;
        let first = client.prepare(&sql.first).await.map_err(|e| self.explain_prepare(e))?;
        let next = client.prepare(&sql.next).await.map_err(|e| self.explain_prepare(e))?;
        let mode = match self.cfg.cutoff {
            CutoffKind::Lag => CutoffMode::Lag(self.cfg.cutoff_lag),
            CutoffKind::Xact => {
                if cutoff::can_see_other_sessions(&client).await.map_err(store_error)? {
                    CutoffMode::Xact { max_hold: self.cfg.cutoff_max_hold }
                } else {
                    if announce {
                        tracing::warn!(
                            pipeline = %self.pipeline,
                            lag = ?self.cfg.cutoff_lag,
                            "the database role cannot see other sessions' transactions (grant it pg_read_all_stats): \
                             the late-commit guard is off and the cutoff falls back to cutoff_lag"
                        );
                    }
                    CutoffMode::Lag(self.cfg.cutoff_lag)
                }
            }
        };
        if announce {
            tracing::info!(pipeline = %self.pipeline, source = %identity(&self.cfg), cutoff = ?mode, "connected to PostgreSQL");
        }
        self.conn = Some(Connected { client, first, next, mode, precision });
        Ok(())
    }

    fn explain_prepare(&self, e: tokio_postgres::Error) -> SourceError {
        let hint = if self.document_is_export() {
            " (document = \"export\" needs the reference schema of `order-cdc migrate`; for another table set document = \"row\" or an SQL expression)"
        } else {
            ""
        };
        SourceError::Setup(format!("the page query on {} does not prepare: {}{hint}", self.cfg.table, store::describe(&e)))
    }

    fn document_is_export(&self) -> bool {
        match self.cfg.document.as_deref() {
            Some(d) => d == "export",
            None => unqualified(&self.cfg.table) == "sales_orders",
        }
    }

    /// Looks the table and its columns up in the catalog (PostgreSQL quotes the names) and
    /// builds the two page queries.
    async fn page_sql(&self, client: &Client) -> Result<(PageSql, u16), SourceError> {
        let table = client
            .query_opt(
                "SELECT c.oid::regclass::text, quote_ident(n.nspname)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = to_regclass($1)",
                &[&self.cfg.table],
            )
            .await
            .map_err(|e| SourceError::Query(format!("looking up table {}: {}", self.cfg.table, store::describe(&e)), store::is_transient(&e)))?
            .ok_or_else(|| SourceError::Setup(format!("table {} does not exist (source.table)", self.cfg.table)))?;
        let (table_sql, schema): (String, String) = (table.get(0), table.get(1));
        let columns = client
            .query(
                "SELECT a.attname, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.atttypmod
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&self.cfg.table],
            )
            .await
            .map_err(|e| SourceError::Query(format!("looking up the columns of {}: {}", self.cfg.table, store::describe(&e)), store::is_transient(&e)))?;
        let column = |name: &str, key: &str| -> Result<(String, String, i32), SourceError> {
            columns
                .iter()
                .find(|r| r.get::<_, &str>(0) == name)
                .map(|r| (r.get(1), r.get(2), r.get(3)))
                .ok_or_else(|| {
                    let known: Vec<&str> = columns.iter().map(|r| r.get(0)).collect();
                    SourceError::Setup(format!("column {name:?} ({key}) is not in table {} (columns: {})", self.cfg.table, known.join(", ")))
                })
        };
        let (id, id_type, _) = column(&self.cfg.id_column, "source.id_column")?;
        let (upd, upd_type, upd_typmod) = column(&self.cfg.updated_at_column, "source.updated_at_column")?;
        if !upd_type.starts_with("timestamp") {
            return Err(SourceError::Setup(format!(
                "column {} (source.updated_at_column) is {upd_type}; it must be timestamptz or timestamp",
                self.cfg.updated_at_column
            )));
        }
        // A timestamp(p) column rounds what it stores; cutoffs are floored to p digits so a
        // rounded-down value can never fall below a cutoff its transaction was held above.
        let precision = if upd_typmod >= 0 { upd_typmod.clamp(0, 6) as u16 } else { 6 };

        let export = self.document_is_export();
        let document = match self.cfg.document.as_deref() {
            _ if export => document::export_document(&schema),
            Some("row") | None => "row_to_json(t)".to_string(),
            Some(expr) => expr.to_string(),
        };
        let deleted = match (&self.cfg.deleted, export) {
            (Some(expr), _) => format!("({expr})"),
            (None, true) => format!("({})", document::EXPORT_DELETED),
            (None, false) => "false".to_string(),
        };
        let filter = self.cfg.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default();
        let ts_param = |n: u8| format!("${n}::timestamptz::{upd_type}");
        let select = format!(
            "SELECT t.{id}::text, t.{upd}::timestamptz, ({document})::text, {deleted}\n  FROM {table_sql} t\n WHERE t.{upd} >= {} AND t.{upd} < {}{filter}",
            ts_param(1),
            ts_param(2)
        );
        let order = format!("\n ORDER BY t.{upd}, t.{id}\n LIMIT $3");
        let first = format!("{select}{order}");
        let next = format!("{select}\n   AND (t.{upd}, t.{id}) > ({}, $5::text::{id_type}){order}", ts_param(4));
        Ok((PageSql { first, next }, precision))
    }

    async fn ensure_connected(&mut self) -> Result<&Connected, SourceError> {
        if self.conn.is_none() {
            self.connect(false).await?;
        }
        Ok(self.conn.as_ref().expect("connected above"))
    }

    async fn read_page(&mut self) -> Result<Batch, SourceError> {
        let limit = self.batch_size;
        let mut started = None;
        if self.read.cutoff.is_none() {
            let conn = self.ensure_connected().await?;
            let c = cutoff::cutoff(&conn.client, conn.mode).await.map_err(store_error)?;
            let at = c.at.trunc_subsecs(conn.precision);
            // A cutoff held below `since` (a long transaction, clock skew) makes an empty
            // window; `since` never moves backwards.
            self.read.cutoff = Some(at.max(self.read.since));
            self.read.after = None;
            self.fresh_run = true;
            started = Some(c.holdback);
        }
        let since = self.read.since;
        let cutoff = self.read.cutoff.expect("set above");
        self.ensure_connected().await?;
        let conn = self.conn.as_ref().expect("connected above");
        let begun = Instant::now();
        let rows = match &self.read.after {
            None => conn.client.query(&conn.first, &[&since as &(dyn ToSql + Sync), &cutoff, &limit]).await,
            Some((at, id)) => conn.client.query(&conn.next, &[&since as &(dyn ToSql + Sync), &cutoff, &limit, at, id]).await,
        };
        self.metrics.source_latency.observe(begun.elapsed().as_secs_f64());
        let rows = match rows {
            Ok(rows) => {
                self.metrics.source_request("ok");
                rows
            }
            Err(e) => {
                self.metrics.source_request("error");
                let transient = store::is_transient(&e);
                if transient {
                    self.conn = None; // reconnect and prepare again on the next call
                }
                return Err(SourceError::Query(store::describe(&e), transient));
            }
        };
        let records: Vec<Record> = rows.iter().map(record).collect();
        let ends_run = (rows.len() as i64) < limit;
        let watermark = if ends_run { Some(cutoff) } else { records.last().map(|r| r.updated_at) };
        if ends_run {
            self.read = Position::at(cutoff);
        } else {
            let last = records.last().expect("a full page has rows");
            self.read.after = Some((last.updated_at, last.key.clone()));
        }
        Ok(Batch {
            records,
            position: serde_json::to_value(&self.read).expect("a position serialises"),
            ends_run,
            fresh_run: self.fresh_run,
            cutoff_holdback: started,
            watermark,
        })
    }
}

fn record(row: &Row) -> Record {
    let key: String = row.get(0);
    let updated_at: DateTime<Utc> = row.get(1);
    let document: Option<String> = row.get(2);
    let deleted: Option<bool> = row.get(3);
    let body = match (deleted.unwrap_or(false), document) {
        (true, _) => RecordBody::Deleted,
        (false, Some(doc)) => RecordBody::Document(doc),
        (false, None) => RecordBody::Bad { reason: "the document expression yielded NULL".into(), raw: Vec::new() },
    };
    Record { key, updated_at, body }
}

fn unqualified(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table).trim_matches('"')
}

fn store_error(e: StoreError) -> SourceError {
    let retriable = e.is_retriable();
    match e {
        StoreError::Connect { target, source } => SourceError::Connect { target, reason: store::describe(&source), retriable },
        StoreError::ConnectTimeout { target, timeout } => {
            SourceError::Connect { target, reason: format!("no answer within {timeout:?}"), retriable }
        }
        other => SourceError::Query(other.to_string(), retriable),
    }
}

impl Source for PostgresSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        self.read = match position {
            None => Position::at(since),
            Some(value) => {
                let p: Position = serde_json::from_value(value.clone()).map_err(|e| SourceError::Position(format!("not a Postgres position: {e}")))?;
                if p.v != Position::VERSION {
                    return Err(SourceError::Position(format!("version {} is not supported (expected {})", p.v, Position::VERSION)));
                }
                p
            }
        };
        self.fresh_run = false;
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        let result = self.read_page().await;
        if let Err(e) = &result {
            if e.is_retriable() {
                self.conn = None;
            }
        }
        result
    }
}
