//! The configuration: built-in defaults (`config/default.toml`), then `--config FILE`, then
//! `ORDER_CDC__SECTION__KEY` environment variables, deserialised into typed structs. The
//! structs are the reference: every field says what it does and what it defaults to.
//!
//! A bad configuration is one line that names the key: serde and the `config` crate name
//! the key for type errors, and [`Config::validate`] does the same for value rules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretUrl};
use crate::source::http::DialectConfig;

pub mod reference;

const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "ORDER_CDC";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// A value rule broken inside one pipeline's table: the key under it and why.
#[derive(Debug)]
pub struct InvalidValue {
    pub key: &'static str,
    pub reason: String,
}

impl InvalidValue {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self { key, reason: reason.into() }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub metrics: MetricsConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    pub run: RunConfig,
    /// The reference-schema database that `migrate` and `demo-load` work on.
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    /// `order-cdc serve`: the order API of the seed documents over PostgreSQL.
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// One table per pipeline, keyed by the pipeline's name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Any librdkafka property, passed to every producer; these win over order-cdc's own
    /// settings. Values that name a password or secret never print.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/health/live` and `/health/ready` listen.
    pub listen: SocketAddr,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    pub store: CheckpointStoreKind,
    /// The file store's directory: one `<pipeline>.json` each (`at_least_once`).
    pub dir: PathBuf,
    /// The compacted topic where `exactly_once` pipelines commit their checkpoints, in
    /// the transaction of each batch.
    pub topic: String,
    /// The postgres store's database; default the source database of each `postgres`
    /// pipeline (`export_api` pipelines need it set). The password never prints.
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// The postgres store's table, optionally schema-qualified (unquoted SQL names);
    /// created when missing.
    pub table: String,
}

impl CheckpointConfig {
    /// The postgres store's database for a pipeline: `url`, or a Postgres source's own.
    pub fn url_for<'a>(&'a self, source: &'a SourceConfig) -> Option<&'a SecretUrl> {
        self.url.as_ref().or(match source.kind() {
            SourceKind::Postgres(s) => Some(&s.url),
            SourceKind::Http(_) => None,
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStoreKind {
    /// Files for `at_least_once` pipelines; `exactly_once` ones always use the topic.
    File,
    /// Every pipeline keeps its checkpoints in the topic: all must be `exactly_once`.
    Kafka,
    /// A row per `at_least_once` pipeline in a table of `url`; `exactly_once` ones use the
    /// topic.
    Postgres,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// On SIGTERM / ctrl-c, how long in-flight deliveries may take to be acknowledged and
    /// committed before the process exits anyway (nothing unacknowledged is committed).
    #[serde(deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`; the password never prints.
    pub url: SecretUrl,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the API listens.
    #[serde(default = "default_server_listen")]
    pub listen: SocketAddr,
    /// Bound into every cursor: a cursor issued to another tenant is refused.
    pub tenant: String,
    /// The database with the reference schema.
    pub database_url: SecretUrl,
    /// Accepted bearer tokens.
    pub tokens: Vec<Secret>,
    /// HMAC keys for cursors, by key id. Keep an old key listed while its cursors may
    /// still be in use; remove it to refuse them.
    pub cursor_keys: BTreeMap<String, Secret>,
    /// The key id that signs new cursors.
    pub cursor_key: String,
    /// How long a cursor stays valid after it is issued.
    #[serde(default = "default_cursor_ttl", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub cursor_ttl: Duration,
    /// Request bodies larger than this are refused (413).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections to the database.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The export cutoff, as for the Postgres source.
    #[serde(default)]
    pub cutoff: CutoffKind,
    /// `cutoff = "lag"`: the export's cutoff is the database clock minus this.
    #[serde(default = "default_cutoff_lag", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub cutoff_lag: Duration,
    /// `cutoff = "xact"`: the longest one open transaction holds the export's cutoff back.
    #[serde(default = "default_cutoff_max_hold", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub cutoff_max_hold: Duration,
}

fn default_server_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("a socket address")
}
fn default_cursor_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_pool_size() -> usize {
    8
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The topic every change event goes to.
    pub topic: String,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub envelope: Envelope,
    /// Rows per source page, and so events per checkpoint commit.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a daemon waits between the starts of two runs once it has caught up.
    #[serde(default = "default_poll_interval", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub poll_interval: Duration,
    /// While a run lasts longer than this (a backfill), how often the pipeline logs its
    /// progress and estimates the orders left (`order_cdc_backlog_orders`).
    #[serde(default = "default_progress_interval", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub progress_interval: Duration,
    /// Batches published and not yet acknowledged, which bounds the documents held in
    /// memory: under `at_least_once` not yet committed either (the prefetch depth), under
    /// `exactly_once` within each transaction.
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
    /// `exactly_once`: batches per Kafka transaction; a transaction is committed sooner at
    /// the end of a run and on shutdown. More batches per transaction cost fewer commits
    /// and hold more events back from `read_committed` consumers until they commit.
    #[serde(default = "default_batches_per_transaction")]
    pub batches_per_transaction: usize,
    /// Partitions of the topic when order-cdc creates it (it never alters an existing one).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor when creating topics; -1 takes the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Where records that cannot become events go; default `<topic>.dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    #[serde(default)]
    pub on_bad_record: OnBadRecord,
    /// Where a pipeline without a checkpoint starts (any format `checkpoint set` takes);
    /// default the Unix epoch, i.e. a full snapshot first.
    #[serde(default)]
    pub initial_since: Option<String>,
    /// The CloudEvents `source` attribute; default derived from the source (URL without
    /// credentials, plus the table).
    #[serde(default)]
    pub event_source: Option<String>,
    /// `exactly_once`: the producer's `transactional.id`; default `order-cdc.<pipeline>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    pub source: SourceConfig,
}

fn default_batch_size() -> usize {
    1000
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_progress_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_in_flight_batches() -> usize {
    4
}
fn default_batches_per_transaction() -> usize {
    // Each commit drains the producer (every acknowledgement is awaited first), so the
    // pipeline stands still once per transaction: at 4 a 200,000-order backfill took
    // 1.1-1.2 times as long as at_least_once, at 16 about as long (README, Benchmark).
    16
}
fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    -1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// CloudEvents binary mode: the document is the value, attributes are `ce_*` headers.
    #[default]
    Binary,
    /// CloudEvents structured mode: `{"specversion":…,"data":{…}}` is the value.
    Structured,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Publish it to the dead-letter topic with the reason in a header and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline before the bad record's checkpoint.
    Fail,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Postgres(PostgresSourceConfig),
    ExportApi(ExportApiSourceConfig),
    OrdersApi(OrdersApiSourceConfig),
    WebstoreApi(WebstoreApiSourceConfig),
}

/// A configured source as the daemon builds it: the database, or an HTTP dialect.
pub enum SourceKind<'a> {
    Postgres(&'a PostgresSourceConfig),
    Http(&'a dyn DialectConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind<'_> {
        match self {
            Self::Postgres(c) => SourceKind::Postgres(c),
            Self::ExportApi(c) => SourceKind::Http(c),
            Self::OrdersApi(c) => SourceKind::Http(c),
            Self::WebstoreApi(c) => SourceKind::Http(c),
        }
    }
}

/// `kind = "export_api"`: a `GET /sales-orders/export` endpoint (seed 000), ours from
/// `order-cdc serve` or a Luminous tenant's.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportApiSourceConfig {
    /// e.g. `https://acme.api.joinluminous.com/external/api/v1`; the endpoint is
    /// `<base_url>/sales-orders/export`.
    pub base_url: String,
    /// The bearer token; it never prints.
    pub token: Secret,
    /// Orders per page, 1..1000.
    #[serde(default = "default_api_limit")]
    pub limit: u32,
    /// One request, from connecting to the last byte.
    #[serde(default = "default_request_timeout", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub request_timeout: Duration,
    /// A larger page is an error (lower `limit`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// The top-level field of a document that holds its id (the event key).
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The top-level field that holds its change time: an RFC 3339 / seed-000 datetime
    /// string, or Unix seconds (milliseconds when it is too large to be seconds).
    #[serde(default = "default_updated_at")]
    pub updated_at_field: String,
}

/// `kind = "orders_api"`: a wholesale portal's `GET /api/orders/` (seed 002), ours from
/// `order-cdc serve` or a portal's.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrdersApiSourceConfig {
    /// The collection URL, e.g. `https://portal.example/api/orders/`.
    pub url: String,
    /// Sent as the `X-API-Key` header; it never prints and never goes in a URL.
    pub api_key: Secret,
    /// Orders per page, 1..250.
    #[serde(default = "default_orders_per_page")]
    pub per_page: u32,
    /// Related records embedded in each order (`include=`): any of `items`, `shipments`,
    /// `status_history`.
    #[serde(default = "default_orders_include")]
    pub include: Vec<String>,
    /// Extra query parameters, passed through (e.g. `status = "confirmed,shipped"`).
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// The IANA zone in which the API's zone-less timestamps are read.
    #[serde(default = "default_orders_timezone")]
    pub timezone: String,
    /// A run's window ends this far behind the server's clock (its `Date` header), so
    /// that writes still committing when the run starts are inside a later run.
    #[serde(default = "default_settle", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub settle: Duration,
    /// One request, from connecting to the last byte.
    #[serde(default = "default_request_timeout", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub request_timeout: Duration,
    /// A larger page is an error (lower `per_page`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

/// `kind = "webstore_api"`: a webstore's `GET /[store]/api/v2/sales/orders.json` (seed
/// 003), ours from `order-cdc serve` or a store's.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebstoreApiSourceConfig {
    /// The collection URL, e.g. `https://shop.example/acme/api/v2/sales/orders.json`.
    pub url: String,
    /// Orders per page: 20, 40 or 80.
    #[serde(default = "default_webstore_size")]
    pub size: u32,
    /// Headers sent with every request (the API names no auth scheme), e.g.
    /// `{ Authorization = "Bearer …" }`; the values never print.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A run reads revisions up to the server's clock (its `Date` header) minus this, so
    /// that writes still committing when the run starts are inside a later run.
    #[serde(default = "default_settle", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub settle: Duration,
    /// How often a full listing finds deleted orders (`off`, or a period such as `1h`).
    #[serde(default, deserialize_with = "reconcile_period::deserialize", serialize_with = "reconcile_period::serialize")]
    #[schemars(with = "Period")]
    pub reconcile: Option<Duration>,
    /// One request, from connecting to the last byte.
    #[serde(default = "default_request_timeout", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub request_timeout: Duration,
    /// A larger page is an error (lower `size`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_webstore_size() -> u32 {
    80
}

/// How a duration appears in the configuration reference: text such as `5s` or `1h30m`.
/// Duration fields spell serde's `with = "humantime_serde"` out as `deserialize_with` and
/// `serialize_with` (schemars would read `with` as a type, and the serializer writes the
/// default into the reference) and add `#[schemars(with = "Period")]`.
struct Period;

impl JsonSchema for Period {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Period".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "duration" })
    }
}

/// `reconcile = "off"` or a period.
mod reconcile_period {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// For the configuration reference's default.
    pub fn serialize<S: Serializer>(period: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match period {
            None => s.serialize_str("off"),
            Some(p) => humantime_serde::serialize(p, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(None);
        }
        match humantime_serde::re::humantime::parse_duration(text.trim()) {
            Ok(period) if !period.is_zero() => Ok(Some(period)),
            // serde names only the enclosing table (the source), so the key says itself.
            _ => Err(serde::de::Error::custom(format!("reconcile = {text:?} is neither \"off\" nor a period such as \"1h\""))),
        }
    }
}

fn default_orders_per_page() -> u32 {
    250
}
fn default_orders_include() -> Vec<String> {
    ["items", "shipments", "status_history"].map(String::from).to_vec()
}
fn default_orders_timezone() -> String {
    "UTC".into()
}
fn default_settle() -> Duration {
    Duration::from_secs(5)
}

fn default_id_field() -> String {
    "order_id".into()
}

fn default_api_limit() -> u32 {
    1000
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_response_bytes() -> usize {
    64 << 20
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/db` (or key=value); the password never prints.
    pub url: SecretUrl,
    /// The table, optionally schema-qualified.
    #[serde(default = "default_table")]
    pub table: String,
    /// The table's key: each order's events carry it as their Kafka key.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// A `timestamptz` (or `timestamp`, read as UTC; `timestamp(p)` is fine) column the
    /// writers set on every change. A row whose value is NULL is never read.
    #[serde(default = "default_updated_at")]
    pub updated_at_column: String,
    /// An SQL predicate over alias `t`; rows that fail it are never read.
    #[serde(default)]
    pub filter: Option<String>,
    /// `export` (the seed-001 document of the reference schema), `row` (the whole row as
    /// JSON), or an SQL expression over alias `t` that yields json/jsonb/text. Default:
    /// `export` for a table named `sales_orders`, `row` otherwise.
    #[serde(default)]
    pub document: Option<String>,
    /// An SQL predicate over alias `t` that marks a row as deleted: it becomes a
    /// `sales_order.deleted` event (a tombstone in binary mode). Default for the `export`
    /// document: `t.status IS DISTINCT FROM 'Active'`; otherwise none.
    #[serde(default)]
    pub deleted: Option<String>,
    #[serde(default)]
    pub cutoff: CutoffKind,
    /// `cutoff = "lag"`: the cutoff is the database clock minus this. Also the fallback
    /// when the role cannot see other sessions' transactions.
    #[serde(default = "default_cutoff_lag", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub cutoff_lag: Duration,
    /// `cutoff = "xact"`: the longest the cutoff is held back by one open transaction;
    /// beyond it the run goes on (with a warning) and that transaction's rows may be late.
    #[serde(default = "default_cutoff_max_hold", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub cutoff_max_hold: Duration,
    /// `run --once`: the longest it waits for the cutoff to reach the command's start
    /// (for the guard's margin, `cutoff_lag`, or an open transaction that holds it), after
    /// which it finishes with a warning naming what held it.
    #[serde(default = "default_once_max_wait", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub once_max_wait: Duration,
    /// Pages whose documents PostgreSQL builds at once, each on its own connection (the
    /// key walk has one more). Documents are where the database spends its time.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// How long to wait for a connection before giving up with an error.
    #[serde(default = "default_connect_timeout", deserialize_with = "humantime_serde::deserialize", serialize_with = "humantime_serde::serialize")]
    #[schemars(with = "Period")]
    pub connect_timeout: Duration,
    /// The channel a trigger notifies on every committed change: the source LISTENs on it
    /// and starts a run as soon as the change can be read, `poll_interval` staying the
    /// fallback. Default: the reference schema's channel (`order_cdc_sales_orders`, which
    /// `order-cdc migrate` installs) when the document is the export document, else none;
    /// `""` turns wake-ups off.
    #[serde(default)]
    pub notify_channel: Option<String>,
}

fn default_table() -> String {
    "sales_orders".into()
}
fn default_id_column() -> String {
    "id".into()
}
/// The change-time column of the reference schema, and the field of its documents.
fn default_updated_at() -> String {
    "updated_at".into()
}
fn default_cutoff_lag() -> Duration {
    Duration::from_secs(5)
}
fn default_cutoff_max_hold() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_once_max_wait() -> Duration {
    Duration::from_secs(10)
}
fn default_parallelism() -> usize {
    3
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CutoffKind {
    /// Hold the cutoff below the start of the oldest open transaction (late-commit guard).
    #[default]
    Xact,
    /// A fixed lag behind the database clock, as timestamp pollers usually do.
    Lag,
}

impl Config {
    /// Loads the layers: defaults, the optional file, the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("--config", format!("{} does not exist", path.display())));
            }
            builder = builder.add_source(config::File::from(path));
        }
        let env = config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true);
        let mut cfg: Config = builder.add_source(env).build()?.try_deserialize()?;
        cfg.normalise_env_properties();
        cfg.validate()?;
        Ok(cfg)
    }

    /// librdkafka property names contain dots, which the environment layer cannot carry
    /// (a dot would start a new key), so `COMPRESSION_TYPE` arrives as `compression_type`:
    /// librdkafka has no property with an underscore, so turn them back into dots.
    fn normalise_env_properties(&mut self) {
        let props = std::mem::take(&mut self.kafka.properties);
        self.kafka.properties = props.into_iter().map(|(k, v)| (k.replace('_', "."), v)).collect();
    }

    /// Value rules the types cannot express. Each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
        }
        if self.checkpoint.topic.trim().is_empty() {
            return Err(invalid("checkpoint.topic", "must not be empty"));
        }
        if !is_sql_name(&self.checkpoint.table) {
            return Err(invalid("checkpoint.table", "must be a table name, optionally schema-qualified (letters, digits and '_', not starting with a digit)"));
        }
        if self.checkpoint.url.as_ref().is_some_and(|u| u.expose().trim().is_empty()) {
            return Err(invalid("checkpoint.url", "must not be empty"));
        }
        for (name, p) in &self.pipelines {
            let key = |k: &str| format!("pipelines.{name}.{k}");
            if self.checkpoint.store == CheckpointStoreKind::Kafka && p.delivery != Delivery::ExactlyOnce {
                return Err(invalid(
                    "checkpoint.store",
                    format!("the kafka store holds exactly_once checkpoints, and pipelines.{name} is at_least_once (use store = \"file\", or delivery = \"exactly_once\")"),
                ));
            }
            if self.checkpoint.store == CheckpointStoreKind::Postgres
                && p.delivery == Delivery::AtLeastOnce
                && self.checkpoint.url_for(&p.source).is_none()
            {
                return Err(invalid(
                    "checkpoint.url",
                    format!("the postgres store needs a database for pipelines.{name}, which reads an export API: set checkpoint.url"),
                ));
            }
            if p.transactional_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
                return Err(invalid(key("transactional_id"), "must not be empty"));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(format!("pipelines.{name}"), "a pipeline name is letters, digits, '-' and '_'"));
            }
            if p.topic.trim().is_empty() {
                return Err(invalid(key("topic"), "must not be empty"));
            }
            if !(1..=100_000).contains(&p.batch_size) {
                return Err(invalid(key("batch_size"), "must be between 1 and 100000"));
            }
            if p.progress_interval.is_zero() {
                return Err(invalid(key("progress_interval"), "must be longer than 0 (e.g. \"10s\")"));
            }
            if p.max_in_flight_batches == 0 {
                return Err(invalid(key("max_in_flight_batches"), "must be at least 1"));
            }
            if p.batches_per_transaction == 0 {
                return Err(invalid(key("batches_per_transaction"), "must be at least 1"));
            }
            if p.partitions < 1 {
                return Err(invalid(key("partitions"), "must be at least 1"));
            }
            if let Some(since) = &p.initial_since {
                crate::timestamp::parse(since).map_err(|e| invalid(key("initial_since"), e))?;
            }
            match p.source.kind() {
                SourceKind::Http(dialect) => dialect.validate().map_err(|e| invalid(key(e.key), e.reason))?,
                SourceKind::Postgres(s) => {
                    if s.url.expose().trim().is_empty() {
                        return Err(invalid(key("source.url"), "must not be empty"));
                    }
                    if !(1..=16).contains(&s.parallelism) {
                        return Err(invalid(key("source.parallelism"), "must be between 1 and 16"));
                    }
                    if let Some(channel) = s.notify_channel.as_deref().filter(|c| !c.is_empty()) {
                        if !is_channel_name(channel) {
                            return Err(invalid(
                                key("source.notify_channel"),
                                format!("{channel:?} is not a channel name: 1 to 63 letters, digits and '_', not starting with a digit (or \"\" for no wake-ups)"),
                            ));
                        }
                    }
                    for (k, v) in [("table", &s.table), ("id_column", &s.id_column), ("updated_at_column", &s.updated_at_column)] {
                        if v.trim().is_empty() {
                            return Err(invalid(key(&format!("source.{k}")), "must not be empty"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The server's configuration, checked.
    pub fn server(&self) -> Result<&ServerConfig, ConfigError> {
        let s = self.server.as_ref().ok_or_else(|| invalid("server", "missing (serve needs [server])"))?;
        if s.tenant.trim().is_empty() {
            return Err(invalid("server.tenant", "must not be empty"));
        }
        if s.tokens.is_empty() || s.tokens.iter().any(|t| t.expose().len() < 16) {
            return Err(invalid("server.tokens", "list at least one token, each at least 16 characters"));
        }
        if s.cursor_keys.values().any(|k| k.expose().len() < 32) {
            return Err(invalid("server.cursor_keys", "each key must be at least 32 characters"));
        }
        if !s.cursor_keys.contains_key(&s.cursor_key) {
            return Err(invalid("server.cursor_key", format!("{:?} is not in server.cursor_keys", s.cursor_key)));
        }
        if s.pool_size == 0 {
            return Err(invalid("server.pool_size", "must be at least 1"));
        }
        Ok(s)
    }

    /// The pipelines to run: all, or the ones named (each must exist).
    pub fn select_pipelines(&self, names: &[String]) -> Result<Vec<(&String, &PipelineConfig)>, ConfigError> {
        if self.pipelines.is_empty() {
            return Err(invalid("pipelines", "no pipeline is configured"));
        }
        if names.is_empty() {
            return Ok(self.pipelines.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.pipelines.get_key_value(n).ok_or_else(|| {
                    let known: Vec<_> = self.pipelines.keys().map(String::as_str).collect();
                    invalid(format!("pipelines.{n}"), format!("no such pipeline (configured: {})", known.join(", ")))
                })
            })
            .collect()
    }

    pub fn database_url(&self) -> Result<&SecretUrl, ConfigError> {
        self.database.as_ref().map(|d| &d.url).ok_or_else(|| invalid("database.url", "missing (the database that migrate works on)"))
    }
}

/// A LISTEN channel the source can name as it is (it is quoted, so case is kept): an
/// identifier PostgreSQL does not truncate.
fn is_channel_name(name: &str) -> bool {
    name.len() <= 63 && is_sql_name(name) && !name.contains('.')
}

/// A table name the postgres checkpoint store can put into SQL as it is: one or two
/// unquoted identifiers (`table`, `schema.table`), which PostgreSQL folds to lower case.
fn is_sql_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl PipelineConfig {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The producer's `transactional.id` under `exactly_once`: stable across restarts,
    /// so a restarted pipeline fences its earlier self.
    pub fn transactional_id(&self, name: &str) -> String {
        self.transactional_id.clone().unwrap_or_else(|| format!("order-cdc.{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load(Some(f.path()))
    }

    const PIPELINE: &str = r#"
[pipelines.orders]
topic = "orders"
[pipelines.orders.source]
kind = "postgres"
url = "postgres://u:secret@127.0.0.1/db"
"#;

    #[test]
    fn defaults_fill_everything_but_the_pipeline() {
        let c = load_str(PIPELINE).unwrap();
        let p = &c.pipelines["orders"];
        assert_eq!(p.batch_size, 1000);
        assert_eq!(p.poll_interval, Duration::from_secs(5));
        assert_eq!(p.progress_interval, Duration::from_secs(10));
        assert_eq!(p.dead_letter_topic(), "orders.dlq");
        assert_eq!(c.kafka.properties["compression.type"], "lz4");
        let SourceConfig::Postgres(s) = &p.source else { panic!("a postgres source") };
        assert_eq!(s.table, "sales_orders");
        assert_eq!(s.cutoff, CutoffKind::Xact);
    }

    fn err(toml: &str) -> String {
        load_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&PIPELINE.replace("kind = \"postgres\"", "kind = \"mysql\""));
        assert!(e.contains("mysql") && e.contains("pipelines.orders.source"), "{e}");
        let e = err(&PIPELINE.replace("url = \"postgres://u:secret@127.0.0.1/db\"", ""));
        assert!(e.contains("url") && e.contains("pipelines.orders.source"), "{e}");
        let e = err(&PIPELINE.replace("topic = \"orders\"", "topic = \"orders\"\npoll_interval = \"soon\""));
        assert!(e.contains("pipelines.orders.poll_interval"), "{e}");
        let e = err(&PIPELINE.replace("topic = \"orders\"", "topic = \"orders\"\nprogress_interval = \"0s\""));
        assert!(e.contains("pipelines.orders.progress_interval"), "{e}");
        let e = err(&PIPELINE.replace("topic = \"orders\"", "topic = \"orders\"\nbatch_size = 0"));
        assert!(e.contains("pipelines.orders.batch_size"), "{e}");
        let e = err(&PIPELINE.replace("topic = \"orders\"", "topic = \"orders\"\nbatchsize = 10"));
        assert!(e.contains("batchsize"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = err(&format!("[checkpoint]\nstore = \"kafka\"\n{PIPELINE}"));
        assert!(e.contains("checkpoint.store") && e.contains("pipelines.orders is at_least_once"), "{e}");
    }

    #[test]
    fn a_notify_channel_is_a_plain_name_or_empty() {
        let with = |line: &str| PIPELINE.replace("kind = \"postgres\"", &format!("kind = \"postgres\"\n{line}"));
        for bad in ["notify_channel = \"orders changed\"", "notify_channel = \"1orders\"", "notify_channel = \"a.b\"", &format!("notify_channel = \"{}\"", "c".repeat(64))] {
            let e = err(&with(bad));
            assert!(e.contains("pipelines.orders.source.notify_channel") && e.contains("not a channel name"), "{bad}: {e}");
        }
        for good in ["notify_channel = \"Orders_2\"", "notify_channel = \"\""] {
            load_str(&with(good)).unwrap();
        }
    }

    #[test]
    fn exactly_once_pipelines_may_name_the_kafka_store() {
        let c = load_str(&format!("[checkpoint]\nstore = \"kafka\"\n{}", PIPELINE.replace("topic = \"orders\"", "topic = \"orders\"\ndelivery = \"exactly_once\""))).unwrap();
        assert_eq!(c.pipelines["orders"].transactional_id("orders"), "order-cdc.orders");
        assert_eq!(c.checkpoint.topic, "order-cdc.checkpoints");
    }

    const EXPORT_API: &str = r#"
[pipelines.api]
topic = "orders"
[pipelines.api.source]
kind = "export_api"
base_url = "https://example.com/api"
token = "t0ken"
"#;

    #[test]
    fn the_postgres_store_defaults_to_the_source_database() {
        let c = load_str(&format!("[checkpoint]\nstore = \"postgres\"\n{PIPELINE}")).unwrap();
        assert_eq!(c.checkpoint.table, "order_cdc_checkpoints");
        let p = &c.pipelines["orders"];
        assert_eq!(c.checkpoint.url_for(&p.source).unwrap().expose(), "postgres://u:secret@127.0.0.1/db");
        let c = load_str(&format!("[checkpoint]\nstore = \"postgres\"\nurl = \"postgres://c@h/cp\"\ntable = \"ops.checkpoints\"\n{PIPELINE}{EXPORT_API}")).unwrap();
        assert_eq!(c.checkpoint.url_for(&c.pipelines["api"].source).unwrap().expose(), "postgres://c@h/cp");
        assert_eq!(c.checkpoint.url_for(&c.pipelines["orders"].source).unwrap().expose(), "postgres://c@h/cp");
    }

    #[test]
    fn an_export_api_pipeline_on_the_postgres_store_needs_checkpoint_url() {
        let e = err(&format!("[checkpoint]\nstore = \"postgres\"\n{EXPORT_API}"));
        assert!(e.contains("checkpoint.url") && e.contains("pipelines.api"), "{e}");
        // exactly_once pipelines keep their checkpoints in the topic whatever the store.
        load_str(&format!("[checkpoint]\nstore = \"postgres\"\n{}", EXPORT_API.replace("topic = \"orders\"", "topic = \"orders\"\ndelivery = \"exactly_once\""))).unwrap();
        // The file store needs no database.
        load_str(EXPORT_API).unwrap();
    }

    #[test]
    fn the_checkpoint_table_is_a_plain_sql_name() {
        for bad in ["", "a.b.c", "1st", "orders; DROP TABLE x", "\"Quoted\"", "a."] {
            let e = err(&format!("[checkpoint]\ntable = '{bad}'\n{PIPELINE}"));
            assert!(e.contains("checkpoint.table"), "{bad}: {e}");
        }
        load_str(&format!("[checkpoint]\ntable = \"ops.Order_CDC_2\"\n{PIPELINE}")).unwrap();
    }
}

