//! Segment files: the outbox log on disk, `<state_dir>/queue/<first local seq>.seg`, each a
//! 24-byte header followed by frames ([`super::codec`]) back to back. Only the committer
//! appends (to the newest segment); the publisher reads; whole segments are deleted once every
//! record in them is settled.
//!
//! A power cut can leave the newest segment with a torn tail: bytes of a commit whose sync never
//! completed, so none of its records was acknowledged. [`open_tail`] finds the last whole frame
//! and cuts the file there. Damage anywhere else is corruption: it is reported, the damaged
//! bytes are skipped up to the next frame that checks out, and the segment file is kept for
//! recovery instead of being deleted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, CodecError, FRAME_HEADER, FRAME_MAGIC};

/// Segment header: magic, format version, first local sequence number, reserved.
pub const HEADER_LEN: u64 = 24;
const MAGIC: [u8; 4] = *b"SGQS";
const VERSION: u32 = 2;
/// A frame larger than this is taken for garbage (the largest reading is 256 MiB).
const MAX_FRAME: usize = 300 << 20;

/// An I/O error on a named segment file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SegmentError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub source: std::io::Error,
}

type Result<T, E = SegmentError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError {
        path: path.to_owned(),
        source,
    }
}

/// The file name of the segment that starts at `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segments in `dir`, oldest first, by their first sequence number.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// `fsync` of a directory, so that files created or removed in it stay so after a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What [`open_tail`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Bytes of an incomplete last commit that were cut off (never acknowledged).
    pub torn_bytes: u64,
    /// Damaged ranges before the end, skipped.
    pub corrupt: Vec<Damage>,
}

/// A damaged range inside a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first damaged byte.
    pub offset: u64,
    /// How many bytes were skipped.
    pub len: u64,
    /// Records lost: the gap in sequence numbers across the damage, when a frame follows it.
    pub records: Option<u64>,
    /// What the check said.
    pub why: String,
}

/// The newest segment, open for appending.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
    first_seq: u64,
    len: u64,
    end_seq: u64,
}

impl Writer {
    /// Creates a new, empty segment starting at `first_seq`. The caller must sync the
    /// directory (with the next commit) so that the file survives a power cut.
    pub fn create(dir: &Path, first_seq: u64) -> Result<Self> {
        let path = dir.join(file_name(first_seq));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&first_seq.to_le_bytes());
        if let Err(e) = file.write_all(&header) {
            // Leave no headerless file behind: the next attempt (a full disk retried) creates
            // the same name again, and `create_new` would refuse it for good.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        Ok(Self {
            path,
            file,
            first_seq,
            len: HEADER_LEN,
            end_seq: first_seq,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// First local sequence number.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether no frame was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN
    }
    /// Local sequence number after the last record appended.
    pub fn end_seq(&self) -> u64 {
        self.end_seq
    }

    /// Appends encoded frames holding records up to `end_seq` (not durable until
    /// [`Writer::sync`]). On failure the file is cut back to where it was, so a failed append
    /// leaves no partial frame behind.
    pub fn append(&mut self, frames: &[u8], end_seq: u64) -> Result<()> {
        let at = self.len;
        let written = self
            .file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.write_all(frames));
        if let Err(source) = written {
            let _ = self.file.set_len(at);
            return Err(SegmentError {
                path: self.path.clone(),
                source,
            });
        }
        self.len = at + frames.len() as u64;
        self.end_seq = end_seq;
        Ok(())
    }

    /// Cuts the file back to `len` bytes, whose records end before `end_seq` (undoing a failed
    /// append).
    pub fn truncate(&mut self, len: u64, end_seq: u64) -> Result<()> {
        self.file.set_len(len).map_err(io_err(&self.path))?;
        self.len = len;
        self.end_seq = end_seq;
        Ok(())
    }

    /// Makes everything appended so far durable (`fdatasync`: data and the file size).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Walks the frame headers of a segment (no checksums): the sequence number after its last
/// record. Older segments are only read this way at open; their frames are checked when read.
pub fn end_seq(path: &Path) -> Result<u64> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    let mut end = match file.read_exact(&mut header) {
        Ok(()) => header_first_seq(&header),
        Err(_) => None,
    }
    .or_else(|| {
        path.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
    })
    .unwrap_or(0);
    let mut at = HEADER_LEN;
    let mut head = [0u8; FRAME_HEADER + 12];
    while at + head.len() as u64 <= len {
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut head))
            .map_err(io_err(path))?;
        let Ok(Some(frame_len)) = codec::frame_len(&head) else {
            break;
        };
        let first = u64::from_le_bytes(head[12..20].try_into().unwrap_or([0; 8]));
        let count = u32::from_le_bytes(head[20..24].try_into().unwrap_or([0; 4]));
        end = end.max(first + u64::from(count));
        at += frame_len as u64;
    }
    Ok(end)
}

/// Opens the newest segment for appending, after checking every frame in it: a torn tail is
/// cut off, damage before the end is skipped and reported.
pub fn open_tail(path: &Path) -> Result<(Writer, Recovered)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let first_seq = header_first_seq(&bytes).unwrap_or_else(|| {
        // A header that did not make it to disk: the name says where the segment starts.
        path.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    });
    let scan = scan(&bytes, first_seq);
    let mut recovered = Recovered {
        torn_bytes: bytes.len() as u64 - scan.valid_end,
        corrupt: scan.damage,
    };
    if bytes.len() < HEADER_LEN as usize || header_first_seq(&bytes).is_none() {
        // Rewrite the header (the file held no acknowledged record).
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&first_seq.to_le_bytes());
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(&header))
            .and_then(|_| file.sync_data())
            .map_err(io_err(path))?;
        recovered.torn_bytes = bytes.len() as u64;
        return Ok((
            Writer {
                path: path.to_owned(),
                file,
                first_seq,
                len: HEADER_LEN,
                end_seq: first_seq,
            },
            recovered,
        ));
    }
    if recovered.torn_bytes > 0 {
        file.set_len(scan.valid_end)
            .and_then(|_| file.sync_data())
            .map_err(io_err(path))?;
    }
    Ok((
        Writer {
            path: path.to_owned(),
            file,
            first_seq,
            len: scan.valid_end,
            end_seq: scan.end_seq,
        },
        recovered,
    ))
}

fn header_first_seq(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN as usize || bytes[..4] != MAGIC {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    Some(u64::from_le_bytes(seq))
}

struct Scan {
    valid_end: u64,
    end_seq: u64,
    damage: Vec<Damage>,
}

/// Walks the frames of a whole segment held in memory.
fn scan(bytes: &[u8], first_seq: u64) -> Scan {
    let mut at = HEADER_LEN as usize;
    let mut out = Scan {
        valid_end: HEADER_LEN.min(bytes.len() as u64),
        end_seq: first_seq,
        damage: Vec::new(),
    };
    while at < bytes.len() {
        match check_frame(&bytes[at..]) {
            Ok((len, frame_first, frame_end)) => {
                at += len;
                out.valid_end = at as u64;
                out.end_seq = out.end_seq.max(frame_end);
                let _ = frame_first;
            }
            Err(why) => {
                // Is there a good frame further on? Then this is damage, not a torn tail.
                match resync(bytes, at + 1) {
                    Some((next, next_first)) => {
                        out.damage.push(Damage {
                            offset: at as u64,
                            len: (next - at) as u64,
                            records: next_first.checked_sub(out.end_seq),
                            why,
                        });
                        at = next;
                    }
                    None => break,
                }
            }
        }
    }
    out
}

/// Checks the frame at the start of `bytes`: its length and sequence range.
fn check_frame(bytes: &[u8]) -> std::result::Result<(usize, u64, u64), String> {
    match codec::frame_len(bytes) {
        Ok(Some(len)) if len > MAX_FRAME => Err(format!("frame length {len} is implausible")),
        Ok(Some(len)) if len > bytes.len() => Err("incomplete frame".into()),
        Ok(Some(len)) => codec::Frame::parse(&bytes[..len])
            .map(|f| (len, f.first_seq, f.end_seq()))
            .map_err(|e| e.to_string()),
        Ok(None) => Err("incomplete frame header".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The offset and first sequence number of the next frame at or after `from` that checks out.
fn resync(bytes: &[u8], from: usize) -> Option<(usize, u64)> {
    let mut at = from;
    while at + FRAME_HEADER <= bytes.len() {
        let found = bytes[at..]
            .windows(4)
            .position(|w| w == FRAME_MAGIC)
            .map(|p| at + p)?;
        if let Ok((_, first, _)) = check_frame(&bytes[found..]) {
            return Some((found, first));
        }
        at = found + 1;
    }
    None
}

/// Reads a segment's frames in order, up to a limit the committer has made durable.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: File,
    pos: u64,
    first_seq: u64,
}

/// What [`Reader::next_frame`] found.
#[derive(Debug)]
pub enum Next {
    /// A frame: its bytes are in the buffer.
    Frame,
    /// Nothing more below the limit.
    End,
    /// Damaged bytes skipped; the reader moved to the next good frame (or the end).
    Damaged(Damage),
}

impl Reader {
    /// Opens a segment for reading from its first frame.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        let first_seq = match file.read_exact(&mut header) {
            Ok(()) => header_first_seq(&header),
            Err(_) => None,
        }
        .or_else(|| {
            path.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            file,
            pos: HEADER_LEN,
            first_seq,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// First local sequence number of the segment.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Reads the next frame that ends at or before byte `limit` into `buf` (replacing its
    /// contents).
    pub fn next_frame(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<Next> {
        if self.pos + FRAME_HEADER as u64 > limit {
            return Ok(Next::End);
        }
        buf.clear();
        buf.resize(FRAME_HEADER, 0);
        self.read_at(self.pos, buf)?;
        let len = match codec::frame_len(buf) {
            Ok(Some(len)) if len <= MAX_FRAME => len,
            Ok(_) | Err(CodecError::Magic) | Err(_) => return self.skip_damage(limit, buf),
        };
        if self.pos + len as u64 > limit {
            // Not possible below a committed limit unless the length field is damaged.
            return self.skip_damage(limit, buf);
        }
        buf.resize(len, 0);
        self.read_at(self.pos, buf)?;
        match codec::Frame::parse(buf) {
            Ok(_) => {
                self.pos += len as u64;
                Ok(Next::Frame)
            }
            Err(_) => self.skip_damage(limit, buf),
        }
    }

    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(io_err(&self.path))
    }

    /// Damage at `self.pos`: find the next good frame below `limit`.
    fn skip_damage(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<Next> {
        let start = self.pos;
        let len = usize::try_from(limit.saturating_sub(start)).unwrap_or(usize::MAX);
        buf.clear();
        buf.resize(len, 0);
        self.read_at(start, buf)?;
        let why = check_frame(buf).err().unwrap_or_default();
        let (skip, records) = match resync(buf, 1) {
            Some((next, _)) => (next as u64, None),
            None => (len as u64, None),
        };
        self.pos = start + skip;
        Ok(Next::Damaged(Damage {
            offset: start,
            len: skip,
            records,
            why,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::codec::FrameEncoder;
    use crate::record::{Meta, Origin, Record};

    fn frames(first: u64, n: u64) -> Vec<u8> {
        let mut enc = FrameEncoder::default();
        enc.begin(first);
        for i in 0..n {
            enc.push(&Record {
                meta: Meta {
                    gateway: "gw".into(),
                    source: "s".into(),
                    origin: Origin::Mqtt { topic: "t".into() },
                    received_at_ms: i,
                    route: None,
                    schema: None,
                    kafka_topic: "k".into(),
                    key: None,
                    dead_letter: None,
                },
                payload: bytes::Bytes::from(vec![b'x'; 100]),
            });
        }
        let mut out = Vec::new();
        enc.finish_into(&mut out);
        out
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 10).unwrap();
        w.append(&frames(10, 3), 13).unwrap();
        w.append(&frames(13, 2), 15).unwrap();
        let good = w.len();
        // Half of a third commit reached the disk.
        let third = frames(15, 4);
        w.append(&third[..third.len() / 2], 19).unwrap();
        w.sync().unwrap();
        let path = w.path().to_owned();
        drop(w);

        let (mut w, rec) = open_tail(&path).unwrap();
        assert_eq!(rec.torn_bytes, (third.len() / 2) as u64);
        assert!(rec.corrupt.is_empty());
        assert_eq!((w.len(), w.end_seq()), (good, 15));
        w.append(&frames(15, 1), 16).unwrap();
        let mut r = Reader::open(&path).unwrap();
        let mut buf = Vec::new();
        let mut seqs = Vec::new();
        while let Next::Frame = r.next_frame(w.len(), &mut buf).unwrap() {
            let f = codec::Frame::parse(&buf).unwrap();
            seqs.push((f.first_seq, f.end_seq()));
        }
        assert_eq!(seqs, [(10, 13), (13, 15), (15, 16)]);
        assert_eq!(list(dir.path()).unwrap()[0].0, 10);
    }

    #[test]
    fn damage_inside_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 0).unwrap();
        w.append(&frames(0, 2), 2).unwrap();
        let damaged_at = w.len();
        w.append(&frames(2, 3), 5).unwrap();
        w.append(&frames(5, 1), 6).unwrap();
        let path = w.path().to_owned();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[damaged_at as usize + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let (w, rec) = open_tail(&path).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(rec.corrupt.len(), 1);
        assert_eq!(rec.corrupt[0].offset, damaged_at);
        assert_eq!(rec.corrupt[0].records, Some(3));
        assert_eq!(w.end_seq(), 6);

        let mut r = Reader::open(&path).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            r.next_frame(w.len(), &mut buf).unwrap(),
            Next::Frame
        ));
        assert!(matches!(
            r.next_frame(w.len(), &mut buf).unwrap(),
            Next::Damaged(_)
        ));
        assert!(matches!(
            r.next_frame(w.len(), &mut buf).unwrap(),
            Next::Frame
        ));
        assert_eq!(codec::Frame::parse(&buf).unwrap().first_seq, 5);
        assert!(matches!(
            r.next_frame(w.len(), &mut buf).unwrap(),
            Next::End
        ));
    }
}
