//! Counters and gauges of everything the gateway does, kept in one place so every observable
//! number has one name. Sources, the outbox and the publisher update [`Stats`]; the CLI, logs,
//! sd_notify status and the metrics endpoint read a [`Snapshot`].
//!
//! - `prometheus.rs` owns every metric name and renders the text exposition;
//! - `http.rs` serves `/metrics`, `/healthz` and `/readyz`;
//! - `notify.rs` speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING) and runs the watchdog,
//!   which pings only while the pipeline's tasks show progress;
//! - `logging.rs` sends logs to the journal (structured fields) or to stderr;
//! - `downlink.rs` holds the counters of each downlink (commands from Kafka to devices).
//! - `events.rs`: the operational events (failures, losses, recoveries), each a struct that
//!   logs and counts itself under one rate-limiting rule.
//! - `process.rs` reads the process's own memory, CPU and descriptors for `/metrics`.

pub mod downlink;
pub mod events;
pub mod http;
pub mod logging;
pub mod notify;
pub mod process;
pub mod prometheus;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::record::Reason;
use downlink::{DownlinkSnapshot, DownlinkStats};

/// Live counters, shared by every task.
#[derive(Debug, Default)]
pub struct Stats {
    received: Mutex<BTreeMap<String, u64>>,
    valid: AtomicU64,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    dropped: AtomicU64,
    dead_letters_dropped: AtomicU64,
    dlq_evicted: AtomicU64,
    commits: AtomicU64,
    committed: AtomicU64,
    delivered: AtomicU64,
    delivered_dead_letters: AtomicU64,
    delivery_failures: AtomicU64,
    retries: AtomicU64,
    producer_restarts: AtomicU64,
    mqtt_reconnects: AtomicU64,
    serial: Mutex<BTreeMap<String, Arc<PortStats>>>,
    downlinks: Mutex<BTreeMap<String, Arc<DownlinkStats>>>,
    kafka_down: AtomicBool,
    circuit_open: AtomicBool,
    last_delivery_ms: AtomicU64,
    /// Per-topic delivery counters and per-source connection state (see `record_*` methods).
    detail: Mutex<Detail>,
    publish_latency: Histogram,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    outbox_corrupt: AtomicU64,
    outbox_corrupt_records: AtomicU64,
    outbox_write_failing: AtomicBool,
    outbox_write_errors: AtomicU64,
    /// Liveness of the pipeline's tasks, read by the watchdog.
    pub heartbeats: Heartbeats,
    /// Which operational events were logged lately ([`events`]).
    pub events: events::Limiter,
}

#[derive(Debug, Default)]
struct Detail {
    deliveries: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    reconnects: BTreeMap<String, u64>,
    oversize: BTreeMap<String, u64>,
    sources_up: BTreeMap<String, bool>,
}

/// Upper bounds (seconds) of the publish latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: std::time::Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(value.as_micros() as u64, Relaxed);
    }

    /// Cumulative bucket counts, total count and sum in seconds.
    pub fn read(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Observations gathered locally (one publisher wake-up) and added to a [`Histogram`] at once.
#[derive(Debug, Default)]
pub struct LatencyBatch {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl LatencyBatch {
    /// Records one observation.
    pub fn observe(&mut self, value: std::time::Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_micros += value.as_micros() as u64;
    }
}

impl Histogram {
    /// Adds a batch of observations.
    pub fn add(&self, batch: &LatencyBatch) {
        for (bucket, n) in self.buckets.iter().zip(batch.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        self.count.fetch_add(batch.count, Relaxed);
        self.sum_micros.fetch_add(batch.sum_micros, Relaxed);
    }
}

/// A histogram's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub cumulative: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum_seconds: f64,
}

/// When the publisher last went round its loop, and since when the committer has been busy
/// with one batch (0 = idle). Milliseconds since the epoch.
#[derive(Debug, Default)]
pub struct Heartbeats {
    /// The publisher's last loop iteration.
    pub publisher_ms: AtomicU64,
    /// Start of the committer's current batch, or 0.
    pub committer_busy_since_ms: AtomicU64,
}

impl Heartbeats {
    /// The publisher went round its loop.
    pub fn publisher_beat(&self) {
        self.publisher_ms.store(crate::record::now_ms(), Relaxed);
    }
    /// The committer started (true) or finished (false) a batch.
    pub fn committer_busy(&self, busy: bool) {
        let value = if busy { crate::record::now_ms() } else { 0 };
        self.committer_busy_since_ms.store(value, Relaxed);
    }
    /// The oldest sign of life, in milliseconds before `now_ms`: the publisher's last beat, or
    /// how long the committer has been stuck in one batch.
    pub fn stalled_for_ms(&self, now_ms: u64) -> u64 {
        let publisher = now_ms.saturating_sub(self.publisher_ms.load(Relaxed));
        let busy = self.committer_busy_since_ms.load(Relaxed);
        let committer = if busy == 0 {
            0
        } else {
            now_ms.saturating_sub(busy)
        };
        publisher.max(committer)
    }
}

/// A consistent-enough copy of [`Stats`] for display and tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Readings received, by source.
    pub received: BTreeMap<String, u64>,
    /// Readings that passed validation.
    pub valid: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Records evicted from a full outbox.
    pub dropped: u64,
    /// Dead letters dropped because they filled their share of the outbox.
    pub dead_letters_dropped: u64,
    /// Dead letters evicted from the local store by `[dlq]` retention.
    pub dlq_evicted: u64,
    /// Group commits (flush + fsync) of the outbox.
    pub commits: u64,
    /// Records those commits made durable.
    pub committed: u64,
    /// Records Kafka confirmed (readings and dead letters).
    pub delivered: u64,
    /// Of those, dead letters sent to a DLQ topic.
    pub delivered_dead_letters: u64,
    /// Deliveries that failed transiently (and will be retried).
    pub delivery_failures: u64,
    /// Retry rounds after a backoff.
    pub retries: u64,
    /// Times the Kafka producer was recreated after a fatal error.
    pub producer_restarts: u64,
    /// MQTT connection losses.
    pub mqtt_reconnects: u64,
    /// Serial ports, by source name.
    pub serial: BTreeMap<String, PortSnapshot>,
    /// Downlinks, by name.
    pub downlinks: BTreeMap<String, DownlinkSnapshot>,
    /// Whether librdkafka currently reports every broker down.
    pub kafka_down: bool,
    /// Whether the publisher is waiting out a backoff (circuit open).
    pub circuit_open: bool,
    /// Deliveries confirmed, by topic.
    pub deliveries_by_topic: BTreeMap<String, u64>,
    /// Transient delivery failures, by topic.
    pub failures_by_topic: BTreeMap<String, u64>,
    /// Connection losses, by source.
    pub reconnects_by_source: BTreeMap<String, u64>,
    /// MQTT packets over the source's packet limit (the connection was dropped), by source.
    pub oversize_by_source: BTreeMap<String, u64>,
    /// Whether each source is connected (MQTT) or open (serial).
    pub sources_up: BTreeMap<String, bool>,
    /// Time from handing a record to librdkafka to Kafka's confirmation.
    pub publish_latency: HistogramSnapshot,
    /// Successful SIGHUP reloads.
    pub reloads_ok: u64,
    /// Failed SIGHUP reloads (the previous rules stayed).
    pub reloads_failed: u64,
    /// When Kafka last confirmed a delivery (ms since the epoch, 0 = never).
    pub last_delivery_ms: u64,
    /// Damaged ranges found in the outbox's segment files.
    pub outbox_corrupt: u64,
    /// Records lost in them (as far as the sequence numbers around the damage tell).
    pub outbox_corrupt_records: u64,
    /// The last commit failed (disk full or failing): readings wait unacknowledged.
    pub outbox_write_failing: bool,
    /// Commit attempts that failed.
    pub outbox_write_errors: u64,
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// Counters of one serial source, updated by its task without locking.
#[derive(Debug, Default)]
pub struct PortStats {
    lines: AtomicU64,
    bytes: AtomicU64,
    dead_letters: AtomicU64,
    reconnects: AtomicU64,
    open: AtomicBool,
}

impl PortStats {
    /// `n` bytes were read from the port.
    pub fn read(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Relaxed);
    }
    /// A line was framed; `dead` when it became a dead letter.
    pub fn line(&self, dead: bool) {
        self.lines.fetch_add(1, Relaxed);
        if dead {
            self.dead_letters.fetch_add(1, Relaxed);
        }
    }
    /// The port was opened again after the device had gone away or been absent.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }
    /// The port was opened (true) or dropped (false).
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Relaxed);
    }
    fn snapshot(&self) -> PortSnapshot {
        PortSnapshot {
            lines: self.lines.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            open: self.open.load(Relaxed),
        }
    }
}

/// The counters of one serial source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortSnapshot {
    /// Lines framed (blank lines are not counted), good or bad.
    pub lines: u64,
    /// Bytes read from the port, terminators included.
    pub bytes: u64,
    /// Of those lines, how many became dead letters (any reason).
    pub dead_letters: u64,
    /// Times the port was opened again after the device had gone away or been absent.
    pub reconnects: u64,
    /// Whether the port is open now.
    pub open: bool,
}

fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

impl Stats {
    /// A reading arrived from `source`.
    pub fn received(&self, source: &str) {
        bump(
            &mut self.received.lock().unwrap_or_else(|e| e.into_inner()),
            source,
        );
    }
    /// A reading passed validation.
    pub fn valid(&self) {
        self.valid.fetch_add(1, Relaxed);
    }
    /// A reading became a dead letter.
    pub fn dead_letter(&self, reason: Reason) {
        self.dead_letters[reason_index(reason)].fetch_add(1, Relaxed);
    }
    /// `n` records were evicted by `drop-oldest`.
    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }
    /// `n` dead letters were dropped: they filled their share of the outbox.
    pub fn dead_letters_dropped(&self, n: u64) {
        self.dead_letters_dropped.fetch_add(n, Relaxed);
    }
    /// `n` dead letters were evicted from the local store by retention.
    pub fn dlq_evicted(&self, n: u64) {
        self.dlq_evicted.fetch_add(n, Relaxed);
    }
    /// A group commit made `records` durable.
    pub fn committed(&self, records: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.committed.fetch_add(records, Relaxed);
    }
    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Kafka confirmed a record on `topic`, `latency` after it was handed to librdkafka.
    pub fn delivered(&self, topic: &str, dead_letter: bool, latency: std::time::Duration) {
        bump(&mut self.detail().deliveries, topic);
        self.publish_latency.observe(latency);
        self.delivered.fetch_add(1, Relaxed);
        if dead_letter {
            self.delivered_dead_letters.fetch_add(1, Relaxed);
        }
        self.last_delivery_ms
            .store(crate::record::now_ms(), Relaxed);
    }
    /// Kafka confirmed `total` records (`dead` of them dead letters), per topic as listed;
    /// `latency` holds their publish latencies.
    pub fn delivered_many<'a>(
        &self,
        by_topic: impl Iterator<Item = (&'a str, u64)>,
        total: u64,
        dead: u64,
        latency: &LatencyBatch,
    ) {
        {
            let mut detail = self.detail();
            for (topic, n) in by_topic {
                match detail.deliveries.get_mut(topic) {
                    Some(v) => *v += n,
                    None => {
                        detail.deliveries.insert(topic.to_owned(), n);
                    }
                }
            }
        }
        self.publish_latency.add(latency);
        self.delivered.fetch_add(total, Relaxed);
        self.delivered_dead_letters.fetch_add(dead, Relaxed);
        self.last_delivery_ms
            .store(crate::record::now_ms(), Relaxed);
    }
    /// `n` deliveries to `topic` failed transiently.
    pub fn delivery_failed_many(&self, topic: &str, n: u64) {
        {
            let mut detail = self.detail();
            match detail.failures.get_mut(topic) {
                Some(v) => *v += n,
                None => {
                    detail.failures.insert(topic.to_owned(), n);
                }
            }
        }
        self.delivery_failures.fetch_add(n, Relaxed);
    }
    /// Records lost to damage found in the outbox's segment files.
    pub fn outbox_corrupt(&self, records: u64) {
        self.outbox_corrupt.fetch_add(1, Relaxed);
        self.outbox_corrupt_records.fetch_add(records, Relaxed);
    }
    /// A commit attempt failed: nothing in it is acknowledged.
    pub fn outbox_write_failed(&self) {
        self.outbox_write_failing.store(true, Relaxed);
        self.outbox_write_errors.fetch_add(1, Relaxed);
    }
    /// A commit succeeded after failures.
    pub fn outbox_writable(&self) {
        self.outbox_write_failing.store(false, Relaxed);
    }
    /// Whether the last commit attempt failed.
    pub fn outbox_write_failing(&self) -> bool {
        self.outbox_write_failing.load(Relaxed)
    }
    /// A delivery to `topic` failed transiently.
    pub fn delivery_failed(&self, topic: &str) {
        bump(&mut self.detail().failures, topic);
        self.delivery_failures.fetch_add(1, Relaxed);
    }
    /// A retry round starts.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    /// The producer was recreated.
    pub fn producer_restarted(&self) {
        self.producer_restarts.fetch_add(1, Relaxed);
    }
    /// The MQTT connection of `source` was lost.
    pub fn mqtt_reconnect(&self, source: &str) {
        bump(&mut self.detail().reconnects, source);
        self.source_up(source, false);
        self.mqtt_reconnects.fetch_add(1, Relaxed);
    }
    /// The broker sent `source` a packet over its packet limit (the connection is dropped).
    pub fn mqtt_oversize(&self, source: &str) {
        bump(&mut self.detail().oversize, source);
    }
    /// The counters of serial source `name`, registered on first use.
    pub fn serial_port(&self, name: &str) -> Arc<PortStats> {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
    /// The counters of downlink `name`, registered on first use.
    pub fn downlink(&self, name: &str) -> Arc<DownlinkStats> {
        self.downlinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
    /// librdkafka reported all brokers down (true) or a delivery succeeded (false).
    pub fn set_kafka_down(&self, down: bool) {
        self.kafka_down.store(down, Relaxed);
    }

    /// A source connected (true) or lost its connection or device (false).
    pub fn source_up(&self, source: &str, up: bool) {
        self.detail().sources_up.insert(source.to_owned(), up);
    }
    /// A SIGHUP reload succeeded (true) or failed and kept the old rules (false).
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }
    /// The publisher's circuit opened (true) or closed.
    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Relaxed);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> Snapshot {
        // One guard for the whole copy: taking the lock per field would deadlock.
        let detail = self.detail();
        Snapshot {
            received: self
                .received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            valid: self.valid.load(Relaxed),
            dead_letters: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        self.dead_letters[reason_index(*r)].load(Relaxed),
                    )
                })
                .collect(),
            dropped: self.dropped.load(Relaxed),
            dead_letters_dropped: self.dead_letters_dropped.load(Relaxed),
            dlq_evicted: self.dlq_evicted.load(Relaxed),
            commits: self.commits.load(Relaxed),
            committed: self.committed.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            delivered_dead_letters: self.delivered_dead_letters.load(Relaxed),
            delivery_failures: self.delivery_failures.load(Relaxed),
            retries: self.retries.load(Relaxed),
            producer_restarts: self.producer_restarts.load(Relaxed),
            mqtt_reconnects: self.mqtt_reconnects.load(Relaxed),
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, port)| (name.clone(), port.snapshot()))
                .collect(),
            downlinks: self
                .downlinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, d)| (name.clone(), d.snapshot()))
                .collect(),
            kafka_down: self.kafka_down.load(Relaxed),
            circuit_open: self.circuit_open.load(Relaxed),
            last_delivery_ms: self.last_delivery_ms.load(Relaxed),
            deliveries_by_topic: detail.deliveries.clone(),
            failures_by_topic: detail.failures.clone(),
            reconnects_by_source: detail.reconnects.clone(),
            oversize_by_source: detail.oversize.clone(),
            sources_up: detail.sources_up.clone(),
            publish_latency: self.publish_latency.read(),
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
            outbox_corrupt: self.outbox_corrupt.load(Relaxed),
            outbox_corrupt_records: self.outbox_corrupt_records.load(Relaxed),
            outbox_write_failing: self.outbox_write_failing.load(Relaxed),
            outbox_write_errors: self.outbox_write_errors.load(Relaxed),
        }
    }
}

impl Snapshot {
    /// Readings received from every source.
    pub fn received_total(&self) -> u64 {
        self.received.values().sum()
    }
    /// Dead letters of every reason.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}
