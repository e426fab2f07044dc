//! Counters and gauges of one downlink (commands from Kafka to devices over MQTT), updated by its
//! task without a lock except for the per-partition lag.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;

use crate::record::Reason;

/// What became of a command: the `result` label of `sensorgate_downlink_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandResult {
    /// Published, and the MQTT broker acknowledged it.
    Delivered,
    /// A dead letter: not UTF-8 or not JSON.
    NotJson,
    /// A dead letter: breaks the downlink's schema (or a malformed `expires_at`).
    Schema,
    /// A dead letter: the topic template names no device.
    NoTarget,
    /// A dead letter: past its `expires_at` when it would have been sent.
    Expired,
}

impl CommandResult {
    /// Every result, in label order.
    pub const ALL: [CommandResult; 5] = [
        Self::Delivered,
        Self::NotJson,
        Self::Schema,
        Self::NoTarget,
        Self::Expired,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::NotJson => "not-json",
            Self::Schema => "schema",
            Self::NoTarget => "no-target",
            Self::Expired => "expired",
        }
    }

    /// The result of a command that became a dead letter for `reason`.
    pub const fn dead(reason: Reason) -> Self {
        match reason {
            Reason::NotJson => Self::NotJson,
            Reason::NoTarget => Self::NoTarget,
            Reason::Expired => Self::Expired,
            _ => Self::Schema,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The live counters of one downlink.
#[derive(Debug, Default)]
pub struct DownlinkStats {
    results: [AtomicU64; CommandResult::ALL.len()],
    retries: AtomicU64,
    replayed: AtomicU64,
    circuit_open: AtomicBool,
    up: AtomicBool,
    paused: AtomicBool,
    held: AtomicU64,
    lag: Mutex<BTreeMap<i32, i64>>,
}

impl DownlinkStats {
    /// A command ended with `result` (counted once per command and gateway run).
    pub fn command(&self, result: CommandResult) {
        self.results[result.index()].fetch_add(1, Relaxed);
    }
    /// A reconnect or probe after a backoff.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    /// A dead letter was sent again through the downlink (`dlq replay`) and acknowledged.
    pub fn replayed(&self) {
        self.replayed.fetch_add(1, Relaxed);
    }
    /// The breaker opened (true: open or half-open) or closed.
    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Relaxed);
    }
    /// The MQTT connection is up (CONNACK received) or lost.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }
    /// Every assigned partition is paused (the breaker is open) or consumed.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }
    /// Commands taken from Kafka and not yet committed.
    pub fn set_held(&self, held: usize) {
        self.held.store(held as u64, Relaxed);
    }
    /// The consumer lag of every assigned partition (high watermark minus committed offset);
    /// partitions no longer assigned disappear.
    pub fn set_lag(&self, lag: BTreeMap<i32, i64>) {
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> DownlinkSnapshot {
        DownlinkSnapshot {
            commands: CommandResult::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), self.results[r.index()].load(Relaxed)))
                .collect(),
            retries: self.retries.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            circuit_open: self.circuit_open.load(Relaxed),
            up: self.up.load(Relaxed),
            paused: self.paused.load(Relaxed),
            held: self.held.load(Relaxed),
            lag: self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// A copy of one downlink's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DownlinkSnapshot {
    /// Commands by result (`delivered`, `not-json`, `schema`, `no-target`, `expired`).
    pub commands: BTreeMap<String, u64>,
    /// Reconnects and probes after a backoff.
    pub retries: u64,
    /// Dead letters sent again by `dlq replay`.
    pub replayed: u64,
    /// The breaker is open or half-open.
    pub circuit_open: bool,
    /// The MQTT connection is up.
    pub up: bool,
    /// Consumption is paused.
    pub paused: bool,
    /// Commands held (taken from Kafka, not yet committed).
    pub held: u64,
    /// Consumer lag by partition.
    pub lag: BTreeMap<i32, i64>,
}

impl DownlinkSnapshot {
    /// Commands with this result.
    pub fn count(&self, result: CommandResult) -> u64 {
        self.commands.get(result.as_str()).copied().unwrap_or(0)
    }
    /// Commands that became dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.commands
            .iter()
            .filter(|(k, _)| *k != CommandResult::Delivered.as_str())
            .map(|(_, n)| n)
            .sum()
    }
    /// Consumer lag over every partition.
    pub fn lag_total(&self) -> i64 {
        self.lag.values().copied().filter(|l| *l > 0).sum()
    }
}
