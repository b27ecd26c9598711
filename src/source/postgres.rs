//! The Postgres source: a keyset walk over `(updated_at, id)` in a fixed window
//! `[since, cutoff)`, with the cutoff from the late-commit guard (`store::cutoff`).
//!
//! A run computes its cutoff once, then reads pages of keys
//! `updated_at >= since AND updated_at < cutoff AND (updated_at, id) > after
//!  ORDER BY updated_at, id LIMIT n`; a short page ends it, and the next run starts at the
//! cutoff. The id tie-breaker makes the order total, so any number of rows sharing one
//! `updated_at` cross page boundaries intact.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Row, Statement};

use super::notify::{self, Listener, Wakeups};
use super::{Batch, Record, RecordBody, Source, SourceError};
use crate::config::{CutoffKind, PostgresSourceConfig};
use crate::metrics::PipelineMetrics;
use crate::store::cutoff::{self, CutoffMode, HoldLog};
use crate::store::export::{ExportRow, ExportSql, ExportStatements};
use crate::store::{self, document, schema, StoreError};
use crate::task;

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

/// The SQL of a run, built once the table has been looked up.
struct Queries {
    /// The first page of keys of a run.
    first_keys: String,
    /// The next page of keys, after `(updated_at, id)`.
    next_keys: String,
    /// The documents of a page of keys.
    documents: String,
    /// For the export document: the order query of its assembly in Rust, and the rest of
    /// its SQL (`documents` stays as the fallback).
    export: Option<(String, ExportSql)>,
}

/// A connection that builds documents.
struct DocumentConnection {
    client: Client,
    statement: Statement,
    /// The export document's assembly in Rust, when this session and the tables allow it.
    export: Option<ExportStatements>,
}

impl DocumentConnection {
    /// The records of a page of keys, each order rechecked below `cutoff`: assembled in
    /// Rust when this connection can, else built by PostgreSQL.
    async fn documents(&self, ids: &[String], cutoff: DateTime<Utc>, metrics: &PipelineMetrics) -> Result<Vec<Record>, SourceError> {
        let Some(export) = &self.export else {
            return self.built_by_sql(ids, cutoff, metrics).await;
        };
        let begun = Instant::now();
        let rows = observe(metrics, begun, export.fetch(&self.client, ids, &cutoff).await)?;
        // Orders holding a value the assembly cannot write as PostgreSQL would are built
        // by the SQL builder: one more query, in its own snapshot, with the same recheck
        // (an order changed since is left for the next run).
        let exotic: Vec<String> = rows.iter().filter(|r| r.document.is_err()).map(|r| r.key.clone()).collect();
        let mut built: HashMap<String, Record> = HashMap::new();
        if !exotic.is_empty() {
            built = self.built_by_sql(&exotic, cutoff, metrics).await?.into_iter().map(|r| (r.key.clone(), r)).collect();
        }
        Ok(rows
            .into_iter()
            .filter_map(|r: ExportRow| match r.document {
                Ok(document) => Some(record(r.key, r.updated_at, r.deleted, document)),
                Err(_) => built.remove(&r.key),
            })
            .collect())
    }

    /// The records of these keys with the documents PostgreSQL builds.
    async fn built_by_sql(&self, ids: &[String], cutoff: DateTime<Utc>, metrics: &PipelineMetrics) -> Result<Vec<Record>, SourceError> {
        let begun = Instant::now();
        let rows = self.client.query(&self.statement, &[&ids as &(dyn ToSql + Sync), &cutoff]).await;
        Ok(observe(metrics, begun, rows)?.iter().map(sql_record).collect())
    }
}

struct Connections {
    /// The key walk's own connection, so it never queues behind a document query.
    keys: Client,
    first_keys: Statement,
    next_keys: Statement,
    /// The key walk's next-page query, explained (never run) for the backlog estimate.
    backlog: String,
    documents: Vec<Arc<DocumentConnection>>,
    next_document: usize,
    mode: CutoffMode,
    /// Fractional digits the updated_at column keeps (6 unless declared `timestamp(p)`).
    precision: u16,
}

/// A page whose keys are read and whose documents are being built.
struct PendingPage {
    position: Position,
    ends_run: bool,
    covers_start: bool,
    holdback: Option<Duration>,
    watermark: Option<DateTime<Utc>>,
    documents: Option<JoinHandle<Result<Vec<Record>, SourceError>>>,
}

/// Reads a run in two steps per page: the keys `(updated_at, id)` of the next page with an
/// index-only keyset scan (cheap, sequential), then the page's documents by id, which is
/// where PostgreSQL spends its time. Up to `parallelism` pages build their documents at
/// once on their own connections, and pages are handed over strictly in key order.
///
/// An order may change between its key and its document. Its new `updated_at` is then at
/// or past the run's cutoff (the late-commit guard holds the cutoff below every open
/// transaction), so the document query leaves it out and the next run, whose window
/// holds the new `updated_at`, publishes it: each version once, never a version early and
/// again later (which `exactly_once` consumers would see twice). An order that vanished
/// or stopped matching the filter in between is left out too, as if the key walk had come
/// later.
pub struct PostgresSource {
    cfg: PostgresSourceConfig,
    pipeline: String,
    batch_size: i64,
    conn: Option<Connections>,
    /// Where the key walk stands: ahead of what was handed over by the pages in flight.
    keys: Position,
    /// The position after the last batch handed to the pipeline.
    handed: Position,
    /// Runs wait until they cover the start (`run --once`).
    once: bool,
    /// The database clock when the source opened: `--once` delivers every change
    /// committed before it.
    start: DateTime<Utc>,
    /// The least cutoff that covers `start` (see `cutoff::covering`).
    covering: DateTime<Utc>,
    /// `once_max_wait` has passed: runs count as covering without it.
    released: bool,
    holds: HoldLog,
    in_flight: VecDeque<PendingPage>,
    metrics: PipelineMetrics,
    /// Change notifications (`notify_channel`) and the task that listens for them.
    wakeups: Option<(Wakeups, Listener)>,
}

/// How often `--once` looks again at a transaction that holds its cutoff back.
const HOLD_POLL: Duration = Duration::from_millis(50);

impl PostgresSource {
    /// Connects and checks the table, so a bad URL, table or expression fails start-up.
    /// With `once` (`run --once`) its runs wait, bounded by `once_max_wait`, until their
    /// window holds every change committed before now.
    pub async fn open(cfg: PostgresSourceConfig, pipeline: &str, batch_size: usize, metrics: PipelineMetrics, once: bool) -> Result<Self, SourceError> {
        let epoch = crate::timestamp::epoch();
        let position = Position::at(epoch);
        let mut source = Self {
            cfg,
            pipeline: pipeline.to_string(),
            batch_size: batch_size as i64,
            conn: None,
            keys: position.clone(),
            handed: position,
            once,
            start: epoch,
            covering: epoch,
            released: false,
            holds: HoldLog::default(),
            in_flight: VecDeque::new(),
            metrics,
            wakeups: None,
        };
        source.connect(true).await?;
        let conn = source.conn.as_ref().expect("connected above");
        source.start = cutoff::clock(&conn.keys).await.map_err(store_error)?;
        source.covering = cutoff::covering(source.start, conn.precision);
        // `run --once` stops after its runs; it has nothing to wake.
        if let (Some(channel), false) = (source.notify_channel(), once) {
            let wakeups = Wakeups::new(cutoff::settle(conn.mode, conn.precision));
            let listener = notify::listen(
                notify::Channel {
                    url: source.cfg.url.clone(),
                    connect_timeout: source.cfg.connect_timeout,
                    name: channel,
                    application_name: format!("order-cdc/{}/listen", source.pipeline),
                },
                wakeups.clone(),
            );
            source.wakeups = Some((wakeups, listener));
        }
        Ok(source)
    }

    /// The channel to LISTEN on: the configured one (`""`: none), else the reference
    /// schema's when the documents are its export documents.
    fn notify_channel(&self) -> Option<String> {
        match self.cfg.notify_channel.as_deref() {
            Some("") => None,
            Some(channel) => Some(channel.to_string()),
            None if unqualified(&self.cfg.table) == "sales_orders" && matches!(self.cfg.document.as_deref(), None | Some("export")) => {
                Some(schema::NOTIFY_CHANNEL.to_string())
            }
            None => None,
        }
    }

    async fn connect(&mut self, announce: bool) -> Result<(), SourceError> {
        let app = format!("order-cdc/{}", self.pipeline);
        let keys = store::connect(&self.cfg.url, self.cfg.connect_timeout, &app).await.map_err(store_error)?;
        let (queries, precision) = self.queries(&keys, announce).await?;
        let first_keys = keys.prepare(&queries.first_keys).await.map_err(|e| self.explain_prepare(e))?;
        let next_keys = keys.prepare(&queries.next_keys).await.map_err(|e| self.explain_prepare(e))?;
        let backlog = format!("EXPLAIN (FORMAT JSON) {}", queries.next_keys);
        let mut documents = Vec::with_capacity(self.cfg.parallelism);
        for _ in 0..self.cfg.parallelism {
            let client = store::connect(&self.cfg.url, self.cfg.connect_timeout, &app).await.map_err(store_error)?;
            let statement = client.prepare(&queries.documents).await.map_err(|e| self.explain_prepare(e))?;
            let export = match &queries.export {
                Some((orders, sql)) => ExportStatements::prepare(&client, orders, sql).await.map_err(|e| self.explain_prepare(e))?,
                None => None,
            };
            if announce && documents.is_empty() && queries.export.is_some() && export.is_none() {
                tracing::info!(
                    pipeline = %self.pipeline,
                    "the columns of {} (or extra_float_digits <= 0) differ from the reference schema: PostgreSQL builds the export documents",
                    self.cfg.table
                );
            }
            documents.push(Arc::new(DocumentConnection { client, statement, export }));
        }
        let mode = match self.cfg.cutoff {
            CutoffKind::Lag => CutoffMode::Lag(self.cfg.cutoff_lag),
            CutoffKind::Xact => {
                if cutoff::can_see_other_sessions(&keys).await.map_err(store_error)? {
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
        self.conn = Some(Connections { keys, first_keys, next_keys, backlog, documents, next_document: 0, mode, precision });
        Ok(())
    }

    fn explain_prepare(&self, e: tokio_postgres::Error) -> SourceError {
        let hint = if self.cfg.document.as_deref() == Some("export") {
            " (document = \"export\" needs the reference schema of `order-cdc migrate`; for another table set document = \"row\" or an SQL expression)"
        } else {
            ""
        };
        SourceError::Setup(format!("the queries on {} do not prepare: {}{hint}", self.cfg.table, store::describe(&e)))
    }

    /// Whether documents are the seed-001 export document: when configured so, or by
    /// default for a table named `sales_orders` that has the reference schema of `order-cdc
    /// migrate` (probed by preparing the document query). Any other table, including a
    /// `sales_orders` of another shape, defaults to `row`.
    async fn document_is_export(&self, client: &Client, table_sql: &str, schema: &str, announce: bool) -> Result<bool, SourceError> {
        match self.cfg.document.as_deref() {
            Some(d) => return Ok(d == "export"),
            None if unqualified(&self.cfg.table) != "sales_orders" => return Ok(false),
            None => {}
        }
        let probe = format!(
            "SELECT ({})::text, ({}) FROM {table_sql} t LIMIT 0",
            document::export_document(schema),
            document::EXPORT_DELETED
        );
        match client.prepare(&probe).await {
            Ok(_) => Ok(true),
            // A lost connection says nothing about the schema: retry, never switch shapes.
            Err(e) if store::is_transient(&e) => Err(SourceError::Query(format!("probing {}: {}", self.cfg.table, store::describe(&e)), true)),
            Err(e) => {
                if announce {
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        reason = %store::describe(&e),
                        "table {} is not the reference schema of `order-cdc migrate`: documents are to_jsonb(t), the whole row (set source.document to choose)",
                        self.cfg.table
                    );
                }
                Ok(false)
            }
        }
    }

    /// Looks the table and its columns up in the catalog (PostgreSQL quotes the names) and
    /// builds the queries of a run.
    async fn queries(&self, client: &Client, announce: bool) -> Result<(Queries, u16), SourceError> {
        let lookup = |what: &str| {
            let what = format!("looking up {what} of {}", self.cfg.table);
            move |e: tokio_postgres::Error| SourceError::Query(format!("{what}: {}", store::describe(&e)), store::is_transient(&e))
        };
        let table = client
            .query_opt(
                "SELECT c.oid::regclass::text, quote_ident(n.nspname)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = to_regclass($1)",
                &[&self.cfg.table],
            )
            .await
            .map_err(lookup("the table"))?
            .ok_or_else(|| SourceError::Setup(format!("table {} does not exist (source.table)", self.cfg.table)))?;
        let (table_sql, schema): (String, String) = (table.get(0), table.get(1));
        let columns = client
            .query(
                "SELECT a.attname, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.atttypmod,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&self.cfg.table],
            )
            .await
            .map_err(lookup("the columns"))?;
        let column = |name: &str, key: &str| -> Result<&Row, SourceError> {
            columns.iter().find(|r| r.get::<_, &str>(0) == name).ok_or_else(|| {
                let known: Vec<&str> = columns.iter().map(|r| r.get(0)).collect();
                SourceError::Setup(format!("column {name:?} ({key}) is not in table {} (columns: {})", self.cfg.table, known.join(", ")))
            })
        };
        let id_row = column(&self.cfg.id_column, "source.id_column")?;
        let (id, id_type, id_indexed): (String, String, bool) = (id_row.get(1), id_row.get(2), id_row.get(4));
        let upd_row = column(&self.cfg.updated_at_column, "source.updated_at_column")?;
        let (upd, upd_type, upd_typmod): (String, String, i32) = (upd_row.get(1), upd_row.get(2), upd_row.get(3));
        if !upd_type.starts_with("timestamp") {
            return Err(SourceError::Setup(format!(
                "column {} (source.updated_at_column) is {upd_type}; it must be timestamptz or timestamp",
                self.cfg.updated_at_column
            )));
        }
        if announce && !id_indexed {
            tracing::warn!(pipeline = %self.pipeline, "no index starts with column {} (source.id_column): every page's documents will scan {}; index it", self.cfg.id_column, self.cfg.table);
        }
        // A timestamp(p) column rounds what it stores; cutoffs are floored to p digits so a
        // rounded-down value can never fall below a cutoff its transaction was held above.
        let precision = if upd_typmod >= 0 { upd_typmod.clamp(0, 6) as u16 } else { 6 };

        let export = self.document_is_export(client, &table_sql, &schema, announce).await?;
        let document = match self.cfg.document.as_deref() {
            _ if export => document::export_document(&schema),
            Some("row") | None => "to_jsonb(t)".to_string(),
            Some(expr) => expr.to_string(),
        };
        let deleted = match (&self.cfg.deleted, export) {
            (Some(expr), _) => format!("({expr})"),
            (None, true) => format!("({})", document::EXPORT_DELETED),
            (None, false) => "false".to_string(),
        };
        let filter = self.cfg.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default();
        let ts_param = |n: u8| format!("${n}::timestamptz::{upd_type}");
        let keys = format!(
            "SELECT t.{id}::text, t.{upd}::timestamptz\n  FROM {table_sql} t\n WHERE t.{upd} >= {} AND t.{upd} < {}{filter}",
            ts_param(1),
            ts_param(2)
        );
        let order = format!("\n ORDER BY t.{upd}, t.{id}");
        let by_keys = format!(
            "\n  FROM {table_sql} t\n WHERE t.{id} = ANY($1::text[]::{id_type}[]) AND t.{upd} < {}{filter}{order}",
            ts_param(2)
        );
        let export = export
            .then(|| {
                // Children join on t.id; the page's keys are id_column values.
                let order_ids = if self.cfg.id_column == "id" {
                    format!("$1::text[]::{id_type}[]")
                } else {
                    format!("ARRAY(SELECT t.id FROM {table_sql} t WHERE t.{id} = ANY($1::text[]::{id_type}[]))")
                };
                let sql = ExportSql::new(&schema, &order_ids)?;
                Some((format!("SELECT t.{id}::text, t.{upd}::timestamptz, {deleted}, {}{by_keys}", sql.order_columns), sql))
            })
            .flatten();
        Ok((
            Queries {
                first_keys: format!("{keys}{order}\n LIMIT $3"),
                next_keys: format!("{keys}\n   AND (t.{upd}, t.{id}) > ({}, $5::text::{id_type}){order}\n LIMIT $3", ts_param(4)),
                documents: format!("SELECT t.{id}::text, t.{upd}::timestamptz, ({document})::text, {deleted}{by_keys}"),
                export,
            },
            precision,
        ))
    }

    async fn connections(&mut self) -> Result<&mut Connections, SourceError> {
        if self.conn.is_none() {
            self.connect(false).await?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Keeps up to `parallelism` pages in flight, never reading past the end of a run
    /// (the next run's cutoff is taken only when the pipeline asks for it).
    async fn fill(&mut self) -> Result<(), SourceError> {
        while self.in_flight.len() < self.cfg.parallelism {
            if self.in_flight.back().is_some_and(|p| p.ends_run) {
                break;
            }
            let page = self.key_page().await?;
            self.in_flight.push_back(page);
        }
        Ok(())
    }

    /// Reads the next page of keys (starting a run with a fresh cutoff if need be) and
    /// sets its documents building.
    async fn key_page(&mut self) -> Result<PendingPage, SourceError> {
        let limit = self.batch_size;
        let mut holdback = None;
        if self.keys.cutoff.is_none() {
            let (at, held) = self.fresh_cutoff().await?;
            self.keys.cutoff = Some(at);
            self.keys.after = None;
            holdback = Some(held);
        }
        let since = self.keys.since;
        let cutoff = self.keys.cutoff.expect("set above");
        // A run resumed from a checkpoint of an earlier process has that process's cutoff.
        let covers_start = self.released || cutoff >= self.covering;
        let after = self.keys.after.clone();
        let metrics = self.metrics.clone();
        let conn = self.connections().await?;
        let begun = Instant::now();
        let rows = match &after {
            None => conn.keys.query(&conn.first_keys, &[&since as &(dyn ToSql + Sync), &cutoff, &limit]).await,
            Some((at, id)) => conn.keys.query(&conn.next_keys, &[&since as &(dyn ToSql + Sync), &cutoff, &limit, at, id]).await,
        };
        let rows = observe(&metrics, begun, rows)?;
        let keys: Vec<(String, DateTime<Utc>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let ends_run = (keys.len() as i64) < limit;
        let documents = if keys.is_empty() {
            None
        } else {
            let worker = conn.documents[conn.next_document % conn.documents.len()].clone();
            conn.next_document += 1;
            let ids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
            let metrics = metrics.clone();
            Some(task::start(async move { worker.documents(&ids, cutoff, &metrics).await }).await)
        };
        let watermark = if ends_run { Some(cutoff) } else { keys.last().map(|(_, at)| *at) };
        self.keys = match keys.last() {
            Some((id, at)) if !ends_run => Position { after: Some((*at, id.clone())), ..self.keys.clone() },
            _ => Position::at(cutoff),
        };
        Ok(PendingPage { position: self.keys.clone(), ends_run, covers_start, holdback, watermark, documents })
    }

    /// A fresh cutoff for the next run (never below `since`) and how far it sits below the
    /// database clock. Under `--once` it waits on the database clock until the cutoff
    /// covers the source's start, for at most `once_max_wait` from that start: the guard's
    /// margin (or `cutoff_lag`) is waited out in one step, an open transaction that holds
    /// the cutoff is looked at again every `HOLD_POLL` until it ends.
    async fn fresh_cutoff(&mut self) -> Result<(DateTime<Utc>, Duration), SourceError> {
        let max_wait = chrono::Duration::from_std(self.cfg.once_max_wait).ok();
        let deadline = max_wait.and_then(|w| self.start.checked_add_signed(w)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut announced = false;
        loop {
            let conn = self.connections().await?;
            let c = cutoff::cutoff(&conn.keys, conn.mode).await.map_err(store_error)?;
            // A cutoff held below `since` (a long transaction, clock skew) makes an empty
            // window; `since` never moves backwards.
            let at = c.at.trunc_subsecs(conn.precision).max(self.keys.since);
            self.holds.observe(&self.pipeline, &c);
            if !self.once || self.released || at >= self.covering {
                return Ok((at, c.holdback));
            }
            if c.clock >= deadline {
                self.released = true;
                match self.holds.holder(c.clock) {
                    Some((txn, held_for)) => tracing::warn!(
                        pipeline = %self.pipeline,
                        pid = txn.pid,
                        age = ?txn.age(c.clock),
                        held_for = ?held_for,
                        once_max_wait = ?self.cfg.once_max_wait,
                        "run --once finishes while an open transaction still holds the cutoff below the command's start: \
                         changes committed since that transaction began come with the next run"
                    ),
                    None => tracing::warn!(
                        pipeline = %self.pipeline,
                        holdback = ?c.holdback,
                        once_max_wait = ?self.cfg.once_max_wait,
                        "run --once finishes before the cutoff reached the command's start (cutoff_lag is longer than once_max_wait): \
                         the latest changes come with the next run"
                    ),
                }
                return Ok((at, c.holdback));
            }
            let wait = match c.held_by {
                Some(txn) => {
                    if !announced {
                        tracing::info!(
                            pipeline = %self.pipeline,
                            pid = txn.pid,
                            age = ?txn.age(c.clock),
                            "run --once waits for an open transaction that holds the cutoff below the command's start"
                        );
                        announced = true;
                    }
                    HOLD_POLL
                }
                // Only the clock holds it: the cutoff covers the start once the clock has
                // moved this much further.
                None => (self.covering - c.at).to_std().unwrap_or_default(),
            };
            tokio::time::sleep(wait.min((deadline - c.clock).to_std().unwrap_or_default())).await;
        }
    }

    async fn hand_over(&mut self) -> Result<Batch, SourceError> {
        self.fill().await?;
        let page = self.in_flight.pop_front().expect("fill leaves a page in flight");
        let records = match page.documents {
            Some(handle) => handle.await.map_err(|e| SourceError::Query(format!("document query task: {e}"), true))??,
            None => Vec::new(),
        };
        self.handed = page.position.clone();
        Ok(Batch {
            records,
            position: serde_json::to_value(&page.position).expect("a position serialises"),
            ends_run: page.ends_run,
            covers_start: page.covers_start,
            cutoff_holdback: page.holdback,
            watermark: page.watermark,
        })
    }

    /// Drops the pages in flight and rewinds the key walk to what was handed over.
    fn abandon(&mut self, reconnect: bool) {
        for page in self.in_flight.drain(..) {
            if let Some(handle) = page.documents {
                handle.abort();
            }
        }
        self.keys = self.handed.clone();
        if reconnect {
            self.conn = None;
        }
    }
}

/// Counts and times one query; a transient failure drops the connections.
fn observe<T>(metrics: &PipelineMetrics, begun: Instant, rows: Result<T, tokio_postgres::Error>) -> Result<T, SourceError> {
    metrics.source_latency.observe(begun.elapsed().as_secs_f64());
    match rows {
        Ok(rows) => {
            metrics.source_request("ok");
            Ok(rows)
        }
        Err(e) => {
            metrics.source_request("error");
            Err(SourceError::Query(store::describe(&e), store::is_transient(&e)))
        }
    }
}

/// A row of the documents query: key, updated_at, document, deleted.
fn sql_record(row: &Row) -> Record {
    record(row.get(0), row.get(1), row.get(3), row.get(2))
}

fn record(key: String, updated_at: DateTime<Utc>, deleted: Option<bool>, document: Option<String>) -> Record {
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

/// The rows `EXPLAIN (FORMAT JSON)` expects its top node to return.
fn plan_rows(plan: &serde_json::Value) -> Option<u64> {
    plan.pointer("/0/Plan/Plan Rows")?.as_f64().map(|rows| rows.round() as u64)
}

impl Source for PostgresSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        self.handed = super::read_position(position, || Position::at(since), "a Postgres", Position::VERSION, |p| p.v)?;
        self.abandon(false);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        let result = self.hand_over().await;
        if let Err(e) = &result {
            self.abandon(e.is_retriable());
        }
        result
    }

    /// The planner's estimate of the keys from the position handed over last to its
    /// run's cutoff, from the `updated_at` histogram that ANALYZE (and so autovacuum)
    /// keeps: a few milliseconds whatever the size of the table, where a count would read
    /// every key left. `None` between runs, when not connected, or when the query fails (a
    /// lost connection is the key walk's to report).
    async fn backlog(&mut self) -> Option<u64> {
        let Position { since, cutoff: Some(cutoff), after: Some((at, id)), .. } = &self.handed else { return None };
        let conn = self.conn.as_ref()?;
        let unlimited = i64::MAX;
        let explained = conn.keys.query_one(&conn.backlog, &[since as &(dyn ToSql + Sync), cutoff, &unlimited, at, id]).await;
        match explained.map(|row| row.try_get::<_, serde_json::Value>(0)) {
            Ok(Ok(plan)) => plan_rows(&plan),
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(pipeline = %self.pipeline, error = %store::describe(&e), "estimating the backlog failed");
                None
            }
        }
    }

    fn wakeups(&self) -> Option<Wakeups> {
        self.wakeups.as_ref().map(|(w, _)| w.clone())
    }

    /// Under `--once` a fresh cutoff waits on the database clock until it covers the
    /// source's start (`fresh_cutoff`).
    fn next_run_covers_start(&self) -> bool {
        true
    }
}
