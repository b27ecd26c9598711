//! order-cdc: every change to every sales order, from PostgreSQL or an order export API
//! onto Kafka, at least once, checkpointed only behind the broker's acknowledgements.
//!
//! The folders are the architecture: `source/` reads pages, `sink/` publishes them,
//! `checkpoint/` remembers where to resume, `pipeline` ties them together under the
//! ack-before-commit rule, and `store/` is the order database shared by the Postgres
//! source and the server.

pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod event;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod store;
mod task;
pub mod timestamp;
