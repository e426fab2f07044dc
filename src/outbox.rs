//! The outbox: the durable, bounded log of records waiting for Kafka, written in group commits
//! and read in order by the publisher.
//!
//! # Layout (format version 2)
//! ```text
//! <state_dir>/queue/<first seq, 20 digits>.seg   the log: segment files of frames
//! <state_dir>/outbox/                             sled: tree `meta` (below), tree
//!                                                 `dead_letters` (the local DLQ, crate::dlq)
//! ```
//! A *frame* holds the records of one commit (several frames when the commit is large); a
//! *segment* holds frames up to about `segment_bytes` (max_bytes / 64, 256 KiB to 4 MiB).
//!
//! ```text
//! segment header   0 "SGQS"  4 version u32 = 2   8 first seq u64   16 reserved u64
//! frame            0 "SGF2"  4 body length u32   8 CRC-32 of the body
//! frame body       0 first seq u64   8 record count u32   12 string count u16
//!                  14 strings: (length u16, UTF-8 bytes)…   then the records:
//! record           flags u8 (1 dead letter, 2 key, 4 route, 8 schema, 16 original length,
//!                  32 origin is a serial port) · received_at_ms u64 · gateway, source, origin,
//!                  Kafka topic: string indexes u16 · [route] [schema] [key] u16 ·
//!                  [dead letter: reason u8, errors length u32, errors JSON, [original length
//!                  u64]] · payload length u32 · payload bytes exactly as received
//! ```
//! Integers are little-endian. Sequence numbers here are *local*: the `sensorgate.seq` header is
//! the local number plus `seq_base` (see below). A dead letter's id in the local DLQ is its
//! local sequence number.
//!
//! `meta` holds `format` (u32 BE, 2), `seq_base` (u64 BE), `settled` (u64 BE: every record
//! below it is delivered, dead-lettered or dropped; written lazily) and `next_seq_floor` (u64 BE:
//! no sequence number below it will be issued again).
//!
//! # Invariants
//! - A record is acknowledged to its source only after the commit that holds it returned:
//!   its frame was appended and `fdatasync`ed (data and file size), a new segment file's
//!   directory entry `fsync`ed, and dead letters in the same commit inserted into sled and made
//!   durable with sled's flush plus an `fsync` of sled's data file. sled never sees a value
//!   over 4 KiB ([`crate::dlq::PART`]), so it never writes a blob file that nothing syncs.
//! - Records leave only when settled: Kafka confirmed them, they moved to the local DLQ
//!   (`publish-rejected`), or `drop-oldest` evicted them (counted). The publisher reports the
//!   settled watermark; segments wholly below it are deleted (never the newest). A lost deletion
//!   or a stale watermark after a crash means duplicates, never a loss. Before a segment is
//!   deleted, dead letters written since the last commit (publish-rejected ones) are synced.
//! - Local sequence numbers only grow: across restarts (the newest segment is kept, and
//!   `next_seq_floor`), and `seq_base` (the database's creation time in ms × 1000) keeps
//!   `sensorgate.seq` growing across a wiped or moved-aside state directory as long as the clock
//!   was set when the database was created.
//! - The byte bound (`[queue] max_bytes`) counts segment file bytes. Under `drop-oldest` the
//!   oldest segment the publisher has not started to send is evicted whole (its records counted
//!   as dropped); under `block` the committer holds acknowledgements until room appears.
//! - Dead letters have their own bound under `drop-oldest` (`[queue] dead_letter_share` of
//!   `max_bytes`): eviction frees whole segments, readings and dead letters alike, so a flood of
//!   junk would otherwise push valid readings out. The ledger counts the dead letters' bytes per
//!   segment until the segment goes; at the bound the committer drops new dead letters (counted,
//!   acknowledged, never stored) rather than let them take more. Segments found at open count
//!   no dead letters (that would need a full read), so after a restart the junk already queued
//!   can be joined by one more share.
//!
//! # Crashes and damage
//! - A torn tail (a commit cut off by a crash or power cut; none of its records was
//!   acknowledged) is cut off at open.
//! - A frame that fails its checksum anywhere else is corruption: the damaged range is skipped
//!   to the next good frame, logged as an error naming the file, offset and records lost, and
//!   counted (`sensorgate_outbox_corrupt_records_total`); the file is kept (renamed
//!   `.corrupt`) instead of deleted.
//! - If sled reports corruption (or panics) opening `outbox/`, that directory is moved to
//!   `outbox.corrupt-<unix seconds>` and a fresh one created; the log in `queue/` is untouched.
//!
//! # Migration
//! A state directory of format 1 (one sled key per record in tree `queue`, JSON metadata) is
//! migrated on first start by [`migrate`]: every record is rewritten into segments under its
//! old sequence number, dead letters into the new store, then `format` is set and the old trees
//! dropped. A crash part-way redoes the migration at the next start.
//!
//! # Why segment files beside sled
//! Measured on this project's machines with sled 0.34 holding the records (one key per commit
//! chunk): writes of 4.2–5.3× the stored bytes (every leaf split and consolidation rewrites the
//! values in it), and a resident set that grows with the backlog whatever `cache_capacity` says
//! (107 MiB for 150 MB queued with a 4 MiB cache: its 256-shard LRU only evicts after 64
//! accesses to a shard, which batched writes never make). An append-only log written once and
//! read once writes ~1.0× and holds one frame in memory. sled keeps what suits it: the dead
//! letters (random access, listing, purge) and the metadata.

pub mod codec;
pub mod committer;
mod migrate;
pub mod segment;
mod watermark;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::config::{DlqConfig, QueueConfig, WhenFull};
use crate::dlq::{Dlq, DlqError};
use crate::record::Record;
use crate::telemetry::events::{Event as _, OutboxCorrupt, OutboxEvicted};
use crate::telemetry::Stats;
use codec::FrameEncoder;
use segment::{SegmentError, Writer};
use watermark::WatermarkFile;

/// A frame is closed once it holds this many bytes.
pub const FRAME_TARGET: usize = 64 << 10;
const FORMAT: u32 = 2;
/// What [`Outbox::probe_writable`] writes: room for a commit and sled's next log buffer.
pub const PROBE_BYTES: usize = 256 * 1024;
/// How often the settled watermark is written to its file at most ([`watermark`]).
const PERSIST_EVERY: Duration = Duration::from_millis(100);

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
    /// A segment file failed.
    #[error("outbox segment {0}")]
    Segment(#[from] SegmentError),
    /// The dead-letter store failed.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// Syncing a commit failed: nothing in it was acknowledged.
    #[error("outbox commit not durable: {0}")]
    Sync(String),
    /// The state directory was written by a newer release.
    #[error("{path}: outbox format {found} is newer than this release understands ({FORMAT})")]
    Newer {
        /// The database directory.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// A format-1 record could not be migrated.
    #[error("stored record is malformed: {0}")]
    Format(String),
    /// A write error that only reopening the database clears (see [`OutboxError::latches`]);
    /// the committer stops with it once the disk accepts writes again, so the service restarts.
    #[error(
        "the dead-letter database must be reopened after a write error ({0}); stopping so that \
         the service restarts (nothing of the failed commit was acknowledged)"
    )]
    Latched(Box<OutboxError>),
}

impl OutboxError {
    /// Whether retrying cannot help until the database is reopened: sled latches its first I/O
    /// error (ENOSPC included) and returns it from then on, and after a failed `fsync` of its
    /// data file nobody can tell which of its writes reached the disk. A failed segment write
    /// or sync does not latch: the commit is written again, whole, to a fresh segment file.
    pub fn latches(&self) -> bool {
        matches!(
            self,
            Self::Sled { .. } | Self::Dlq(DlqError::Sled { .. } | DlqError::Sync { .. })
        )
    }
}

type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Outbox depth and age, for `queue stats`, status lines and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Records waiting.
    pub depth: u64,
    /// Bytes of the segment files holding them.
    pub bytes: u64,
    /// When the oldest waiting record was received (ms since the epoch).
    pub oldest_received_ms: Option<u64>,
    /// Dead letters in the local store.
    pub dead_letters: u64,
    /// Their bytes.
    #[serde(default)]
    pub dead_letter_bytes: u64,
}

/// A committed segment.
#[derive(Debug, Clone)]
struct Seg {
    first_seq: u64,
    /// After the last record (the next segment's first, or the committed end).
    end_seq: u64,
    /// Committed bytes.
    bytes: u64,
    /// Of those, dead letters' records committed since the gateway started (not counted for
    /// segments found at open: reading them all back would cost a full scan).
    dead_bytes: u64,
    path: PathBuf,
    damaged: bool,
}

/// What the committer and the publisher share about the log.
#[derive(Debug)]
struct Ledger {
    segments: VecDeque<Seg>,
    /// After the last committed record.
    next_seq: u64,
    /// Every record below is settled.
    settled: u64,
    /// Records at or above `settled` that are settled too (out-of-order confirmations).
    settled_above: u64,
    /// The publisher has handed everything below this to Kafka (or settled it).
    sent: u64,
    /// Evicted by drop-oldest and not yet passed by the publisher.
    evicted: Option<(u64, u64)>,
    bytes: u64,
    /// Dead letters' bytes in the segments (see [`Seg::dead_bytes`]).
    dead_bytes: u64,
    oldest_ms: Option<u64>,
    persisted: u64,
    persisted_at: Instant,
}

/// Where the committer appends: the newest segment.
#[derive(Debug)]
struct Tail {
    writer: Writer,
    /// The directory entry of the newest segment file is not yet synced.
    dir_dirty: bool,
    /// A commit failed in this segment: the next one starts a new segment.
    poisoned: bool,
}

/// The durable log and its dead-letter store.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    db_path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    dlq: Arc<Dlq>,
    seq_base: u64,
    max_bytes: u64,
    /// The most [`Ledger::dead_bytes`] under `drop-oldest` ([`QueueConfig::dead_letter_bytes`]).
    dead_letter_max: u64,
    segment_bytes: u64,
    policy: WhenFull,
    fsync: bool,
    ledger: Mutex<Ledger>,
    room: Condvar,
    tail: Mutex<Tail>,
    watermark: Mutex<WatermarkFile>,
    stats: Arc<Stats>,
}

/// Records encoded for one commit. Keep one and reuse it ([`Outbox::begin`]).
#[derive(Debug, Default)]
pub struct Batch {
    enc: FrameEncoder,
    frames: Vec<u8>,
    first_seq: u64,
    records: u64,
    dead: Vec<u64>,
    dead_bytes: u64,
}

impl Batch {
    /// Encodes a record into the batch; returns its local sequence number.
    pub fn push(&mut self, record: &Record) -> u64 {
        if !self.enc.is_empty()
            && (self.enc.encoded_len() >= FRAME_TARGET || !self.enc.has_room_for_strings())
        {
            self.close_frame();
        }
        let before = self.encoded_len();
        let seq = self.enc.push(record);
        self.records += 1;
        if record.meta.dead_letter.is_some() {
            self.dead.push(seq);
            self.dead_bytes += self.encoded_len().saturating_sub(before) as u64;
        }
        seq
    }

    /// Encoded bytes of the batch's dead letters.
    pub fn dead_bytes(&self) -> u64 {
        self.dead_bytes
    }

    fn close_frame(&mut self) {
        if !self.enc.is_empty() {
            self.enc.finish_into(&mut self.frames);
            let next = self.enc.next_seq();
            self.enc.begin(next);
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Encoded bytes so far.
    pub fn encoded_len(&self) -> usize {
        self.frames.len()
            + if self.enc.is_empty() {
                0
            } else {
                self.enc.encoded_len()
            }
    }

    /// The finished frames (all of them once committed).
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// Local sequence numbers of the dead letters in the batch, in order.
    pub fn dead_letters(&self) -> &[u64] {
        &self.dead
    }

    /// The next record's local sequence number.
    pub fn next_seq(&self) -> u64 {
        self.enc.next_seq()
    }
}

/// What a commit made durable: its frames, for the publisher.
#[derive(Debug)]
pub struct Committed {
    /// Local sequence number of the first record.
    pub first_seq: u64,
    /// After the last record.
    pub end_seq: u64,
    /// The frames, back to back.
    pub frames: Bytes,
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// `block` policy and no room: nothing was written; try again when room appears.
    Full,
    /// Writing or syncing failed: nothing in the batch is durable.
    Failed(OutboxError),
}

impl Outbox {
    /// Opens (or creates) the outbox in `state_dir`: sled database (moved aside if corrupt),
    /// migration of an older format, the newest segment checked and its torn tail cut.
    pub fn open(
        state_dir: &Path,
        config: &QueueConfig,
        dlq: &DlqConfig,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|source| OutboxError::StateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let db_path = state_dir.join("outbox");
        let dir = state_dir.join("queue");
        let db = open_db(state_dir, &db_path, config)?;
        let sled_err = |source| OutboxError::Sled {
            path: db_path.clone(),
            source,
        };
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let seq_base = match meta.get("seq_base").map_err(sled_err)? {
            Some(v) => be_u64(&v),
            None => {
                let base = crate::record::now_ms().saturating_mul(1000);
                meta.insert("seq_base", &base.to_be_bytes())
                    .map_err(sled_err)?;
                base
            }
        };
        let dlq = Arc::new(Dlq::open(&db_path, &db, dlq, config.fsync, stats.clone())?);
        match meta
            .get("format")
            .map_err(sled_err)?
            .map(|v| be_u64(&v) as u32)
        {
            Some(FORMAT) => migrate::drop_leftovers(&db).map_err(sled_err)?,
            Some(found) if found > FORMAT => {
                return Err(OutboxError::Newer {
                    path: db_path,
                    found,
                })
            }
            _ => migrate::from_v1(&db, &db_path, &meta, &dir, &dlq, config.fsync)?,
        }
        std::fs::create_dir_all(&dir).map_err(|source| OutboxError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let floor = meta
            .get("next_seq_floor")
            .map_err(sled_err)?
            .map_or(0, |v| be_u64(&v));
        let settled = meta
            .get("settled")
            .map_err(sled_err)?
            .map_or(0, |v| be_u64(&v));

        let (watermark, in_file) =
            WatermarkFile::open(&dir).map_err(|source| OutboxError::StateDir {
                path: dir.join(watermark::NAME),
                source,
            })?;
        let settled = settled.max(in_file.unwrap_or(0));
        let (segments, tail, bytes) = open_segments(&dir, floor, &stats)?;
        let next_seq = tail.writer.end_seq();
        let settled = settled.clamp(segments.front().map_or(next_seq, |s| s.first_seq), next_seq);
        let segment_bytes = (config.max_bytes.bytes() / 64).clamp(256 << 10, 4 << 20);
        let outbox = Self {
            dir,
            db_path,
            db,
            meta,
            dlq,
            seq_base,
            max_bytes: config.max_bytes.bytes(),
            dead_letter_max: config.dead_letter_bytes(),
            segment_bytes,
            policy: config.when_full,
            fsync: config.fsync,
            ledger: Mutex::new(Ledger {
                segments,
                next_seq,
                settled,
                settled_above: 0,
                sent: settled,
                evicted: None,
                bytes,
                dead_bytes: 0,
                oldest_ms: None,
                persisted: settled,
                persisted_at: Instant::now(),
            }),
            room: Condvar::new(),
            tail: Mutex::new(tail),
            watermark: Mutex::new(watermark),
            stats,
        };
        let oldest = outbox.first_received_at(settled);
        outbox.ledger().oldest_ms = oldest;
        Ok(outbox)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sled_err(&self, source: sled::Error) -> OutboxError {
        OutboxError::Sled {
            path: self.db_path.clone(),
            source,
        }
    }

    /// The local dead-letter store.
    pub fn dlq(&self) -> &Arc<Dlq> {
        &self.dlq
    }

    /// The `sensorgate.seq` header value for local sequence number `seq`.
    pub fn sequence_number(&self, seq: u64) -> u64 {
        self.seq_base.saturating_add(seq)
    }

    /// An empty batch that starts after everything committed so far.
    pub fn batch(&self) -> Batch {
        let mut batch = Batch::default();
        self.begin(&mut batch);
        batch
    }

    /// Empties `batch` and starts it after everything committed so far.
    pub fn begin(&self, batch: &mut Batch) {
        let next = self.ledger().next_seq;
        batch.enc.begin(next);
        batch.frames.clear();
        batch.frames.shrink_to(codec::RETAINED_BYTES);
        batch.first_seq = next;
        batch.records = 0;
        batch.dead.clear();
        batch.dead_bytes = 0;
    }

    /// Makes a batch durable (see the module doc for what that takes). `dead` holds the batch's
    /// dead letters as records, in the order [`Batch::dead_letters`] lists their ids; they are
    /// stored in the local DLQ in the same commit. On success the batch's frames stay readable
    /// ([`Batch::frames`]) until [`Outbox::begin`]; the returned [`Committed`] has no frames.
    pub fn commit(
        &self,
        batch: &mut Batch,
        dead: &[&Record],
    ) -> std::result::Result<Committed, CommitError> {
        batch.close_frame();
        let need = batch.frames.len() as u64;
        if need == 0 {
            return Ok(Committed {
                first_seq: batch.first_seq,
                end_seq: batch.first_seq,
                frames: Bytes::new(),
            });
        }
        self.make_room(need)?;
        let end_seq = batch.enc.next_seq();
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let full = !tail.writer.is_empty()
            && tail.writer.len() + need > self.segment_bytes.max(need + segment::HEADER_LEN);
        if tail.poisoned || full {
            self.new_segment(&mut tail, batch.first_seq)
                .map_err(CommitError::Failed)?;
        }
        let before = tail.writer.len();
        if let Err(e) = self.write_and_sync(&mut tail, batch, dead, end_seq) {
            // Nothing of the batch may count as stored: cut the file back, and put the next
            // attempt in a fresh segment (after a failed fsync, what the kernel caches of the
            // file cannot be trusted to reach the disk).
            let _ = tail.writer.truncate(before, batch.first_seq);
            tail.poisoned = true;
            return Err(CommitError::Failed(e));
        }
        let mut ledger = self.ledger();
        ledger.next_seq = end_seq;
        ledger.bytes += need;
        ledger.dead_bytes += batch.dead_bytes;
        if let Some(last) = ledger.segments.back_mut() {
            last.end_seq = end_seq;
            last.bytes = tail.writer.len();
            last.dead_bytes += batch.dead_bytes;
        }
        if ledger.oldest_ms.is_none() {
            ledger.oldest_ms = first_received_in(&batch.frames);
        }
        drop(ledger);
        drop(tail);
        Ok(Committed {
            first_seq: batch.first_seq,
            end_seq,
            frames: Bytes::new(),
        })
    }

    /// Starts a new newest segment at `first_seq` (replacing the current one if it holds no
    /// frame).
    fn new_segment(&self, tail: &mut Tail, first_seq: u64) -> Result<()> {
        let mut ledger = self.ledger();
        if tail.writer.is_empty() {
            if let Some(last) = ledger.segments.pop_back() {
                ledger.bytes = ledger.bytes.saturating_sub(last.bytes);
                ledger.dead_bytes = ledger.dead_bytes.saturating_sub(last.dead_bytes);
                let _ = std::fs::remove_file(&last.path);
            }
        }
        let writer = Writer::create(&self.dir, first_seq)?;
        ledger.segments.push_back(Seg {
            first_seq,
            end_seq: first_seq,
            bytes: writer.len(),
            dead_bytes: 0,
            path: writer.path().to_owned(),
            damaged: false,
        });
        ledger.bytes += writer.len();
        tail.writer = writer;
        tail.dir_dirty = true;
        tail.poisoned = false;
        Ok(())
    }

    fn write_and_sync(
        &self,
        tail: &mut Tail,
        batch: &Batch,
        dead: &[&Record],
        end_seq: u64,
    ) -> Result<()> {
        tail.writer.append(&batch.frames, end_seq)?;
        if !dead.is_empty() {
            let entries: Vec<(u64, &Record)> = batch
                .dead
                .iter()
                .copied()
                .zip(dead.iter().copied())
                .collect();
            self.dlq.insert(&entries)?;
        }
        if self.fsync {
            tail.writer
                .sync()
                .map_err(|e| OutboxError::Sync(e.to_string()))?;
            if tail.dir_dirty {
                segment::sync_dir(&self.dir).map_err(|e| OutboxError::Sync(e.to_string()))?;
            }
        }
        tail.dir_dirty = false;
        self.dlq.sync()?;
        Ok(())
    }

    /// Under `drop-oldest` evicts whole segments the publisher has not started on until `need`
    /// more bytes fit; under `block` reports [`CommitError::Full`].
    fn make_room(&self, need: u64) -> std::result::Result<(), CommitError> {
        let mut ledger = self.ledger();
        if ledger.bytes + need <= self.max_bytes || ledger.segments.len() <= 1 {
            // Within the bound, or nothing but the newest segment to free: go over it rather
            // than refuse a batch larger than the bound.
            return Ok(());
        }
        if self.policy == WhenFull::Block {
            return Err(CommitError::Full);
        }
        let mut evicted_records = 0u64;
        let mut doomed = Vec::new();
        while ledger.bytes + need > self.max_bytes {
            // The newest segment is being appended to; segments the publisher has sent from
            // are in flight.
            let last = ledger.segments.len().saturating_sub(1);
            let sent = ledger.sent;
            let Some(i) = (0..last).find(|&i| ledger.segments[i].first_seq >= sent) else {
                break;
            };
            let Some(seg) = ledger.segments.remove(i) else {
                break;
            };
            ledger.bytes = ledger.bytes.saturating_sub(seg.bytes);
            ledger.dead_bytes = ledger.dead_bytes.saturating_sub(seg.dead_bytes);
            evicted_records += seg.end_seq - seg.first_seq;
            ledger.evicted = Some(match ledger.evicted {
                Some((a, b)) if b == seg.first_seq => (a, seg.end_seq),
                _ => (seg.first_seq, seg.end_seq),
            });
            doomed.push(seg);
        }
        drop(ledger);
        for seg in &doomed {
            remove_segment(seg);
        }
        if evicted_records > 0 {
            OutboxEvicted {
                records: evicted_records,
                max_bytes: self.max_bytes,
            }
            .emit(&self.stats);
        }
        Ok(())
    }

    /// How many more bytes of dead letters the log takes ([`QueueConfig::dead_letter_bytes`]
    /// less those in it); the committer drops new dead letters (counted) when none.
    pub fn dead_letter_room(&self) -> u64 {
        self.dead_letter_max
            .saturating_sub(self.ledger().dead_bytes)
    }

    /// Whether the disks take writes again: writes [`PROBE_BYTES`] to a scratch file in the
    /// queue directory and in the database's directory (they may be different filesystems; a
    /// latched database error came from the second), syncs and deletes each.
    pub fn probe_writable(&self) -> std::io::Result<()> {
        for dir in [&self.dir, &self.db_path] {
            let path = dir.join(".probe");
            let result = std::fs::File::create(&path).and_then(|mut f| {
                std::io::Write::write_all(&mut f, &[0u8; PROBE_BYTES])?;
                f.sync_all()
            });
            let _ = std::fs::remove_file(&path);
            result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Waits until the publisher freed space, or `timeout` passed (for the `block` policy).
    pub fn wait_for_room(&self, timeout: Duration) {
        let ledger = self.ledger();
        let _ = self.room.wait_timeout(ledger, timeout);
    }

    /// The publisher's progress: every record below `settled` is settled, and `above` more
    /// at or above it; everything below `sent` was handed to Kafka; `oldest_ms` is when the
    /// oldest unsettled record was received. Deletes segments wholly below `settled` (never the
    /// newest), syncing the dead-letter store first, and writes the watermark now and then.
    pub fn settle(
        &self,
        settled: u64,
        above: u64,
        sent: u64,
        oldest_ms: Option<u64>,
    ) -> Result<()> {
        let mut doomed = Vec::new();
        let persist = {
            let mut ledger = self.ledger();
            ledger.settled = settled.max(ledger.settled).min(ledger.next_seq);
            ledger.settled_above = above;
            ledger.sent = sent.max(ledger.settled);
            ledger.oldest_ms = oldest_ms;
            if let Some((_, end)) = ledger.evicted {
                if ledger.sent >= end {
                    ledger.evicted = None;
                }
            }
            while ledger.segments.len() > 1 && ledger.segments[0].end_seq <= ledger.settled {
                if let Some(seg) = ledger.segments.pop_front() {
                    ledger.bytes = ledger.bytes.saturating_sub(seg.bytes);
                    ledger.dead_bytes = ledger.dead_bytes.saturating_sub(seg.dead_bytes);
                    doomed.push(seg);
                }
            }
            let due = ledger.settled != ledger.persisted
                && (!doomed.is_empty() || ledger.persisted_at.elapsed() >= PERSIST_EVERY);
            if due {
                ledger.persisted = ledger.settled;
                ledger.persisted_at = Instant::now();
            }
            due.then_some(ledger.settled)
        };
        if !doomed.is_empty() {
            // A publish-rejected dead letter must be durable before its record's file goes.
            self.dlq.sync()?;
            for seg in &doomed {
                remove_segment(seg);
            }
            self.room.notify_all();
        }
        let mut file = self.watermark.lock().unwrap_or_else(|e| e.into_inner());
        file.write(persist, self.fsync)
            .map_err(|source| OutboxError::StateDir {
                path: file.path().to_owned(),
                source,
            })?;
        Ok(())
    }

    /// If `seq` falls in a range evicted by drop-oldest, the first sequence number after it.
    pub fn skip_evicted(&self, seq: u64) -> Option<u64> {
        match self.ledger().evicted {
            Some((a, b)) if seq >= a && seq < b => Some(b),
            _ => None,
        }
    }

    /// The policy when full.
    pub fn policy(&self) -> WhenFull {
        self.policy
    }

    /// Whether the outbox holds `max_bytes` or more.
    pub fn is_full(&self) -> bool {
        self.ledger().bytes >= self.max_bytes
    }

    /// The bound on segment bytes, `[queue] max_bytes` (for `/metrics`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// After the last committed record.
    pub fn committed_end(&self) -> u64 {
        self.ledger().next_seq
    }

    /// Where the publisher starts after a restart: the settled watermark.
    pub fn settled(&self) -> u64 {
        self.ledger().settled
    }

    /// A reader of committed frames, in order, from local sequence number `from`.
    pub fn reader(self: &Arc<Self>, from: u64) -> LogReader {
        LogReader {
            outbox: self.clone(),
            from,
            current: None,
            buf: Vec::new(),
        }
    }

    /// Current depth, bytes and oldest record age.
    pub fn stats(&self) -> QueueStats {
        let ledger = self.ledger();
        // Sequence numbers are contiguous inside a segment (but for migrated ones); between
        // segments there can be gaps (evicted segments, a raised floor).
        let depth = ledger
            .segments
            .iter()
            .filter(|s| s.end_seq > ledger.settled)
            .map(|s| s.end_seq - s.first_seq.max(ledger.settled))
            .sum::<u64>()
            .saturating_sub(ledger.settled_above);
        let dlq = self.dlq.size();
        QueueStats {
            depth,
            bytes: ledger.bytes,
            oldest_received_ms: if depth == 0 { None } else { ledger.oldest_ms },
            dead_letters: dlq.entries,
            dead_letter_bytes: dlq.bytes,
        }
    }

    fn first_received_at(&self, from: u64) -> Option<u64> {
        let segs: Vec<Seg> = self.ledger().segments.iter().cloned().collect();
        let seg = segs.iter().find(|s| s.end_seq > from)?;
        let mut reader = segment::Reader::open(&seg.path).ok()?;
        let mut buf = Vec::new();
        loop {
            match reader.next_frame(seg.bytes, &mut buf).ok()? {
                segment::Next::Frame => {
                    let frame = codec::Frame::parse(&buf).ok()?;
                    if frame.end_seq() <= from {
                        continue;
                    }
                    for item in frame.records() {
                        let (seq, r) = item.ok()?;
                        if seq >= from {
                            return Some(r.received_at_ms);
                        }
                    }
                }
                segment::Next::Damaged(_) => {}
                segment::Next::End => return None,
            }
        }
    }

    /// Records waiting, by route (`""` for records without one). Reads the whole log.
    pub fn route_counts(self: &Arc<Self>) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut counts = std::collections::BTreeMap::new();
        let from = self.settled();
        let mut reader = self.reader(from);
        while let Some(frame) = reader.next_frame()? {
            let frame = match codec::Frame::parse(&frame) {
                Ok(f) => f,
                Err(_) => continue,
            };
            for item in frame.records() {
                let Ok((seq, r)) = item else { break };
                if seq < from {
                    continue;
                }
                *counts
                    .entry(r.route.unwrap_or_default().to_owned())
                    .or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Writes the watermark and makes it and sled durable (at shutdown).
    pub fn flush(&self) -> Result<()> {
        let settled = self.ledger().settled;
        self.meta
            .insert("settled", &settled.to_be_bytes())
            .map_err(|e| self.sled_err(e))?;
        {
            let mut file = self.watermark.lock().unwrap_or_else(|e| e.into_inner());
            file.write(Some(settled), false)
                .and_then(|()| if self.fsync { file.sync() } else { Ok(()) })
                .map_err(|source| OutboxError::StateDir {
                    path: file.path().to_owned(),
                    source,
                })?;
        }
        crate::dlq::sync_db(&self.db, &self.db_path, self.fsync)?;
        Ok(())
    }

    /// Counts damage found while reading (the publisher reports it here).
    fn damaged(&self, path: &Path, damage: &segment::Damage) {
        let mut ledger = self.ledger();
        if let Some(seg) = ledger.segments.iter_mut().find(|s| s.path == path) {
            seg.damaged = true;
        }
        drop(ledger);
        report_damage(path, damage, &self.stats);
    }
}

fn report_damage(path: &Path, damage: &segment::Damage, stats: &Stats) {
    OutboxCorrupt {
        file: path,
        offset: damage.offset,
        bytes: damage.len,
        records: damage.records,
        error: &damage.why,
    }
    .emit(stats);
}

/// Deletes a segment file, or keeps it as `.corrupt` when damage was found in it.
fn remove_segment(seg: &Seg) {
    let result = if seg.damaged {
        std::fs::rename(&seg.path, seg.path.with_extension("corrupt"))
    } else {
        std::fs::remove_file(&seg.path)
    };
    if let Err(e) = result {
        tracing::warn!(file = %seg.path.display(), error = %e, "Cannot remove a delivered outbox segment");
    }
}

fn be_u64(v: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = v.len().min(8);
    buf[8 - n..].copy_from_slice(&v[..n]);
    u64::from_be_bytes(buf)
}

/// The received time of the first record in some frames.
fn first_received_in(frames: &[u8]) -> Option<u64> {
    let len = codec::frame_len(frames).ok()??;
    let frame = codec::Frame::parse(frames.get(..len)?).ok()?;
    let first = frame.records().next()?.ok()?;
    Some(first.1.received_at_ms)
}

/// Lists the segments, checks the newest (cutting a torn tail), creates one if there is none.
fn open_segments(dir: &Path, floor: u64, stats: &Stats) -> Result<(VecDeque<Seg>, Tail, u64)> {
    std::fs::create_dir_all(dir).map_err(|source| OutboxError::StateDir {
        path: dir.to_owned(),
        source,
    })?;
    let listed = segment::list(dir)?;
    let mut segments = VecDeque::new();
    let mut bytes = 0u64;
    for (i, (first, path)) in listed.iter().enumerate() {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let end = if i + 1 < listed.len() {
            segment::end_seq(path)?
        } else {
            *first
        };
        segments.push_back(Seg {
            first_seq: *first,
            end_seq: end,
            bytes: len,
            dead_bytes: 0,
            path: path.clone(),
            damaged: false,
        });
        bytes += len;
    }
    let tail = match segments.back_mut() {
        Some(last) => {
            let (writer, recovered) = segment::open_tail(&last.path)?;
            if recovered.torn_bytes > 0 {
                tracing::info!(
                    file = %last.path.display(),
                    bytes = recovered.torn_bytes,
                    "Cut an incomplete commit off the end of the outbox (interrupted before it was acknowledged)"
                );
            }
            for damage in &recovered.corrupt {
                last.damaged = true;
                report_damage(&last.path, damage, stats);
            }
            bytes = bytes - last.bytes + writer.len();
            last.bytes = writer.len();
            last.end_seq = writer.end_seq();
            let mut writer = writer;
            if writer.end_seq() < floor {
                // Sequence numbers below the floor were issued before: start a new segment.
                writer = Writer::create(dir, floor)?;
                segments.push_back(Seg {
                    first_seq: floor,
                    end_seq: floor,
                    bytes: writer.len(),
                    dead_bytes: 0,
                    path: writer.path().to_owned(),
                    damaged: false,
                });
                bytes += writer.len();
                return Ok((
                    segments,
                    Tail {
                        writer,
                        dir_dirty: true,
                        poisoned: false,
                    },
                    bytes,
                ));
            }
            Tail {
                writer,
                dir_dirty: false,
                poisoned: false,
            }
        }
        None => {
            let writer = Writer::create(dir, floor)?;
            segment::sync_dir(dir)?;
            segments.push_back(Seg {
                first_seq: floor,
                end_seq: floor,
                bytes: writer.len(),
                dead_bytes: 0,
                path: writer.path().to_owned(),
                damaged: false,
            });
            bytes += writer.len();
            Tail {
                writer,
                dir_dirty: false,
                poisoned: false,
            }
        }
    };
    Ok((segments, tail, bytes))
}

/// Reads committed frames in order across segments.
#[derive(Debug)]
pub struct LogReader {
    outbox: Arc<Outbox>,
    from: u64,
    current: Option<(segment::Reader, u64)>,
    buf: Vec<u8>,
}

impl LogReader {
    /// Where the next frame is looked for.
    pub fn position(&self) -> u64 {
        self.from
    }

    /// Restarts at local sequence number `from`.
    pub fn seek(&mut self, from: u64) {
        self.from = from;
        self.current = None;
    }

    /// The next committed frame holding records at or after the position, or `None` when
    /// everything committed so far was read. Damaged ranges are reported and skipped.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>> {
        loop {
            let (path, limit, first) = {
                let ledger = self.outbox.ledger();
                let seg = match &self.current {
                    Some((reader, first)) => ledger
                        .segments
                        .iter()
                        .find(|s| s.first_seq == *first && s.path == reader.path()),
                    None => ledger.segments.iter().find(|s| s.end_seq > self.from),
                };
                match seg {
                    Some(seg) => (seg.path.clone(), seg.bytes, seg.first_seq),
                    None => {
                        // The segment went (evicted or deleted): go on after it.
                        if let Some((_, first)) = self.current.take() {
                            let next = ledger.segments.iter().find(|s| s.first_seq > first);
                            if let Some(next) = next {
                                self.from = self.from.max(next.first_seq);
                                continue;
                            }
                        }
                        return Ok(None);
                    }
                }
            };
            if self.current.is_none() {
                self.current = Some((segment::Reader::open(&path)?, first));
            }
            let Some((reader, _)) = self.current.as_mut() else {
                continue;
            };
            match reader.next_frame(limit, &mut self.buf)? {
                segment::Next::Frame => {
                    let Ok(frame) = codec::Frame::parse(&self.buf) else {
                        continue;
                    };
                    if frame.end_seq() <= self.from {
                        continue;
                    }
                    self.from = frame.end_seq();
                    return Ok(Some(Bytes::copy_from_slice(&self.buf)));
                }
                segment::Next::Damaged(damage) => {
                    self.outbox.damaged(&path, &damage);
                }
                segment::Next::End => {
                    let is_last = {
                        let ledger = self.outbox.ledger();
                        ledger.segments.back().is_none_or(|s| s.first_seq == first)
                    };
                    if is_last {
                        return Ok(None);
                    }
                    // On to the next segment.
                    let next_first = {
                        let ledger = self.outbox.ledger();
                        ledger
                            .segments
                            .iter()
                            .find(|s| s.first_seq > first)
                            .map(|s| s.first_seq)
                    };
                    self.current = None;
                    if let Some(next) = next_first {
                        self.from = self.from.max(next);
                    }
                }
            }
        }
    }
}

enum Opened {
    Failed(sled::Error),
    Corrupt(String),
}

/// Opens sled, moving a corrupt database aside.
fn open_db(state_dir: &Path, path: &Path, config: &QueueConfig) -> Result<sled::Db> {
    match try_open_db(path, config) {
        Ok(db) => Ok(db),
        Err(Opened::Failed(source)) => Err(OutboxError::Sled {
            path: path.to_owned(),
            source,
        }),
        Err(Opened::Corrupt(why)) => {
            let aside =
                state_dir.join(format!("outbox.corrupt-{}", crate::record::now_ms() / 1000));
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                error = %why,
                "Outbox database is corrupt: moved it aside and starting a fresh one; the dead \
                 letters in it can be recovered from the moved directory (the queued records in \
                 queue/ are not affected)"
            );
            std::fs::rename(path, &aside).map_err(|source| OutboxError::StateDir {
                path: path.to_owned(),
                source,
            })?;
            try_open_db(path, config).map_err(|e| OutboxError::Sled {
                path: path.to_owned(),
                source: match e {
                    Opened::Failed(e) => e,
                    Opened::Corrupt(why) => sled::Error::Unsupported(why),
                },
            })
        }
    }
}

fn try_open_db(path: &Path, config: &QueueConfig) -> std::result::Result<sled::Db, Opened> {
    let path = path.to_owned();
    let cache = config.cache_capacity.bytes();
    // sled 0.34 can panic on open of a damaged database (sled#1533); treat that as corruption.
    let result = std::panic::catch_unwind(move || {
        sled::Config::new()
            .path(&path)
            .cache_capacity(cache)
            .flush_every_ms(None)
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
mod tests;
