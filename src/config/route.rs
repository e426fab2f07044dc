//! `[[route]]`: which readings of which source go to which schema and Kafka topic.

use std::path::Path;

use serde::Deserialize;

use super::kafka::check_topic_name;
use super::topic_filter::TopicFilter;
use super::Problem;

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

/// The kind of source a route's `source` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An `[[mqtt]]` source.
    Mqtt,
    /// A `[[serial]]` source.
    Serial,
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

    /// Every problem of this route, keyed relative to it; `source` is the kind of source its
    /// `source` names, or `None` when no source has that name. (The schema file itself is
    /// compiled by the schema registry.)
    pub fn check(&self, source: Option<SourceKind>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut p = |key: &str, message: String| problems.push(Problem::new(key, message));
        if source.is_none() {
            p(
                "source",
                format!(
                    "`{}` is not the name of any [[mqtt]] or [[serial]] source",
                    self.source
                ),
            );
        }
        if let Some(filter) = &self.topic_filter {
            if source == Some(SourceKind::Serial) {
                p("topic_filter", "applies to MQTT sources only".into());
            }
            if let Err(e) = TopicFilter::parse(filter) {
                p("topic_filter", e.to_string());
            }
        }
        if let Err(e) = check_topic_name(&self.kafka_topic) {
            p("kafka_topic", e);
        }
        if let Some(key) = &self.key {
            if !(key.is_empty() || key.starts_with('/')) {
                p(
                    "key",
                    format!("`{key}` is not a JSON Pointer (it must start with `/`, e.g. \"/device_id\")"),
                );
            }
        }
        if self.schema.contains("..") || Path::new(&self.schema).is_absolute() {
            p(
                "schema",
                "must be a file name inside gateway.schemas_dir".into(),
            );
        }
        problems
    }
}
