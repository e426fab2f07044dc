//! `[kafka]`: where readings go, the producer's settings, and any librdkafka property
//! (`[kafka.properties]`, or read from a file: `[kafka.property_files]`, for secrets). Also the
//! rule for Kafka topic names, which routes share.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::{self, SecretFileError};
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
    /// The stall limit: a partition whose oldest record in flight waited this long is held and
    /// probed (librdkafka's own `message.timeout.ms` is 0: it never drops a record). Also how
    /// long a topic that does not exist is retried before its records are dead-lettered.
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
    /// Any librdkafka property whose value is the first line of a file (for secrets such as
    /// `sasl.password`). A relative name is looked up in `$CREDENTIALS_DIRECTORY` when systemd
    /// set it (`LoadCredential=`), else next to this file. Read whenever a Kafka client is
    /// created and checked on every load and reload; others must have no access to the file.
    #[serde(default)]
    pub property_files: BTreeMap<String, PathBuf>,
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
        for (name, file) in &self.property_files {
            let key = format!("property_files.\"{name}\"");
            if self.properties.contains_key(name) {
                problems.push(Problem::new(
                    key.clone(),
                    "is also set in [kafka.properties]; keep one",
                ));
            }
            if let Err(e) = secret::read_file(file) {
                problems.push(Problem::new(key, e.to_string()));
            }
        }
        problems
    }

    /// Every librdkafka property to apply after our defaults: `properties`, then the values of
    /// `property_files` read now.
    pub fn client_properties(&self) -> Result<Vec<(String, String)>, SecretFileError> {
        let mut all: Vec<(String, String)> = (self.properties.iter())
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        for (name, file) in &self.property_files {
            all.push((name.clone(), secret::read_file(file)?));
        }
        Ok(all)
    }

    /// Warnings for settings that weaken security (a secret written inline, TLS certificate
    /// verification turned off): logged at start and printed by `check-config`.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for name in self
            .properties
            .keys()
            .filter(|k| super::secret::is_secret_name(k))
        {
            warnings.push(format!(
                "kafka.properties.\"{name}\" is a secret written in the configuration file; move it to a file named in [kafka.property_files] (its value is never printed)"
            ));
        }
        let verification = self.properties.get("enable.ssl.certificate.verification");
        if verification
            .is_some_and(|v| matches!(v.to_string().to_ascii_lowercase().as_str(), "false" | "0"))
        {
            warnings.push("kafka.properties.\"enable.ssl.certificate.verification\" = false: the broker's TLS certificate is NOT verified; anyone on the network path can impersonate the Kafka cluster and read the readings and credentials".to_owned());
        }
        if self
            .properties
            .get("ssl.endpoint.identification.algorithm")
            .is_some_and(|v| v.to_string().eq_ignore_ascii_case("none"))
        {
            warnings.push("kafka.properties.\"ssl.endpoint.identification.algorithm\" = none: the broker's host name is NOT checked against its certificate".to_owned());
        }
        warnings
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
