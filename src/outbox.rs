//! The outbox: a durable FIFO of records waiting for Kafka, and the local dead-letter store,
//! both in one sled database under `<state_dir>/outbox`.
//!
//! # Invariants
//! - A record is acknowledged to its source (MQTT PUBACK) only after [`Outbox::commit`] returned
//!   for a batch that contained it: sled flush, then `fsync` of the data file (sled 0.34's flush
//!   alone issues `sync_file_range`, which does not persist file-size metadata).
//! - Records leave the `queue` tree only when Kafka confirmed them, when they are moved to the
//!   local DLQ (`publish-rejected`), or when `drop-oldest` evicts them (counted in
//!   [`crate::telemetry::Stats`]). A removal need not be durable: a removal lost in a crash means a
//!   duplicate delivery, never a loss.
//! - Keys are sled's monotonic ids (`generate_id`, persisted ahead of use), so queue order is
//!   arrival order. The per-gateway sequence number sent as `sensorgate.seq` is the key plus a
//!   base fixed when the database is created (creation time in ms × 1000), so it keeps increasing
//!   across restarts and also across a fresh database (a wiped state directory, or a corrupt one
//!   moved aside), as long as the clock was set when the database was created.
//! - The byte bound counts key + value bytes of the `queue` tree only.
//! - The `dlq` tree is bounded separately by `[dlq]` (entries, bytes, age): the oldest dead
//!   letters are evicted first, counted in [`crate::telemetry::Stats`]; checked on every insert
//!   into the tree (counters kept in memory, one peek at the oldest entry) and at open.
//!
//! # Trees
//! - `queue`: seq (u64 big-endian) → record
//! - `dlq`: dead-letter id (u64 big-endian) → record (its `meta.dead_letter` is always set)
//! - `quarantine`: seq → raw bytes of any value that could not be decoded (never silently lost)
//! - `meta`: `seq_base` → u64 big-endian, the sequence base (see above)
//!
//! # Record format (version 1)
//! ```text
//! offset  size  field
//! 0       2     magic "SG"
//! 2       1     format version (1)
//! 3       4     length N of the metadata, u32 big-endian
//! 7       N     metadata: JSON of record::Meta (source, origin, received_at_ms, route, schema,
//!               kafka_topic, key, dead_letter {id, reason, errors, original_len})
//! 7+N     rest  payload: the bytes exactly as received
//! ```
//!
//! # Corruption
//! If sled reports corruption (or panics) while opening, the database directory is renamed to
//! `outbox.corrupt-<unix seconds>` and a fresh one is created, with an error logged naming both;
//! nothing is deleted. I/O errors (permissions, a lock held by another process) are not
//! corruption and are returned as errors.

pub mod committer;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::Notify;

use crate::config::{DlqConfig, QueueConfig, WhenFull};
use crate::record::{DeadLetterInfo, Meta, Reason, Record, Violation};
use crate::telemetry::Stats;

const MAGIC: &[u8; 2] = b"SG";
const VERSION: u8 = 1;
const HEADER: usize = 7;

/// Errors of the outbox.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The state directory could not be created or opened.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// sled failed.
    #[error("outbox database {path}: {source}")]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored value is not a record of a known format.
    #[error("stored record is malformed: {0}")]
    Format(String),
    /// fsync after a commit failed.
    #[error("fsync of {path}: {source}")]
    Sync {
        /// The data file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Encodes a record in the version-1 format.
pub fn encode(record: &Record) -> Vec<u8> {
    let meta = serde_json::to_vec(&record.meta).expect("record metadata always serializes");
    let mut out = Vec::with_capacity(HEADER + meta.len() + record.payload.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&record.payload);
    out
}

/// Decodes a version-1 record.
pub fn decode(bytes: &[u8]) -> Result<Record> {
    if bytes.len() < HEADER || &bytes[..2] != MAGIC {
        return Err(OutboxError::Format("missing magic".into()));
    }
    if bytes[2] != VERSION {
        return Err(OutboxError::Format(format!(
            "unknown format version {}",
            bytes[2]
        )));
    }
    let len = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    let meta_end = HEADER
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| OutboxError::Format("metadata length beyond the value".into()))?;
    let meta: Meta = serde_json::from_slice(&bytes[HEADER..meta_end])
        .map_err(|e| OutboxError::Format(format!("metadata: {e}")))?;
    Ok(Record {
        meta,
        payload: Bytes::copy_from_slice(&bytes[meta_end..]),
    })
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = key.len().min(8);
    buf[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(buf)
}

/// Outbox depth and age, for `queue stats`, status lines and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Records waiting.
    pub depth: u64,
    /// Their bytes (keys + values).
    pub bytes: u64,
    /// When the oldest waiting record was received (ms since the epoch).
    pub oldest_received_ms: Option<u64>,
    /// Dead letters in the local store.
    pub dead_letters: u64,
    /// Their bytes (keys + values).
    #[serde(default)]
    pub dead_letter_bytes: u64,
}

/// What [`Outbox::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this sequence number.
    Stored(u64),
    /// `block` policy and no room: nothing stored; wait with [`Outbox::wait_for_room`].
    Full,
}

/// The durable queue and dead-letter store.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    db: sled::Db,
    queue: sled::Tree,
    dlq: sled::Tree,
    quarantine: sled::Tree,
    seq_base: u64,
    max_bytes: u64,
    policy: WhenFull,
    fsync: bool,
    bytes: AtomicU64,
    depth: AtomicU64,
    dlq_limits: DlqConfig,
    dlq_count: AtomicU64,
    dlq_bytes: AtomicU64,
    appended: Notify,
    freed: Notify,
    stats: Arc<Stats>,
}

impl Outbox {
    /// Opens (or creates) the outbox in `state_dir`, moving a corrupt database aside, with the
    /// default `[dlq]` retention.
    pub fn open(state_dir: &Path, config: &QueueConfig, stats: Arc<Stats>) -> Result<Self> {
        Self::open_with(state_dir, config, &DlqConfig::default(), stats)
    }

    /// Opens (or creates) the outbox in `state_dir` and applies the `[dlq]` retention at once.
    pub fn open_with(
        state_dir: &Path,
        config: &QueueConfig,
        dlq_limits: &DlqConfig,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|source| OutboxError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join("outbox");
        let db = match open_db(&path) {
            Ok(db) => db,
            Err(Opened::Failed(source)) => return Err(OutboxError::Sled { path, source }),
            Err(Opened::Corrupt(why)) => {
                let aside =
                    state_dir.join(format!("outbox.corrupt-{}", crate::record::now_ms() / 1000));
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %why,
                    "Outbox database is corrupt: moved it aside and starting with an empty outbox; \
                     records in it were not delivered and can be recovered from the moved directory"
                );
                std::fs::rename(&path, &aside).map_err(|source| OutboxError::StateDir {
                    path: path.clone(),
                    source,
                })?;
                open_db(&path).map_err(|e| OutboxError::Sled {
                    path: path.clone(),
                    source: match e {
                        Opened::Failed(e) => e,
                        Opened::Corrupt(why) => sled::Error::Unsupported(why),
                    },
                })?
            }
        };
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| OutboxError::Sled {
                path: path.clone(),
                source,
            })
        };
        let (queue, dlq, quarantine) = (tree("queue")?, tree("dlq")?, tree("quarantine")?);
        let meta = tree("meta")?;
        let sled_err = |source| OutboxError::Sled {
            path: path.clone(),
            source,
        };
        let seq_base = match meta.get("seq_base").map_err(sled_err)? {
            Some(v) => seq_of(&v),
            None => {
                let base = crate::record::now_ms().saturating_mul(1000);
                meta.insert("seq_base", &key(base)).map_err(sled_err)?;
                db.flush().map_err(sled_err)?;
                base
            }
        };
        let mut bytes = 0u64;
        let mut depth = 0u64;
        for item in queue.iter() {
            let (k, v) = item.map_err(|source| OutboxError::Sled {
                path: path.clone(),
                source,
            })?;
            bytes += (k.len() + v.len()) as u64;
            depth += 1;
        }
        let (mut dlq_count, mut dlq_bytes) = (0u64, 0u64);
        for item in dlq.iter() {
            let (k, v) = item.map_err(|source| OutboxError::Sled {
                path: path.clone(),
                source,
            })?;
            dlq_bytes += (k.len() + v.len()) as u64;
            dlq_count += 1;
        }
        let outbox = Self {
            path,
            db,
            queue,
            dlq,
            quarantine,
            seq_base,
            max_bytes: config.max_bytes.bytes(),
            policy: config.when_full,
            fsync: config.fsync,
            bytes: AtomicU64::new(bytes),
            depth: AtomicU64::new(depth),
            dlq_limits: dlq_limits.clone(),
            dlq_count: AtomicU64::new(dlq_count),
            dlq_bytes: AtomicU64::new(dlq_bytes),
            appended: Notify::new(),
            freed: Notify::new(),
            stats,
        };
        outbox.enforce_dlq_retention()?;
        Ok(outbox)
    }

    fn sled_err(&self, source: sled::Error) -> OutboxError {
        OutboxError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one record (not yet durable: call [`Outbox::commit`]). A dead letter is also
    /// stored in the local DLQ and gets its id there. Under `drop-oldest` the oldest records are
    /// evicted to make room; under `block` a full outbox returns [`Appended::Full`].
    pub fn append(&self, record: &mut Record) -> Result<Appended> {
        let seq = self.db.generate_id().map_err(|e| self.sled_err(e))?;
        if let Some(info) = &mut record.meta.dead_letter {
            info.id = seq;
        }
        let value = encode(record);
        let size = (8 + value.len()) as u64;
        if self.bytes.load(SeqCst) + size > self.max_bytes && self.depth.load(SeqCst) > 0 {
            match self.policy {
                WhenFull::Block => return Ok(Appended::Full),
                WhenFull::DropOldest => self.evict_for(size)?,
            }
        }
        if record.meta.dead_letter.is_some() {
            self.dlq_insert(seq, &value)?;
        }
        self.queue
            .insert(key(seq), value)
            .map_err(|e| self.sled_err(e))?;
        self.bytes.fetch_add(size, SeqCst);
        self.depth.fetch_add(1, SeqCst);
        Ok(Appended::Stored(seq))
    }

    fn evict_for(&self, size: u64) -> Result<()> {
        let mut evicted = 0;
        while self.bytes.load(SeqCst) + size > self.max_bytes {
            let Some((k, _)) = self.queue.first().map_err(|e| self.sled_err(e))? else {
                break;
            };
            if self.remove_key(&k)? {
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.stats.dropped(evicted);
            tracing::warn!(
                evicted,
                max_bytes = self.max_bytes,
                "Outbox full: evicted the oldest records (policy drop-oldest)"
            );
        }
        Ok(())
    }

    /// Makes every append so far durable, then wakes the publisher.
    pub async fn commit(&self) -> Result<()> {
        self.db.flush_async().await.map_err(|e| self.sled_err(e))?;
        if self.fsync {
            let data = self.path.join("db");
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&data)
                    .and_then(|f| f.sync_all())
                    .map_err(|source| OutboxError::Sync { path: data, source })
            })
            .await
            .map_err(|e| OutboxError::Format(format!("fsync task failed: {e}")))??;
        }
        self.appended.notify_one();
        Ok(())
    }

    /// The `sensorgate.seq` header value for a record stored under `seq`.
    pub fn sequence_number(&self, seq: u64) -> u64 {
        self.seq_base.saturating_add(seq)
    }

    /// Waits until the publisher freed space (for the `block` policy).
    pub async fn wait_for_room(&self) {
        self.freed.notified().await;
    }

    /// Waits until a commit added records.
    pub async fn wait_for_records(&self) {
        self.appended.notified().await;
    }

    /// Up to `max` records after `after` (from the head when `None`), in order.
    pub fn read_after(&self, after: Option<u64>, max: usize) -> Result<Vec<(u64, Record)>> {
        let range = match after {
            Some(seq) => self
                .queue
                .range((Bound::Excluded(key(seq)), Bound::Unbounded)),
            None => self.queue.range::<[u8; 8], _>(..),
        };
        let mut out = Vec::new();
        for item in range {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            match decode(&v) {
                Ok(record) => out.push((seq_of(&k), record)),
                Err(e) => {
                    tracing::error!(seq = seq_of(&k), error = %e, "Undecodable outbox record moved to quarantine");
                    self.quarantine
                        .insert(&k, v)
                        .map_err(|e| self.sled_err(e))?;
                    self.remove_key(&k)?;
                }
            }
        }
        Ok(out)
    }

    fn remove_key(&self, k: &[u8]) -> Result<bool> {
        match self.queue.remove(k).map_err(|e| self.sled_err(e))? {
            Some(old) => {
                self.bytes.fetch_sub((k.len() + old.len()) as u64, SeqCst);
                self.depth.fetch_sub(1, SeqCst);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes delivered records (not flushed: a lost removal is a duplicate, not a loss).
    pub fn remove(&self, seqs: &[u64]) -> Result<()> {
        for seq in seqs {
            self.remove_key(&key(*seq))?;
        }
        if !seqs.is_empty() {
            self.freed.notify_waiters();
        }
        Ok(())
    }

    /// Moves a record Kafka refused permanently to the local DLQ (`publish-rejected`). A record
    /// that already is a dead letter stays in the DLQ as it is and only leaves the queue.
    pub fn reject(&self, seq: u64, mut record: Record, error: &str) -> Result<()> {
        if record.meta.dead_letter.is_none() {
            record.meta.dead_letter = Some(DeadLetterInfo {
                id: seq,
                reason: Reason::PublishRejected,
                errors: vec![Violation::whole(format!(
                    "Kafka rejected the record for topic `{}`: {error}",
                    record.meta.kafka_topic
                ))],
                original_len: None,
            });
            self.dlq_insert(seq, &encode(&record))?;
            self.stats.dead_letter(Reason::PublishRejected);
        }
        self.remove(&[seq])
    }

    /// Current depth, bytes and oldest record age.
    pub fn stats(&self) -> QueueStats {
        let oldest_received_ms = self
            .queue
            .first()
            .ok()
            .flatten()
            .and_then(|(_, v)| decode(&v).ok())
            .map(|r| r.meta.received_at_ms);
        QueueStats {
            depth: self.depth.load(SeqCst),
            bytes: self.bytes.load(SeqCst),
            oldest_received_ms,
            dead_letters: self.dlq_count.load(SeqCst),
            dead_letter_bytes: self.dlq_bytes.load(SeqCst),
        }
    }

    fn dlq_insert(&self, id: u64, value: &[u8]) -> Result<()> {
        let k = key(id);
        if let Some(old) = self.dlq.insert(k, value).map_err(|e| self.sled_err(e))? {
            self.dlq_count.fetch_sub(1, SeqCst);
            self.dlq_bytes
                .fetch_sub((k.len() + old.len()) as u64, SeqCst);
        }
        self.dlq_count.fetch_add(1, SeqCst);
        self.dlq_bytes
            .fetch_add((k.len() + value.len()) as u64, SeqCst);
        self.enforce_dlq_retention()
    }

    fn dlq_remove_key(&self, k: &[u8]) -> Result<bool> {
        match self.dlq.remove(k).map_err(|e| self.sled_err(e))? {
            Some(old) => {
                self.dlq_count.fetch_sub(1, SeqCst);
                self.dlq_bytes
                    .fetch_sub((k.len() + old.len()) as u64, SeqCst);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Evicts the oldest dead letters while the store exceeds `[dlq]` max_entries or
    /// max_bytes, or its oldest entry is older than max_age.
    fn enforce_dlq_retention(&self) -> Result<()> {
        let limits = &self.dlq_limits;
        let max_age_ms = u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = crate::record::now_ms().saturating_sub(max_age_ms);
        let mut evicted = 0u64;
        loop {
            let over = self.dlq_count.load(SeqCst) > limits.max_entries
                || self.dlq_bytes.load(SeqCst) > limits.max_bytes.bytes();
            let Some((k, v)) = self.dlq.first().map_err(|e| self.sled_err(e))? else {
                break;
            };
            let expired = !over
                && decode(&v)
                    .map(|r| r.meta.received_at_ms < cutoff)
                    .unwrap_or(false);
            if !(over || expired) {
                break;
            }
            if self.dlq_remove_key(&k)? {
                evicted += 1;
            }
        }
        if evicted > 0 {
            self.stats.dlq_evicted(evicted);
            tracing::warn!(
                evicted,
                max_entries = limits.max_entries,
                max_bytes = limits.max_bytes.bytes(),
                max_age_s = limits.max_age.as_secs(),
                "Local dead-letter store over its [dlq] bounds: evicted the oldest dead letters"
            );
        }
        Ok(())
    }

    /// One dead letter by id.
    pub fn dead_letter(&self, id: u64) -> Result<Option<Record>> {
        match self.dlq.get(key(id)).map_err(|e| self.sled_err(e))? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Removes a dead letter from the local store (replayed or purged); false if absent.
    pub fn remove_dead_letter(&self, id: u64) -> Result<bool> {
        self.dlq_remove_key(&key(id))
    }

    /// Records waiting in the queue, by route (`""` for records without one). Scans the queue.
    pub fn route_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut counts = std::collections::BTreeMap::new();
        for item in self.queue.iter() {
            let (_, v) = item.map_err(|e| self.sled_err(e))?;
            let route = decode(&v)
                .ok()
                .and_then(|r| r.meta.route)
                .unwrap_or_default();
            *counts.entry(route).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Every dead letter in the local store, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<Record>> {
        self.dlq
            .iter()
            .map(|item| {
                let (_, v) = item.map_err(|e| self.sled_err(e))?;
                decode(&v)
            })
            .collect()
    }

    /// Records moved to quarantine because they could not be decoded.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Flushes everything (used at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_err(e))
    }
}

enum Opened {
    Failed(sled::Error),
    Corrupt(String),
}

fn open_db(path: &Path) -> std::result::Result<sled::Db, Opened> {
    let path = path.to_owned();
    // sled 0.34 can panic on open of a damaged database (sled#1533); treat that as corruption.
    let result = std::panic::catch_unwind(move || {
        sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(1000))
            .open()
    });
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => {
            Err(Opened::Corrupt(e.to_string()))
        }
        Ok(Err(e)) => Err(Opened::Failed(e)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "sled panicked while opening".to_owned());
            Err(Opened::Corrupt(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use crate::record::Origin;

    fn record(topic: &str, payload: &[u8]) -> Record {
        Record {
            meta: Meta {
                gateway: "gw".into(),
                source: "m".into(),
                origin: Origin::Mqtt {
                    topic: "s/1".into(),
                },
                received_at_ms: 42,
                route: None,
                schema: None,
                kafka_topic: topic.into(),
                key: Some("d1".into()),
                dead_letter: None,
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn config(max: u64, policy: WhenFull) -> QueueConfig {
        QueueConfig {
            max_bytes: ByteSize(max),
            when_full: policy,
            ..QueueConfig::default()
        }
    }

    #[test]
    fn format_round_trips_binary_payloads() {
        let r = record("t", b"\x00\xff not utf8");
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        assert!(decode(b"XX\x01\0\0\0\0").is_err());
        assert!(decode(b"SG\x01\xff\xff\xff\xff{}").is_err());
    }

    #[tokio::test]
    async fn records_survive_reopen_in_order_and_leave_only_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let cfg = config(1 << 20, WhenFull::DropOldest);
        let mut seqs = Vec::new();
        let base;
        {
            let outbox = Outbox::open(dir.path(), &cfg, stats.clone()).unwrap();
            base = outbox.sequence_number(0);
            assert!(base >= crate::record::now_ms() * 1000 - 60_000_000);
            for i in 0..10u8 {
                match outbox.append(&mut record("t", &[i])).unwrap() {
                    Appended::Stored(seq) => seqs.push(seq),
                    Appended::Full => panic!("not full"),
                }
            }
            outbox.commit().await.unwrap();
            outbox.remove(&seqs[..3]).unwrap();
        }
        let outbox = Outbox::open(dir.path(), &cfg, stats).unwrap();
        let rest = outbox.read_after(None, 100).unwrap();
        assert_eq!(rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs[3..]);
        assert_eq!(rest[0].1.payload[..], [3]);
        assert_eq!(outbox.stats().depth, 7);
        assert_eq!(outbox.stats().oldest_received_ms, Some(42));
        let next = outbox.read_after(Some(seqs[8]), 100).unwrap();
        assert_eq!(next.len(), 1);
        // Sequence numbers keep increasing across a reopen.
        assert_eq!(
            outbox.sequence_number(0),
            base,
            "the sequence base survives a reopen"
        );
        let Appended::Stored(seq) = outbox.append(&mut record("t", b"x")).unwrap() else {
            panic!()
        };
        assert!(seq > seqs[9]);
    }

    #[tokio::test]
    async fn drop_oldest_evicts_and_counts_block_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let payload = vec![7u8; 10_000];
        let outbox = Outbox::open(
            dir.path(),
            &config(64 << 10, WhenFull::DropOldest),
            stats.clone(),
        )
        .unwrap();
        for _ in 0..20 {
            assert!(matches!(
                outbox.append(&mut record("t", &payload)).unwrap(),
                Appended::Stored(_)
            ));
        }
        let s = outbox.stats();
        assert!(s.bytes <= 64 << 10, "{s:?}");
        assert_eq!(
            stats.snapshot().dropped + s.depth,
            20,
            "every record is stored or counted"
        );

        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), &config(64 << 10, WhenFull::Block), stats).unwrap();
        let mut stored = 0;
        while let Appended::Stored(_) = outbox.append(&mut record("t", &payload)).unwrap() {
            stored += 1;
        }
        assert!(stored > 0 && outbox.stats().depth == stored);
    }

    #[tokio::test]
    async fn dead_letters_go_to_the_local_store_with_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            dir.path(),
            &config(1 << 20, WhenFull::Block),
            Arc::default(),
        )
        .unwrap();
        let mut dead = record("t.DLQ", b"{bad");
        // Recent, so that [dlq] max_age keeps it.
        dead.meta.received_at_ms = crate::record::now_ms();
        dead.meta.dead_letter = Some(DeadLetterInfo {
            id: 0,
            reason: Reason::NotJson,
            errors: vec![Violation::whole("nope")],
            original_len: None,
        });
        let Appended::Stored(seq) = outbox.append(&mut dead).unwrap() else {
            panic!()
        };
        let stored = outbox.dead_letters().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].meta.dead_letter.as_ref().unwrap().id, seq);
        assert_eq!(&stored[0].payload[..], b"{bad");

        let mut fresh = record("t", b"{}");
        fresh.meta.received_at_ms = crate::record::now_ms();
        let Appended::Stored(seq) = outbox.append(&mut fresh).unwrap() else {
            panic!()
        };
        let (_, rec) = outbox.read_after(None, 10).unwrap().pop().unwrap();
        outbox
            .reject(seq, rec, "Broker: Message size too large")
            .unwrap();
        let stored = outbox.dead_letters().unwrap();
        assert_eq!(
            stored[1].meta.dead_letter.as_ref().unwrap().reason,
            Reason::PublishRejected
        );
        assert_eq!(outbox.stats().depth, 1);
    }

    #[test]
    fn dlq_retention_evicts_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let limits = DlqConfig {
            max_entries: 3,
            ..DlqConfig::default()
        };
        let dead = |received_at_ms: u64| {
            let mut r = record("t.DLQ", b"{bad");
            r.meta.received_at_ms = received_at_ms;
            r.meta.dead_letter = Some(DeadLetterInfo {
                id: 0,
                reason: Reason::NotJson,
                errors: vec![],
                original_len: None,
            });
            r
        };
        let now = crate::record::now_ms();
        let cfg = config(1 << 20, WhenFull::DropOldest);
        let mut ids = Vec::new();
        {
            let outbox = Outbox::open_with(dir.path(), &cfg, &limits, stats.clone()).unwrap();
            for _ in 0..5 {
                let Appended::Stored(id) = outbox.append(&mut dead(now)).unwrap() else {
                    panic!()
                };
                ids.push(id);
            }
            let kept: Vec<u64> = outbox
                .dead_letters()
                .unwrap()
                .iter()
                .map(|r| r.meta.dead_letter.as_ref().unwrap().id)
                .collect();
            assert_eq!(kept, ids[2..], "the oldest two were evicted");
            assert_eq!(stats.snapshot().dlq_evicted, 2);
            assert_eq!(outbox.stats().dead_letters, 3);
            // An old one lands at the tail; age is checked on the oldest entry.
            outbox.remove_dead_letter(ids[2]).unwrap();
            outbox.remove_dead_letter(ids[3]).unwrap();
            outbox.remove_dead_letter(ids[4]).unwrap();
            outbox
                .append(&mut dead(now - 40 * 24 * 3600 * 1000))
                .unwrap();
            assert_eq!(outbox.stats().dead_letters, 0, "older than max_age");
            outbox.append(&mut dead(now)).unwrap();
            outbox.append(&mut dead(now)).unwrap();
            outbox.flush().unwrap();
        }
        // At open, with tighter bounds.
        let tight = DlqConfig {
            max_entries: 1,
            ..DlqConfig::default()
        };
        let outbox = Outbox::open_with(dir.path(), &cfg, &tight, stats.clone()).unwrap();
        assert_eq!(outbox.stats().dead_letters, 1);
        assert_eq!(stats.snapshot().dlq_evicted, 4);
        assert!(outbox.stats().dead_letter_bytes > 0);
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_a_fresh_one_opened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("conf"), b"garbage that is not a sled config\n").unwrap();
        std::fs::write(db.join("db"), vec![0xAB; 4096]).unwrap();
        let outbox = Outbox::open(dir.path(), &QueueConfig::default(), Arc::default()).unwrap();
        assert_eq!(outbox.stats().depth, 0);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("outbox.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the corrupt database is kept for recovery");
    }
}
