//! The order database: connections, the reference schema, the export document and the
//! late-commit cutoff. Shared by the Postgres source and (later) `order-cdc serve`: one
//! implementation, two faces.

pub mod cutoff;
pub mod demo;
pub mod document;
pub mod export;
pub mod json_text;
pub mod schema;
pub mod tls;

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::secret::SecretUrl;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {target}: {}", describe(source))]
    Connect { target: String, source: tokio_postgres::Error },
    #[error("cannot connect to PostgreSQL at {target}: no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("{context}: {}", describe(source))]
    Db { context: String, source: tokio_postgres::Error },
    #[error("{0}")]
    Schema(String),
    /// A TLS setting that cannot work (an unreadable `sslrootcert`).
    #[error("{0}")]
    Tls(String),
    /// The server closed a connection without an error (while the named work went on).
    #[error("{0}: the server closed the connection")]
    Closed(&'static str),
}

impl StoreError {
    pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Db { context, source }
    }

    /// Lost connections, server restarts, serialisation conflicts and resource shortages
    /// are worth retrying; a missing table or a bad expression is not.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::Closed(_) => true,
            Self::Db { source, .. } => is_transient(source),
            Self::Schema(_) | Self::Tls(_) => false,
        }
    }
}

/// The server's message of a database error, or the error with its causes
/// (tokio-postgres's Display alone says "db error" or "error connecting to server").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            message
        }
    }
}

pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // I/O and protocol errors: the connection is gone
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin / crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

/// A connection whose messages its owner polls itself (the notification listener reads
/// them; `connect` merely drives it).
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Opens a connection with a deadline; the caller must drive `Connection`.
pub async fn open(url: &SecretUrl, timeout: Duration) -> Result<(Client, Connection), StoreError> {
    let target = url.redacted();
    let (config, tls) = tls::connector(url)?;
    match tokio::time::timeout(timeout, config.connect(tls)).await {
        Err(_) => Err(StoreError::ConnectTimeout { target, timeout }),
        Ok(Err(source)) => Err(StoreError::Connect { target, source }),
        Ok(Ok(pair)) => Ok(pair),
    }
}

/// Sets a session up: UTC, and an application name a DBA can see in pg_stat_activity.
pub async fn set_up(client: &Client, application_name: &str) -> Result<(), StoreError> {
    let setup = format!(
        "SET TIME ZONE 'UTC'; SET application_name = '{}'",
        application_name.replace('\'', "''")
    );
    client.batch_execute(&setup).await.map_err(StoreError::db("setting up the session"))
}

/// Connects with a deadline, sets the session up and drives the connection in the
/// background.
pub async fn connect(url: &SecretUrl, timeout: Duration, application_name: &str) -> Result<Client, StoreError> {
    let (client, connection) = open(url, timeout).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    set_up(&client, application_name).await?;
    Ok(client)
}
