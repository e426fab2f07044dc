//! The data that flows through the pipeline: a [`Reading`] as a source delivers it, and the
//! [`Record`] (metadata + untouched payload bytes) that the outbox stores and the publisher sends.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a reading came from, beyond its source name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// An MQTT publish on this topic.
    Mqtt {
        /// The publish's topic.
        topic: String,
    },
    /// A line read from this serial port.
    Serial {
        /// The device path.
        port: String,
    },
    /// A command consumed from Kafka by a downlink.
    Kafka {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The command's offset in it.
        offset: i64,
    },
}

impl Origin {
    /// The origin's kind as it prefixes [`Origin`]'s text: `mqtt`, `serial` or `kafka`.
    pub const fn scheme(&self) -> &'static str {
        match self {
            Self::Mqtt { .. } => "mqtt",
            Self::Serial { .. } => "serial",
            Self::Kafka { .. } => "kafka",
        }
    }

    /// A Kafka origin as one string, `<topic>/<partition>@<offset>` (topic names cannot hold `/`
    /// or `@`), and back with [`Origin::parse_kafka`].
    pub fn kafka_text(topic: &str, partition: i32, offset: i64) -> String {
        format!("{topic}/{partition}@{offset}")
    }

    /// Parses [`Origin::kafka_text`].
    pub fn parse_kafka(text: &str) -> Option<Self> {
        let (rest, offset) = text.rsplit_once('@')?;
        let (topic, partition) = rest.rsplit_once('/')?;
        Some(Self::Kafka {
            topic: topic.to_owned(),
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mqtt { topic } => write!(f, "mqtt:{topic}"),
            Self::Serial { port } => write!(f, "serial:{port}"),
            Self::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "kafka:{topic}/{partition}@{offset}"),
        }
    }
}

/// A reading as a source received it, before routing and validation.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The source's configured name.
    pub source: Arc<str>,
    /// Topic or port.
    pub origin: Origin,
    /// The bytes exactly as received.
    pub payload: Bytes,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

/// Why a reading is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No route matched its source and topic.
    NoRoute,
    /// Not UTF-8, or not JSON.
    NotJson,
    /// Valid JSON that breaks the route's schema.
    Schema,
    /// Larger than the source's payload limit.
    TooLarge,
    /// Kafka refused it permanently (too large, not authorized, unknown topic…).
    PublishRejected,
    /// A serial line longer than the source's `max_line_bytes`.
    FrameTooLong,
    /// A serial CSV line that does not fit the source's declared columns.
    BadCsv,
    /// A downlink command whose topic template names no device (a pointer missing, not a
    /// string, or not usable as one topic level).
    NoTarget,
    /// A downlink command past its `expires_at` when it would have been sent.
    Expired,
}

impl Reason {
    /// Every reason, for counters.
    pub const ALL: [Reason; 9] = [
        Self::NoRoute,
        Self::NotJson,
        Self::Schema,
        Self::TooLarge,
        Self::PublishRejected,
        Self::FrameTooLong,
        Self::BadCsv,
        Self::NoTarget,
        Self::Expired,
    ];

    /// The reason as it appears in headers, logs and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::NotJson => "not-json",
            Self::Schema => "schema",
            Self::TooLarge => "too-large",
            Self::PublishRejected => "publish-rejected",
            Self::FrameTooLong => "frame-too-long",
            Self::BadCsv => "bad-csv",
            Self::NoTarget => "no-target",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One schema violation (or, for other reasons, one description of what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON Pointer into the reading.
    pub instance_path: String,
    /// JSON Pointer into the schema.
    pub schema_path: String,
    /// Human-readable message.
    pub message: String,
}

impl Violation {
    /// A violation that is about the whole document.
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            instance_path: String::new(),
            schema_path: String::new(),
            message: message.into(),
        }
    }
}

/// What makes a record a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// Id in the local dead-letter store.
    pub id: u64,
    /// Why.
    pub reason: Reason,
    /// Every violation or error.
    #[serde(default)]
    pub errors: Vec<Violation>,
    /// The payload's size as received, when the stored payload had to be truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_len: Option<u64>,
}

/// Everything about a record except its payload. Names are shared (`Arc<str>`): a reading
/// costs no copy of its source, route, schema or topic name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The gateway that received it.
    pub gateway: Arc<str>,
    /// Source name.
    pub source: Arc<str>,
    /// Topic or port.
    pub origin: Origin,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The matching route, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    /// The route's schema, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Arc<str>>,
    /// Destination topic (the DLQ topic for dead letters).
    pub kafka_topic: Arc<str>,
    /// Partition key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Present for dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Box<DeadLetterInfo>>,
}

/// A stored record: metadata plus the payload bytes exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Metadata.
    pub meta: Meta,
    /// Original bytes.
    pub payload: Bytes,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 text for a millisecond timestamp.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
