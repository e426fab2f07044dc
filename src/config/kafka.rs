//! `[kafka]`: where readings go, the producer's settings, and any librdkafka property
//! (`[kafka.properties]`). Also the rule for Kafka topic names, which routes share.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::units::{self, ByteSize};
use super::Problem;

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
    /// Most bytes (payloads, keys, topics) handed to librdkafka and not yet confirmed.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// Any librdkafka property, applied last (so it wins over the keys above).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

impl KafkaConfig {
    /// Every problem in this section, keyed relative to it. librdkafka checks `properties`
    /// itself when a client is created (`check-config` does that too).
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push(Problem::new("brokers", "must list at least one broker"));
        }
        if self.max_in_flight == 0 {
            problems.push(Problem::new("max_in_flight", "must be at least 1"));
        }
        if self.max_in_flight_bytes.bytes() < 64 << 10 {
            problems.push(Problem::new(
                "max_in_flight_bytes",
                format!("{} is too small (at least 64KiB)", self.max_in_flight_bytes),
            ));
        }
        if self.dlq_suffix.is_empty() {
            problems.push(Problem::new(
                "dlq_suffix",
                "must not be empty (dead letters would share the readings' topic)",
            ));
        }
        if let Err(e) = check_topic_name(&format!("{}{}", self.unrouted_topic, self.dlq_suffix)) {
            problems.push(Problem::new("unrouted_topic", e));
        }
        problems
    }
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
const fn default_max_in_flight_bytes() -> ByteSize {
    ByteSize(2 << 20)
}
const fn default_max_in_flight() -> usize {
    4_000
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

/// Whether `topic` is a legal Kafka topic name; the error is a message for the key that holds it.
pub(super) fn check_topic_name(topic: &str) -> Result<(), String> {
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
