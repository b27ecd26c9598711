//! Checkpoints: where each pipeline resumes. A checkpoint names its pipeline, the source
//! it belongs to (by fingerprint, so it is never applied to another source by mistake) and
//! the source's position, a plain versioned JSON value an operator can read.

pub mod file;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use file::FileStore;

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
}

/// Loads a pipeline's checkpoint and checks that it belongs to this source.
pub fn load_for(store: &FileStore, pipeline: &str, source_identity: &str) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some(cp) = store.load(pipeline)? else { return Ok(None) };
    if cp.fingerprint != fingerprint(source_identity) {
        return Err(CheckpointError::ForeignSource {
            pipeline: pipeline.to_string(),
            found: cp.source,
            expected: source_identity.to_string(),
        });
    }
    Ok(Some(cp))
}
