//! Partitions, chosen by the publisher itself so that it knows, before handing a record to
//! librdkafka, which partition it joins: a partition that stalls (no leader, too few in-sync
//! replicas) is then held back alone while the others flow.
//!
//! Keyed records go where librdkafka's default partitioner (`consistent_random`) puts them:
//! CRC-32 of the key modulo the partition count, so a device keeps the partition it had with
//! sensorgate 0.1 (and with any librdkafka client). Records without a key (dead letters) go in
//! runs of 256 consecutive sequence numbers to one partition: the choice depends only on the
//! record, so a record held back and sent later picks the same partition again.
//!
//! Each partition has a state: how many of its records are in flight, since when the oldest is
//! waiting, and, when it is held back, the first of its records that was not sent
//! (`pending_from`): everything of that partition from there on is sent again, in order, when it
//! is released. A partition is held when it reaches its share of the window, when its oldest
//! record waited longer than the stall limit, or after a failure; a held partition is probed
//! with one record after a backoff (half-open), and runs again at full share once that record is
//! confirmed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::circuit::Circuit;
use crate::backoff::Backoff;
use crate::config::RetryConfig;

/// Records without a key in a row that go to the same partition.
const STICKY_RUN: u64 = 256;

/// The partition of a record.
pub fn partition_of(key: Option<&str>, seq: u64, partitions: u32) -> u32 {
    let n = partitions.max(1);
    match key {
        Some(k) if !k.is_empty() => crc32fast::hash(k.as_bytes()) % n,
        _ => ((seq / STICKY_RUN) % u64::from(n)) as u32,
    }
}

/// The delays before asking again for the metadata of a topic: 0.5 s doubling to 30 s.
fn metadata_retry() -> Backoff {
    Backoff::new(RetryConfig {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        multiplier: 2.0,
        jitter: 0.0,
    })
}

/// What the publisher knows of a topic.
#[derive(Debug)]
pub struct Topic {
    /// Its name.
    pub name: std::sync::Arc<str>,
    /// Partition count (0: not known yet).
    pub partitions: u32,
    /// Leader broker per partition (-1: none), as the last metadata said.
    pub leaders: Vec<i32>,
    /// When to ask for metadata again.
    pub refresh_at: Instant,
    /// Failed metadata requests in a row (its attempts), and the delay before the next one.
    pub metadata_retry: Backoff,
    /// The first record of this topic not sent while its partition count is unknown.
    pub pending_from: Option<u64>,
    /// Records confirmed since counters were last reported.
    pub delivered: u64,
    /// Transient failures since counters were last reported.
    pub failed: u64,
    /// Since when metadata says the topic does not exist (for a bounded retry).
    pub unknown_since: Option<Instant>,
}

/// Topics by name, numbered for the window entries.
#[derive(Debug, Default)]
pub struct Topics {
    list: Vec<Topic>,
    by_name: HashMap<std::sync::Arc<str>, u16>,
}

impl Topics {
    /// The number of topic `name`, added if new.
    pub fn id(&mut self, name: &str) -> u16 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let name: std::sync::Arc<str> = name.into();
        let id = u16::try_from(self.list.len()).unwrap_or(u16::MAX);
        self.list.push(Topic {
            name: name.clone(),
            partitions: 0,
            leaders: Vec::new(),
            refresh_at: Instant::now(),
            metadata_retry: metadata_retry(),
            pending_from: None,
            delivered: 0,
            failed: 0,
            unknown_since: None,
        });
        self.by_name.insert(name, id);
        id
    }

    /// Topic number `id`.
    pub fn get(&self, id: u16) -> &Topic {
        &self.list[usize::from(id).min(self.list.len() - 1)]
    }

    /// Topic number `id`, mutable.
    pub fn get_mut(&mut self, id: u16) -> &mut Topic {
        let i = usize::from(id).min(self.list.len() - 1);
        &mut self.list[i]
    }

    /// Every topic, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut Topic)> {
        self.list.iter_mut().enumerate().map(|(i, t)| (i as u16, t))
    }

    /// Every topic.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Topic)> {
        self.list.iter().enumerate().map(|(i, t)| (i as u16, t))
    }
}

/// One partition's state.
#[derive(Debug)]
pub struct Part {
    /// Records of it in flight.
    pub in_flight: usize,
    /// When the oldest of them was handed over (the clock restarts on every confirmation).
    pub waiting_since: Option<Instant>,
    /// The first of its records not sent (it and every later one of this partition will be).
    pub pending_from: Option<u64>,
    /// Closed: full share; half-open: one probe; open: held until `probe_at`.
    pub circuit: Circuit,
    /// When a held partition may be probed.
    pub probe_at: Option<Instant>,
    /// Delay before the next probe.
    pub backoff: Backoff,
}

impl Part {
    fn new(retry: &RetryConfig) -> Self {
        Self {
            in_flight: 0,
            waiting_since: None,
            pending_from: None,
            circuit: Circuit::Closed,
            probe_at: None,
            backoff: Backoff::new(retry.clone()),
        }
    }

    /// Marks `seq` (and, implicitly, every later record of this partition) as not sent.
    pub fn hold_from(&mut self, seq: u64) {
        self.pending_from = Some(self.pending_from.map_or(seq, |p| p.min(seq)));
    }

    /// Whether this partition's records may be handed over now, with `share` in flight at most.
    pub fn may_send(&self, share: usize, now: Instant) -> bool {
        match self.circuit {
            Circuit::Open => false,
            Circuit::HalfOpen => self.in_flight == 0 && self.probe_at.is_none_or(|t| now >= t),
            Circuit::Closed => self.in_flight < share,
        }
    }

    /// Whether its oldest record in flight has waited longer than `limit`.
    pub fn stalled(&self, limit: Duration, now: Instant) -> bool {
        self.in_flight > 0
            && self
                .waiting_since
                .is_some_and(|t| now.saturating_duration_since(t) > limit)
    }
}

/// Partition states by (topic, partition).
#[derive(Debug)]
pub struct Parts {
    map: HashMap<(u16, u32), Part>,
    retry: RetryConfig,
}

impl Parts {
    /// No partition yet.
    pub fn new(retry: RetryConfig) -> Self {
        Self {
            map: HashMap::new(),
            retry,
        }
    }

    /// The state of a partition, created on first use.
    pub fn get(&mut self, topic: u16, partition: u32) -> &mut Part {
        let retry = &self.retry;
        self.map
            .entry((topic, partition))
            .or_insert_with(|| Part::new(retry))
    }

    /// The state of a partition, if it was ever used.
    pub fn peek(&self, topic: u16, partition: u32) -> Option<&Part> {
        self.map.get(&(topic, partition))
    }

    /// Every partition.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&(u16, u32), &mut Part)> {
        self.map.iter_mut()
    }

    /// Every partition.
    pub fn iter(&self) -> impl Iterator<Item = (&(u16, u32), &Part)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_asked_again_after_half_a_second_doubling_to_30_s() {
        let mut retry = metadata_retry();
        let delays: Vec<u64> = (0..8)
            .map(|_| retry.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn keys_pick_the_partition_librdkafka_picks_and_keyless_runs_are_sticky() {
        // librdkafka's consistent partitioner: zlib's CRC-32 of the key modulo the count.
        assert_eq!(
            partition_of(Some("dev-1"), 0, 4),
            crc32fast::hash(b"dev-1") % 4
        );
        assert_eq!(
            partition_of(Some("dev-1"), 0, 4),
            partition_of(Some("dev-1"), 999, 4)
        );
        assert_eq!(partition_of(None, 0, 4), partition_of(None, 255, 4));
        assert_ne!(partition_of(None, 255, 4), partition_of(None, 256, 4));
        assert_eq!(partition_of(Some(""), 300, 4), partition_of(None, 300, 4));
        assert_eq!(
            partition_of(Some("x"), 0, 0),
            0,
            "an unknown count never divides by zero"
        );
    }

    #[test]
    fn a_partition_is_held_from_its_first_unsent_record() {
        let mut parts = Parts::new(RetryConfig::default());
        let now = Instant::now();
        let p = parts.get(0, 3);
        assert!(p.may_send(2, now));
        p.in_flight = 2;
        assert!(!p.may_send(2, now));
        p.hold_from(17);
        p.hold_from(20);
        assert_eq!(p.pending_from, Some(17));
        p.hold_from(9);
        assert_eq!(p.pending_from, Some(9));
        p.waiting_since = Some(now - Duration::from_secs(5));
        assert!(p.stalled(Duration::from_secs(1), now));
        p.circuit = Circuit::HalfOpen;
        assert!(
            !p.may_send(10, now),
            "a probe waits for the partition to be empty"
        );
        p.in_flight = 0;
        assert!(p.may_send(10, now));
    }
}
