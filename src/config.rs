//! The TOML configuration: one struct per section, unknown keys rejected, defaults in
//! `const fn`/`fn default_*`, and a [`Config::problems`] pass that reports every semantic problem
//! at once (with the key that holds it) instead of stopping at the first.
//!
//! Relative paths (`state_dir`, `schemas_dir`, credential files) are resolved against the
//! directory that holds the configuration file, so a config and its schemas can travel together.

pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use units::ByteSize;

use crate::ingest::frame::{Column, ColumnError};
use crate::route::TopicFilter;

/// Where the daemon looks for its configuration when neither `--config` nor
/// `SENSORGATE_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/sensorgate/sensorgate.toml";

/// The complete configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and directories.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The durable outbox.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Where readings go.
    pub kafka: KafkaConfig,
    /// Backoff for transient publish failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// MQTT sources.
    #[serde(default)]
    pub mqtt: Vec<MqttConfig>,
    /// Serial sources.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// Routes from sources to schemas and topics, tried in order.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The HTTP endpoint for metrics and health.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Retention of the local dead-letter store.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// The file this configuration was read from (not a key).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Identifies this gateway in headers and dead letters; defaults to the host name.
    #[serde(default = "default_gateway_id")]
    pub id: String,
    /// Holds the outbox and the local dead-letter store.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Holds the JSON Schema files that routes name.
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// Log filter when `RUST_LOG` is not set, e.g. "info" or "sensorgate=debug,info".
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The admin API's Unix socket (`sensorgate dlq`, `sensorgate queue` talk to a running
    /// daemon through it); default `<state_dir>/admin.sock`. Created with mode 0660, owned by the
    /// user and group the daemon runs as.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
}

impl GatewayConfig {
    /// The admin socket's path: `admin_socket`, or `<state_dir>/admin.sock`.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"))
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: default_gateway_id(),
            state_dir: default_state_dir(),
            schemas_dir: default_schemas_dir(),
            log_level: default_log_level(),
            admin_socket: None,
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sensorgate".to_owned())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sensorgate")
}

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("/etc/sensorgate/schemas")
}

/// What the outbox does when it holds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Evict the oldest records (counted) to make room.
    DropOldest,
    /// Stop acknowledging MQTT until the publisher frees space; the broker holds the backlog.
    Block,
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Upper bound of the outbox's record bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Policy when the bound is reached.
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    /// Group-commit window: readings arriving within it share one flush.
    #[serde(default = "default_commit_interval", with = "units::duration")]
    pub commit_interval: Duration,
    /// Most readings in one group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// After sled's flush, also `fsync` the data file (sled 0.34 only issues `sync_file_range`).
    #[serde(default = "default_true")]
    pub fsync: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            when_full: default_when_full(),
            commit_interval: default_commit_interval(),
            max_batch: default_max_batch(),
            fsync: true,
        }
    }
}

const fn default_max_bytes() -> ByteSize {
    ByteSize(512 << 20)
}
const fn default_when_full() -> WhenFull {
    WhenFull::DropOldest
}
const fn default_commit_interval() -> Duration {
    Duration::from_millis(20)
}
const fn default_max_batch() -> usize {
    4096
}
const fn default_true() -> bool {
    true
}

/// Kafka compression codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip
    Gzip,
    /// snappy
    Snappy,
    /// lz4 (default)
    Lz4,
    /// zstd
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `compression.type`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Appended to a route's topic to name its dead-letter topic.
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
    /// Dead letters that matched no route go to this topic + `dlq_suffix`.
    #[serde(default = "default_unrouted_topic")]
    pub unrouted_topic: String,
    /// `linger.ms`: how long librdkafka waits to fill a batch.
    #[serde(default = "default_linger", with = "units::duration")]
    pub linger: Duration,
    /// `message.timeout.ms`: after this a delivery counts as failed and is retried from the outbox.
    #[serde(default = "default_message_timeout", with = "units::duration")]
    pub message_timeout: Duration,
    /// Most records handed to librdkafka and not yet confirmed (bounds its memory queue).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Any librdkafka property, applied last (so it wins over the keys above).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

const fn default_compression() -> Compression {
    Compression::Lz4
}
fn default_dlq_suffix() -> String {
    ".DLQ".to_owned()
}
fn default_unrouted_topic() -> String {
    "sensorgate.unrouted".to_owned()
}
const fn default_linger() -> Duration {
    Duration::from_millis(5)
}
const fn default_message_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_in_flight() -> usize {
    10_000
}

/// A librdkafka property value; TOML numbers and booleans are passed as their text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// `"SASL_SSL"`
    Text(String),
    /// `1000`
    Integer(i64),
    /// `true`
    Bool(bool),
    /// `0.5`
    Float(f64),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(v) => f.write_str(v),
            Self::Integer(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
        }
    }
}

/// `[retry]`: exponential backoff with jitter for transient publish failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    #[serde(default = "default_retry_initial", with = "units::duration")]
    pub initial: Duration,
    /// Longest delay.
    #[serde(default = "default_retry_max", with = "units::duration")]
    pub max: Duration,
    /// Growth per consecutive failure.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Each delay is varied by up to this fraction, up or down.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: default_retry_initial(),
            max: default_retry_max(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

const fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
const fn default_multiplier() -> f64 {
    2.0
}
const fn default_jitter() -> f64 {
    0.2
}

/// `[[mqtt]]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Source name that routes refer to.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Fixed client id, so the broker keeps our session; defaults to `sensorgate-<gateway id>-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to at QoS 1.
    pub topics: Vec<String>,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password (never inline in this file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://` (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "units::duration")]
    pub keep_alive: Duration,
    /// Payloads larger than this become `too-large` dead letters (stored truncated to this size).
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max", with = "units::duration")]
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The client id used for the persistent session.
    pub fn client_id(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sensorgate-{gateway_id}-{}", self.name))
    }
}

const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_payload() -> ByteSize {
    ByteSize(256 << 10)
}
const fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// Parity checking of a serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (default).
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control of a serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None (default).
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// How a serial source frames its byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SerialFormat {
    /// One JSON document per line (default).
    JsonLines,
    /// Comma-separated values in the declared `columns`, turned into a JSON object.
    Csv,
}

impl SerialFormat {
    /// The name used in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JsonLines => "json-lines",
            Self::Csv => "csv",
        }
    }
}

/// `[[serial]]`: one serial port, one reading per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Source name that routes refer to.
    pub name: String,
    /// Device path, e.g. `/dev/serial/by-id/…` (survives re-plugging) or `/dev/ttyUSB0`.
    pub device: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits, 5 to 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default = "default_flow_control")]
    pub flow_control: FlowControl,
    /// Framing of the byte stream: `json-lines` or `csv`.
    #[serde(default = "default_serial_format")]
    pub format: SerialFormat,
    /// For `csv`: the columns in order, each `"name:type"` with type `string`, `integer`,
    /// `number` or `bool`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Longer lines become `frame-too-long` dead letters (stored truncated to this size).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// Longest wait between attempts to reopen the device.
    #[serde(default = "default_serial_reconnect_max", with = "units::duration")]
    pub reconnect_max: Duration,
}

impl SerialConfig {
    /// The declared CSV columns, or every declaration that does not parse (with its index).
    pub fn csv_columns(&self) -> Result<Vec<Column>, Vec<(usize, ColumnError)>> {
        let mut columns = Vec::with_capacity(self.columns.len());
        let mut errors = Vec::new();
        for (i, spec) in self.columns.iter().enumerate() {
            match Column::parse(spec) {
                Ok(column) => columns.push(column),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(columns)
        } else {
            Err(errors)
        }
    }
}

const fn default_baud() -> u32 {
    115_200
}
const fn default_data_bits() -> u8 {
    8
}
const fn default_parity() -> Parity {
    Parity::None
}
const fn default_stop_bits() -> u8 {
    1
}
const fn default_flow_control() -> FlowControl {
    FlowControl::None
}
const fn default_serial_format() -> SerialFormat {
    SerialFormat::JsonLines
}
const fn default_max_line_bytes() -> ByteSize {
    ByteSize(4096)
}
const fn default_serial_reconnect_max() -> Duration {
    Duration::from_secs(5)
}

/// The largest `max_line_bytes` accepted.
pub const SERIAL_MAX_LINE_LIMIT: u64 = 1 << 20;
/// The shortest `reconnect_max` accepted (and the first delay before reopening a device).
pub const SERIAL_RECONNECT_MIN: Duration = Duration::from_millis(100);

/// `[[route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and dead letters; defaults to `<source>/<topic_filter>`.
    #[serde(default)]
    pub name: Option<String>,
    /// An `[[mqtt]]` or `[[serial]]` name.
    pub source: String,
    /// MQTT topic filter (`+`, `#`); absent matches every topic of the source.
    #[serde(default)]
    pub topic_filter: Option<String>,
    /// Schema file name inside `schemas_dir`.
    pub schema: String,
    /// Destination topic; dead letters go to this + `dlq_suffix`.
    pub kafka_topic: String,
    /// JSON Pointer to the partition key, e.g. `/device_id`.
    #[serde(default)]
    pub key: Option<String>,
}

impl RouteConfig {
    /// The route's display name.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| match &self.topic_filter {
                Some(filter) => format!("{}/{filter}", self.source),
                None => self.source.clone(),
            })
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz`, `/readyz`; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9898".to_owned()
}

/// `[dlq]`: retention of the local dead-letter store. When a bound is exceeded the oldest dead
/// letters are evicted (counted as `sensorgate_dlq_evicted_total`); checked on every append of a
/// dead letter and at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Most dead letters kept.
    #[serde(default = "default_dlq_max_entries")]
    pub max_entries: u64,
    /// Most bytes (keys + stored records) kept.
    #[serde(default = "default_dlq_max_bytes")]
    pub max_bytes: ByteSize,
    /// Dead letters received longer ago than this are evicted.
    #[serde(default = "default_dlq_max_age", with = "units::duration")]
    pub max_age: Duration,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_entries: default_dlq_max_entries(),
            max_bytes: default_dlq_max_bytes(),
            max_age: default_dlq_max_age(),
        }
    }
}

const fn default_dlq_max_entries() -> u64 {
    100_000
}
const fn default_dlq_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
const fn default_dlq_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// One thing wrong with a configuration, tied to the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `route[2].source`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// The file parsed but some values do not fit together.
    #[error("{path}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads and parses `path`, resolving relative paths against its directory. Semantic checks
    /// are separate ([`Config::problems`]), so `check-config` can report all of them.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.path = path.to_owned();
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.gateway.state_dir);
        resolve(&mut config.gateway.schemas_dir);
        config.gateway.admin_socket.as_mut().map(resolve);
        for mqtt in &mut config.mqtt {
            mqtt.password_file.as_mut().map(resolve);
            mqtt.ca_file.as_mut().map(resolve);
        }
        Ok(config)
    }

    /// Loads `path` and fails with every problem found by [`Config::problems`].
    pub fn load_valid(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Every semantic problem in the configuration (schemas are checked by
    /// [`crate::validate::SchemaRegistry`]).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut p = |key: String, message: String| problems.push(Problem::new(key, message));

        if self.gateway.id.trim().is_empty() {
            p("gateway.id".into(), "must not be empty".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.gateway.log_level).is_err() {
            p(
                "gateway.log_level".into(),
                format!(
                    "`{}` is not a log filter (e.g. \"info\", \"sensorgate=debug,warn\")",
                    self.gateway.log_level
                ),
            );
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p(
                "metrics.listen".into(),
                format!(
                    "`{}` is not an address:port (e.g. \"127.0.0.1:9898\"; empty disables)",
                    self.metrics.listen
                ),
            );
        }
        if self.queue.max_bytes.bytes() < 64 << 10 {
            p(
                "queue.max_bytes".into(),
                format!("{} is too small (at least 64KiB)", self.queue.max_bytes),
            );
        }
        if self.queue.max_batch == 0 {
            p("queue.max_batch".into(), "must be at least 1".into());
        }
        if self.kafka.brokers.trim().is_empty() {
            p(
                "kafka.brokers".into(),
                "must list at least one broker".into(),
            );
        }
        if self.kafka.max_in_flight == 0 {
            p("kafka.max_in_flight".into(), "must be at least 1".into());
        }
        if self.kafka.dlq_suffix.is_empty() {
            p(
                "kafka.dlq_suffix".into(),
                "must not be empty (dead letters would share the readings' topic)".into(),
            );
        }
        if let Err(e) = check_topic_name(&format!(
            "{}{}",
            self.kafka.unrouted_topic, self.kafka.dlq_suffix
        )) {
            p("kafka.unrouted_topic".into(), e);
        }
        if self.retry.initial.is_zero() {
            p("retry.initial".into(), "must be greater than zero".into());
        }
        if self.retry.max < self.retry.initial {
            p(
                "retry.max".into(),
                "must not be shorter than retry.initial".into(),
            );
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            p(
                "retry.multiplier".into(),
                "must be a number of at least 1.0".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            p("retry.jitter".into(), "must be between 0.0 and 1.0".into());
        }

        let mut names = HashSet::new();
        for (i, mqtt) in self.mqtt.iter().enumerate() {
            if !names.insert(mqtt.name.as_str()) {
                p(
                    format!("mqtt[{i}].name"),
                    format!("source name `{}` is used twice", mqtt.name),
                );
            }
            if let Err(e) = crate::ingest::mqtt::BrokerAddress::parse(&mqtt.url) {
                p(format!("mqtt[{i}].url"), e.to_string());
            }
            if mqtt.topics.is_empty() {
                p(
                    format!("mqtt[{i}].topics"),
                    "must list at least one topic filter".into(),
                );
            }
            for (j, topic) in mqtt.topics.iter().enumerate() {
                if let Err(e) = TopicFilter::parse(topic) {
                    p(format!("mqtt[{i}].topics[{j}]"), e.to_string());
                }
            }
            if let Some(file) = &mqtt.password_file {
                if let Err(e) = std::fs::metadata(file) {
                    p(
                        format!("mqtt[{i}].password_file"),
                        format!("{}: {e}", file.display()),
                    );
                }
            }
            if let Some(file) = &mqtt.ca_file {
                if let Err(e) = std::fs::metadata(file) {
                    p(
                        format!("mqtt[{i}].ca_file"),
                        format!("{}: {e}", file.display()),
                    );
                }
            }
            if mqtt.max_payload.bytes() == 0
                || mqtt.max_payload.bytes() > crate::ingest::mqtt::MQTT_MAX_PACKET as u64
            {
                p(
                    format!("mqtt[{i}].max_payload"),
                    "must be between 1B and 256MiB".into(),
                );
            }
        }
        for (i, serial) in self.serial.iter().enumerate() {
            if !names.insert(serial.name.as_str()) {
                p(
                    format!("serial[{i}].name"),
                    format!("source name `{}` is used twice", serial.name),
                );
            }
            match serial.device.to_str() {
                None => p(format!("serial[{i}].device"), "must be valid UTF-8".into()),
                Some(device) if !device.starts_with('/') => p(
                    format!("serial[{i}].device"),
                    format!("`{device}` is not an absolute path (e.g. \"/dev/ttyUSB0\")"),
                ),
                Some(_) => {}
            }
            if serial.baud == 0 {
                p(
                    format!("serial[{i}].baud"),
                    "must be greater than zero".into(),
                );
            }
            if !(5..=8).contains(&serial.data_bits) {
                p(
                    format!("serial[{i}].data_bits"),
                    format!("{} is not 5, 6, 7 or 8", serial.data_bits),
                );
            }
            if !(1..=2).contains(&serial.stop_bits) {
                p(
                    format!("serial[{i}].stop_bits"),
                    format!("{} is not 1 or 2", serial.stop_bits),
                );
            }
            match (serial.format, serial.csv_columns()) {
                (SerialFormat::JsonLines, _) if !serial.columns.is_empty() => p(
                    format!("serial[{i}].columns"),
                    "applies to format = \"csv\" only".into(),
                ),
                (SerialFormat::Csv, Ok(columns)) => {
                    if columns.is_empty() {
                        p(
                            format!("serial[{i}].columns"),
                            "format = \"csv\" needs the columns in order, e.g. [\"device_id:string\", \"temperature_c:number\"]".into(),
                        );
                    }
                    let mut seen = HashSet::new();
                    for (j, column) in columns.iter().enumerate() {
                        if !seen.insert(column.name.as_str()) {
                            p(
                                format!("serial[{i}].columns[{j}]"),
                                format!("column `{}` is declared twice", column.name),
                            );
                        }
                    }
                }
                (SerialFormat::Csv, Err(errors)) => {
                    for (j, e) in errors {
                        p(format!("serial[{i}].columns[{j}]"), e.to_string());
                    }
                }
                (SerialFormat::JsonLines, _) => {}
            }
            if serial.max_line_bytes.bytes() == 0
                || serial.max_line_bytes.bytes() > SERIAL_MAX_LINE_LIMIT
            {
                p(
                    format!("serial[{i}].max_line_bytes"),
                    "must be between 1B and 1MiB".into(),
                );
            }
            if serial.reconnect_max < SERIAL_RECONNECT_MIN {
                p(
                    format!("serial[{i}].reconnect_max"),
                    "must be at least 100ms".into(),
                );
            }
        }

        for (i, route) in self.routes.iter().enumerate() {
            let is_mqtt = self.mqtt.iter().any(|m| m.name == route.source);
            let is_serial = self.serial.iter().any(|s| s.name == route.source);
            if !is_mqtt && !is_serial {
                p(
                    format!("route[{i}].source"),
                    format!(
                        "`{}` is not the name of any [[mqtt]] or [[serial]] source",
                        route.source
                    ),
                );
            }
            if let Some(filter) = &route.topic_filter {
                if is_serial {
                    p(
                        format!("route[{i}].topic_filter"),
                        "applies to MQTT sources only".into(),
                    );
                }
                if let Err(e) = TopicFilter::parse(filter) {
                    p(format!("route[{i}].topic_filter"), e.to_string());
                }
            }
            if let Err(e) = check_topic_name(&route.kafka_topic) {
                p(format!("route[{i}].kafka_topic"), e);
            }
            if let Some(key) = &route.key {
                if !(key.is_empty() || key.starts_with('/')) {
                    p(
                        format!("route[{i}].key"),
                        format!("`{key}` is not a JSON Pointer (it must start with `/`, e.g. \"/device_id\")"),
                    );
                }
            }
            if route.schema.contains("..") || Path::new(&route.schema).is_absolute() {
                p(
                    format!("route[{i}].schema"),
                    "must be a file name inside gateway.schemas_dir".into(),
                );
            }
        }
        problems
    }
}

fn check_topic_name(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{topic}` is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [gateway]
        id = "gw"
        state_dir = "state"
        schemas_dir = "schemas"
        [kafka]
        brokers = "localhost:9092"
        [[mqtt]]
        name = "local"
        url = "mqtt://127.0.0.1:1883"
        topics = ["sensors/+/reading"]
        [[route]]
        source = "local"
        topic_filter = "sensors/+/reading"
        schema = "reading.v1.json"
        kafka_topic = "sensors.readings"
        key = "/device_id"
    "#;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let config = Config::parse(MINIMAL, Path::new("/etc/sg/sensorgate.toml")).unwrap();
        assert_eq!(config.gateway.state_dir, Path::new("/etc/sg/state"));
        assert_eq!(config.queue.commit_interval, Duration::from_millis(20));
        assert_eq!(config.queue.when_full, WhenFull::DropOldest);
        assert_eq!(config.kafka.compression, Compression::Lz4);
        assert_eq!(config.kafka.dlq_suffix, ".DLQ");
        assert_eq!(config.mqtt[0].client_id("gw"), "sensorgate-gw-local");
        assert!(config.problems().is_empty(), "{:?}", config.problems());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let text = MINIMAL.replace("[kafka]", "[kafka]\nbrokerz = \"x\"");
        let err = Config::parse(&text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml") && err.contains("brokerz"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_key() {
        let text = MINIMAL
            .replace("source = \"local\"", "source = \"nowhere\"")
            .replace("key = \"/device_id\"", "key = \"device_id\"")
            .replace("mqtt://127.0.0.1:1883", "http://x")
            .replace("[kafka]", "[retry]\njitter = 2.0\n[kafka]");
        let config = Config::parse(&text, Path::new("a.toml")).unwrap();
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        for key in [
            "route[0].source",
            "route[0].key",
            "mqtt[0].url",
            "retry.jitter",
        ] {
            assert!(
                keys.contains(&key.to_owned()),
                "{key} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn kafka_properties_accept_any_scalar() {
        let text = MINIMAL.replace(
            "brokers = \"localhost:9092\"",
            "brokers = \"localhost:9092\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"batch.num.messages\" = 1000\n\"enable.ssl.certificate.verification\" = false",
        );
        let config = Config::parse(&text, Path::new("a.toml")).unwrap();
        let props: Vec<(String, String)> = config
            .kafka
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        assert!(props.contains(&("batch.num.messages".into(), "1000".into())));
        assert!(props.contains(&("enable.ssl.certificate.verification".into(), "false".into())));
    }

    #[test]
    fn serial_sources_default_to_8n1_json_lines() {
        let text = format!("{MINIMAL}\n[[serial]]\nname = \"uno\"\ndevice = \"/dev/ttyACM0\"\n");
        let config = Config::parse(&text, Path::new("a.toml")).unwrap();
        let s = &config.serial[0];
        assert_eq!((s.baud, s.data_bits, s.stop_bits), (115_200, 8, 1));
        assert_eq!(s.parity, Parity::None);
        assert_eq!(s.flow_control, FlowControl::None);
        assert_eq!(s.format, SerialFormat::JsonLines);
        assert!(s.columns.is_empty());
        assert_eq!(s.max_line_bytes, ByteSize(4096));
        assert_eq!(s.reconnect_max, Duration::from_secs(5));
        assert!(config.problems().is_empty(), "{:?}", config.problems());
    }

    #[test]
    fn serial_problems_are_reported_with_their_keys() {
        let serial = r#"
            [[serial]]
            name = "uno"
            device = "ttyACM0"
            data_bits = 9
            stop_bits = 3
            format = "csv"
            columns = ["device_id:string", "t", "h:float", "device_id:number"]
            max_line_bytes = 0
            reconnect_max = "10ms"
            [[serial]]
            name = "esp"
            device = "/dev/ttyUSB0"
            columns = ["t:number"]
            [[serial]]
            name = "pi"
            device = "/dev/serial0"
            format = "csv"
        "#;
        let config = Config::parse(&format!("{MINIMAL}{serial}"), Path::new("a.toml")).unwrap();
        let problems = config.problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "serial[0].device",
                "serial[0].data_bits",
                "serial[0].stop_bits",
                "serial[0].columns[1]",
                "serial[0].columns[2]",
                "serial[0].max_line_bytes",
                "serial[0].reconnect_max",
                "serial[1].columns",
                "serial[2].columns",
            ],
            "{problems:?}"
        );
        assert!(
            problems[3].message.contains("\"t:number\""),
            "{}",
            problems[3]
        );

        let dup = serial.replace("\"t\", \"h:float\", ", "");
        let config = Config::parse(&format!("{MINIMAL}{dup}"), Path::new("a.toml")).unwrap();
        assert!(config
            .problems()
            .iter()
            .any(|p| p.key == "serial[0].columns[1]" && p.message.contains("twice")));

        let bad_parity =
            format!("{MINIMAL}[[serial]]\nname = \"x\"\ndevice = \"/dev/x\"\nparity = \"mark\"\n");
        let err = Config::parse(&bad_parity, Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("parity"), "{err}");
    }
}
