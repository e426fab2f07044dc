//! Route and validate: turns a [`Reading`] into the [`Record`] that the outbox stores, either a
//! valid reading bound for its route's topic or a dead letter bound for the DLQ topic.
//! MQTT payloads are parsed here ([`Classifier::classify`]); serial sources frame and decode
//! their lines themselves and hand over the outcome ([`Classifier::classify_framed`]), so
//! routing, validation and dead-lettering stay in one place for every source.
//!
//! A dead letter from a serial port is replayed ([`Classifier::reclassify`]) through its
//! source's decoder again, so a CSV line is read as CSV, as it was when it arrived.
//!
//! The rules (routes + compiled schemas) are swapped as one unit on reload, so a reading is never
//! routed by the new table and validated by the old schemas.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;

use crate::config::{Config, FilterError};
use crate::ingest::frame::Decoder;
use crate::record::{DeadLetterInfo, Meta, Origin, Reading, Reason, Record, Violation};
use crate::route::Router;
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
        let router = Router::new(&config.routes, &config.kafka.dlq_suffix)?;
        let schemas = SchemaRegistry::load(
            &config.gateway.schemas_dir,
            router.routes().iter().map(|r| &*r.schema),
        )
        .map_err(RulesError::Schemas)?;
        Ok(Self { router, schemas })
    }
}

/// A reading's bytes as its source framed and decoded them, for
/// [`Classifier::classify_framed`].
#[derive(Debug, Clone, PartialEq)]
pub enum Framed {
    /// The payload is this JSON document: a valid reading is sent with its bytes untouched.
    Json(Value),
    /// This document was built from the payload (a CSV line): a valid reading is sent as the
    /// document's JSON text, a dead letter keeps the original bytes.
    Converted(Value),
    /// The payload could not be made into a document.
    Rejected {
        /// `not-json`, `bad-csv`, `frame-too-long`, `too-large`…
        reason: Reason,
        /// What is wrong.
        errors: Vec<Violation>,
        /// The size as received, when the payload was truncated.
        original_len: Option<u64>,
    },
}

impl Framed {
    /// What `decoder` makes of a complete line.
    pub fn line(decoder: &Decoder, line: &[u8]) -> Self {
        match decoder.decode(line) {
            Ok(doc) if decoder.converts() => Self::Converted(doc),
            Ok(doc) => Self::Json(doc),
            Err(rejected) => Self::Rejected {
                reason: rejected.reason,
                errors: rejected.errors,
                original_len: None,
            },
        }
    }
}

/// Classifies readings; shared by every source.
#[derive(Debug)]
pub struct Classifier {
    gateway: Arc<str>,
    unrouted_dlq_topic: Arc<str>,
    rules: ArcSwap<Rules>,
    stats: Arc<Stats>,
    /// Each serial source's line decoder, for replays (a source whose columns do not parse
    /// has none; it never started, so it has no dead letters of its own).
    decoders: HashMap<Arc<str>, Decoder>,
}

impl Classifier {
    /// A classifier with the given rules.
    pub fn new(config: &Config, rules: Rules, stats: Arc<Stats>) -> Self {
        Self {
            gateway: config.gateway.id.as_str().into(),
            unrouted_dlq_topic: format!(
                "{}{}",
                config.kafka.unrouted_topic, config.kafka.dlq_suffix
            )
            .into(),
            rules: ArcSwap::from_pointee(rules),
            stats,
            decoders: config
                .serial
                .iter()
                .filter_map(|c| Some((c.name.as_str().into(), Decoder::for_source(c).ok()?)))
                .collect(),
        }
    }

    /// Replaces the rules atomically (reload).
    pub fn replace_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Routes and validates one reading whose payload should be JSON (MQTT). `max_payload` is
    /// the source's size limit; an oversize payload is kept only up to that limit and its
    /// original size recorded. The payload is parsed only when a route matches, so an
    /// unrouted payload is `no-route` whatever it holds.
    pub fn classify(&self, reading: Reading, max_payload: usize) -> Record {
        self.stats.received(&reading.source);
        self.counted(self.reclassify(reading, max_payload))
    }

    /// Routes and validates one reading that its source already framed and decoded (serial
    /// lines). A [`Framed::Rejected`] reading is a dead letter with that reason even when no
    /// route matches: what is wrong with the bytes is the more useful news. Dead letters keep
    /// `reading.payload`; a valid [`Framed::Converted`] reading is sent as its document's JSON.
    pub fn classify_framed(&self, reading: Reading, framed: Framed) -> Record {
        self.stats.received(&reading.source);
        self.counted(self.decide(reading, Some(framed)))
    }

    fn counted(&self, record: Record) -> Record {
        match &record.meta.dead_letter {
            None => self.stats.valid(),
            Some(info) => self.stats.dead_letter(info.reason),
        }
        record
    }

    /// Like [`Classifier::classify`] but without counting: for replaying a dead letter with the
    /// current rules (it was counted when it arrived). A line from a serial port is decoded by
    /// its source's decoder, as [`Classifier::classify_framed`] got it.
    pub fn reclassify(&self, mut reading: Reading, max_payload: usize) -> Record {
        if reading.payload.len() > max_payload {
            let original = reading.payload.len();
            reading.payload.truncate(max_payload);
            let framed = Framed::Rejected {
                reason: Reason::TooLarge,
                errors: vec![Violation::whole(format!(
                    "payload of {original} bytes exceeds the limit of {max_payload} bytes; stored truncated"
                ))],
                original_len: Some(original as u64),
            };
            return self.decide(reading, Some(framed));
        }
        if let (Origin::Serial { .. }, Some(decoder)) =
            (&reading.origin, self.decoders.get(&reading.source))
        {
            let framed = Framed::line(decoder, &reading.payload);
            return self.decide(reading, Some(framed));
        }
        self.decide(reading, None)
    }

    /// The one place where routing, validation and dead-lettering happen. `framed: None` means
    /// "parse the payload as JSON once a route matched".
    fn decide(&self, reading: Reading, framed: Option<Framed>) -> Record {
        let rules = self.rules.load();
        let route = rules.router.find(&reading.source, &reading.origin);
        let mut meta = Meta {
            gateway: self.gateway.clone(),
            source: reading.source.clone(),
            origin: reading.origin,
            received_at_ms: reading.received_at_ms,
            route: route.map(|r| r.name.clone()),
            schema: route.map(|r| r.schema.clone()),
            kafka_topic: self.unrouted_dlq_topic.clone(),
            key: None,
            dead_letter: None,
        };
        let mut payload = reading.payload;

        let verdict = match (framed, route) {
            (
                Some(Framed::Rejected {
                    reason,
                    errors,
                    original_len,
                }),
                _,
            ) => Err(DeadLetterInfo {
                id: 0,
                reason,
                errors,
                original_len,
            }),
            (_, None) => Err(dead(
                Reason::NoRoute,
                vec![Violation::whole(format!(
                    "no route for source `{}` and {}",
                    meta.source, meta.origin
                ))],
            )),
            (framed, Some(route)) => {
                let parsed = match framed {
                    Some(Framed::Json(doc)) => Ok((doc, false)),
                    Some(Framed::Converted(doc)) => Ok((doc, true)),
                    _ => parse_json(&payload).map(|doc| (doc, false)),
                };
                match parsed {
                    Err(message) => Err(dead(Reason::NotJson, vec![Violation::whole(message)])),
                    Ok((doc, converted)) => match rules.schemas.get(&route.schema) {
                        // Rules::build compiles every schema a route names, so this is
                        // unreachable in practice; treat it as a schema failure, not a panic.
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
                                let pointer = route.key.as_deref();
                                meta.key = pointer.and_then(|p| key_at(&doc, p));
                                match (&meta.key, pointer) {
                                    (Some(key), Some(pointer)) if key.len() > MAX_KEY_BYTES => {
                                        let message = format!(
                                            "the partition key is {} bytes, more than a key may have ({MAX_KEY_BYTES})",
                                            key.len()
                                        );
                                        meta.key = None;
                                        Err(dead(
                                            Reason::Schema,
                                            vec![Violation::new(pointer, "", message)],
                                        ))
                                    }
                                    _ => {
                                        if converted {
                                            payload = Bytes::from(doc.to_string());
                                        }
                                        Ok(())
                                    }
                                }
                            } else {
                                Err(dead(Reason::Schema, errors))
                            }
                        }
                    },
                }
            }
        };

        match verdict {
            Ok(()) => {
                if let Some(route) = route {
                    meta.kafka_topic = route.kafka_topic.clone();
                }
            }
            Err(info) => {
                if let Some(route) = route {
                    meta.kafka_topic = route.dlq_topic.clone();
                }
                meta.dead_letter = Some(Box::new(info));
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

/// The longest partition key: a valid reading whose key is longer is a `schema` dead letter
/// (at the key's pointer), not sent with a key cut short.
pub const MAX_KEY_BYTES: usize = 4096;

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
            [[serial]]
            name = "uno"
            device = "/dev/ttyACM0"
            [[route]]
            source = "uno"
            schema = "r.json"
            kafka_topic = "bench"
            key = "/device_id"
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
        reading_of(topic, payload.to_vec())
    }

    fn reading_of(topic: &str, payload: Vec<u8>) -> Reading {
        Reading {
            source: "m".into(),
            origin: Origin::Mqtt {
                topic: topic.into(),
            },
            payload: Bytes::from(payload),
            received_at_ms: 1,
        }
    }

    #[test]
    fn each_outcome_is_classified_with_its_topic_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let c = classifier(dir.path());

        let ok = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":2}"#), 1024);
        assert_eq!(&*ok.meta.kafka_topic, "readings");
        assert_eq!(ok.meta.key.as_deref(), Some("d1"));
        assert!(ok.meta.dead_letter.is_none());

        let bad = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":"x"}"#), 1024);
        assert_eq!(&*bad.meta.kafka_topic, "readings.DLQ");
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
        assert_eq!(&*unrouted.meta.kafka_topic, "sensorgate.unrouted.DLQ");
        assert_eq!(unrouted.meta.dead_letter.unwrap().reason, Reason::NoRoute);

        let long = format!(
            r#"{{"device_id":"{}","t":2}}"#,
            "d".repeat(MAX_KEY_BYTES + 1)
        );
        let long = c.classify(reading_of("s/d1/r", long.into_bytes()), 1 << 20);
        assert_eq!(&*long.meta.kafka_topic, "readings.DLQ");
        assert_eq!(long.meta.key, None);
        let info = long.meta.dead_letter.unwrap();
        assert_eq!(info.reason, Reason::Schema);
        assert_eq!(info.errors[0].instance_path, "/device_id");
        assert!(
            info.errors[0].message.contains("4097 bytes"),
            "{:?}",
            info.errors
        );
        let longest = format!(r#"{{"device_id":"{}","t":2}}"#, "d".repeat(MAX_KEY_BYTES));
        let longest = c.classify(reading_of("s/d1/r", longest.into_bytes()), 1 << 20);
        assert_eq!(longest.meta.key.map(|k| k.len()), Some(MAX_KEY_BYTES));

        let big = c.classify(reading("s/d1/r", br#"{"device_id":"d1","t":2}"#), 4);
        let info = big.meta.dead_letter.unwrap();
        assert_eq!(info.reason, Reason::TooLarge);
        assert_eq!(info.original_len, Some(24));
        assert_eq!(&big.payload[..], b"{\"de");
    }

    fn line(source: &str, payload: &'static [u8]) -> Reading {
        Reading {
            source: source.into(),
            origin: Origin::Serial {
                port: "/dev/ttyACM0".into(),
            },
            payload: Bytes::from_static(payload),
            received_at_ms: 1,
        }
    }

    #[test]
    fn framed_readings_share_routing_validation_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let c = classifier(dir.path());
        let doc = |text: &[u8]| serde_json::from_slice::<Value>(text).unwrap();

        let raw = br#"{ "device_id": "d1", "t": 2 }"#;
        let ok = c.classify_framed(line("uno", raw), Framed::Json(doc(raw)));
        assert_eq!(&*ok.meta.kafka_topic, "bench");
        assert_eq!(ok.meta.key.as_deref(), Some("d1"));
        assert_eq!(ok.meta.origin.to_string(), "serial:/dev/ttyACM0");
        assert_eq!(&ok.payload[..], raw, "json-lines bytes untouched");

        let csv = c.classify_framed(
            line("uno", b"d2,2.5"),
            Framed::Converted(serde_json::json!({"device_id": "d2", "t": 2.5})),
        );
        assert!(csv.meta.dead_letter.is_none());
        assert_eq!(&csv.payload[..], br#"{"device_id":"d2","t":2.5}"#);

        let bad = c.classify_framed(
            line("uno", b"d3,x"),
            Framed::Converted(serde_json::json!({"device_id": "d3", "t": "x"})),
        );
        assert_eq!(&*bad.meta.kafka_topic, "bench.DLQ");
        assert_eq!(bad.meta.dead_letter.unwrap().reason, Reason::Schema);
        assert_eq!(&bad.payload[..], b"d3,x", "dead letters keep the line");

        let rejected = |source| {
            c.classify_framed(
                line(source, b"xxxx"),
                Framed::Rejected {
                    reason: Reason::FrameTooLong,
                    errors: vec![Violation::whole("too long")],
                    original_len: Some(9000),
                },
            )
        };
        let long = rejected("uno");
        assert_eq!(&*long.meta.kafka_topic, "bench.DLQ");
        let info = long.meta.dead_letter.unwrap();
        assert_eq!(
            (info.reason, info.original_len),
            (Reason::FrameTooLong, Some(9000))
        );
        let unrouted = rejected("other");
        assert_eq!(&*unrouted.meta.kafka_topic, "sensorgate.unrouted.DLQ");
        assert_eq!(
            unrouted.meta.dead_letter.unwrap().reason,
            Reason::FrameTooLong,
            "the framing failure wins over no-route"
        );
    }
}
