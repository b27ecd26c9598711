//! Deliveries that fail (librdkafka gives up on them after message.timeout.ms): the
//! checkpoint does not pass them, the pipeline resumes from the last checkpoint, and
//! nothing is missing at the end. The real broker cannot be made to refuse produce
//! requests on cue, so this uses librdkafka's mock cluster, in addition to the real one.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread")]
async fn failed_deliveries_are_sent_again_from_the_checkpoint() {
    let (db, client) = TestDb::migrated().await;
    insert_orders(&client, 1, 5_000, "'2024-03-01T00:00:00Z'::timestamptz + g * interval '1 ms'").await;
    let mock = MockCluster::new(1).expect("mock cluster");
    let topic = unique("mock");
    mock.create_topic(&topic, 3, 1).unwrap();
    mock.create_topic(&format!("{topic}.dlq"), 3, 1).unwrap();
    // Every produce request fails (retriably) until the pipeline has seen deliveries fail
    // and gone back to its checkpoint; then the cluster heals.
    mock.request_errors(RDKafkaApiKey::Produce, &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 100_000]);
    let mut p = Pipeline::new(&db.url, &topic);
    p.batch_size = 250;
    p.brokers = Some(mock.bootstrap_servers());
    p.kafka_extra = "[kafka.properties]\n\"message.timeout.ms\" = \"1500\"\n\"retry.backoff.ms\" = \"50\"\n\"compression.type\" = \"lz4\"";
    let setup = Setup::new(&p);
    let mut daemon = setup.spawn(&["run", "--once"]);
    tokio::task::block_in_place(|| {
        wait_until("a failed delivery and a resume from the checkpoint", Duration::from_secs(60), || {
            setup.log().contains("resuming from the last checkpoint")
        })
    });
    assert!(setup.checkpoint().is_none(), "nothing was committed while every delivery failed");
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let status = tokio::task::block_in_place(|| {
        wait_for_exit(&mut daemon, Duration::from_secs(120), "the run did not finish once the cluster healed", || setup.log())
    });
    assert!(status.success(), "{}", setup.log());
    assert!(setup.log().contains("building a new producer"), "{}", setup.log());

    let events = tokio::task::block_in_place(|| read_topic_from(&mock.bootstrap_servers(), &topic));
    let latest = latest_by_key(&events);
    let expected = export_documents(&client).await;
    let missing = expected.keys().filter(|k| !latest.contains_key(*k)).count();
    assert_eq!(missing, 0);
    for (id, doc) in &expected {
        assert_eq!(latest[id].text(), doc);
    }
    println!("failed deliveries: {} events for {} orders, 0 missing", events.len(), expected.len());
    db.drop_db().await;
}
