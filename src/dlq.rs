//! The local dead-letter store: every reading that failed (no route, not JSON, schema, too
//! large, refused by Kafka…) kept with its original bytes and metadata, for `sensorgate dlq
//! list|show|replay|purge|export`, bounded by `[dlq]` retention.
//!
//! It lives in the state directory's sled database (tree `dead_letters`). An entry is stored
//! as a one-record frame of the outbox's format ([`crate::outbox::codec`]), split into parts of
//! at most [`PART`] bytes under keys `e ‖ id (u64 BE) ‖ part (u16 BE)`, so that no sled write,
//! and no sled page holding up to 17 of them, ever exceeds sled's blob threshold
//! (segment_size / 4 = 128 KiB by default): sled writes larger values to `blobs/` files that it
//! never syncs. The entry count and bytes are kept under key `s`, updated in the same atomic
//! batch as the entries, so opening the store reads no entry.
//!
//! Writes are made durable by [`Dlq::sync`] (sled's flush, then `fsync` of its data file:
//! sled 0.34's own flush is only `sync_file_range`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::config::DlqConfig;
use crate::outbox::codec::{CodecError, Frame, FrameEncoder, RecordRef};
use crate::record::{DeadLetterInfo, Reason, Record, Violation};
use crate::telemetry::events::{DlqEvicted, Event as _};
use crate::telemetry::Stats;

/// Largest part of an entry.
pub const PART: usize = 4096;
const ENTRY: u8 = b'e';
const STATS_KEY: &[u8] = b"s";
/// Most bytes of a Kafka error message kept in a `publish-rejected` dead letter.
const MAX_ERROR_TEXT: usize = 1024;

/// Errors of the dead-letter store.
#[derive(Debug, Error)]
pub enum DlqError {
    /// sled failed.
    #[error("dead-letter store {path}: {source}")]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// Syncing sled's data file failed.
    #[error("fsync of {path}: {source}")]
    Sync {
        /// The data file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored entry does not decode.
    #[error("dead letter {id} is malformed: {error}")]
    Malformed {
        /// Its id.
        id: u64,
        /// What is wrong.
        error: CodecError,
    },
}

type Result<T, E = DlqError> = std::result::Result<T, E>;

fn key(id: u64, part: u16) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = ENTRY;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k[9..].copy_from_slice(&part.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> Option<u64> {
    (k.len() == 11 && k[0] == ENTRY).then(|| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&k[1..9]);
        u64::from_be_bytes(id)
    })
}

/// Count and bytes of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DlqSize {
    /// Entries.
    pub entries: u64,
    /// Their encoded bytes.
    pub bytes: u64,
}

/// The store.
#[derive(Debug)]
pub struct Dlq {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    limits: DlqConfig,
    entries: AtomicU64,
    bytes: AtomicU64,
    dirty: AtomicBool,
    fsync: bool,
    encoder: Mutex<(FrameEncoder, Vec<u8>)>,
    stats: Arc<Stats>,
}

impl Dlq {
    /// Opens the store in `db` (sled database at `path`), applying the retention at once.
    pub fn open(
        path: &Path,
        db: &sled::Db,
        limits: &DlqConfig,
        fsync: bool,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        let sled_err = |source| DlqError::Sled {
            path: path.to_owned(),
            source,
        };
        let tree = db.open_tree("dead_letters").map_err(sled_err)?;
        let size = match tree.get(STATS_KEY).map_err(sled_err)? {
            Some(v) if v.len() == 16 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&v[..8]);
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[8..]);
                DlqSize {
                    entries: u64::from_be_bytes(a),
                    bytes: u64::from_be_bytes(b),
                }
            }
            _ => DlqSize::default(),
        };
        let dlq = Self {
            path: path.to_owned(),
            db: db.clone(),
            tree,
            limits: limits.clone(),
            entries: AtomicU64::new(size.entries),
            bytes: AtomicU64::new(size.bytes),
            dirty: AtomicBool::new(false),
            fsync,
            encoder: Mutex::new((FrameEncoder::default(), Vec::new())),
            stats,
        };
        dlq.enforce_retention()?;
        Ok(dlq)
    }

    fn sled_err(&self, source: sled::Error) -> DlqError {
        DlqError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Count and bytes.
    pub fn size(&self) -> DlqSize {
        DlqSize {
            entries: self.entries.load(SeqCst),
            bytes: self.bytes.load(SeqCst),
        }
    }

    fn stats_value(entries: u64, bytes: u64) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&entries.to_be_bytes());
        v[8..].copy_from_slice(&bytes.to_be_bytes());
        v
    }

    /// Stores dead letters under their ids (not durable until [`Dlq::sync`]); an entry with an
    /// id already present replaces it. Then applies the retention.
    pub fn insert(&self, entries: &[(u64, &Record)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let (mut n, mut b) = (self.entries.load(SeqCst), self.bytes.load(SeqCst));
        {
            let mut guard = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
            let (encoder, buf) = &mut *guard;
            for (id, record) in entries {
                if let Some(old) = self.entry_len(*id)? {
                    self.stage_remove(&mut batch, *id)?;
                    n = n.saturating_sub(1);
                    b = b.saturating_sub(old);
                }
                encoder.begin(*id);
                encoder.push(record);
                buf.clear();
                encoder.finish_into(buf);
                for (part, piece) in buf.chunks(PART).enumerate() {
                    batch.insert(&key(*id, part as u16), piece);
                }
                n += 1;
                b += buf.len() as u64;
            }
        }
        batch.insert(STATS_KEY, &Self::stats_value(n, b));
        self.tree.apply_batch(batch).map_err(|e| self.sled_err(e))?;
        self.entries.store(n, SeqCst);
        self.bytes.store(b, SeqCst);
        self.dirty.store(true, SeqCst);
        self.enforce_retention()
    }

    /// Stores a record Kafka refused permanently as a `publish-rejected` dead letter under id
    /// `seq`. A record that already is a dead letter is in the store already (it went there
    /// when it arrived) and is left as it is.
    pub fn publish_rejected(&self, seq: u64, record: &RecordRef<'_>, error: &str) -> Result<()> {
        if record.dead.is_some() {
            return Ok(());
        }
        let mut text = format!(
            "Kafka refused the record for topic `{}` permanently: {error}",
            record.kafka_topic
        );
        if text.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let mut dead = record.to_record(seq);
        dead.meta.dead_letter = Some(Box::new(DeadLetterInfo {
            id: seq,
            reason: Reason::PublishRejected,
            errors: vec![Violation::whole(text)],
            original_len: None,
        }));
        self.insert(&[(seq, &dead)])?;
        self.stats.dead_letter(Reason::PublishRejected);
        Ok(())
    }

    fn entry_len(&self, id: u64) -> Result<Option<u64>> {
        let mut len = 0u64;
        let mut found = false;
        for item in self.tree.range(key(id, 0)..=key(id, u16::MAX)) {
            let (_, v) = item.map_err(|e| self.sled_err(e))?;
            len += v.len() as u64;
            found = true;
        }
        Ok(found.then_some(len))
    }

    fn stage_remove(&self, batch: &mut sled::Batch, id: u64) -> Result<()> {
        for item in self.tree.range(key(id, 0)..=key(id, u16::MAX)) {
            let (k, _) = item.map_err(|e| self.sled_err(e))?;
            batch.remove(k);
        }
        Ok(())
    }

    /// Removes entries (replayed or purged); returns the ids that were there.
    pub fn remove(&self, ids: &[u64]) -> Result<Vec<u64>> {
        let mut batch = sled::Batch::default();
        let (mut n, mut b) = (self.entries.load(SeqCst), self.bytes.load(SeqCst));
        let mut removed = Vec::new();
        for id in ids {
            if let Some(len) = self.entry_len(*id)? {
                self.stage_remove(&mut batch, *id)?;
                n = n.saturating_sub(1);
                b = b.saturating_sub(len);
                removed.push(*id);
            }
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        batch.insert(STATS_KEY, &Self::stats_value(n, b));
        self.tree.apply_batch(batch).map_err(|e| self.sled_err(e))?;
        self.entries.store(n, SeqCst);
        self.bytes.store(b, SeqCst);
        self.dirty.store(true, SeqCst);
        Ok(removed)
    }

    /// One dead letter by id.
    pub fn get(&self, id: u64) -> Result<Option<Record>> {
        let mut bytes = Vec::new();
        for item in self.tree.range(key(id, 0)..=key(id, u16::MAX)) {
            let (_, v) = item.map_err(|e| self.sled_err(e))?;
            bytes.extend_from_slice(&v);
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        decode(id, &bytes).map(Some)
    }

    /// Visits every dead letter, oldest first, until `visit` returns false.
    pub fn for_each(&self, mut visit: impl FnMut(Record) -> bool) -> Result<()> {
        let mut current: Option<(u64, Vec<u8>)> = None;
        for item in self.tree.range(key(0, 0)..) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let Some(id) = id_of(&k) else { break };
            match &mut current {
                Some((cur, bytes)) if *cur == id => bytes.extend_from_slice(&v),
                _ => {
                    if let Some((done, bytes)) = current.take() {
                        if !visit(decode(done, &bytes)?) {
                            return Ok(());
                        }
                    }
                    current = Some((id, v.to_vec()));
                }
            }
        }
        if let Some((done, bytes)) = current {
            visit(decode(done, &bytes)?);
        }
        Ok(())
    }

    /// Visits the dead letters newest first until `visit` returns false: reads only as far as it
    /// goes (`sensorgate top`'s `d` view and `dlq list --limit` on a full store).
    pub fn for_each_newest(&self, mut visit: impl FnMut(Record) -> bool) -> Result<()> {
        // Parts come last part first: collect them in reverse, then put them in order.
        let mut current: Option<(u64, Vec<sled::IVec>)> = None;
        let finish = |id: u64, mut parts: Vec<sled::IVec>| {
            parts.reverse();
            decode(id, &parts.concat())
        };
        for item in self.tree.range(key(0, 0)..=key(u64::MAX, u16::MAX)).rev() {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let Some(id) = id_of(&k) else { continue };
            match &mut current {
                Some((cur, parts)) if *cur == id => parts.push(v),
                _ => {
                    if let Some((done, parts)) = current.take() {
                        if !visit(finish(done, parts)?) {
                            return Ok(());
                        }
                    }
                    current = Some((id, vec![v]));
                }
            }
        }
        if let Some((done, parts)) = current {
            visit(finish(done, parts)?);
        }
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub fn all(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.for_each(|r| {
            out.push(r);
            true
        })?;
        Ok(out)
    }

    fn oldest(&self) -> Result<Option<Record>> {
        let mut first = None;
        self.for_each(|r| {
            first = Some(r);
            false
        })?;
        Ok(first)
    }

    /// Evicts the oldest dead letters while the store exceeds `[dlq]` max_entries or max_bytes,
    /// or its oldest entry is older than max_age.
    fn enforce_retention(&self) -> Result<()> {
        let limits = &self.limits;
        let max_age_ms = u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = crate::record::now_ms().saturating_sub(max_age_ms);
        let mut evicted = 0u64;
        loop {
            let size = self.size();
            let over = size.entries > limits.max_entries || size.bytes > limits.max_bytes.bytes();
            let Some(oldest) = self.oldest()? else { break };
            if !(over || oldest.meta.received_at_ms < cutoff) {
                break;
            }
            let id = oldest.meta.dead_letter.as_ref().map_or(0, |d| d.id);
            if self.remove(&[id])?.is_empty() {
                break;
            }
            evicted += 1;
        }
        if evicted > 0 {
            DlqEvicted {
                evicted,
                max_entries: limits.max_entries,
                max_bytes: limits.max_bytes.bytes(),
                max_age_s: limits.max_age.as_secs(),
            }
            .emit(&self.stats);
        }
        Ok(())
    }

    /// Whether writes are waiting for [`Dlq::sync`].
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(SeqCst)
    }

    /// Makes every write so far durable: sled's flush, then `fsync` of its data file (unless
    /// `[queue] fsync = false`).
    pub fn sync(&self) -> Result<()> {
        if !self.dirty.swap(false, SeqCst) {
            return Ok(());
        }
        let result = sync_db(&self.db, &self.path, self.fsync);
        if result.is_err() {
            self.dirty.store(true, SeqCst);
        }
        result
    }
}

/// What a dead letter becomes when replayed: the record to queue again, or why it still fails.
/// `publish-rejected` entries go again as they were (Kafka refused them, not our rules);
/// `too-large` ones cannot (only a prefix was kept); the others are routed and validated again
/// by `reclassify` (the current rules).
pub fn replayed(
    record: &Record,
    reclassify: impl FnOnce(crate::record::Reading) -> Record,
) -> Result<Record, (Reason, Vec<Violation>)> {
    let Some(info) = record.meta.dead_letter.as_deref() else {
        return Err((Reason::NoRoute, vec![Violation::whole("not a dead letter")]));
    };
    match info.reason {
        Reason::PublishRejected => {
            let mut again = record.clone();
            again.meta.dead_letter = None;
            Ok(again)
        }
        Reason::TooLarge => Err((
            Reason::TooLarge,
            vec![Violation::whole(
                "the payload was truncated when stored; it cannot be replayed",
            )],
        )),
        _ => {
            let again = reclassify(crate::record::Reading {
                source: record.meta.source.clone(),
                origin: record.meta.origin.clone(),
                payload: record.payload.clone(),
                received_at_ms: record.meta.received_at_ms,
            });
            match again.meta.dead_letter {
                None => Ok(again),
                Some(now) => Err((now.reason, now.errors)),
            }
        }
    }
}

/// sled's flush, then (with `fsync`) an `fsync` of its data file.
pub fn sync_db(db: &sled::Db, path: &Path, fsync: bool) -> Result<()> {
    db.flush().map_err(|source| DlqError::Sled {
        path: path.to_owned(),
        source,
    })?;
    if fsync {
        let data = path.join("db");
        std::fs::File::open(&data)
            .and_then(|f| f.sync_all())
            .map_err(|source| DlqError::Sync { path: data, source })?;
    }
    Ok(())
}

fn decode(id: u64, bytes: &[u8]) -> Result<Record> {
    let malformed = |error| DlqError::Malformed { id, error };
    let frame = Frame::parse(bytes).map_err(malformed)?;
    let (seq, record) = frame
        .records()
        .next()
        .ok_or(CodecError::Truncated("dead letter"))
        .map_err(malformed)?
        .map_err(malformed)?;
    let mut record = record.to_record(seq);
    if let Some(info) = &mut record.meta.dead_letter {
        info.id = id;
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Meta, Origin};
    use bytes::Bytes;

    fn dead(received_at_ms: u64, payload: Vec<u8>) -> Record {
        Record {
            meta: Meta {
                gateway: "gw".into(),
                source: "m".into(),
                origin: Origin::Mqtt {
                    topic: "s/1".into(),
                },
                received_at_ms,
                route: None,
                schema: None,
                kafka_topic: "t.DLQ".into(),
                key: None,
                dead_letter: Some(Box::new(DeadLetterInfo {
                    id: 0,
                    reason: Reason::NotJson,
                    errors: vec![Violation::whole("nope")],
                    original_len: None,
                })),
            },
            payload: Bytes::from(payload),
        }
    }

    fn open(dir: &Path, limits: &DlqConfig, stats: Arc<Stats>) -> Dlq {
        let db = sled::Config::new().path(dir).open().unwrap();
        Dlq::open(dir, &db, limits, true, stats).unwrap()
    }

    #[test]
    fn entries_of_any_size_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::record::now_ms();
        let big = vec![7u8; 300_000];
        {
            let dlq = open(dir.path(), &DlqConfig::default(), Arc::default());
            dlq.insert(&[
                (5, &dead(now, b"{bad".to_vec())),
                (9, &dead(now, big.clone())),
            ])
            .unwrap();
            dlq.sync().unwrap();
            assert_eq!(dlq.size().entries, 2);
        }
        let dlq = open(dir.path(), &DlqConfig::default(), Arc::default());
        assert_eq!(dlq.size().entries, 2, "counts are persisted");
        let nine = dlq.get(9).unwrap().unwrap();
        assert_eq!(nine.payload.len(), big.len());
        assert_eq!(nine.meta.dead_letter.as_ref().unwrap().id, 9);
        let ids: Vec<u64> = dlq
            .all()
            .unwrap()
            .iter()
            .map(|r| r.meta.dead_letter.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, [5, 9]);
        let mut newest = Vec::new();
        dlq.for_each_newest(|r| {
            newest.push((r.meta.dead_letter.as_ref().unwrap().id, r.payload.len()));
            true
        })
        .unwrap();
        assert_eq!(
            newest,
            [(9, big.len()), (5, 4)],
            "a big entry's parts in order"
        );
        let mut first = None;
        dlq.for_each_newest(|r| {
            first = Some(r.payload.len());
            false
        })
        .unwrap();
        assert_eq!(first, Some(big.len()));
        assert_eq!(dlq.remove(&[9, 10]).unwrap(), [9]);
        assert_eq!(dlq.size().entries, 1);
        assert!(dlq.get(9).unwrap().is_none());
        assert!(
            !dir.path().join("blobs").exists()
                || std::fs::read_dir(dir.path().join("blobs"))
                    .unwrap()
                    .next()
                    .is_none(),
            "no sled blob file was written"
        );
    }

    #[test]
    fn retention_evicts_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let limits = DlqConfig {
            max_entries: 3,
            ..DlqConfig::default()
        };
        let now = crate::record::now_ms();
        let dlq = open(dir.path(), &limits, stats.clone());
        for id in 1..=5 {
            dlq.insert(&[(id, &dead(now, b"x".to_vec()))]).unwrap();
        }
        let ids: Vec<u64> = dlq
            .all()
            .unwrap()
            .iter()
            .map(|r| r.meta.dead_letter.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(stats.snapshot().dlq_evicted, 2);
        dlq.remove(&[3, 4, 5]).unwrap();
        dlq.insert(&[(6, &dead(now - 40 * 24 * 3600 * 1000, b"x".to_vec()))])
            .unwrap();
        assert_eq!(dlq.size().entries, 0, "older than max_age");
    }
}
