//! The downlink's Kafka consumer: its configuration (a consumer group, offsets committed only
//! by the downlink, bounded prefetch), the librdkafka callbacks, and the consumer lag.
//!
//! Rebalances run inside the consumer's poll (in the downlink's own task). Before partitions are
//! revoked, the callback commits the positions the task last published in [`Shared`] (only
//! offsets of acknowledged commands), then leaves a [`Rebalanced`] event that the task reads
//! before it looks at the next message: a message of a newly assigned partition is never
//! mistaken for one of the old assignment.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{DownlinkConfig, KafkaConfig};
use crate::publish::kafka::{apply_properties, rejected, ClientError};

/// librdkafka's prefetch bound (`queued.max.messages.kbytes`): what it may hold beyond the
/// downlink's window.
const PREFETCH_KIB: u32 = 1024;
/// How long a blocking Kafka request (commit on revoke, watermarks, committed offsets) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A change of the assignment, seen by the callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// These partitions are ours now.
    Assigned(Vec<i32>),
    /// These partitions are not ours any more (their positions were committed).
    Revoked(Vec<i32>),
}

/// What the callbacks and the task share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Rebalances not yet handled by the task.
    pub events: Vec<Rebalanced>,
    /// The commit position of every partition (one past the last contiguously done command).
    pub positions: BTreeMap<i32, i64>,
    /// Partitions whose last asynchronous commit failed.
    pub commit_failed: Vec<i32>,
}

/// The consumer's callbacks.
#[derive(Debug)]
pub struct Context {
    name: Arc<str>,
    topic: String,
    /// Shared with the task.
    pub shared: Arc<Mutex<Shared>>,
}

impl Context {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(downlink = %self.name, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(downlink = %self.name, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(downlink = %self.name, %error, %reason, "Kafka consumer error");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions(tpl);
        let mut commit = TopicPartitionList::new();
        {
            let shared = self.shared();
            for p in &revoked {
                if let Some(position) = shared.positions.get(p) {
                    let _ = commit.add_partition_offset(&self.topic, *p, Offset::Offset(*position));
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(downlink = %self.name, error = %e, "Cannot commit offsets before giving up partitions; the next owner gets those commands again");
            }
        }
        tracing::info!(downlink = %self.name, partitions = ?revoked, "Kafka partitions revoked");
        let mut shared = self.shared();
        for p in &revoked {
            shared.positions.remove(p);
        }
        shared.events.push(Rebalanced::Revoked(revoked));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned = partitions(tpl);
            tracing::info!(downlink = %self.name, partitions = ?assigned, "Kafka partitions assigned");
            self.shared().events.push(Rebalanced::Assigned(assigned));
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(downlink = %self.name, error = %e, "Offset commit failed; it is retried");
            self.shared().commit_failed.extend(partitions(offsets));
        }
    }
}

/// The downlink's consumer.
pub type Consumer = StreamConsumer<Context>;

/// The consumer configuration: the brokers and every `[kafka.properties]` entry (security
/// settings are the producer's too; producer-only properties are ignored by librdkafka with a
/// debug message), then what the downlink relies on.
pub fn client_config(
    kafka: &KafkaConfig,
    downlink: &DownlinkConfig,
    gateway: &str,
) -> Result<ClientConfig, ClientError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    apply_properties(&mut config, kafka)?;
    let session = downlink.session_timeout.as_millis().max(1000);
    config
        .set(
            "client.id",
            format!("sensorgate-{gateway}-downlink-{}", downlink.name),
        )
        .set("group.id", downlink.group_id(gateway))
        // Offsets are committed by the downlink, only up to acknowledged commands.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 4).max(250).to_string())
        .set("queued.max.messages.kbytes", PREFETCH_KIB.to_string())
        .set("reconnect.backoff.max.ms", "1000");
    Ok(config)
}

/// Creates the consumer (nothing connects until it subscribes).
pub fn create(
    kafka: &KafkaConfig,
    downlink: &DownlinkConfig,
    gateway: &str,
    name: Arc<str>,
) -> Result<(Consumer, Arc<Mutex<Shared>>), ClientError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let context = Context {
        name,
        topic: downlink.topic(gateway),
        shared: shared.clone(),
    };
    let config = client_config(kafka, downlink, gateway)?;
    let consumer = config
        .create_with_context(context)
        .map_err(|e| rejected(&e, &config, kafka))?;
    Ok((consumer, shared))
}

/// The lag of each partition: its high watermark minus the group's committed offset (or minus
/// its low watermark when nothing is committed yet). Blocks on requests to Kafka: run it on a
/// blocking thread. Partitions whose figures cannot be fetched are left out.
pub fn lag(consumer: &Consumer, topic: &str, partitions: &[i32]) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map(|list| {
            list.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect::<BTreeMap<i32, i64>>()
        })
        .unwrap_or_default();
    let mut lag = BTreeMap::new();
    for p in partitions {
        if let Ok((low, high)) = consumer.fetch_watermarks(topic, *p, REQUEST_TIMEOUT) {
            let from = committed.get(p).copied().unwrap_or(low);
            lag.insert(*p, (high - from).max(0));
        }
    }
    lag
}

/// Commits `positions` of `topic`; `Ok` means handed to librdkafka (asynchronous) or done
/// (synchronous).
pub fn commit(
    consumer: &Consumer,
    topic: &str,
    positions: &[(i32, i64)],
    mode: CommitMode,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, position) in positions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*position))?;
    }
    consumer.commit(&tpl, mode)
}

/// Pauses or resumes `partitions` of `topic`.
pub fn pause(
    consumer: &Consumer,
    topic: &str,
    partitions: &[i32],
    paused: bool,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    }
}
