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

/// Violations a dead letter keeps: the first ones, then one entry with the total count.
pub const MAX_VIOLATIONS: usize = 20;

/// The longest text (bytes) of a violation's message or path; longer ones are cut at a character
/// boundary and end in `…`. Messages quote the offending value, so this keeps a small hostile
/// document from making megabytes of dead-letter metadata.
pub const MAX_VIOLATION_TEXT: usize = 256;

impl Violation {
    /// A violation, its texts cut to [`MAX_VIOLATION_TEXT`].
    pub fn new(
        instance_path: impl Into<String>,
        schema_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            instance_path: cut(instance_path.into()),
            schema_path: cut(schema_path.into()),
            message: cut(message.into()),
        }
    }

    /// A violation that is about the whole document.
    pub fn whole(message: impl Into<String>) -> Self {
        Self::new(String::new(), String::new(), message)
    }

    /// At most [`MAX_VIOLATIONS`] of `violations` (made only for those kept), followed, when
    /// there were more, by one entry saying how many there were in all.
    pub fn bounded(mut violations: impl Iterator<Item = impl FnOnce() -> Self>) -> Vec<Self> {
        let mut kept: Vec<Self> = violations
            .by_ref()
            .take(MAX_VIOLATIONS)
            .map(|make| make())
            .collect();
        let more = violations.count();
        if more > 0 {
            kept.push(Self::whole(format!(
                "{} violations in all; the first {MAX_VIOLATIONS} are kept",
                MAX_VIOLATIONS + more
            )));
        }
        kept
    }
}

/// `text` cut to [`MAX_VIOLATION_TEXT`] bytes at a character boundary, marked with `…`.
fn cut(mut text: String) -> String {
    if text.len() > MAX_VIOLATION_TEXT {
        let mut end = MAX_VIOLATION_TEXT - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_texts_are_cut_at_a_character_boundary() {
        let v = Violation::new("/".repeat(300), "", "é".repeat(300));
        assert!(v.message.len() <= MAX_VIOLATION_TEXT && v.message.ends_with('…'));
        assert!(v.message.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert_eq!(v.instance_path.len(), MAX_VIOLATION_TEXT);
        assert_eq!(Violation::whole("short").message, "short");
    }

    #[test]
    fn exactly_the_limit_keeps_every_violation_without_a_count() {
        let make = |n: usize| (0..n).map(|i| move || Violation::whole(i.to_string()));
        assert_eq!(
            Violation::bounded(make(MAX_VIOLATIONS)).len(),
            MAX_VIOLATIONS
        );
        let over = Violation::bounded(make(MAX_VIOLATIONS + 5));
        assert_eq!(over.len(), MAX_VIOLATIONS + 1);
        assert_eq!(over[MAX_VIOLATIONS - 1].message, "19");
        assert!(over[MAX_VIOLATIONS]
            .message
            .starts_with("25 violations in all"));
    }
}
