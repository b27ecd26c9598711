//! The topics a bench run made, deleted when it ends. Every round of every figure writes
//! to a fresh topic, so a full `scripts/bench.sh` leaves gigabytes of events behind, and
//! nothing else removes them: with the tests' topics they had grown the local broker's
//! data directory to 18 GB (a round of (a) or (c) is 260 MB) on a disk that is the
//! machine's. A run's topics are told apart by this process's id, which every name
//! carries as one of its words (`bench-e2e-<pid>-36-0`, `bench-api-<pid>.dlq`).

use std::time::Duration;

use order_cdc::config::KafkaConfig;
use order_cdc::sink::kafka::client_config;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Deletes the topics of this run, reaching the broker as the pipelines do (the same
/// brokers and properties, TLS and SASL included).
pub async fn delete_own(kafka: &KafkaConfig) {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, "bench").create().expect("an admin client");
    let pid = std::process::id().to_string();
    let metadata = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, Duration::from_secs(10))).expect("the broker's topics");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).filter(|name| name.starts_with("bench-") && name.split(['-', '.']).any(|word| word == pid)).collect();
    if names.is_empty() {
        return;
    }
    match admin.delete_topics(&names, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await {
        Ok(results) => {
            let failed: Vec<String> = results.into_iter().filter_map(Result::err).map(|(topic, code)| format!("{topic} ({code})")).collect();
            println!("deleted this run's {} bench topics{}", names.len() - failed.len(), if failed.is_empty() { String::new() } else { format!("; not deleted: {}", failed.join(", ")) });
        }
        Err(e) => println!("deleting this run's bench topics failed: {e}"),
    }
}
