//! The PostgreSQL checkpoint store, for teams that want their checkpoints in a database
//! they already back up: one row per pipeline in `[checkpoint] table` (created when
//! missing) of `[checkpoint] url`, by default the pipeline's source database.
//!
//! A commit is one upsert, a single statement: a crash at any point leaves the old row or
//! the new one, never a mix. The connection is opened on first use, which also creates the
//! table, so start-up finds a missing privilege before anything is published. A lost
//! connection, or one that stops answering (every operation has a deadline), is a
//! retriable error, and the next call opens a new one.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Row};

use super::{Checkpoint, CheckpointError};
use crate::secret::SecretUrl;
use crate::store::{self, StoreError};

/// The longest one operation may take, connecting included: a commit waits for it, so a
/// database that stops answering must not stall the pipeline for good.
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What a DBA sees in `pg_stat_activity`.
const APPLICATION_NAME: &str = "order-cdc/checkpoints";

/// A pipeline's store; its clones share one connection.
#[derive(Clone)]
pub struct PostgresStore {
    url: SecretUrl,
    /// An unquoted SQL name, checked by the configuration (`checkpoint.table`).
    table: String,
    timeout: Duration,
    client: Arc<Mutex<Option<Arc<Client>>>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("url", &self.url).field("table", &self.table).finish_non_exhaustive()
    }
}

impl PostgresStore {
    pub fn new(url: SecretUrl, table: impl Into<String>) -> Self {
        Self { url, table: table.into(), timeout: TIMEOUT, client: Arc::new(Mutex::new(None)) }
    }

    /// Another bound on one operation than the default 30 s.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The pipeline's checkpoint, `None` when it has none.
    pub async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let sql = format!("SELECT version, pipeline, source, fingerprint, position, committed_at FROM {} WHERE pipeline = $1", self.table);
        let row = self.run("reading the checkpoint", |client| async move { client.query_opt(&sql, &[&pipeline]).await }).await?;
        let Some(row) = row else { return Ok(None) };
        let at = format!("row {pipeline:?} of table {}", self.table);
        let cp = from_row(&row).map_err(|e| CheckpointError::Corrupt { path: at.clone(), reason: e.to_string() })?;
        super::checked(cp, &at).map(Some)
    }

    /// Inserts or replaces the pipeline's row.
    pub async fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let sql = format!(
            "INSERT INTO {} (pipeline, version, source, fingerprint, position, committed_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (pipeline) DO UPDATE
                SET version = EXCLUDED.version, source = EXCLUDED.source, fingerprint = EXCLUDED.fingerprint,
                    position = EXCLUDED.position, committed_at = EXCLUDED.committed_at",
            self.table
        );
        let version = i32::try_from(cp.version).expect("a format version fits an integer");
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [&cp.pipeline, &version, &cp.source, &cp.fingerprint, &cp.position, &cp.committed_at];
        self.run("writing the checkpoint", |client| async move { client.execute(&sql, &params).await }).await?;
        Ok(())
    }

    /// Deletes the pipeline's row; returns whether there was one.
    pub async fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        let sql = format!("DELETE FROM {} WHERE pipeline = $1", self.table);
        let deleted = self.run("deleting the checkpoint", |client| async move { client.execute(&sql, &[&pipeline]).await }).await?;
        Ok(deleted > 0)
    }

    /// Runs one statement on the connection, within the deadline. A transient failure or
    /// a missed deadline forgets the connection, so the next call (the pipeline's retry)
    /// starts on a new one.
    async fn run<T, F, Fut>(&self, what: &'static str, statement: F) -> Result<T, CheckpointError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempt = async {
            let client = self.client().await?;
            statement(client.clone()).await.map_err(|e| {
                if store::is_transient(&e) {
                    self.forget(&client);
                }
                CheckpointError::from(StoreError::db(what)(e))
            })
        };
        // Bound first: the attempt (and any lock it holds) is dropped before the match.
        let bounded = tokio::time::timeout(self.timeout, attempt).await;
        match bounded {
            Ok(outcome) => outcome,
            Err(_) => {
                if let Ok(mut conn) = self.client.try_lock() {
                    *conn = None;
                }
                Err(CheckpointError::PostgresTimeout { what, timeout: self.timeout })
            }
        }
    }

    /// The connection, opened (and the table created) when there is none or it was lost.
    async fn client(&self) -> Result<Arc<Client>, CheckpointError> {
        let mut conn = self.client.lock().await;
        if let Some(client) = conn.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *conn = None;
        let client = store::connect(&self.url, CONNECT_TIMEOUT, APPLICATION_NAME).await?;
        self.create_table(&client).await?;
        Ok(conn.insert(Arc::new(client)).clone())
    }

    /// Forgets a connection that failed, unless another call has replaced it already.
    fn forget(&self, client: &Arc<Client>) {
        if let Ok(mut conn) = self.client.try_lock() {
            if conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
                *conn = None;
            }
        }
    }

    /// Creates the table when it is missing. The look-up comes first so that a role
    /// without the right to create tables works with one made for it; the lock keeps two
    /// pipelines starting together from racing (CREATE TABLE IF NOT EXISTS alone can fail
    /// on a concurrent creation).
    async fn create_table(&self, client: &Client) -> Result<(), StoreError> {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table])
            .await
            .map_err(StoreError::db(format!("looking up checkpoint table {}", self.table)))?
            .get(0);
        if exists {
            return Ok(());
        }
        let ddl = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('order-cdc checkpoint table'));
             CREATE TABLE IF NOT EXISTS {table} (
                 pipeline     text PRIMARY KEY,
                 version      integer NOT NULL,
                 source       text NOT NULL,
                 fingerprint  text NOT NULL,
                 position     jsonb NOT NULL,
                 committed_at timestamptz NOT NULL
             );
             COMMIT;",
            table = self.table
        );
        client.batch_execute(&ddl).await.map_err(StoreError::db(format!("creating checkpoint table {} (checkpoint.table)", self.table)))?;
        tracing::info!(table = %self.table, database = %self.url, "created the checkpoint table");
        Ok(())
    }
}

fn from_row(row: &Row) -> Result<Checkpoint, tokio_postgres::Error> {
    Ok(Checkpoint {
        // A negative version is as unsupported as any other unknown one.
        version: u32::try_from(row.try_get::<_, i32>("version")?).unwrap_or(u32::MAX),
        pipeline: row.try_get("pipeline")?,
        source: row.try_get("source")?,
        fingerprint: row.try_get("fingerprint")?,
        position: row.try_get("position")?,
        committed_at: row.try_get("committed_at")?,
    })
}
