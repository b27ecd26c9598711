//! `order-cdc run`: builds every selected pipeline, runs each in its own task, serves
//! metrics, and shuts down gracefully on SIGTERM / ctrl-c.

use std::sync::Arc;

use crate::checkpoint::{self, Store};
use crate::config::{Config, Delivery, PipelineConfig, SourceKind};
use crate::event::EventFormat;
use crate::metrics::{self, Metrics, PipelineState};
use crate::pipeline::{Pipeline, PipelineError, Settings};
use crate::shutdown;
use crate::sink::kafka::{Publisher, PublisherSpec, Transactional};
use crate::source::http::{HttpSource, LocalState};
use crate::source::postgres::PostgresSource;
use crate::source::{self, ConfiguredSource};
use crate::timestamp;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("metrics listener {address}: {source}")]
    Metrics { address: String, source: std::io::Error },
    #[error("pipeline {pipeline}: {source}")]
    Pipeline { pipeline: String, source: PipelineError },
    #[error("{failed} of {total} pipelines failed (see the errors above)")]
    Failed { failed: usize, total: usize },
}

pub async fn run(config: Config, names: &[String], once: bool) -> Result<(), RunError> {
    let selected = config.select_pipelines(names)?;
    let metrics = Metrics::new();
    let (trigger, shutdown) = shutdown::channel();
    let server = metrics::serve(metrics.clone(), config.metrics.listen, shutdown.clone())
        .await
        .map_err(|source| RunError::Metrics { address: config.metrics.listen.to_string(), source })?;

    let mut tasks = Vec::new();
    for (name, pipeline) in &selected {
        metrics.health().set(name, PipelineState::Starting);
        // Start-up problems (unreachable database or broker, missing table) stop the
        // process here, before anything is published.
        let task = build(&config, name, pipeline, &metrics, once)
            .await
            .map_err(|source| RunError::Pipeline { pipeline: name.to_string(), source })?;
        let shutdown = shutdown.clone();
        let name = name.to_string();
        let pipeline_metrics = metrics.pipeline(&name);
        tasks.push((name.clone(), tokio::spawn(async move {
            let result = task.run(once, shutdown).await;
            match &result {
                Ok(()) => pipeline_metrics.set_state(PipelineState::Finished),
                Err(e) => pipeline_metrics.set_state(PipelineState::Failed(e.to_string())),
            }
            result
        })));
    }
    tracing::info!(pipelines = tasks.len(), once, "running");

    let shutdown_timeout = config.run.shutdown_timeout;
    let signal = tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutting down: no new pages; waiting for in-flight deliveries");
        trigger.trigger();
    });

    let total = tasks.len();
    let (names, handles): (Vec<String>, Vec<_>) = tasks.into_iter().unzip();
    let all = futures::future::join_all(handles);
    tokio::pin!(all);
    let mut waiting = shutdown.clone();
    let finished = tokio::select! {
        results = &mut all => Some(results),
        _ = async { waiting.wait().await; tokio::time::sleep(shutdown_timeout).await } => None,
    };
    let mut failed = 0;
    match finished {
        Some(results) => {
            for (name, result) in names.iter().zip(results) {
                let message = match result {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(join) => format!("task ended abnormally: {join}"),
                };
                failed += 1;
                eprintln!("error: pipeline {name}: {message}");
            }
        }
        None => tracing::warn!(
            timeout = ?shutdown_timeout,
            "in-flight deliveries did not drain in time; their batches stay uncommitted and will be sent again"
        ),
    }
    signal.abort();
    drop(server);
    if failed > 0 {
        return Err(RunError::Failed { failed, total });
    }
    Ok(())
}

async fn build(
    config: &Config,
    name: &str,
    p: &PipelineConfig,
    metrics: &Arc<Metrics>,
    once: bool,
) -> Result<Pipeline<ConfiguredSource, Publisher, Store>, PipelineError> {
    let identity = source::identity(&p.source);
    let initial_since = p.initial_since.as_deref().map(timestamp::parse).transpose().expect("validated").unwrap_or_else(timestamp::epoch);
    let pipeline_metrics = metrics.pipeline(name);
    let source = match p.source.kind() {
        SourceKind::Postgres(cfg) => {
            ConfiguredSource::Postgres(PostgresSource::open(cfg.clone(), name, p.batch_size, pipeline_metrics.clone(), once).await?)
        }
        SourceKind::Http(dialect) => {
            let local = LocalState { dir: &config.checkpoint.dir, pipeline: name };
            ConfiguredSource::Http(HttpSource::open(dialect, &local, pipeline_metrics.clone())?)
        }
    };
    let store = checkpoint::store_for(config, p);
    let transactional = match (&store, p.delivery) {
        (Store::Kafka(kafka_store), Delivery::ExactlyOnce) => {
            kafka_store.ensure_topic(p.replication_factor).await?;
            Some(Transactional { id: p.transactional_id(name), checkpoint_topic: kafka_store.topic().to_string() })
        }
        _ => None,
    };
    let spec = PublisherSpec {
        kafka: config.kafka.clone(),
        format: EventFormat { envelope: p.envelope, source: p.event_source.clone().unwrap_or_else(|| identity.clone()), pipeline: name.to_string() },
        topic: p.topic.clone(),
        dead_letter_topic: p.dead_letter_topic(),
        partitions: p.partitions,
        replication_factor: p.replication_factor,
        on_bad_record: p.on_bad_record,
        transactional,
    };
    // A transactional producer must be initialised (aborting what an earlier run left
    // open) before the Kafka store can be read.
    let sink = Publisher::connect(spec).await?;
    // A checkpoint of another source is refused before anything is published.
    checkpoint::load_for(&store, name, &identity).await?;
    Ok(Pipeline {
        name: name.to_string(),
        source,
        source_identity: identity,
        sink,
        store,
        settings: Settings {
            delivery: p.delivery,
            poll_interval: p.poll_interval,
            progress_interval: p.progress_interval,
            max_in_flight_batches: p.max_in_flight_batches,
            batches_per_transaction: p.batches_per_transaction,
            on_bad_record: p.on_bad_record,
            initial_since,
        },
        metrics: pipeline_metrics,
    })
}
