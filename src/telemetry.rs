//! Counters and gauges of everything the gateway does, kept in one place so every observable
//! number has one name. Sources, the outbox and the publisher update [`Stats`]; the CLI, logs and
//! (later) the metrics endpoint read a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::record::Reason;

/// Live counters, shared by every task.
#[derive(Debug, Default)]
pub struct Stats {
    received: Mutex<BTreeMap<String, u64>>,
    valid: AtomicU64,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    dropped: AtomicU64,
    commits: AtomicU64,
    committed: AtomicU64,
    delivered: AtomicU64,
    delivered_dead_letters: AtomicU64,
    delivery_failures: AtomicU64,
    retries: AtomicU64,
    producer_restarts: AtomicU64,
    mqtt_reconnects: AtomicU64,
    serial: Mutex<BTreeMap<String, Arc<PortStats>>>,
    kafka_down: AtomicBool,
    circuit_open: AtomicBool,
    last_delivery_ms: AtomicU64,
}

/// A consistent-enough copy of [`Stats`] for display and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Readings received, by source.
    pub received: BTreeMap<String, u64>,
    /// Readings that passed validation.
    pub valid: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Records evicted from a full outbox.
    pub dropped: u64,
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
    /// Whether librdkafka currently reports every broker down.
    pub kafka_down: bool,
    /// Whether the publisher is waiting out a backoff (circuit open).
    pub circuit_open: bool,
    /// When Kafka last confirmed a delivery (ms since the epoch, 0 = never).
    pub last_delivery_ms: u64,
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
        let mut map = self.received.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(source) {
            Some(n) => *n += 1,
            None => {
                map.insert(source.to_owned(), 1);
            }
        }
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
    /// A group commit made `records` durable.
    pub fn committed(&self, records: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.committed.fetch_add(records, Relaxed);
    }
    /// Kafka confirmed a record.
    pub fn delivered(&self, dead_letter: bool) {
        self.delivered.fetch_add(1, Relaxed);
        if dead_letter {
            self.delivered_dead_letters.fetch_add(1, Relaxed);
        }
        self.last_delivery_ms
            .store(crate::record::now_ms(), Relaxed);
    }
    /// A delivery failed transiently.
    pub fn delivery_failed(&self) {
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
    /// An MQTT connection was lost.
    pub fn mqtt_reconnect(&self) {
        self.mqtt_reconnects.fetch_add(1, Relaxed);
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
    /// librdkafka reported all brokers down (true) or a delivery succeeded (false).
    pub fn set_kafka_down(&self, down: bool) {
        self.kafka_down.store(down, Relaxed);
    }

    /// The publisher's circuit opened (true) or closed.
    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Relaxed);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> Snapshot {
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
            kafka_down: self.kafka_down.load(Relaxed),
            circuit_open: self.circuit_open.load(Relaxed),
            last_delivery_ms: self.last_delivery_ms.load(Relaxed),
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
