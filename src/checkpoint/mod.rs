//! Checkpoints: where each pipeline resumes. A checkpoint names its pipeline, the source
//! it belongs to (by fingerprint, so it is never applied to another source by mistake) and
//! the source's position, a plain versioned JSON value an operator can read.

pub mod file;
pub mod kafka;
pub mod postgres;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{CheckpointStoreKind, Config, Delivery, PipelineConfig};
use crate::store::StoreError;

pub use file::FileStore;
pub use kafka::KafkaStore;
pub use postgres::PostgresStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this record.
    pub version: u32,
    pub pipeline: String,
    /// The source's identity, for people (host, database, table; never credentials).
    pub source: String,
    /// A hash of `source`, the part that is checked.
    pub fingerprint: String,
    pub position: serde_json::Value,
    pub committed_at: DateTime<Utc>,
}

impl Checkpoint {
    pub const VERSION: u32 = 1;

    pub fn new(pipeline: &str, source_identity: &str, position: serde_json::Value) -> Self {
        Self {
            version: Self::VERSION,
            pipeline: pipeline.to_string(),
            source: source_identity.to_string(),
            fingerprint: fingerprint(source_identity),
            position,
            // Microseconds, what a timestamptz keeps: every store reads back what it wrote.
            committed_at: Utc::now().trunc_subsecs(6),
        }
    }
}

/// A stored checkpoint, checked for its format version; `at` names where it was read.
pub fn parse(bytes: &[u8], at: &str) -> Result<Checkpoint, CheckpointError> {
    let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| CheckpointError::Corrupt { path: at.to_string(), reason: e.to_string() })?;
    checked(cp, at)
}

/// A checkpoint whose format version this build reads; `at` names where it was read.
fn checked(cp: Checkpoint, at: &str) -> Result<Checkpoint, CheckpointError> {
    if cp.version != Checkpoint::VERSION {
        return Err(CheckpointError::Corrupt {
            path: at.to_string(),
            reason: format!("version {} is not supported (expected {})", cp.version, Checkpoint::VERSION),
        });
    }
    Ok(cp)
}

pub fn fingerprint(source_identity: &str) -> String {
    hex::encode(&Sha256::digest(source_identity.as_bytes())[..12])
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("checkpoint {path} is not a valid checkpoint: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "the checkpoint of pipeline {pipeline} belongs to another source ({found}, not {expected}); \
         run `order-cdc checkpoint reset --pipeline {pipeline}` to start this source over"
    )]
    ForeignSource { pipeline: String, found: String, expected: String },
    #[error("checkpoint store (Kafka): {0}")]
    Kafka(String),
    #[error("checkpoint store (PostgreSQL): {0}")]
    Postgres(#[from] StoreError),
    #[error("checkpoint store (PostgreSQL): {what} took longer than {timeout:?}")]
    PostgresTimeout { what: &'static str, timeout: Duration },
}

impl CheckpointError {
    /// The Kafka store, or a PostgreSQL store that lost its connection, may be back in a
    /// moment; a bad file, a foreign checkpoint or a table of another shape needs an
    /// operator.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka(_) | Self::PostgresTimeout { .. } => true,
            Self::Postgres(e) => e.is_retriable(),
            Self::Io { .. } | Self::Corrupt { .. } | Self::ForeignSource { .. } => false,
        }
    }
}

/// Where a pipeline's checkpoints live: a file or a PostgreSQL row (`at_least_once`:
/// committed after the batch's acknowledgements), or the Kafka topic (`exactly_once`:
/// committed in the batch's transaction).
#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    Postgres(PostgresStore),
    Kafka(KafkaStore),
}

/// The store of a pipeline: `exactly_once` keeps its checkpoints in the Kafka topic
/// (`[checkpoint] topic`) whatever `store` says; `at_least_once` in files (`[checkpoint]
/// dir`) or in the `[checkpoint] table` of `url` (default: the source database).
pub fn store_for(config: &Config, pipeline: &PipelineConfig) -> Store {
    let cp = &config.checkpoint;
    match (pipeline.delivery, cp.store) {
        (Delivery::ExactlyOnce, _) => Store::Kafka(KafkaStore::new(config.kafka.clone(), &cp.topic)),
        (Delivery::AtLeastOnce, CheckpointStoreKind::Postgres) => {
            let url = cp.url_for(&pipeline.source).expect("validated: checkpoint.url is set where no source database is");
            Store::Postgres(PostgresStore::new(url.clone(), &cp.table))
        }
        // `kafka` with an at_least_once pipeline is refused by validation.
        (Delivery::AtLeastOnce, CheckpointStoreKind::File | CheckpointStoreKind::Kafka) => Store::File(FileStore::new(&cp.dir)),
    }
}

/// Where a pipeline reads its checkpoint back from, and where `at_least_once` commits it
/// once a batch is acknowledged. A trait so that the pipeline core is tested with a store
/// that fails on demand.
pub trait CheckpointStore: Send + Sync {
    /// The pipeline's newest checkpoint (`None` if it has none, or was reset).
    fn load(&self, pipeline: &str) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send;

    /// Makes `cp` the pipeline's checkpoint, durably, before it returns.
    fn commit(&self, cp: &Checkpoint) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

impl CheckpointStore for Store {
    async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        match self {
            Self::File(f) => f.load(pipeline),
            Self::Postgres(p) => p.load(pipeline).await,
            Self::Kafka(k) => k.load(pipeline).await,
        }
    }

    async fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        match self {
            Self::File(f) => {
                let (writer, cp) = (f.clone(), cp.clone());
                tokio::task::spawn_blocking(move || writer.commit(&cp)).await.expect("the checkpoint writer does not panic")
            }
            Self::Postgres(p) => p.commit(cp).await,
            Self::Kafka(k) => k.write(&cp.pipeline, Some(cp)).await,
        }
    }
}

impl Store {
    /// Writes a checkpoint outside of any batch (`checkpoint set`).
    pub async fn write(&self, cp: &Checkpoint, replication_factor: i32) -> Result<(), CheckpointError> {
        if let Self::Kafka(k) = self {
            k.ensure_topic(replication_factor).await?;
        }
        self.commit(cp).await
    }

    /// Deletes a pipeline's checkpoint (`checkpoint reset`); returns whether there was one.
    pub async fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        match self {
            Self::File(f) => f.reset(pipeline),
            Self::Postgres(p) => p.reset(pipeline).await,
            Self::Kafka(k) => {
                let existed = k.load(pipeline).await?.is_some();
                if existed {
                    k.write(pipeline, None).await?;
                }
                Ok(existed)
            }
        }
    }
}

/// Loads a pipeline's checkpoint and checks that it belongs to this source.
pub async fn load_for(store: &impl CheckpointStore, pipeline: &str, source_identity: &str) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some(cp) = store.load(pipeline).await? else { return Ok(None) };
    if cp.fingerprint != fingerprint(source_identity) {
        return Err(CheckpointError::ForeignSource {
            pipeline: pipeline.to_string(),
            found: cp.source,
            expected: source_identity.to_string(),
        });
    }
    Ok(Some(cp))
}
