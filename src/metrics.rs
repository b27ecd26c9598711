//! Prometheus metrics and the health routes, served on `[metrics].listen`.
//!
//! Every family carries a `pipeline` label. Call sites hold a [`PipelineMetrics`] whose
//! children are resolved once, so the hot path never looks a label up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::shutdown::Shutdown;

/// The process-wide registry and metric families.
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    batches: IntCounterVec,
    source_requests: IntCounterVec,
    source_retries: IntCounterVec,
    source_latency: HistogramVec,
    delivery_latency: HistogramVec,
    run_duration: HistogramVec,
    in_flight: IntGaugeVec,
    backlog: IntGaugeVec,
    ready: IntGaugeVec,
    commits: IntCounterVec,
    last_commit: GaugeVec,
    lag: GaugeVec,
    cutoff_holdback: GaugeVec,
    errors: IntCounterVec,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    health: Health,
}

/// The `kind` label of `order_cdc_errors_total`: what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A source request or query (retried in place, or the attempt failed).
    Source,
    /// The export API refused a cursor; the run restarts from its since.
    CursorRefused,
    /// Kafka did not acknowledge an event.
    Delivery,
    /// The producer, a topic or a transaction.
    Kafka,
    /// Reading or writing the checkpoint.
    Checkpoint,
    /// A record that cannot become an event stopped the pipeline.
    BadRecord,
}

impl ErrorKind {
    /// Every kind: a pipeline's error counters start at 0, so that alerts on their increase
    /// and dashboard panels have a series before the first error.
    const ALL: [Self; 6] = [Self::Source, Self::CursorRefused, Self::Delivery, Self::Kafka, Self::Checkpoint, Self::BadRecord];

    pub fn label(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::CursorRefused => "cursor_refused",
            Self::Delivery => "delivery",
            Self::Kafka => "kafka",
            Self::Checkpoint => "checkpoint",
            Self::BadRecord => "bad_record",
        }
    }
}

/// What `/health/ready` answers: ready when every pipeline is running (or finished).
#[derive(Clone, Default)]
pub struct Health {
    pipelines: Arc<Mutex<BTreeMap<String, PipelineState>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    Starting,
    Running,
    Finished,
    Failed(String),
}

impl PipelineState {
    /// Running, or finished `run --once`: what `/health/ready` and `order_cdc_pipeline_ready` report.
    fn is_ready(&self) -> bool {
        matches!(self, Self::Running | Self::Finished)
    }
}

impl Health {
    pub fn set(&self, pipeline: &str, state: PipelineState) {
        self.pipelines.lock().expect("health lock").insert(pipeline.to_string(), state);
    }

    fn report(&self) -> (bool, String) {
        let states = self.pipelines.lock().expect("health lock");
        let ready = states.values().all(PipelineState::is_ready);
        let body = serde_json::json!({
            "ready": ready,
            "pipelines": states.iter().map(|(name, s)| {
                let (state, reason) = match s {
                    PipelineState::Starting => ("starting", None),
                    PipelineState::Running => ("running", None),
                    PipelineState::Finished => ("finished", None),
                    PipelineState::Failed(r) => ("failed", Some(r.as_str())),
                };
                (name.clone(), serde_json::json!({"state": state, "reason": reason}))
            }).collect::<serde_json::Map<_, _>>(),
        });
        (ready, body.to_string())
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let r = &registry;
        int_gauge(r, "order_cdc_build_info", "Build of the running binary.", &["version"]).with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Arc::new(Self {
            events: counter(r, "order_cdc_events_total", "Events by outcome: delivered, dead_lettered, failed.", &["pipeline", "outcome"]),
            batches: counter(r, "order_cdc_batches_total", "Batches whose every event was acknowledged and whose position was committed.", &["pipeline"]),
            source_requests: counter(r, "order_cdc_source_requests_total", "Source requests (queries or HTTP calls) by status.", &["pipeline", "status"]),
            source_retries: counter(r, "order_cdc_source_retries_total", "Source requests retried, by what failed: the HTTP status, connection, malformed_page or database.", &["pipeline", "reason"]),
            source_latency: histogram(r, "order_cdc_source_request_duration_seconds", "Latency of one source request (one page).", &["pipeline"]),
            delivery_latency: histogram(r, "order_cdc_delivery_duration_seconds", "From sending a batch to its last acknowledgement.", &["pipeline"]),
            run_duration: histogram(r, "order_cdc_run_duration_seconds", "From the start of a run to its last page sent.", &["pipeline"]),
            in_flight: int_gauge(r, "order_cdc_in_flight_events", "Events sent to Kafka and not yet acknowledged.", &["pipeline"]),
            backlog: int_gauge(r, "order_cdc_backlog_orders", "Estimated orders left in the run under way (the source's estimate; 0 once a run ends).", &["pipeline"]),
            ready: int_gauge(r, "order_cdc_pipeline_ready", "1 while the pipeline runs (or has finished `run --once`), 0 while it starts or after it failed.", &["pipeline"]),
            commits: counter(r, "order_cdc_checkpoint_commits_total", "Checkpoint commits.", &["pipeline"]),
            last_commit: gauge(r, "order_cdc_last_commit_timestamp_seconds", "When the last checkpoint was committed (Unix time); 0 before the first.", &["pipeline"]),
            lag: gauge(r, "order_cdc_lag_seconds", "Now minus the newest committed updated_at (an HTTP API's times on our clock, by its Date).", &["pipeline"]),
            cutoff_holdback: gauge(r, "order_cdc_cutoff_holdback_seconds", "How far the run's cutoff is held below the database clock (late-commit guard or lag).", &["pipeline"]),
            errors: counter(r, "order_cdc_errors_total", "Errors by kind.", &["pipeline", "kind"]),
            http_requests: counter(r, "order_cdc_http_requests_total", "Requests to `order-cdc serve` by route and status.", &["route", "status"]),
            http_latency: histogram(r, "order_cdc_http_request_duration_seconds", "Latency of `order-cdc serve` requests by route.", &["route"]),
            registry,
            health: Health::default(),
        })
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    pub fn pipeline(self: &Arc<Self>, name: &str) -> PipelineMetrics {
        for kind in ErrorKind::ALL {
            self.errors.with_label_values(&[name, kind.label()]);
        }
        PipelineMetrics {
            name: name.to_string(),
            delivered: self.events.with_label_values(&[name, "delivered"]),
            dead_lettered: self.events.with_label_values(&[name, "dead_lettered"]),
            failed: self.events.with_label_values(&[name, "failed"]),
            batches: self.batches.with_label_values(&[name]),
            source_latency: self.source_latency.with_label_values(&[name]),
            delivery_latency: self.delivery_latency.with_label_values(&[name]),
            run_duration: self.run_duration.with_label_values(&[name]),
            in_flight: self.in_flight.with_label_values(&[name]),
            backlog: self.backlog.with_label_values(&[name]),
            ready: self.ready.with_label_values(&[name]),
            commits: self.commits.with_label_values(&[name]),
            last_commit: self.last_commit.with_label_values(&[name]),
            lag: self.lag.with_label_values(&[name]),
            cutoff_holdback: self.cutoff_holdback.with_label_values(&[name]),
            families: self.clone(),
        }
    }

    /// One request to the server.
    pub fn http_request(&self, route: &str, status: u16, elapsed: std::time::Duration) {
        self.http_requests.with_label_values(&[route, &status.to_string()]).inc();
        self.http_latency.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// One pipeline's metrics, labels resolved.
#[derive(Clone)]
pub struct PipelineMetrics {
    name: String,
    pub delivered: IntCounter,
    pub dead_lettered: IntCounter,
    pub failed: IntCounter,
    pub batches: IntCounter,
    pub source_latency: Histogram,
    pub delivery_latency: Histogram,
    pub run_duration: Histogram,
    pub in_flight: IntGauge,
    pub backlog: IntGauge,
    ready: IntGauge,
    pub commits: IntCounter,
    pub last_commit: Gauge,
    pub lag: Gauge,
    pub cutoff_holdback: Gauge,
    families: Arc<Metrics>,
}

impl PipelineMetrics {
    /// The pipeline these metrics are labelled with.
    pub fn pipeline(&self) -> &str {
        &self.name
    }

    pub fn source_request(&self, status: &str) {
        self.families.source_requests.with_label_values(&[&self.name, status]).inc();
    }

    pub fn source_retry(&self, reason: &str) {
        self.families.source_retries.with_label_values(&[&self.name, reason]).inc();
    }

    /// One failure, counted once under its kind.
    pub fn error(&self, kind: ErrorKind) {
        self.families.errors.with_label_values(&[&self.name, kind.label()]).inc();
    }

    pub fn set_state(&self, state: PipelineState) {
        self.ready.set(i64::from(state.is_ready()));
        self.families.health.set(&self.name, state);
    }
}

async fn render(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn live() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"live":true}"#)
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let (ready, body) = m.health.report();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Binds the metrics listener (so a taken port fails start-up) and serves it until shutdown.
pub async fn serve(metrics: Arc<Metrics>, listen: SocketAddr, mut shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics and /health");
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(metrics);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await;
    }))
}
