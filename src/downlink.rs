//! Downlink: commands that a back-end produces into a Kafka topic, consumed by the gateway and
//! published at QoS 1 to each device's MQTT topic (`[[downlink]]`, one task per entry).
//!
//! ```text
//! Kafka <topic> ─► consumer (group) ─► rules ─ ok ──► window ─► MQTT broker (QoS 1) ─► device
//!                                          └ dead ─► committer (local DLQ + <topic>.DLQ)
//!                       ▲ commit: contiguous acknowledged offsets per partition ┘
//! ```
//!
//! - **At-least-once.** A partition's offset is committed only up to the last command of a
//!   contiguous run that is done: acknowledged by the broker (PUBACK), or a dead letter that
//!   the committer made durable in the local DLQ and the outbox (its acknowledgement comes back
//!   like an MQTT source's). A gateway killed mid-stream gets everything after the committed
//!   offset again; nothing is skipped. Duplicates are possible, losses are not.
//! - **Order.** Commands are published in the order they were consumed, over one connection,
//!   and after a lost connection everything not acknowledged is published again in that order.
//!   Producers key commands by device, so a device's commands share a partition and reach MQTT
//!   in Kafka order.
//! - **Bounded.** At most `max_in_flight` commands are held ([`window`]); with the window full
//!   the task takes no more from the consumer (librdkafka's prefetch is bounded to 1 MiB), and
//!   while the breaker is open every assigned partition is paused (nothing is fetched; the group
//!   is still served), so an outage grows the consumer lag, not memory.
//! - **Retry and breaker** ([`crate::publish::backoff`], the `[retry]` settings): a lost
//!   connection, or a publish not acknowledged within `ack_timeout`, opens the breaker:
//!   consumption pauses, and after a backoff with jitter a fresh connection is opened; once it
//!   is up, one command probes (half-open) and its PUBACK closes the breaker.
//! - **Dead letters** ([`rules`]): `not-json`, `schema`, `no-target` (the template's pointer is
//!   missing, not a string, or not one topic level) on arrival, `expired` when it would be
//!   sent; stored with their origin (`kafka:<topic>/<partition>@<offset>`) and the downlink's
//!   name as source. `dlq replay` sends a fixed one through its downlink ([`replay`]).
//!
//! Files: [`consumer`] (librdkafka configuration, rebalance callbacks, lag), [`link`] (one MQTT
//! connection), [`window`] (offsets and slots, no I/O), [`rules`] (the checks), [`replay`],
//! and `task.rs` (the loop that ties them together).

pub mod consumer;
pub mod link;
pub mod replay;
pub mod rules;
mod task;
pub mod window;

use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::config::{Config, DownlinkConfig, MqttConfig, RetryConfig};
use crate::ingest::mqtt::MqttError;
use crate::outbox::committer::{AckReceiver, Submitter};
use crate::telemetry::downlink::DownlinkStats;
use crate::telemetry::Stats;
use consumer::{Consumer, Shared};
use replay::ReplayRequest;
use rules::{Rules, RulesError};

/// Replays waiting for the task.
const REPLAY_QUEUE: usize = 64;

/// Why a downlink could not start or had to stop.
#[derive(Debug, Error)]
pub enum DownlinkError {
    /// Its template or schema is unusable.
    #[error("downlink `{name}`: {source}")]
    Rules {
        /// The downlink.
        name: String,
        /// What failed.
        source: RulesError,
    },
    /// The Kafka consumer could not be created or subscribe.
    #[error("downlink `{name}`: Kafka consumer: {source}")]
    Kafka {
        /// The downlink.
        name: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// The Kafka consumer could not be created (secret values shown as `***`).
    #[error("downlink `{name}`: Kafka consumer: {source}")]
    Client {
        /// The downlink.
        name: String,
        /// What failed.
        source: crate::publish::kafka::ClientError,
    },
    /// The MQTT connection cannot be configured (a credential or CA file).
    #[error("downlink `{name}`: MQTT: {source}")]
    Mqtt {
        /// The downlink.
        name: String,
        /// What failed.
        source: MqttError,
    },
    /// The configuration does not name what the downlink needs (check-config reports it).
    #[error("downlink `{name}`: {what}")]
    Config {
        /// The downlink.
        name: String,
        /// What is missing.
        what: String,
    },
}

/// One `[[downlink]]`, ready to run.
pub struct Downlink {
    name: Arc<str>,
    gateway: Arc<str>,
    topic: String,
    dlq_topic: Arc<str>,
    config: DownlinkConfig,
    mqtt: MqttConfig,
    client_id: String,
    retry: RetryConfig,
    rules: Rules,
    consumer: Arc<Consumer>,
    shared: Arc<Mutex<Shared>>,
    submit: Submitter,
    sink: u16,
    acks: AckReceiver,
    replay_tx: mpsc::Sender<ReplayRequest>,
    replays: mpsc::Receiver<ReplayRequest>,
    stats: Arc<DownlinkStats>,
    /// The gateway's counters, for its operational events.
    events: Arc<Stats>,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Downlink {
    /// Compiles the template and schema of downlink number `index` of `config` (so a bad one
    /// fails the start).
    pub fn rules(config: &Config, index: usize) -> Result<Rules, DownlinkError> {
        let downlink = &config.downlinks[index];
        Rules::build(config, downlink).map_err(|source| DownlinkError::Rules {
            name: downlink.name.clone(),
            source,
        })
    }

    /// Downlink number `index` of `config`, with its compiled `rules` ([`Downlink::rules`]):
    /// creates its consumer (so a bad librdkafka property fails the start). Dead letters go to
    /// `submit`, and their acknowledgements come back on the ack sink `(sink, acks)`.
    pub fn new(
        config: &Config,
        index: usize,
        rules: Rules,
        submit: Submitter,
        (sink, acks): (u16, AckReceiver),
        stats: &Arc<Stats>,
    ) -> Result<Self, DownlinkError> {
        let downlink = config.downlinks[index].clone();
        let name = downlink.name.clone();
        let gateway = &config.gateway.id;
        let mqtt = config
            .mqtt
            .iter()
            .find(|m| m.name == downlink.mqtt)
            .cloned()
            .ok_or_else(|| DownlinkError::Config {
                name: name.clone(),
                what: format!("no [[mqtt]] source `{}`", downlink.mqtt),
            })?;
        let (consumer, shared) =
            consumer::create(&config.kafka, &downlink, gateway, name.as_str().into()).map_err(
                |source| DownlinkError::Client {
                    name: name.clone(),
                    source,
                },
            )?;
        let topic = downlink.topic(gateway);
        let (replay_tx, replays) = mpsc::channel(REPLAY_QUEUE);
        Ok(Self {
            name: name.as_str().into(),
            gateway: gateway.as_str().into(),
            dlq_topic: format!("{topic}{}", config.kafka.dlq_suffix).into(),
            topic,
            client_id: downlink.client_id(&mqtt.client_id(gateway)),
            config: downlink,
            mqtt,
            retry: config.retry.clone(),
            rules,
            consumer: Arc::new(consumer),
            shared,
            submit,
            sink,
            acks,
            replay_tx,
            replays,
            stats: stats.downlink(&name),
            events: stats.clone(),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where `dlq replay` sends this downlink's dead letters while it runs.
    pub fn replays(&self) -> mpsc::Sender<ReplayRequest> {
        self.replay_tx.clone()
    }
}
