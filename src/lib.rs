//! sensorgate: an edge gateway that takes sensor readings from MQTT brokers and serial ports,
//! validates each against a JSON Schema, stores it durably, and forwards it to Kafka, without
//! losing a reading through outages of hours.
//!
//! # Layout
//! The module tree follows the data flow:
//! ```text
//! ingest/mqtt ───────────────┐
//! ingest/serial (+ frame) ───┴► pipeline (route ─► validate) ─► outbox/committer ─► outbox ─► publish/kafka ─► Kafka
//!                                        └── dead letters (record::Reason) ─► outbox (dlq tree + DLQ topic) ─┘
//! Kafka ─► downlink (consumer ─► rules ─► window) ─► MQTT broker ─► devices
//!                                  └── dead letters ─► outbox/committer (as above)
//! ```
//! - [`config`]: the TOML file, one file per section under `config/`, each with its struct and
//!   its `check`; [`config::Config::problems`] reports every semantic error with its key. A leaf:
//!   it imports nothing else from the crate, and the value types it validates (broker URLs, topic
//!   filters, CSV columns) are the ones ingest and route use.
//! - [`ingest`]: sources. [`ingest::mqtt`] acknowledges only after the commit;
//!   [`ingest::serial`] reads a port line by line ([`ingest::frame`]: framing and decoding) and
//!   reopens it when the device comes back.
//! - [`route`] and [`validate`]: topic filters → route; schema registry. [`pipeline`] combines
//!   them into a [`record::Record`] bound for Kafka or a dead letter.
//! - [`outbox`]: the sled-backed durable FIFO and local DLQ (invariants and on-disk format in its
//!   module doc); [`outbox::committer`] group-commits and acknowledges.
//! - [`publish`]: the Kafka producer loop, error classification, backoff and circuit breaker.
//! - [`downlink`]: the other direction: commands consumed from Kafka (a consumer group, offsets
//!   committed only after the MQTT broker acknowledged) and published to devices over MQTT;
//!   invalid ones are dead letters through the committer like readings.
//! - [`telemetry`]: every counter.
//! - [`backoff`]: the one retry-delay type every retrying loop uses.
//! - [`admin`]: the operator's API (`dlq`, `queue stats`): a Unix socket served by the daemon,
//!   or the state directory opened directly when no daemon runs; one backend for both.
//! - [`app`]: starts, supervises and stops the tasks; [`cli`]: subcommands other than `run`.
//!
//! # Guarantee
//! Every reading that enters is, at all times, in exactly one of: the outbox, the local DLQ,
//! Kafka, or a counted drop. Delivery is at-least-once; records carry `sensorgate.gateway` and
//! `sensorgate.seq` headers so consumers can de-duplicate.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod downlink;
pub mod ingest;
pub mod outbox;
pub mod pipeline;
pub mod publish;
pub mod record;
pub mod route;
pub mod telemetry;
pub mod validate;
