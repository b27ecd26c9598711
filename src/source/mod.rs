//! Sources: where changed orders come from. A source reads one page at a time from its
//! read position and hands over a [`Batch`] with the position that resumes *after* it; the
//! pipeline commits that position only once every event of the batch is acknowledged.

pub mod export_api;
mod head;
pub mod http;
pub mod notify;
pub mod orders_api;
pub mod postgres;
mod published;
pub mod webstore_api;

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};

use crate::config::{SourceConfig, SourceKind};
use crate::metrics::ErrorKind;

/// One changed order, as the source gave it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The order id as text: the Kafka key and the CloudEvents subject.
    pub key: String,
    pub updated_at: DateTime<Utc>,
    pub body: RecordBody,
}

impl Record {
    /// A record that cannot become an event, kept whole for the dead-letter topic.
    pub fn bad(key: String, reason: String, raw: &serde_json::value::RawValue) -> Self {
        Self { key, updated_at: crate::timestamp::epoch(), body: RecordBody::Bad { reason, raw: raw.get().as_bytes().to_vec() } }
    }
}

#[derive(Debug, Clone)]
pub enum RecordBody {
    /// The order document, exactly the bytes the source produced (never re-encoded).
    Document(String),
    /// The order stopped being active or was deleted: a `sales_order.deleted` event.
    Deleted,
    /// It cannot become an event; it goes to the dead-letter topic with the reason.
    Bad { reason: String, raw: Vec<u8> },
}

/// One page and the position after it.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    /// The position that resumes after this batch (a source-specific JSON value).
    pub position: serde_json::Value,
    /// This batch ends a run: every change below the run's cutoff has been read.
    pub ends_run: bool,
    /// This run's window holds every change committed before this source started, so
    /// `run --once` stops after it.
    pub covers_start: bool,
    /// How far the run's cutoff sits below the database clock, when this batch started a run.
    pub cutoff_holdback: Option<std::time::Duration>,
    /// Every change before this instant has been read once this batch is committed (the
    /// run's cutoff at its end, else the last record's `updated_at`): the lag metric's base.
    /// An HTTP source's dialect gives it in the API's clock; the transport moves it onto
    /// ours (`http::on_our_clock`).
    pub watermark: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String, retriable: bool },
    #[error("query failed: {0}")]
    Query(String, bool),
    #[error("{0}")]
    Setup(String),
    #[error("checkpoint position: {0}")]
    Position(String),
    #[error("{message}")]
    Http { status: Option<u16>, message: String, retriable: bool, retry_after: Option<std::time::Duration> },
    /// The API refused a continuation cursor (expired, signed by a rotated key), or gave
    /// none where it said there is more: the run starts again from its since, after
    /// `retry_after`.
    #[error("{detail} ({status}); the run starts again from its since")]
    CursorRefused { status: u16, detail: String, retry_after: std::time::Duration },
    /// The API refused the credential held by `source.<key>`.
    #[error("{detail}: check source.{key}")]
    Unauthorized { key: &'static str, detail: String },
}

impl SourceError {
    /// Whether trying again may succeed (a lost connection), as opposed to a problem that
    /// needs an operator (a missing table, a bad expression, a bad position).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect { retriable, .. } => *retriable,
            Self::Query(_, retriable) => *retriable,
            Self::Http { retriable, .. } => *retriable,
            Self::CursorRefused { .. } => true,
            Self::Setup(_) | Self::Position(_) | Self::Unauthorized { .. } => false,
        }
    }

    /// The `reason` label of a retry: the HTTP status that failed, or what else did.
    pub fn retry_reason(&self) -> String {
        match self {
            // A 200 that fails is its body: cut short or not the page JSON.
            Self::Http { status: Some(200), .. } => "malformed_page".into(),
            Self::Http { status: Some(status), .. } | Self::CursorRefused { status, .. } => status.to_string(),
            Self::Http { status: None, .. } | Self::Connect { .. } => "connection".into(),
            Self::Query(..) => "database".into(),
            Self::Unauthorized { .. } => "unauthorized".into(),
            Self::Setup(_) | Self::Position(_) => "setup".into(),
        }
    }

    /// The `kind` it is counted under in `order_cdc_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::CursorRefused { .. } => ErrorKind::CursorRefused,
            _ => ErrorKind::Source,
        }
    }

    /// The least the source asked us to wait (`Retry-After`, a run's restart).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            Self::CursorRefused { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A source of changed orders.
pub trait Source: Send {
    /// Positions the source at a committed position, or at `since` for a fresh start.
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError>;

    /// Reads the next page from the read position and advances it. At the end of a run the
    /// next call starts a new run with a fresh cutoff.
    fn next_batch(&mut self) -> impl Future<Output = Result<Batch, SourceError>> + Send;

    /// An estimate of the orders left between the position handed over last and the end
    /// of its run, for progress reports; `None` when the source cannot tell. It is asked
    /// mid-run, at most every `progress_interval`: it may cost a request or a query, never
    /// a count over the table.
    fn backlog(&mut self) -> impl Future<Output = Option<u64>> + Send {
        std::future::ready(None)
    }

    /// Notifications of committed changes that should start a run before `poll_interval`
    /// (a Postgres source with a `notify_channel`).
    fn wakeups(&self) -> Option<notify::Wakeups> {
        None
    }

    /// Whether the next run's own start covers the source's start, so that under
    /// `--once` a run that ended short of it (one resumed from an earlier process's
    /// checkpoint, with that process's cutoff) is followed by the next at once. A source
    /// whose window ends by a server's clock minus a margin cannot say so: only time
    /// moves that clock past its start, and the next run waits `poll_interval`.
    fn next_run_covers_start(&self) -> bool {
        false
    }
}

/// The source a pipeline's configuration names (one per pipeline, so its size is moot).
#[allow(clippy::large_enum_variant)]
pub enum ConfiguredSource {
    Postgres(postgres::PostgresSource),
    Http(http::HttpSource),
}

impl Source for ConfiguredSource {
    fn restore(&mut self, position: Option<&serde_json::Value>, since: DateTime<Utc>) -> Result<(), SourceError> {
        match self {
            Self::Postgres(s) => s.restore(position, since),
            Self::Http(s) => s.restore(position, since),
        }
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        match self {
            Self::Postgres(s) => s.next_batch().await,
            Self::Http(s) => s.next_batch().await,
        }
    }

    async fn backlog(&mut self) -> Option<u64> {
        match self {
            Self::Postgres(s) => s.backlog().await,
            Self::Http(s) => s.backlog().await,
        }
    }

    fn wakeups(&self) -> Option<notify::Wakeups> {
        match self {
            Self::Postgres(s) => s.wakeups(),
            Self::Http(s) => s.wakeups(),
        }
    }

    fn next_run_covers_start(&self) -> bool {
        match self {
            Self::Postgres(s) => s.next_run_covers_start(),
            Self::Http(s) => s.next_run_covers_start(),
        }
    }
}

/// Reads a checkpointed position: a fresh one at `since` when there is none, else the
/// stored one, which must be of this source's kind and format version.
pub(crate) fn read_position<P: serde::de::DeserializeOwned>(
    value: Option<&serde_json::Value>,
    fresh: impl FnOnce() -> P,
    kind: &str,
    version: u32,
    version_of: impl Fn(&P) -> u32,
) -> Result<P, SourceError> {
    let Some(value) = value else { return Ok(fresh()) };
    let p: P = serde_json::from_value(value.clone()).map_err(|e| SourceError::Position(format!("not {kind} position: {e}")))?;
    if version_of(&p) != version {
        return Err(SourceError::Position(format!("version {} is not supported (expected {version})", version_of(&p))));
    }
    Ok(p)
}

/// The content hashes a position keeps of the versions published at its boundary second,
/// as hex. Above `MAX_SEEN_IN_POSITION` it keeps none: a second holding more (a bulk load)
/// is published again after a crash, rather than the checkpoint outgrowing a Kafka message.
pub(crate) fn seen_to_position(seen: &HashSet<u64>) -> Vec<String> {
    if seen.len() > MAX_SEEN_IN_POSITION {
        return Vec::new();
    }
    seen.iter().map(|h| format!("{h:016x}")).collect()
}

const MAX_SEEN_IN_POSITION: usize = 20_000;

/// The hashes of a position's `seen`.
pub(crate) fn seen_from_position(seen: &[String]) -> Result<HashSet<u64>, SourceError> {
    seen.iter().map(|h| u64::from_str_radix(h, 16).map_err(|_| SourceError::Position(format!("seen {h:?} is not a hash")))).collect()
}

/// Who a configured source is (host, database, table, endpoint; never credentials): the
/// default CloudEvents `source` and the basis of the checkpoint fingerprint.
pub fn identity(cfg: &SourceConfig) -> String {
    match cfg.kind() {
        SourceKind::Postgres(c) => postgres::identity(c),
        SourceKind::Http(dialect) => dialect.identity(),
    }
}

/// The position a run starting at `since` begins from (`checkpoint set --since`).
pub fn position_since(cfg: &SourceConfig, since: DateTime<Utc>) -> serde_json::Value {
    match cfg.kind() {
        SourceKind::Postgres(_) => serde_json::to_value(postgres::Position::at(since)).expect("a position serialises"),
        SourceKind::Http(dialect) => dialect.position_since(since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_labelled_by_what_failed() {
        let http = |status| SourceError::Http { status, message: String::new(), retriable: true, retry_after: None };
        assert_eq!(http(Some(429)).retry_reason(), "429");
        assert_eq!(http(Some(502)).retry_reason(), "502");
        assert_eq!(http(Some(200)).retry_reason(), "malformed_page");
        assert_eq!(http(None).retry_reason(), "connection");
        assert_eq!(SourceError::Query("x".into(), true).retry_reason(), "database");
    }
}
