//! The Kafka sink: an idempotent rdkafka producer (acks=all, murmur2_random) that sends a
//! whole batch without waiting, then hands back one acknowledgement that resolves when
//! the producer has reported every message of the batch (`deliveries.rs`). Under
//! `exactly_once` it is transactional and commits each checkpoint inside the transaction.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::deliveries::{Deliveries, Settled};
use super::polling::Polled;
use super::{Acknowledgement, Delivered, Sink, SinkError, TransactionalSink};
use crate::checkpoint::{Checkpoint, KafkaStore};
use crate::config::{KafkaConfig, OnBadRecord};
use crate::event::{Event, EventFormat};
use crate::source::{Record, RecordBody};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transactional call (init, commit, abort) may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// An rdkafka error as the sink error of that kind (the pipeline never sees rdkafka types).
fn kafka_error(variant: fn(String) -> SinkError) -> impl Fn(KafkaError) -> SinkError {
    move |e| variant(e.to_string())
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

/// Each message carries its batch's [`Deliveries`], and lets go of it once reported.
impl ProducerContext for LoggingContext {
    type DeliveryOpaque = Arc<Deliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, deliveries: Arc<Deliveries>) {
        deliveries.report(result.as_ref().err().map(|(e, _)| e.to_string()));
    }
}

/// `exactly_once`: the producer's `transactional.id`, and the compacted topic its
/// checkpoints are committed to inside each transaction.
#[derive(Clone)]
pub struct Transactional {
    pub id: String,
    pub checkpoint_topic: String,
}

/// Everything needed to (re)build a pipeline's producer.
#[derive(Clone)]
pub struct PublisherSpec {
    pub kafka: KafkaConfig,
    pub format: EventFormat,
    pub topic: String,
    pub dead_letter_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// What becomes of an event Kafka cannot take (larger than `message.max.bytes`).
    pub on_bad_record: OnBadRecord,
    pub transactional: Option<Transactional>,
}

/// The Kafka sink: a producer and what it was built from, so it can be rebuilt.
pub struct Publisher {
    producer: Polled<LoggingContext>,
    spec: PublisherSpec,
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
        .set("partitioner", "murmur2_random")
        // Asking for a topic's metadata never creates it with the broker's defaults:
        // missing topics are created with the pipeline's partitions and replication.
        .set("allow.auto.create.topics", "false")
        // librdkafka lets go of its bootstrap connection once the metadata names the
        // brokers, failing the start-up's metadata request sent on it, and holds the next
        // connection back for half of this (50 ms at the default 100): the wait came
        // before every first page. Reconnects still back off exponentially from here, to
        // `reconnect.backoff.max.ms`.
        .set("reconnect.backoff.ms", "20")
        // A topic created a moment ago answers the first produce to some of its
        // partitions with NOT_LEADER; the retry waited this long (100 ms at the default),
        // holding the whole pipeline behind it. Retries back off exponentially from here,
        // to `retry.backoff.max.ms`.
        .set("retry.backoff.ms", "20");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// A batch handed over whole: the sender lets go of it, and its acknowledgement is what
/// the batch settles to.
fn acknowledgement(deliveries: Arc<Deliveries>, settled: Settled, delivered: Delivered) -> Acknowledgement {
    drop(deliveries);
    Box::pin(async move { settled.wait().await.map(|()| delivered) })
}

/// Tears an rdkafka client down off the async workers and without waiting for it: its
/// destruction joins its threads, about 100 ms here, which a start-up's admin client or
/// checkpoint reader (on every load, retries too) spent on the way to the first page, and
/// a replaced producer (whose teardown may flush for up to 500 ms what a failure left
/// queued) on the way to the next.
pub fn dispose<T: Send + 'static>(client: T) {
    tokio::task::spawn_blocking(move || drop(client));
}

/// Runs a blocking rdkafka call (init, commit, abort) off the async workers.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(call).await.expect("rdkafka calls do not panic")
}

impl Publisher {
    /// Builds the producer, checks that the cluster answers and creates missing topics.
    pub async fn connect(spec: PublisherSpec) -> Result<Self, SinkError> {
        let PublisherSpec { kafka, format, topic, dead_letter_topic, partitions, replication_factor, transactional, .. } = &spec;
        let mut cfg = client_config(kafka, &format.pipeline);
        if let Some(t) = transactional {
            cfg.set("transactional.id", &t.id);
        }
        let started = Arc::new(AtomicBool::new(false));
        let producer: BaseProducer<LoggingContext> = cfg
            .create_with_context(LoggingContext { pipeline: format.pipeline.clone(), started: started.clone() })
            .map_err(kafka_error(SinkError::Config))?;
        let producer = Polled::start(producer).map_err(|e| SinkError::PollingThread(e.to_string()))?;
        // Only missing topics are created: a role without the right to create topics can
        // still publish to existing ones. The metadata asked for is these two topics'
        // alone: the whole cluster's took 26 ms here with 1,900 topics, and grows with them.
        let probe = producer.shared();
        let names = [topic.clone(), dead_letter_topic.clone()];
        let missing = blocking(move || {
            let mut missing = Vec::new();
            for name in names {
                let metadata = probe.client().fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
                if !metadata.topics().iter().any(|t| t.name() == name && t.error().is_none()) {
                    missing.push(name);
                }
            }
            Ok::<_, KafkaError>(missing)
        })
        .await
        .map_err(|e| SinkError::Unreachable { brokers: kafka.brokers.clone(), reason: e.to_string() })?;
        started.store(true, Ordering::Relaxed);
        if !missing.is_empty() {
            ensure_topics(&cfg, &missing, *partitions, *replication_factor).await?;
        }
        if transactional.is_some() {
            // Fences any earlier producer with this id and aborts what it left open, so
            // the checkpoint read after this sees only committed transactions.
            let init = producer.shared();
            blocking(move || init.init_transactions(TRANSACTION_TIMEOUT)).await.map_err(kafka_error(SinkError::Transaction))?;
        }
        Ok(Self { producer, spec })
    }

    fn format(&self) -> &EventFormat {
        &self.spec.format
    }

    /// An event larger than Kafka takes can never be published: retrying would stall the
    /// pipeline for good. It is a bad record: its key and the reason go to the dead-letter
    /// topic without the document (which would not fit there either), or it stops the
    /// pipeline.
    async fn too_large(&self, record: &Record, bytes: usize, deliveries: &Arc<Deliveries>) -> Result<(), SinkError> {
        if self.spec.on_bad_record == OnBadRecord::Fail {
            return Err(SinkError::TooLarge { key: record.key.clone(), bytes });
        }
        let reason = format!("the event value is {bytes} bytes, more than the producer's message.max.bytes; the document is left out");
        tracing::warn!(pipeline = %self.format().pipeline, key = %record.key, bytes, "an event is too large for Kafka; it goes to the dead-letter topic without its document");
        self.enqueue(&self.spec.dead_letter_topic, self.format().dead_letter(record, &reason, b""), deliveries).await.map_err(kafka_error(SinkError::Send))
    }

    /// Hands one message of a batch to librdkafka, waiting while its local queue is full.
    async fn enqueue(&self, topic: &str, event: Event<'_>, deliveries: &Arc<Deliveries>) -> Result<(), KafkaError> {
        let Event { key, value, headers } = event;
        let mut message = BaseRecord::with_opaque_to(topic, deliveries.clone()).key(key).headers(headers);
        if let Some(value) = value.as_deref() {
            message = message.payload(value);
        }
        loop {
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                // librdkafka's local queue is full: give it a moment to drain to the broker.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The refused message lets go of its batch with `_`.
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn transactional(&self) -> Result<&Transactional, SinkError> {
        self.spec.transactional.as_ref().ok_or_else(|| SinkError::Config("the producer is not transactional".into()))
    }
}

impl Sink for Publisher {
    /// Bad records go to the dead-letter topic; the acknowledgement resolves once every
    /// message of the batch is reported, with the first failure reported if any.
    async fn send(&self, records: &[Record]) -> Result<Acknowledgement, SinkError> {
        let (deliveries, settled) = Deliveries::begin();
        let mut delivered = Delivered::default();
        for record in records {
            let (event, dead_letter) = match &record.body {
                RecordBody::Bad { reason, raw } => (self.format().dead_letter(record, reason, raw), true),
                _ => (self.format().encode(record), false),
            };
            let topic = if dead_letter { &self.spec.dead_letter_topic } else { &self.spec.topic };
            let bytes = event.payload().map_or(0, <[u8]>::len);
            match self.enqueue(topic, event, &deliveries).await {
                Ok(()) if dead_letter => delivered.dead_lettered += 1,
                Ok(()) => delivered.events += 1,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    self.too_large(record, bytes, &deliveries).await?;
                    delivered.dead_lettered += 1;
                }
                Err(e) => return Err(SinkError::Send(e.to_string())),
            }
        }
        Ok(acknowledgement(deliveries, settled, delivered))
    }

    /// A fatal error leaves the producer unusable. A message librdkafka refused or gave up
    /// on may come from a stale view of the cluster (after a broker restart it can believe
    /// a topic is missing until its next metadata refresh, minutes away), so any publishing
    /// failure gets a fresh producer too. Under `exactly_once` the fresh producer's
    /// `init_transactions` also aborts what the old one left open.
    fn needs_rebuild(&self, failure: Option<&SinkError>) -> Option<String> {
        match (self.producer.client().fatal_error(), failure) {
            (Some((code, reason)), _) => Some(format!("fatal producer error: {code:?}: {reason}")),
            (None, Some(e)) => Some(e.to_string()),
            (None, None) => None,
        }
    }

    async fn rebuild(&mut self) -> Result<(), SinkError> {
        let fresh = Self::connect(self.spec.clone()).await?;
        dispose(std::mem::replace(self, fresh));
        Ok(())
    }
}

impl TransactionalSink for Publisher {
    fn begin(&self) -> Result<(), SinkError> {
        self.transactional()?;
        self.producer.begin_transaction().map_err(kafka_error(SinkError::Transaction))
    }

    /// The checkpoint joins the transaction as a record of the Kafka checkpoint store.
    async fn seal(&self, cp: &Checkpoint) -> Result<Acknowledgement, SinkError> {
        let topic = &self.transactional()?.checkpoint_topic;
        let value = KafkaStore::value(cp);
        let event = Event { key: &cp.pipeline, value: Some(Cow::Borrowed(&value)), headers: OwnedHeaders::new() };
        let (deliveries, settled) = Deliveries::begin();
        self.enqueue(topic, event, &deliveries).await.map_err(kafka_error(SinkError::Send))?;
        Ok(acknowledgement(deliveries, settled, Delivered::default()))
    }

    /// `commit_transaction` flushes, so it fails if any message in it was not acknowledged.
    ///
    /// Every acknowledgement is in before it is called: rust-rdkafka's flush, finding
    /// anything still outstanding, polls for a fixed 100 ms before it looks again, which was
    /// the whole cost of a commit here (101 ms with one message outstanding, 13 to 19 ms
    /// with none, in a minimal program against the local broker).
    async fn commit(&self) -> Result<(), SinkError> {
        let producer = self.producer.shared();
        blocking(move || {
            // An acknowledgement arrives from inside librdkafka's delivery callback, a moment
            // before its message stops counting as in flight; one in eight commits still
            // paid the 100 ms for that. Every message is acknowledged, so the count drops
            // within microseconds.
            let settled = Instant::now() + Duration::from_millis(100);
            while producer.in_flight_count() > 0 && Instant::now() < settled {
                std::thread::sleep(Duration::from_micros(200));
            }
            producer.commit_transaction(TRANSACTION_TIMEOUT)
        })
        .await
        .map_err(kafka_error(SinkError::Transaction))
    }

    async fn abort(&self) -> Result<(), SinkError> {
        let producer = self.producer.shared();
        blocking(move || producer.abort_transaction(TRANSACTION_TIMEOUT)).await.map_err(kafka_error(SinkError::Transaction))
    }
}

async fn ensure_topics(cfg: &ClientConfig, topics: &[String], partitions: i32, replication_factor: i32) -> Result<(), SinkError> {
    let admin: AdminClient<_> = cfg.create().map_err(kafka_error(SinkError::Config))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication_factor)))
        .collect();
    let results = admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT))).await;
    dispose(admin);
    let results = results.map_err(|e| SinkError::Topic { topic: topics.join(", "), reason: e.to_string() })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(SinkError::Topic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// The Kafka sink on librdkafka's in-process mock cluster: acknowledgements, dead
/// letters, refused deliveries and a transaction whose checkpoint the Kafka store reads back.
#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;
    use crate::config::Envelope;

    fn spec(mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>, transactional: Option<Transactional>) -> PublisherSpec {
        let properties = [("message.timeout.ms", "2000"), ("retry.backoff.ms", "20")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        mock.create_topic("orders", 3, 1).unwrap();
        mock.create_topic("orders.dlq", 1, 1).unwrap();
        PublisherSpec {
            kafka: KafkaConfig { brokers: mock.bootstrap_servers(), properties },
            format: EventFormat { envelope: Envelope::Binary, source: "test".into(), pipeline: "p".into() },
            topic: "orders".into(),
            dead_letter_topic: "orders.dlq".into(),
            partitions: 3,
            replication_factor: 1,
            on_bad_record: OnBadRecord::DeadLetter,
            transactional,
        }
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                key: i.to_string(),
                updated_at: DateTime::<Utc>::UNIX_EPOCH,
                body: if i == 3 { RecordBody::Bad { reason: "no id".into(), raw: b"{}".to_vec() } } else { RecordBody::Document(format!("{{\"id\":{i}}}")) },
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_is_acknowledged_with_its_dead_letters() {
        let mock = MockCluster::new(1).unwrap();
        let sink = Publisher::connect(spec(&mock, None)).await.unwrap();
        let delivered = sink.send(&records(10)).await.unwrap().await.unwrap();
        assert_eq!(delivered, Delivered { events: 9, dead_lettered: 1 });
        assert!(sink.needs_rebuild(None).is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_delivery_fails_the_batch_and_asks_for_a_new_producer() {
        let mock = MockCluster::new(1).unwrap();
        let sink = Publisher::connect(spec(&mock, None)).await.unwrap();
        mock.request_errors(RDKafkaApiKey::Produce, &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 10_000]);
        let failed = sink.send(&records(5)).await.unwrap().await.unwrap_err();
        assert!(failed.is_delivery() && failed.is_retriable(), "{failed}");
        assert!(sink.needs_rebuild(Some(&failed)).is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_transaction_commits_its_checkpoint_for_the_store_to_read_back() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("checkpoints", 1, 1).unwrap();
        let transactional = Transactional { id: "order-cdc.p".into(), checkpoint_topic: "checkpoints".into() };
        let spec = spec(&mock, Some(transactional));
        let store = KafkaStore::new(spec.kafka.clone(), "checkpoints");
        let sink = Publisher::connect(spec).await.unwrap();
        sink.begin().unwrap();
        let ack = sink.send(&records(4)).await.unwrap();
        assert_eq!(ack.await.unwrap(), Delivered { events: 3, dead_lettered: 1 });
        let cp = Checkpoint::new("p", "test", serde_json::json!({"at": 4}));
        sink.seal(&cp).await.unwrap().await.unwrap();
        TransactionalSink::commit(&sink).await.unwrap();
        assert_eq!(store.load("p").await.unwrap().map(|c| c.position), Some(cp.position));
        // A transaction that is aborted leaves the committed checkpoint as it was.
        sink.begin().unwrap();
        sink.send(&records(2)).await.unwrap().await.unwrap();
        sink.abort().await.unwrap();
        sink.begin().unwrap();
        sink.seal(&Checkpoint::new("p", "test", serde_json::json!({"at": 6}))).await.unwrap().await.unwrap();
        TransactionalSink::commit(&sink).await.unwrap();
        assert_eq!(store.load("p").await.unwrap().map(|c| c.position), Some(serde_json::json!({"at": 6})));
    }
}
