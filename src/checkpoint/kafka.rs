//! The Kafka checkpoint store of `exactly_once` pipelines: a compacted topic (one
//! partition), keyed by pipeline name, whose records are the checkpoints. A pipeline
//! writes its checkpoint in the same transaction as the batch's events, so the two are
//! committed together or not at all; it reads it back with `read_committed`, after its
//! producer's `init_transactions` has aborted whatever an earlier incarnation left open.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Checkpoint, CheckpointError};
use crate::config::KafkaConfig;
use crate::sink::kafka::dispose;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The reader's end-of-partition events are how it knows it is done, not errors to log.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, "checkpoint reader: {reason}");
    }
}

impl ConsumerContext for ReaderContext {}

#[derive(Debug, Clone)]
pub struct KafkaStore {
    kafka: KafkaConfig,
    topic: String,
}

fn kafka_error(what: &str) -> impl FnOnce(KafkaError) -> CheckpointError + '_ {
    move |e| CheckpointError::Kafka(format!("{what}: {e}"))
}

impl KafkaStore {
    pub fn new(kafka: KafkaConfig, topic: impl Into<String>) -> Self {
        Self { kafka, topic: topic.into() }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A checkpoint as its record's value.
    pub fn value(cp: &Checkpoint) -> Vec<u8> {
        serde_json::to_vec(cp).expect("a checkpoint serialises")
    }

    /// The cluster settings (brokers, security) for a client of the store.
    fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.kafka.brokers);
        for (k, v) in self.kafka.properties.iter().filter(|(k, _)| k.starts_with("security.") || k.starts_with("ssl.") || k.starts_with("sasl.")) {
            cfg.set(k, v);
        }
        cfg
    }

    /// Creates the compacted topic when it is missing.
    pub async fn ensure_topic(&self, replication_factor: i32) -> Result<(), CheckpointError> {
        let admin: AdminClient<_> = self.client_config().create().map_err(kafka_error("checkpoint store"))?;
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(replication_factor)).set("cleanup.policy", "compact");
        let results = admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(TIMEOUT))).await;
        dispose(admin);
        let results = results.map_err(kafka_error("creating the checkpoint topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(CheckpointError::Kafka(format!("creating checkpoint topic {topic}: {code}"))),
            }
        }
        Ok(())
    }

    /// The newest committed checkpoint of a pipeline (`None` if it has none, or was reset).
    pub async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let (store, pipeline) = (self.clone(), pipeline.to_string());
        tokio::task::spawn_blocking(move || store.read_latest(&pipeline)).await.expect("the checkpoint reader does not panic")
    }

    /// Reads the topic from the start to its end for `read_committed` readers (records of
    /// aborted transactions are skipped), keeping the last record of the pipeline's key.
    fn read_latest(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let consumer: BaseConsumer<ReaderContext> = self
            .client_config()
            .set("group.id", format!("order-cdc.checkpoint-reader.{pipeline}"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // The read ends at the partition's end, which an empty fetch reports only after
            // the broker's wait for data (500 ms by default), on every start and restart.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ReaderContext)
            .map_err(kafka_error("checkpoint reader"))?;
        let latest = self.read(&consumer, pipeline);
        dispose(consumer);
        latest
    }

    /// The read itself, on a reader assigned nothing yet.
    fn read(&self, consumer: &BaseConsumer<ReaderContext>, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let metadata = consumer.fetch_metadata(Some(&self.topic), TIMEOUT).map_err(kafka_error("reading the checkpoint topic's metadata"))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic && t.error().is_none()) else {
            return Ok(None);
        };
        let mut assignment = TopicPartitionList::new();
        for p in topic.partitions() {
            assignment.add_partition_offset(&self.topic, p.id(), Offset::Beginning).expect("a fresh partition list");
        }
        consumer.assign(&assignment).map_err(kafka_error("reading the checkpoint topic"))?;
        let mut open = topic.partitions().len();
        let mut latest = None;
        let deadline = Instant::now() + TIMEOUT;
        while open > 0 {
            if Instant::now() > deadline {
                return Err(CheckpointError::Kafka(format!("reading checkpoint topic {} took longer than {TIMEOUT:?}", self.topic)));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => return Err(kafka_error("reading the checkpoint topic")(e)),
                Some(Ok(m)) if m.key() == Some(pipeline.as_bytes()) => {
                    latest = match m.payload() {
                        None => None,
                        Some(value) => Some(super::parse(value, &format!("{}[{}]@{}", self.topic, m.partition(), m.offset()))?),
                    };
                }
                Some(Ok(_)) => {}
            }
        }
        Ok(latest)
    }

    /// Writes a checkpoint, or deletes it with a tombstone (`checkpoint set|reset`).
    pub async fn write(&self, pipeline: &str, cp: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        let producer: FutureProducer = self.client_config().set("acks", "all").create().map_err(kafka_error("checkpoint writer"))?;
        let value = cp.map(Self::value);
        let mut record = FutureRecord::to(&self.topic).key(pipeline);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        producer.send(record, TIMEOUT).await.map_err(|(e, _)| kafka_error("writing the checkpoint")(e))?;
        Ok(())
    }
}
