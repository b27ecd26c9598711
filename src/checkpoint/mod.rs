//! Checkpoints: where each pipeline resumes. A checkpoint names its pipeline, the source
//! it belongs to (by fingerprint, so it is never applied to another source by mistake) and
//! the source's position, a plain versioned JSON value an operator can read.

pub mod file;
pub mod kafka;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Delivery, PipelineConfig};

pub use file::FileStore;
pub use kafka::KafkaStore;

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
            committed_at: Utc::now(),
        }
    }
}

/// A stored checkpoint, checked for its format version; `at` names where it was read.
pub fn parse(bytes: &[u8], at: &str) -> Result<Checkpoint, CheckpointError> {
    let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| CheckpointError::Corrupt { path: at.to_string(), reason: e.to_string() })?;
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
}

impl CheckpointError {
    /// The Kafka store may be back in a moment; a bad file or a foreign checkpoint needs
    /// an operator.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Kafka(_))
    }
}

/// Where a pipeline's checkpoints live: a file (`at_least_once`: committed after the
/// batch's acknowledgements), or the Kafka topic (`exactly_once`: committed in the batch's
/// transaction).
#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    Kafka(KafkaStore),
}

/// The store of a pipeline: `exactly_once` keeps its checkpoints in the Kafka topic
/// (`[checkpoint] topic`), `at_least_once` in files (`[checkpoint] dir`).
pub fn store_for(config: &Config, pipeline: &PipelineConfig) -> Store {
    match pipeline.delivery {
        Delivery::ExactlyOnce => Store::Kafka(KafkaStore::new(config.kafka.clone(), &config.checkpoint.topic)),
        Delivery::AtLeastOnce => Store::File(FileStore::new(&config.checkpoint.dir)),
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
            Self::Kafka(k) => k.load(pipeline).await,
        }
    }

    async fn commit(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        match self {
            Self::File(f) => {
                let (writer, cp) = (f.clone(), cp.clone());
                tokio::task::spawn_blocking(move || writer.commit(&cp)).await.expect("the checkpoint writer does not panic")
            }
            Self::Kafka(k) => k.write(&cp.pipeline, Some(cp)).await,
        }
    }
}

impl Store {
    /// Writes a checkpoint outside of any batch (`checkpoint set`).
    pub async fn write(&self, cp: &Checkpoint, replication_factor: i32) -> Result<(), CheckpointError> {
        match self {
            Self::File(f) => f.commit(cp),
            Self::Kafka(k) => {
                k.ensure_topic(replication_factor).await?;
                k.write(&cp.pipeline, Some(cp)).await
            }
        }
    }

    /// Deletes a pipeline's checkpoint (`checkpoint reset`); returns whether there was one.
    pub async fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        match self {
            Self::File(f) => f.reset(pipeline),
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
