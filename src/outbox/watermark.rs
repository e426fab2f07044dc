//! The settled watermark in its own small file, `queue/settled`: 8 bytes of sequence number and
//! a CRC-32 of them, overwritten in place ten times a second while deliveries are confirmed.
//!
//! It only saves work: after a crash the publisher starts from it instead of from the start of
//! the oldest segment, so a SIGKILL resends about 100 ms of confirmed records rather than up to
//! a segment's worth. Each write goes to the kernel (which keeps it across a SIGKILL); with
//! `queue.fsync` it is made durable every [`SYNC_EVERY`] at most, so a power cut resends about
//! that much. After a power cut the file may also be torn or zero, which the CRC catches: the
//! outbox then starts from the watermark in sled or from the oldest segment, and the records in
//! between are sent again (duplicates, never loss). A value is written only once every record below it was confirmed,
//! so no version of the file can be ahead of what Kafka holds.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often, at most, the watermark is fsynced while it moves slowly: one small in-place write
/// per 5 s is little wear for an SD card, and bounds what a power cut sends again.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(5);
/// While a backlog drains fast, it is also fsynced whenever it moved this many records since
/// the last fsync, so a power cut during a catch-up does not resend seconds of it.
pub(crate) const SYNC_AFTER: u64 = 50_000;

/// The open watermark file.
#[derive(Debug)]
pub(crate) struct WatermarkFile {
    file: File,
    path: PathBuf,
    last: [u8; 12],
    /// The watermark in `last`.
    current: u64,
    synced_at: Instant,
    synced: u64,
    unsynced: bool,
}

/// Its name in the queue directory.
pub(crate) const NAME: &str = "settled";

impl WatermarkFile {
    /// Opens (or creates) the file in `dir`; returns it and the watermark it holds, if valid.
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Self, Option<u64>)> {
        let path = dir.join(NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut buf = [0u8; 12];
        let found: Option<u64> = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => decode(&buf),
            Err(_) => None,
        };
        Ok((
            Self {
                file,
                path,
                last: buf,
                current: found.unwrap_or(0),
                synced_at: Instant::now(),
                synced: found.unwrap_or(0),
                unsynced: false,
            },
            found,
        ))
    }

    /// Overwrites the watermark with `settled`, if given; with `fsync`, makes the file durable
    /// when it changed and [`SYNC_EVERY`] passed since the last time, or it moved by
    /// [`SYNC_AFTER`] records.
    pub(crate) fn write(&mut self, settled: Option<u64>, fsync: bool) -> std::io::Result<()> {
        if let Some(settled) = settled {
            let buf = encode(settled);
            if buf != self.last {
                self.file.write_all_at(&buf, 0)?;
                self.last = buf;
                self.current = settled;
                self.unsynced = true;
            }
        }
        let due = self.synced_at.elapsed() >= SYNC_EVERY
            || self.current.saturating_sub(self.synced) >= SYNC_AFTER;
        if fsync && self.unsynced && due {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes the file durable.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.synced_at = Instant::now();
        self.synced = self.current;
        self.unsynced = false;
        Ok(())
    }

    /// The file's path, for errors.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn encode(settled: u64) -> [u8; 12] {
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&settled.to_le_bytes());
    let crc = crc32fast::hash(&settled.to_le_bytes());
    buf[8..].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(buf: &[u8; 12]) -> Option<u64> {
    let value: [u8; 8] = buf[..8].try_into().ok()?;
    let crc: [u8; 4] = buf[8..].try_into().ok()?;
    (crc32fast::hash(&value) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_watermark_is_read_back_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, found) = WatermarkFile::open(dir.path()).unwrap();
        assert_eq!(found, None, "a new file holds no watermark");
        w.write(Some(12_345), true).unwrap();
        drop(w);
        let (_, found) = WatermarkFile::open(dir.path()).unwrap();
        assert_eq!(found, Some(12_345));

        // A torn or zeroed write (a power cut) is not taken for a watermark.
        let path = dir.path().join(NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(WatermarkFile::open(dir.path()).unwrap().1, None);
        std::fs::write(&path, [0u8; 12]).unwrap();
        assert_eq!(WatermarkFile::open(dir.path()).unwrap().1, None);
    }
}
