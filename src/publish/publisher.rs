//! The publish loop, on its own thread: takes committed frames (in memory from the committer
//! while it keeps up, from the segment files when it is behind or after a restart), hands their
//! records to librdkafka, polls for delivery reports and settles them in bulk: per wake-up one
//! watermark update, one counter update per topic, one segment clean-up.
//!
//! # Progress per partition, order kept
//! The publisher picks each record's partition itself ([`super::partition`]) and keeps a state
//! per partition, so a partition that stalls holds back only itself:
//! - the window (`kafka.max_in_flight` records, `max_in_flight_bytes` bytes) is shared, and no
//!   partition gets more than a quarter of it;
//! - a partition whose oldest record waited longer than `kafka.message_timeout`, whose leader is
//!   gone, or whose record failed, is *held*: its later records are not sent, and the first of
//!   them is remembered (`pending_from`). Every other partition, topic and DLQ topic flows on;
//! - librdkafka never gives up on a record by itself (`message.timeout.ms = 0`): a timeout that
//!   dropped a queued record while later ones of its partition went on would reorder that
//!   partition. When held partitions take the window, the publisher purges what librdkafka has
//!   not yet sent (a purge only ever removes the tail of a partition's queue) and takes those
//!   records back;
//! - a held partition is probed with one record after a backoff; once it is confirmed, the
//!   publisher reads the log again from `pending_from` (a *rescan*), sending that partition's
//!   records in their original order, then goes on. So a device's readings reach Kafka in
//!   order; duplicates of confirmed records are possible after a crash, reordering is not.
//!
//! Failures ([`super::kafka::classify`]): permanent ones (too large, not authorized, invalid
//! topic…) send the record to the local DLQ as `publish-rejected`; a topic that metadata says
//! does not exist is retried for `message_timeout` first (it may just have been created);
//! transient ones hold the partition; a fatal one (the idempotent producer is unusable)
//! recreates the producer and sends every unconfirmed record again.

mod scan;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::producer::Producer as _;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::kafka::{client_config, rejected, ClientError, Context, Producer, Report};
use super::partition::{Parts, Topics};
use super::window::{Slab, Tracker};
use crate::config::{KafkaConfig, RetryConfig};
use crate::outbox::committer::Handoff;
use crate::outbox::{Committed, LogReader, Outbox, OutboxError};
use crate::telemetry::events::{Event as _, ProducerRecreated};
use crate::telemetry::Stats;

/// Errors that stop the publisher.
#[derive(Debug, Error)]
pub enum PublishError {
    /// librdkafka refused the producer configuration.
    #[error("cannot create the Kafka producer (check [kafka], [kafka.properties] and [kafka.property_files]): {0}")]
    Producer(#[source] ClientError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The dead-letter store failed.
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
}

/// Debug builds only: a file whose presence wedges the publisher (`SENSORGATE_TEST_STALL_FILE`),
/// so tests can show that a stuck task stops the systemd watchdog.
fn test_stall_file() -> Option<std::path::PathBuf> {
    if cfg!(debug_assertions) {
        std::env::var_os("SENSORGATE_TEST_STALL_FILE").map(Into::into)
    } else {
        None
    }
}

/// A record handed to librdkafka.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    weight: u32,
    topic: u16,
    partition: u32,
    dead: bool,
    received_at_ms: u64,
    sent_at: Instant,
}

/// Drains the outbox into Kafka.
#[derive(Debug)]
pub struct Publisher {
    outbox: Arc<Outbox>,
    handoff: Arc<Handoff>,
    kafka: KafkaConfig,
    retry: RetryConfig,
    gateway: String,
    stats: Arc<Stats>,
}

impl Publisher {
    /// A publisher for `outbox`, fed by `handoff`.
    pub fn new(
        outbox: Arc<Outbox>,
        handoff: Arc<Handoff>,
        kafka: KafkaConfig,
        retry: RetryConfig,
        gateway: String,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            outbox,
            handoff,
            kafka,
            retry,
            gateway,
            stats,
        }
    }

    /// Builds a producer; an error here is a configuration problem.
    pub fn create_producer(&self) -> Result<(), PublishError> {
        self.producer().map(drop)
    }

    fn producer(&self) -> Result<Producer, PublishError> {
        let config = client_config(&self.kafka, &self.gateway).map_err(PublishError::Producer)?;
        config
            .create_with_context(Context::new(self.stats.clone()))
            .map_err(|e| PublishError::Producer(rejected(&e, &config, &self.kafka)))
    }

    /// Publishes until `stop` is cancelled; then lets in-flight deliveries finish for up to
    /// `grace` and returns. Records not confirmed by then stay in the outbox. Blocks the calling
    /// thread.
    pub fn run(self, stop: CancellationToken, grace: Duration) -> Result<(), PublishError> {
        let producer = self.producer()?;
        let start = self.outbox.settled();
        let window = self.kafka.max_in_flight.max(1);
        let mut lp = Loop {
            reader: self.outbox.reader(start),
            producer,
            slab: Slab::default(),
            tracker: Tracker::new(start),
            cursor: start,
            high: start,
            rescan: None,
            pending: None,
            current: None,
            weight: 0,
            share: (window / 4).max(1),
            window,
            topics: Topics::default(),
            parts: Parts::new(self.retry.clone()),
            seq_text: String::new(),
            rejected: Vec::new(),
            reports: Vec::new(),
            reported: (u64::MAX, u64::MAX, u64::MAX),
            oldest_at: Instant::now(),
            oldest_ms: None,
            last_purge: None,
            fatal: false,
            p: &self,
        };
        lp.run(&stop, grace)
    }
}

/// A rescan in progress: the log is read again from a held partition's first unsent record up
/// to `end` (the high-water mark when it started), sending only the released partitions'
/// records.
#[derive(Debug, Clone)]
struct Rescan {
    end: u64,
    /// The partitions released for this pass, and whether each had to stop part-way.
    released: Vec<((u16, u32), bool)>,
}

struct Loop<'a> {
    p: &'a Publisher,
    producer: Producer,
    reader: LogReader,
    slab: Slab<InFlight>,
    tracker: Tracker,
    /// Next sequence number to look at.
    cursor: u64,
    /// Everything below was looked at once: sent, settled, or left for a held partition.
    high: u64,
    rescan: Option<Rescan>,
    /// The committer's commit being consumed.
    pending: Option<Committed>,
    /// The frame being sent.
    current: Option<Bytes>,
    /// Bytes in flight.
    weight: u64,
    /// Most records in flight per partition.
    share: usize,
    /// Most records in flight.
    window: usize,
    topics: Topics,
    parts: Parts,
    seq_text: String,
    rejected: Vec<(u64, String)>,
    reports: Vec<Report>,
    reported: (u64, u64, u64),
    oldest_at: Instant,
    oldest_ms: Option<u64>,
    last_purge: Option<Instant>,
    /// The producer reported a fatal error: recreate it once nothing is in flight.
    fatal: bool,
}

impl std::fmt::Debug for Loop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("cursor", &self.cursor)
            .field("high", &self.high)
            .field("in_flight", &self.slab.len())
            .finish()
    }
}

impl Loop<'_> {
    fn run(&mut self, stop: &CancellationToken, grace: Duration) -> Result<(), PublishError> {
        let stall = test_stall_file();
        let mut deadline: Option<Instant> = None;
        loop {
            self.p.stats.heartbeats.publisher_beat();
            if let Some(file) = &stall {
                if file.exists() {
                    tracing::warn!("Test stall file present: the publisher blocks");
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if deadline.is_none() && stop.is_cancelled() {
                deadline = Some(Instant::now() + grace);
            }
            self.settle_reports()?;
            if let Some(at) = deadline {
                if self.slab.is_empty() {
                    break;
                }
                if Instant::now() >= at {
                    tracing::warn!(
                        unconfirmed = self.slab.len(),
                        "Stop grace period over with deliveries unconfirmed; they stay in the outbox"
                    );
                    break;
                }
                self.producer.poll(Duration::from_millis(50));
                continue;
            }
            self.watch_partitions()?;
            if self.fatal {
                if self.slab.is_empty() {
                    self.recreate_producer()?;
                } else {
                    self.producer.poll(Duration::from_millis(100));
                }
                continue;
            }
            let sent = self.fill()?;
            self.report_progress()?;
            if self.slab.is_empty() && sent == 0 && self.idle() {
                // Nothing to do: wait for the committer; serve librdkafka's events (errors,
                // broker state) ten times a second meanwhile.
                self.p.handoff.wait(Duration::from_millis(100));
                self.producer.poll(Duration::ZERO);
            } else {
                self.producer
                    .poll(Duration::from_millis(if sent > 0 { 0 } else { 20 }));
            }
        }
        self.settle_reports()?;
        self.report_progress()?;
        let _ = self.producer.flush(Duration::from_millis(100));
        Ok(())
    }

    /// Whether nothing committed waits to be looked at (held partitions wait for their probe).
    fn idle(&self) -> bool {
        self.rescan.is_none() && self.cursor >= self.p.outbox.committed_end()
    }

    /// The idempotent producer is unusable: every record it had is back to unsent; start a new
    /// one.
    fn recreate_producer(&mut self) -> Result<(), PublishError> {
        self.producer = self.p.producer()?;
        self.fatal = false;
        ProducerRecreated.emit(&self.p.stats);
        Ok(())
    }
}

/// The sequence number after the last record of a frame.
fn frame_end(frame: &[u8]) -> Option<u64> {
    // first_seq and count sit at the start of the body.
    let body = frame.get(crate::outbox::codec::FRAME_HEADER..)?;
    let first = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    Some(first + u64::from(count))
}
