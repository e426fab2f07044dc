//! Route and validate: turns a [`Reading`] into the [`Record`] that the outbox stores, either a
//! valid reading bound for its route's topic or a dead letter bound for the DLQ topic.
//!
//! The rules (routes + compiled schemas) are swapped as one unit on reload, so a reading is never
//! routed by the new table and validated by the old schemas.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::config::Config;
use crate::record::{DeadLetterInfo, Meta, Reading, Reason, Record, Violation};
use crate::route::{FilterError, Router};
use crate::telemetry::Stats;
use crate::validate::{self, SchemaError, SchemaRegistry};

/// Routes and the schemas they name, compiled together.
#[derive(Debug)]
pub struct Rules {
    /// The route table.
    pub router: Router,
    /// Compiled schemas.
    pub schemas: SchemaRegistry,
}

/// Why the rules could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A topic filter is malformed.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// One or more schemas failed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Schemas(Vec<SchemaError>),
}

impl Rules {
    /// Builds the route table and compiles every schema a route names.
    pub fn build(config: &Config) -> Result<Self, RulesError> {
        let router = Router::new(&config.routes)?;
        let schemas = SchemaRegistry::load(
            &config.gateway.schemas_dir,
            router.routes().iter().map(|r| r.schema.as_str()),
        )
        .map_err(RulesError::Schemas)?;
        Ok(Self { router, schemas })
    }
}

/// Classifies readings; shared by every source.
#[derive(Debug)]
pub struct Classifier {
    gateway: String,
    dlq_suffix: String,
    unrouted_topic: String,
    rules: ArcSwap<Rules>,
    stats: Arc<Stats>,
}

impl Classifier {
    /// A classifier with the given rules.
    pub fn new(config: &Config, rules: Rules, stats: Arc<Stats>) -> Self {
        Self {
            gateway: config.gateway.id.clone(),
            dlq_suffix: config.kafka.dlq_suffix.clone(),
            unrouted_topic: config.kafka.unrouted_topic.clone(),
            rules: ArcSwap::from_pointee(rules),
            stats,
        }
    }

    /// Replaces the rules atomically (reload).
    pub fn replace_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Routes and validates one reading. `max_payload` is the source's size limit; an oversize
    /// payload is kept only up to that limit and its original size recorded.
    pub fn classify(&self, reading: Reading, max_payload: usize) -> Record {
        self.stats.received(&reading.source);
        let record = self.reclassify(reading, max_payload);
        match &record.meta.dead_letter {
            None => self.stats.valid(),
            Some(info) => self.stats.dead_letter(info.reason),
        }
        record
    }

    /// Like [`Classifier::classify`] but without counting: for replaying a dead letter with the
    /// current rules (it was counted when it arrived).
    pub fn reclassify(&self, reading: Reading, max_payload: usize) -> Record {
        let rules = self.rules.load();
        let route = rules.router.find(&reading.source, &reading.origin);
        let mut meta = Meta {
            gateway: self.gateway.clone(),
            source: reading.source.to_string(),
            origin: reading.origin,
            received_at_ms: reading.received_at_ms,
            route: route.map(|r| r.name.clone()),
            schema: route.map(|r| r.schema.clone()),
            kafka_topic: String::new(),
            key: None,
            dead_letter: None,
        };
        let mut payload = reading.payload;

        let verdict = if payload.len() > max_payload {
            let original = payload.len();
            payload.truncate(max_payload);
            Err(DeadLetterInfo {
                id: 0,
                reason: Reason::TooLarge,
                errors: vec![Violation::whole(format!(
                    "payload of {original} bytes exceeds the limit of {max_payload} bytes; stored truncated"
                ))],
                original_len: Some(original as u64),
            })
        } else if let Some(route) = route {
            match parse_json(&payload) {
                Err(message) => Err(dead(Reason::NotJson, vec![Violation::whole(message)])),
                Ok(doc) => match rules.schemas.get(&route.schema) {
                    // Rules::build compiles every schema a route names, so this is unreachable
                    // in practice; treat it as a schema failure rather than a panic.
                    None => Err(dead(
                        Reason::Schema,
                        vec![Violation::whole(format!(
                            "schema `{}` is not loaded",
                            route.schema
                        ))],
                    )),
                    Some(validator) => {
                        let errors = validate::violations(validator, &doc);
                        if errors.is_empty() {
                            meta.key = route.key.as_deref().and_then(|p| key_at(&doc, p));
                            Ok(())
                        } else {
                            Err(dead(Reason::Schema, errors))
                        }
                    }
                },
            }
        } else {
            Err(dead(
                Reason::NoRoute,
                vec![Violation::whole(format!(
                    "no route for source `{}` and {}",
                    meta.source, meta.origin
                ))],
            ))
        };

        match verdict {
            Ok(()) => {
                meta.kafka_topic = route.map(|r| r.kafka_topic.clone()).unwrap_or_default();
            }
            Err(info) => {
                let base = route.map_or(self.unrouted_topic.as_str(), |r| r.kafka_topic.as_str());
                meta.kafka_topic = format!("{base}{}", self.dlq_suffix);
                meta.dead_letter = Some(info);
            }
        }
        Record { meta, payload }
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }
}

fn dead(reason: Reason, errors: Vec<Violation>) -> DeadLetterInfo {
    DeadLetterInfo {
        id: 0,
        reason,
        errors,
        original_len: None,
    }
}

fn parse_json(payload: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))
}

/// The partition key at `pointer`: strings as they are, other values as JSON text.
fn key_at(doc: &Value, pointer: &str) -> Option<String> {
    match doc.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use bytes::Bytes;
    use std::path::Path;

    fn classifier(dir: &Path) -> Classifier {
        std::fs::write(
            dir.join("r.json"),
            br#"{"type":"object","required":["device_id","t"],"properties":{"t":{"type":"number"}}}"#,
        )
        .unwrap();
        let text = format!(
            r#"
            [gateway]
            id = "gw"
            schemas_dir = "{}"
            [kafka]
            brokers = "x:9092"
            [[mqtt]]
            name = "m"
            url = "mqtt://localhost"
            topics = ["s/#"]
            [[route]]
            source = "m"
            topic_filter = "s/+/r"
            schema = "r.json"
            kafka_topic = "readings"
            key = "/device_id"
            "#,
            dir.display()
        );
        let config = Config::parse(&text, &dir.join("c.toml")).unwrap();
        let rules = Rules::build(&config).unwrap();
        Classifier::new(&config, rules, Arc::new(Stats::default()))
    }

    fn reading(topic: &str, payload: &'static [u8]) -> Reading {
        Reading {
            source: "m".into(),
            origin: Origin::Mqtt {
                topic: topic.into(),
            },
            payload: Bytes::from_static(payload),
            received_at_ms: 1,
        }
    }

    #[test]
    fn each_outcome_is_classified_with_its_topic_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let c = classifier(dir.path());

        let ok = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":2}"#), 1024);
        assert_eq!(ok.meta.kafka_topic, "readings");
        assert_eq!(ok.meta.key.as_deref(), Some("d1"));
        assert!(ok.meta.dead_letter.is_none());

        let bad = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":"x"}"#), 1024);
        assert_eq!(bad.meta.kafka_topic, "readings.DLQ");
        let info = bad.meta.dead_letter.unwrap();
        assert_eq!(info.reason, Reason::Schema);
        assert_eq!(info.errors[0].instance_path, "/t");

        let not_json = c.classify(reading("s/d1/r", b"\xff\xfe"), 1024);
        assert_eq!(not_json.meta.dead_letter.unwrap().reason, Reason::NotJson);
        assert_eq!(
            &not_json.payload[..],
            b"\xff\xfe",
            "payload bytes untouched"
        );

        let unrouted = c.classify(reading("other/topic", b"{}"), 1024);
        assert_eq!(unrouted.meta.kafka_topic, "sensorgate.unrouted.DLQ");
        assert_eq!(unrouted.meta.dead_letter.unwrap().reason, Reason::NoRoute);

        let big = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":2}"#), 4);
        let info = big.meta.dead_letter.unwrap();
        assert_eq!(info.reason, Reason::TooLarge);
        assert_eq!(info.original_len, Some(24));
        assert_eq!(&big.payload[..], b"{\"de");
    }
}
