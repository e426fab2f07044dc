//! Migration of a state directory written by format 1 (sensorgate 0.1: one sled key per record
//! in tree `queue`, dead letters in tree `dlq`, each value `"SG" 0x01 ‖ metadata length u32 BE ‖
//! metadata JSON ‖ payload`) to format 2 (segment files, dead letters in `dead_letters`).
//!
//! Every queued record keeps its sequence number, so `sensorgate.seq` does not change for what
//! a format-1 gateway may already have sent. The new segments and dead letters are made durable
//! first, then `format` is set, then the old trees are dropped: a crash part-way leaves the old
//! trees in place and the migration runs again at the next start (from scratch).

use std::path::Path;

use super::codec::FrameEncoder;
use super::segment::{self, Writer};
use super::{OutboxError, FORMAT, FRAME_TARGET};
use crate::dlq::Dlq;
use crate::record::{Meta, Record};

const V1_MAGIC: &[u8; 2] = b"SG";
const V1_HEADER: usize = 7;
/// Segment size used for migrated records.
const SEGMENT: u64 = 4 << 20;

/// Decodes a format-1 value.
pub(super) fn decode_v1(bytes: &[u8]) -> Result<Record, OutboxError> {
    if bytes.len() < V1_HEADER || &bytes[..2] != V1_MAGIC {
        return Err(OutboxError::Format("missing magic".into()));
    }
    if bytes[2] != 1 {
        return Err(OutboxError::Format(format!(
            "unknown format version {}",
            bytes[2]
        )));
    }
    let len = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    let meta_end = V1_HEADER
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| OutboxError::Format("metadata length beyond the value".into()))?;
    let meta: Meta = serde_json::from_slice(&bytes[V1_HEADER..meta_end])
        .map_err(|e| OutboxError::Format(format!("metadata: {e}")))?;
    Ok(Record {
        meta,
        payload: bytes::Bytes::copy_from_slice(&bytes[meta_end..]),
    })
}

fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
}

/// Drops format-1 trees left by a migration that was interrupted after `format` was set.
pub(super) fn drop_leftovers(db: &sled::Db) -> Result<(), sled::Error> {
    for name in ["queue", "dlq"] {
        if has_tree(db, name) {
            db.drop_tree(name)?;
        }
    }
    Ok(())
}

/// Migrates format 1 (or initialises a new database) and sets `format` to 2.
pub(super) fn from_v1(
    db: &sled::Db,
    db_path: &Path,
    meta: &sled::Tree,
    dir: &Path,
    dlq: &Dlq,
    fsync: bool,
) -> Result<(), OutboxError> {
    let sled_err = |source| OutboxError::Sled {
        path: db_path.to_owned(),
        source,
    };
    let queue = has_tree(db, "queue")
        .then(|| db.open_tree("queue"))
        .transpose()
        .map_err(sled_err)?;
    let old_dlq = has_tree(db, "dlq")
        .then(|| db.open_tree("dlq"))
        .transpose()
        .map_err(sled_err)?;
    let v1 = queue.as_ref().is_some_and(|t| !t.is_empty())
        || old_dlq.as_ref().is_some_and(|t| !t.is_empty());
    let mut floor = 0u64;
    let (mut records, mut dead_letters, mut quarantined) = (0u64, 0u64, 0u64);
    if v1 {
        // Segments of an earlier, interrupted migration are redone from the old trees.
        if dir.exists() {
            for (_, path) in segment::list(dir)? {
                std::fs::remove_file(&path).map_err(|source| OutboxError::StateDir {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::StateDir {
            path: dir.to_owned(),
            source,
        })?;
        let quarantine = db.open_tree("quarantine").map_err(sled_err)?;
        if let Some(queue) = &queue {
            let mut writer: Option<Writer> = None;
            let mut enc = FrameEncoder::default();
            let mut frame = Vec::new();
            let flush = |enc: &mut FrameEncoder,
                         frame: &mut Vec<u8>,
                         writer: &mut Option<Writer>|
             -> Result<(), OutboxError> {
                if enc.is_empty() {
                    return Ok(());
                }
                frame.clear();
                enc.finish_into(frame);
                let w = match writer {
                    Some(w) => w,
                    None => writer.insert(Writer::create(dir, first_of(frame))?),
                };
                w.append(frame, enc.next_seq())?;
                enc.begin(0);
                Ok(())
            };
            for item in queue.iter() {
                let (k, v) = item.map_err(sled_err)?;
                let seq = super::be_u64(&k);
                let record = match decode_v1(&v) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(seq, error = %e, "Undecodable outbox record moved to quarantine during migration");
                        quarantine.insert(&k, v).map_err(sled_err)?;
                        quarantined += 1;
                        continue;
                    }
                };
                if !enc.is_empty()
                    && (seq != enc.next_seq()
                        || enc.encoded_len() >= FRAME_TARGET
                        || !enc.has_room_for_strings())
                {
                    flush(&mut enc, &mut frame, &mut writer)?;
                    if writer.as_ref().is_some_and(|w| w.len() >= SEGMENT) {
                        if let Some(w) = writer.take() {
                            w.sync()?;
                        }
                    }
                }
                if enc.is_empty() {
                    enc.begin(seq);
                }
                enc.push(&record);
                records += 1;
                floor = floor.max(seq + 1);
            }
            flush(&mut enc, &mut frame, &mut writer)?;
            if let Some(w) = writer.take() {
                w.sync()?;
            }
            segment::sync_dir(dir)?;
        }
        if let Some(old) = &old_dlq {
            let mut batch: Vec<(u64, Record)> = Vec::new();
            for item in old.iter() {
                let (k, v) = item.map_err(sled_err)?;
                let id = super::be_u64(&k);
                match decode_v1(&v) {
                    Ok(r) => batch.push((id, r)),
                    Err(e) => {
                        tracing::error!(id, error = %e, "Undecodable dead letter moved to quarantine during migration");
                        quarantine.insert(&k, v).map_err(sled_err)?;
                        quarantined += 1;
                    }
                }
                floor = floor.max(id + 1);
                if batch.len() >= 1000 {
                    dead_letters += insert(dlq, &mut batch)?;
                }
            }
            dead_letters += insert(dlq, &mut batch)?;
        }
    }
    // sled's id generator persists ahead of use: above every id format 1 handed out.
    floor = floor.max(db.generate_id().map_err(sled_err)?);
    meta.insert("next_seq_floor", &floor.to_be_bytes())
        .map_err(sled_err)?;
    meta.insert("format", &u64::from(FORMAT).to_be_bytes())
        .map_err(sled_err)?;
    crate::dlq::sync_db(db, db_path, fsync)?;
    drop_leftovers(db).map_err(sled_err)?;
    crate::dlq::sync_db(db, db_path, fsync)?;
    if v1 {
        tracing::info!(
            records,
            dead_letters,
            quarantined,
            "Migrated the outbox from format 1 to format 2"
        );
    }
    Ok(())
}

fn first_of(frame: &[u8]) -> u64 {
    super::codec::Frame::parse(frame).map_or(0, |f| f.first_seq)
}

fn insert(dlq: &Dlq, batch: &mut Vec<(u64, Record)>) -> Result<u64, OutboxError> {
    let entries: Vec<(u64, &Record)> = batch.iter().map(|(id, r)| (*id, r)).collect();
    dlq.insert(&entries)?;
    dlq.sync()?;
    let n = batch.len() as u64;
    batch.clear();
    Ok(n)
}
