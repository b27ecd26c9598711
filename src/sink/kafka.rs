//! The Kafka publisher: an idempotent rdkafka producer (acks=all, murmur2_random) that sends
//! a whole batch without waiting, then hands back the batch's delivery futures. The
//! pipeline awaits them all before it commits, after rust-rdkafka's at-least-once example.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use std::borrow::Cow;

use rdkafka::message::OwnedHeaders;

use crate::checkpoint::{Checkpoint, KafkaStore};
use crate::config::{KafkaConfig, OnBadRecord};
use crate::event::{Event, EventFormat};
use crate::source::{Record, RecordBody};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transactional call (init, commit) may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable { brokers: String, source: KafkaError },
    #[error("cannot create topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("invalid Kafka producer configuration: {0}")]
    Config(KafkaError),
    #[error("Kafka refused a message: {0}")]
    Send(KafkaError),
    #[error("Kafka did not acknowledge a message: {0}")]
    Delivery(KafkaError),
    #[error("the producer went away before reporting a delivery")]
    Canceled,
    #[error("Kafka transaction: {0}")]
    Transaction(KafkaError),
    #[error("order {key}: its event value is {bytes} bytes, more than the producer's message.max.bytes; on_bad_record = \"fail\" stops the pipeline here")]
    TooLarge { key: String, bytes: usize },
}

impl PublishError {
    /// A failed or lost delivery is retried from the last checkpoint; a bad configuration
    /// or an unreachable cluster at start-up is not.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Send(_) | Self::Delivery(_) | Self::Canceled | Self::Transaction(_))
    }
}

/// Routes librdkafka's own logs into `tracing`. Until the first successful metadata
/// request its connection errors are debug lines: start-up reports an unreachable cluster
/// itself, in one line. After that they are warnings an operator should see.
struct LoggingContext {
    pipeline: String,
    started: Arc<AtomicBool>,
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error
                if self.started.load(Ordering::Relaxed) =>
            {
                tracing::error!(pipeline = %self.pipeline, facility, "librdkafka: {message}")
            }
            _ => tracing::debug!(pipeline = %self.pipeline, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.started.load(Ordering::Relaxed) {
            tracing::warn!(pipeline = %self.pipeline, error = %error, "Kafka: {reason}");
        } else {
            tracing::debug!(pipeline = %self.pipeline, error = %error, "Kafka: {reason}");
        }
    }
}

/// One event in flight and what it is, for counting once it is acknowledged.
pub struct Pending {
    pub delivery: DeliveryFuture,
    pub dead_letter: bool,
}

/// Everything needed to (re)build a pipeline's producer.
pub struct PublisherSpec {
    pub kafka: KafkaConfig,
    pub format: EventFormat,
    pub topic: String,
    pub dead_letter_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// What becomes of an event Kafka cannot take (larger than `message.max.bytes`).
    pub on_bad_record: OnBadRecord,
    /// `exactly_once`: the producer's `transactional.id`.
    pub transactional_id: Option<String>,
}

pub struct Publisher {
    producer: FutureProducer<LoggingContext>,
    topic: String,
    dead_letter_topic: String,
    format: EventFormat,
    on_bad_record: OnBadRecord,
}

/// The producer settings order-cdc needs for its guarantees, then the user's properties
/// (public for the benchmark, which measures the raw producer with the same settings).
pub fn client_config(kafka: &KafkaConfig, pipeline: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("order-cdc.{pipeline}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Java clients place keys with murmur2: the same order lands on the same partition
        // whichever client produced it.
        .set("partitioner", "murmur2_random");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

impl Publisher {
    /// Builds the producer, checks that the cluster answers and creates missing topics.
    pub async fn connect(spec: &PublisherSpec) -> Result<Self, PublishError> {
        let PublisherSpec { kafka, format, topic, dead_letter_topic, partitions, replication_factor, on_bad_record, transactional_id } = spec;
        let mut cfg = client_config(kafka, &format.pipeline);
        if let Some(id) = transactional_id {
            cfg.set("transactional.id", id);
        }
        let started = Arc::new(AtomicBool::new(false));
        let producer: FutureProducer<LoggingContext> = cfg
            .create_with_context(LoggingContext { pipeline: format.pipeline.clone(), started: started.clone() })
            .map_err(PublishError::Config)?;
        let probe = producer.clone();
        let metadata = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await
            .expect("metadata probe does not panic")
            .map_err(|source| PublishError::Unreachable { brokers: kafka.brokers.clone(), source })?;
        started.store(true, Ordering::Relaxed);
        // Only missing topics are created: a role without the right to create topics can
        // still publish to existing ones.
        let existing: Vec<&str> = metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name()).collect();
        let missing: Vec<&str> = [topic, dead_letter_topic].into_iter().map(String::as_str).filter(|t| !existing.contains(t)).collect();
        if !missing.is_empty() {
            ensure_topics(&cfg, &missing, *partitions, *replication_factor).await?;
        }
        if transactional_id.is_some() {
            // Fences any earlier producer with this id and aborts what it left open, so
            // the checkpoint read after this sees only committed transactions.
            let init = producer.clone();
            tokio::task::spawn_blocking(move || init.init_transactions(TRANSACTION_TIMEOUT))
                .await
                .expect("init_transactions does not panic")
                .map_err(PublishError::Transaction)?;
        }
        Ok(Self {
            producer,
            topic: topic.clone(),
            dead_letter_topic: dead_letter_topic.clone(),
            format: format.clone(),
            on_bad_record: *on_bad_record,
        })
    }

    /// A fatal producer error (librdkafka's word): the producer must be rebuilt.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Enqueues every record of a batch without awaiting any delivery; returns the
    /// deliveries in the batch's order. Bad records go to the dead-letter topic.
    pub async fn send_batch(&self, records: &[Record]) -> Result<Vec<Pending>, PublishError> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let (event, dead_letter) = match &record.body {
                RecordBody::Bad { reason, raw } => (self.format.dead_letter(record, reason, raw), true),
                _ => (self.format.encode(record), false),
            };
            let topic = if dead_letter { &self.dead_letter_topic } else { &self.topic };
            let bytes = event.payload().map_or(0, <[u8]>::len);
            let pending_event = match self.send(topic, event).await {
                Err(PublishError::Send(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))) => {
                    self.too_large(record, bytes).await?
                }
                sent => Pending { delivery: sent?, dead_letter },
            };
            pending.push(pending_event);
        }
        Ok(pending)
    }

    /// Opens a transaction (`exactly_once`): what is sent until `commit_transaction` is
    /// published together or not at all.
    pub fn begin_transaction(&self) -> Result<(), PublishError> {
        self.producer.begin_transaction().map_err(PublishError::Transaction)
    }

    /// Adds the batch's checkpoint to the open transaction.
    pub async fn send_checkpoint(&self, topic: &str, cp: &Checkpoint) -> Result<(), PublishError> {
        let value = KafkaStore::value(cp);
        let event = Event { key: &cp.pipeline, value: Some(Cow::Borrowed(&value)), headers: OwnedHeaders::new() };
        self.send(topic, event).await.map(drop)
    }

    /// Commits the open transaction: waits until every message in it is acknowledged,
    /// and fails (to be aborted by a fresh producer) if any was not.
    pub async fn commit_transaction(&self) -> Result<(), PublishError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.commit_transaction(TRANSACTION_TIMEOUT))
            .await
            .expect("commit_transaction does not panic")
            .map_err(PublishError::Transaction)
    }

    /// An event larger than Kafka takes can never be published: retrying would stall the
    /// pipeline for good. It is a bad record: its key and the reason go to the dead-letter
    /// topic without the document (which would not fit there either), or it stops the
    /// pipeline.
    async fn too_large(&self, record: &Record, bytes: usize) -> Result<Pending, PublishError> {
        if self.on_bad_record == OnBadRecord::Fail {
            return Err(PublishError::TooLarge { key: record.key.clone(), bytes });
        }
        let reason = format!("the event value is {bytes} bytes, more than the producer's message.max.bytes; the document is left out");
        tracing::warn!(pipeline = %self.format.pipeline, key = %record.key, bytes, "an event is too large for Kafka; it goes to the dead-letter topic without its document");
        let delivery = self.send(&self.dead_letter_topic, self.format.dead_letter(record, &reason, b"")).await?;
        Ok(Pending { delivery, dead_letter: true })
    }

    async fn send(&self, topic: &str, event: Event<'_>) -> Result<DeliveryFuture, PublishError> {
        let Event { key, value, headers } = event;
        let mut message = FutureRecord::to(topic).key(key).headers(headers);
        if let Some(value) = value.as_deref() {
            message = message.payload(value);
        }
        loop {
            match self.producer.send_result(message) {
                Ok(delivery) => return Ok(delivery),
                // librdkafka's local queue is full: give it a moment to drain to the broker.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(PublishError::Send(e)),
            }
        }
    }
}

async fn ensure_topics(cfg: &ClientConfig, topics: &[&str], partitions: i32, replication_factor: i32) -> Result<(), PublishError> {
    let admin: AdminClient<_> = cfg.create().map_err(PublishError::Config)?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication_factor)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)))
        .await
        .map_err(|e| PublishError::Topic { topic: topics.join(", "), reason: e.to_string() })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(PublishError::Topic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}
