//! The TOML configuration: the [`Config`] struct, loading and parsing, and a [`Config::problems`]
//! pass that reports every semantic problem at once (with the key that holds it) instead of
//! stopping at the first.
//!
//! Each section lives in its own file below `config/`, with its struct (unknown keys rejected,
//! defaults in `const fn`/`fn default_*`, doc comments that are the user documentation) and its
//! `check`, which reports problems keyed relative to the section; [`Config::problems`] prefixes
//! them and adds the checks that span sections. The value types that both the checks and the
//! rest of the daemon parse (broker URLs, topic filters, CSV columns, sizes and durations) live
//! here too, so `config` depends on nothing else in the crate.
//!
//! Relative paths (`state_dir`, `schemas_dir`, credential files) are resolved against the
//! directory that holds the configuration file, so a config and its schemas can travel together.

mod dlq;
mod downlink;
mod gateway;
mod kafka;
mod metrics;
mod mqtt;
mod queue;
mod retry;
mod route;
mod secret;
mod serial;
mod topic_filter;
pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use dlq::DlqConfig;
pub use downlink::{
    DownlinkConfig, TemplateError, TopicTemplate, GATEWAY_PLACEHOLDER, MAX_IN_FLIGHT_LIMIT,
};
pub use gateway::GatewayConfig;
pub use kafka::{Compression, KafkaConfig, PropertyValue};
pub use metrics::MetricsConfig;
pub use mqtt::{BrokerAddress, MqttConfig, UrlError, MQTT_MAX_PACKET, PUBLISH_HEADER_ROOM};
pub use queue::{QueueConfig, WhenFull};
pub use retry::RetryConfig;
pub use route::{RouteConfig, SourceKind};
pub use secret::{
    is_secret_name, read_bytes as read_secret_bytes, read_file as read_secret_file, redact,
    SecretFileError, CREDENTIALS_DIRECTORY, REDACTED,
};
pub use serial::{
    Column, ColumnError, ColumnType, FlowControl, Parity, SerialConfig, SerialFormat,
    SERIAL_MAX_LINE_LIMIT, SERIAL_RECONNECT_MIN,
};
pub use topic_filter::{FilterError, TopicFilter};
pub use units::ByteSize;

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
    /// Commands from Kafka to devices over MQTT.
    #[serde(default, rename = "downlink")]
    pub downlinks: Vec<DownlinkConfig>,
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
        /// toml's message, which names the key and line (never quoting it: a secret's value is
        /// `***`).
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
            message: secret::toml_error(&e, text),
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
            mqtt.cert_file.as_mut().map(resolve);
            mqtt.key_file.as_mut().map(resolve);
        }
        let credentials = secret::credentials_base(base);
        for file in config.kafka.property_files.values_mut() {
            if file.is_relative() {
                *file = credentials.join(&*file);
            }
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

    /// Every semantic problem in the configuration, section by section (route schemas are
    /// compiled by the schema registry, librdkafka properties checked by librdkafka).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        problems.extend(within("gateway", self.gateway.check()));
        problems.extend(within("metrics", self.metrics.check()));
        problems.extend(within("queue", self.queue.check()));
        problems.extend(within("kafka", self.kafka.check()));
        problems.extend(within("retry", self.retry.check()));
        problems.extend(within("dlq", self.dlq.check()));

        // Source names are shared by [[mqtt]] and [[serial]]: routes refer to them.
        let mut names = HashSet::new();
        for (i, mqtt) in self.mqtt.iter().enumerate() {
            let section = format!("mqtt[{i}]");
            if !names.insert(mqtt.name.as_str()) {
                problems.push(Problem::new(
                    format!("{section}.name"),
                    format!("source name `{}` is used twice", mqtt.name),
                ));
            }
            problems.extend(within(&section, mqtt.check()));
        }
        problems.extend(mqtt::check_client_ids(&self.mqtt, &self.gateway.id));
        for (i, serial) in self.serial.iter().enumerate() {
            let section = format!("serial[{i}]");
            if !names.insert(serial.name.as_str()) {
                problems.push(Problem::new(
                    format!("{section}.name"),
                    format!("source name `{}` is used twice", serial.name),
                ));
            }
            problems.extend(within(&section, serial.check()));
        }

        for (i, route) in self.routes.iter().enumerate() {
            let source = if self.serial.iter().any(|s| s.name == route.source) {
                Some(SourceKind::Serial)
            } else if self.mqtt.iter().any(|m| m.name == route.source) {
                Some(SourceKind::Mqtt)
            } else {
                None
            };
            problems.extend(within(&format!("route[{i}]"), route.check(source)));
        }

        for (i, downlink) in self.downlinks.iter().enumerate() {
            let checked = downlink.check(&self.gateway.id, &self.kafka.dlq_suffix);
            problems.extend(within(&format!("downlink[{i}]"), checked));
        }
        problems.extend(downlink::check_all(
            &self.downlinks,
            &self.mqtt,
            &names,
            &self.gateway.id,
        ));
        problems
    }
}

/// `problems` of a section with their keys made whole: `url` within `mqtt[0]` is `mqtt[0].url`.
fn within(section: &str, problems: Vec<Problem>) -> impl Iterator<Item = Problem> + '_ {
    problems.into_iter().map(move |p| Problem {
        key: format!("{section}.{}", p.key),
        message: p.message,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        // 256 KiB of payload and room for the longest topic: what packaging/mosquitto.conf's
        // max_packet_size (327680) must not exceed.
        assert_eq!(config.mqtt[0].packet_limit(), 327_683);
        assert!((0.0..=1.0).contains(&config.queue.dead_letter_share));
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
            .replace(
                "[kafka]",
                "[retry]\njitter = 2.0\n[queue]\ndead_letter_share = 0.0\n[kafka]",
            );
        let config = Config::parse(&text, Path::new("a.toml")).unwrap();
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        for key in [
            "route[0].source",
            "route[0].key",
            "mqtt[0].url",
            "retry.jitter",
            "queue.dead_letter_share",
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
    fn mqtt_client_ids_must_be_set_and_unique_with_their_keys() {
        // mqtt[1] takes mqtt[0]'s default id, mqtt[2] an empty one, mqtt[3] mqtt[1]'s.
        let sources = r#"
            [[mqtt]]
            name = "other"
            url = "mqtt://127.0.0.1:1884"
            client_id = "sensorgate-gw-local"
            topics = ["x/#"]
            [[mqtt]]
            name = "third"
            url = "mqtt://127.0.0.1:1885"
            client_id = ""
            topics = ["x/#"]
            [[mqtt]]
            name = "fourth"
            url = "mqtt://127.0.0.1:1886"
            client_id = "sensorgate-gw-local"
            topics = ["x/#"]
        "#;
        let config = Config::parse(&format!("{MINIMAL}{sources}"), Path::new("a.toml")).unwrap();
        let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("mqtt[2].client_id: must not be empty"),
            "{problems:#?}"
        );
        for (i, problem) in [(1, &problems[1]), (3, &problems[2])] {
            assert!(
                problem.starts_with(&format!(
                    "mqtt[{i}].client_id: client id `sensorgate-gw-local` is also the client id of mqtt[0]"
                )),
                "{problems:#?}"
            );
        }

        // With a gateway id of its own, the derived id no longer collides with mqtt[1]'s.
        let text = format!("{MINIMAL}{sources}")
            .replace("id = \"gw\"", "id = \"gw2\"")
            .replace("client_id = \"\"", "client_id = \"third\"");
        let config = Config::parse(&text, Path::new("a.toml")).unwrap();
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["mqtt[3].client_id"]);
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
