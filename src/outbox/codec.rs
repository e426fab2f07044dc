//! The outbox's binary formats (version 2): a *frame* holds the records of one commit (or part
//! of one), each record its metadata and its payload bytes exactly as received. The frame
//! layout is documented in the outbox's module doc; this file is its only implementation.
//!
//! Encoding writes into a reusable buffer with one string table per frame (sources, topics,
//! routes, keys repeat within a commit), so a reading costs no allocation beyond the buffer's
//! growth. Decoding borrows: a [`RecordRef`] points into the frame's bytes.

use std::collections::HashMap;

use crate::record::{DeadLetterInfo, Meta, Origin, Reason, Record, Violation};

/// Marks the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SGF2";
/// Magic, body length, CRC.
pub const FRAME_HEADER: usize = 12;
/// first_seq, count, string count.
const BODY_HEADER: usize = 14;

const F_DEAD: u8 = 1;
const F_KEY: u8 = 2;
const F_ROUTE: u8 = 4;
const F_SCHEMA: u8 = 8;
const F_ORIGINAL_LEN: u8 = 16;
const F_SERIAL: u8 = 32;
/// The origin is a Kafka command (`<topic>/<partition>@<offset>`), see [`Origin::kafka_text`].
/// Frames written before it existed never set it.
const F_KAFKA: u8 = 64;

/// What is wrong with bytes that should be a frame or a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a field needs.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Not a frame.
    #[error("bad frame magic")]
    Magic,
    /// The body does not match its checksum.
    #[error("frame checksum mismatch")]
    Checksum,
    /// A string is not UTF-8, an index is out of range, a reason unknown…
    #[error("malformed {0}")]
    Malformed(&'static str),
}

type Result<T, E = CodecError> = std::result::Result<T, E>;

/// Most capacity a reused buffer keeps between frames or batches.
pub const RETAINED_BYTES: usize = 4 << 20;

/// Builds frames. Keep one and reuse it: its buffers keep their capacity (up to
/// [`RETAINED_BYTES`]).
#[derive(Debug, Default)]

pub struct FrameEncoder {
    strings: HashMap<Box<str>, u16>,
    table: Vec<u8>,
    records: Vec<u8>,
    count: u32,
    first_seq: u64,
    errors: String,
}

impl FrameEncoder {
    /// Starts a frame whose first record gets local sequence number `first_seq`.
    pub fn begin(&mut self, first_seq: u64) {
        self.strings.clear();
        self.table.clear();
        self.records.clear();
        // A frame of one huge record would otherwise keep its buffer for good.
        self.records.shrink_to(RETAINED_BYTES);
        self.count = 0;
        self.first_seq = first_seq;
    }

    /// Records in the frame so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether the frame has no record yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the frame would take now.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER + BODY_HEADER + self.table.len() + self.records.len()
    }

    /// Local sequence number of the next record added.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Whether another string fits in this frame's table.
    pub fn has_room_for_strings(&self) -> bool {
        self.strings.len() + 8 < usize::from(u16::MAX)
    }

    fn intern(&mut self, s: &str) -> u16 {
        if let Some(i) = self.strings.get(s) {
            return *i;
        }
        // Strings longer than u16::MAX are cut at a character boundary. None reaches here: names
        // come from the configuration, MQTT topics are at most 65,535 bytes, Kafka topics 249,
        // and the classifier dead-letters a reading whose partition key is longer than
        // `pipeline::MAX_KEY_BYTES`.
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let kept = &s[..end];
        let index = u16::try_from(self.strings.len()).unwrap_or(u16::MAX);
        self.table
            .extend_from_slice(&(kept.len() as u16).to_le_bytes());
        self.table.extend_from_slice(kept.as_bytes());
        self.strings.insert(s.into(), index);
        index
    }

    /// Appends a record; returns its local sequence number.
    pub fn push(&mut self, record: &Record) -> u64 {
        let seq = self.next_seq();
        let meta = &record.meta;
        let mut flags = 0u8;
        if meta.dead_letter.is_some() {
            flags |= F_DEAD;
        }
        if meta.key.is_some() {
            flags |= F_KEY;
        }
        if meta.route.is_some() {
            flags |= F_ROUTE;
        }
        if meta.schema.is_some() {
            flags |= F_SCHEMA;
        }
        if meta
            .dead_letter
            .as_ref()
            .is_some_and(|d| d.original_len.is_some())
        {
            flags |= F_ORIGINAL_LEN;
        }
        let kafka_origin;
        let origin = match &meta.origin {
            Origin::Mqtt { topic } => topic.as_str(),
            Origin::Serial { port } => {
                flags |= F_SERIAL;
                port.as_str()
            }
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => {
                flags |= F_KAFKA;
                kafka_origin = Origin::kafka_text(topic, *partition, *offset);
                kafka_origin.as_str()
            }
        };
        let gateway = self.intern(&meta.gateway);
        let source = self.intern(&meta.source);
        let origin = self.intern(origin);
        let topic = self.intern(&meta.kafka_topic);
        let route = meta.route.as_deref().map(|r| self.intern(r));
        let schema = meta.schema.as_deref().map(|s| self.intern(s));
        let key = meta.key.as_deref().map(|k| self.intern(k));

        let out = &mut self.records;
        out.push(flags);
        out.extend_from_slice(&meta.received_at_ms.to_le_bytes());
        out.extend_from_slice(&gateway.to_le_bytes());
        out.extend_from_slice(&source.to_le_bytes());
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(&topic.to_le_bytes());
        for index in [route, schema, key].into_iter().flatten() {
            out.extend_from_slice(&index.to_le_bytes());
        }
        if let Some(info) = &meta.dead_letter {
            self.errors.clear();
            errors_json(&info.errors, &mut self.errors);
            let out = &mut self.records;
            out.push(reason_code(info.reason));
            out.extend_from_slice(&(self.errors.len() as u32).to_le_bytes());
            out.extend_from_slice(self.errors.as_bytes());
            if let Some(len) = info.original_len {
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        let out = &mut self.records;
        out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&record.payload);
        self.count += 1;
        seq
    }

    /// Writes the finished frame (header, checksum, body) to `out`.
    pub fn finish_into(&self, out: &mut Vec<u8>) {
        let body_len = BODY_HEADER + self.table.len() + self.records.len();
        out.reserve(FRAME_HEADER + body_len);
        out.extend_from_slice(&FRAME_MAGIC);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        let crc_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let body_at = out.len();
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.strings.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.table);
        out.extend_from_slice(&self.records);
        let crc = crc32fast::hash(&out[body_at..]);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The violations as the JSON array that the `sensorgate.errors` header carries.
pub fn errors_json(errors: &[Violation], out: &mut String) {
    match serde_json::to_string(errors) {
        Ok(text) => out.push_str(&text),
        Err(_) => out.push_str("[]"),
    }
}

const fn reason_code(reason: Reason) -> u8 {
    match reason {
        Reason::NoRoute => 1,
        Reason::NotJson => 2,
        Reason::Schema => 3,
        Reason::TooLarge => 4,
        Reason::PublishRejected => 5,
        Reason::FrameTooLong => 6,
        Reason::BadCsv => 7,
        Reason::NoTarget => 8,
        Reason::Expired => 9,
    }
}

fn reason_of(code: u8) -> Result<Reason> {
    Reason::ALL
        .into_iter()
        .find(|r| reason_code(*r) == code)
        .ok_or(CodecError::Malformed("dead-letter reason"))
}

/// The header of a frame found at the start of `bytes`: its total length, once the whole frame
/// is there. `Ok(None)` means more bytes are needed.
pub fn frame_len(bytes: &[u8]) -> Result<Option<usize>> {
    if bytes.len() < FRAME_HEADER {
        return Ok(None);
    }
    if bytes[..4] != FRAME_MAGIC {
        return Err(CodecError::Magic);
    }
    let body = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    Ok(Some(FRAME_HEADER + body))
}

/// A checked frame: its records borrow from the bytes.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Local sequence number of the first record.
    pub first_seq: u64,
    /// Number of records.
    pub count: u32,
    strings: Vec<&'a str>,
    records: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses and checks a whole frame (header and body).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let total = frame_len(bytes)?.ok_or(CodecError::Truncated("frame header"))?;
        if bytes.len() < total {
            return Err(CodecError::Truncated("frame body"));
        }
        let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[FRAME_HEADER..total];
        if crc32fast::hash(body) != crc {
            return Err(CodecError::Checksum);
        }
        let mut r = Reader(body);
        let first_seq = r.u64("first_seq")?;
        let count = r.u32("count")?;
        let n = r.u16("string count")?;
        let mut strings = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let len = r.u16("string length")?;
            let raw = r.take(usize::from(len), "string")?;
            strings.push(std::str::from_utf8(raw).map_err(|_| CodecError::Malformed("string"))?);
        }
        Ok(Self {
            first_seq,
            count,
            strings,
            records: r.0,
        })
    }

    /// Local sequence number after the last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// The records, in order, with their local sequence numbers.
    pub fn records(&self) -> Records<'_, 'a> {
        Records {
            frame: self,
            rest: self.records,
            next: 0,
        }
    }
}

/// Iterator over a frame's records.
#[derive(Debug)]
pub struct Records<'f, 'a> {
    frame: &'f Frame<'a>,
    rest: &'a [u8],
    next: u32,
}

impl<'a> Iterator for Records<'_, 'a> {
    type Item = Result<(u64, RecordRef<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.frame.count {
            return None;
        }
        let seq = self.frame.first_seq + u64::from(self.next);
        self.next += 1;
        let mut r = Reader(self.rest);
        let result = RecordRef::read(&mut r, &self.frame.strings);
        self.rest = r.0;
        match result {
            Ok(record) => Some(Ok((seq, record))),
            Err(e) => {
                // A malformed record leaves no way to find the next one.
                self.next = self.frame.count;
                Some(Err(e))
            }
        }
    }
}

/// A dead letter's fields as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadRef<'a> {
    /// Why.
    pub reason: Reason,
    /// The violations as a JSON array.
    pub errors_json: &'a str,
    /// The size as received, when the stored payload was truncated.
    pub original_len: Option<u64>,
}

/// A record borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The gateway that received it.
    pub gateway: &'a str,
    /// Source name.
    pub source: &'a str,
    /// Whether the origin is a serial port (else an MQTT topic, or a Kafka command).
    pub serial: bool,
    /// Whether the origin is a Kafka command consumed by a downlink.
    pub kafka: bool,
    /// The MQTT topic, serial port, or Kafka `<topic>/<partition>@<offset>`.
    pub origin: &'a str,
    /// Milliseconds since the epoch.
    pub received_at_ms: u64,
    /// Destination topic.
    pub kafka_topic: &'a str,
    /// Route name.
    pub route: Option<&'a str>,
    /// Schema file.
    pub schema: Option<&'a str>,
    /// Partition key.
    pub key: Option<&'a str>,
    /// Present for dead letters.
    pub dead: Option<DeadRef<'a>>,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl<'a> RecordRef<'a> {
    fn read(r: &mut Reader<'a>, strings: &[&'a str]) -> Result<Self> {
        let string = |i: u16| {
            strings
                .get(usize::from(i))
                .copied()
                .ok_or(CodecError::Malformed("string index"))
        };
        let flags = r.u8("flags")?;
        let received_at_ms = r.u64("received_at")?;
        let gateway = string(r.u16("gateway")?)?;
        let source = string(r.u16("source")?)?;
        let origin = string(r.u16("origin")?)?;
        let kafka_topic = string(r.u16("topic")?)?;
        let route = (flags & F_ROUTE != 0)
            .then(|| r.u16("route").and_then(string))
            .transpose()?;
        let schema = (flags & F_SCHEMA != 0)
            .then(|| r.u16("schema").and_then(string))
            .transpose()?;
        let key = (flags & F_KEY != 0)
            .then(|| r.u16("key").and_then(string))
            .transpose()?;
        let dead = if flags & F_DEAD != 0 {
            let reason = reason_of(r.u8("reason")?)?;
            let len = r.u32("errors length")? as usize;
            let errors_json = std::str::from_utf8(r.take(len, "errors")?)
                .map_err(|_| CodecError::Malformed("errors"))?;
            let original_len = (flags & F_ORIGINAL_LEN != 0)
                .then(|| r.u64("original length"))
                .transpose()?;
            Some(DeadRef {
                reason,
                errors_json,
                original_len,
            })
        } else {
            None
        };
        let len = r.u32("payload length")? as usize;
        let payload = r.take(len, "payload")?;
        Ok(Self {
            gateway,
            source,
            serial: flags & F_SERIAL != 0,
            kafka: flags & F_KAFKA != 0,
            origin,
            received_at_ms,
            kafka_topic,
            route,
            schema,
            key,
            dead,
            payload,
        })
    }

    /// The origin's kind, as in [`Origin::scheme`]: `mqtt`, `serial` or `kafka`.
    pub fn origin_scheme(&self) -> &'static str {
        if self.kafka {
            "kafka"
        } else if self.serial {
            "serial"
        } else {
            "mqtt"
        }
    }

    /// Bytes the record occupies in flight (payload, key and topic).
    pub fn weight(&self) -> usize {
        self.payload.len() + self.key.map_or(0, str::len) + self.kafka_topic.len()
    }

    /// An owned copy; `seq` is the record's local sequence number (a dead letter's id).
    pub fn to_record(&self, seq: u64) -> Record {
        let origin = if self.kafka {
            // A malformed one cannot come from our encoder; keep the text rather than fail.
            Origin::parse_kafka(self.origin).unwrap_or_else(|| Origin::Kafka {
                topic: self.origin.to_owned(),
                partition: -1,
                offset: -1,
            })
        } else if self.serial {
            Origin::Serial {
                port: self.origin.to_owned(),
            }
        } else {
            Origin::Mqtt {
                topic: self.origin.to_owned(),
            }
        };
        Record {
            meta: Meta {
                gateway: self.gateway.into(),
                source: self.source.into(),
                origin,
                received_at_ms: self.received_at_ms,
                route: self.route.map(Into::into),
                schema: self.schema.map(Into::into),
                kafka_topic: self.kafka_topic.into(),
                key: self.key.map(Into::into),
                dead_letter: self.dead.map(|d| {
                    Box::new(DeadLetterInfo {
                        id: seq,
                        reason: d.reason,
                        errors: serde_json::from_str(d.errors_json).unwrap_or_default(),
                        original_len: d.original_len,
                    })
                }),
            },
            payload: bytes::Bytes::copy_from_slice(self.payload),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    pub(crate) fn record(i: u64) -> Record {
        Record {
            meta: Meta {
                gateway: "gw".into(),
                source: "local".into(),
                origin: Origin::Mqtt {
                    topic: format!("sensors/d{}/reading", i % 3),
                },
                received_at_ms: 1_700_000_000_000 + i,
                route: Some("r1".into()),
                schema: Some("reading.v1.json".into()),
                kafka_topic: "sensors.readings".into(),
                key: Some(format!("d{}", i % 3)),
                dead_letter: None,
            },
            payload: Bytes::from(format!("{{\"seq\":{i}}}")),
        }
    }

    #[test]
    fn frames_round_trip_every_field() {
        let mut enc = FrameEncoder::default();
        enc.begin(41);
        let mut records: Vec<Record> = (0..5).map(record).collect();
        records[2].meta.dead_letter = Some(Box::new(DeadLetterInfo {
            id: 0,
            reason: Reason::TooLarge,
            errors: vec![Violation::whole("too big")],
            original_len: Some(9000),
        }));
        records[2].meta.kafka_topic = "sensors.readings.DLQ".into();
        records[3].meta.origin = Origin::Serial {
            port: "/dev/ttyACM0".into(),
        };
        records[3].meta.key = None;
        records[3].meta.route = None;
        records[4].payload = Bytes::from_static(b"\x00\xff not utf8");
        for r in &records {
            enc.push(r);
        }
        let mut bytes = Vec::new();
        enc.finish_into(&mut bytes);
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        let frame = Frame::parse(&bytes).unwrap();
        assert_eq!((frame.first_seq, frame.count, frame.end_seq()), (41, 5, 46));
        let back: Vec<Record> = frame
            .records()
            .map(|r| {
                let (seq, r) = r.unwrap();
                r.to_record(seq)
            })
            .collect();
        let mut expected = records.clone();
        expected[2].meta.dead_letter.as_mut().unwrap().id = 43;
        assert_eq!(back, expected);
    }

    /// A frame in the layout of the module doc, assembled byte by byte: what every release
    /// before the Kafka origin wrote. Records: an MQTT origin, and a serial one with a route.
    fn old_frame() -> Vec<u8> {
        let strings = [
            "gw",
            "local",
            "sensors/d1/reading",
            "sensors.readings",
            "/dev/ttyUSB0",
            "r1",
        ];
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&(strings.len() as u16).to_le_bytes());
        for s in strings {
            body.extend_from_slice(&(s.len() as u16).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        // flags, received_at, gateway, source, origin, topic, [route], payload.
        for (flags, origin, route, payload) in [
            (0u8, 2u16, None, &b"{\"a\":1}"[..]),
            (F_SERIAL | F_ROUTE, 4, Some(5u16), &b"{\"b\":2}"[..]),
        ] {
            body.push(flags);
            body.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            for index in [0u16, 1, origin, 3].into_iter().chain(route) {
                body.extend_from_slice(&index.to_le_bytes());
            }
            body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            body.extend_from_slice(payload);
        }
        let mut frame = FRAME_MAGIC.to_vec();
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn kafka_origins_round_trip_and_older_frames_still_read() {
        let old = old_frame();
        let frame = Frame::parse(&old).unwrap();
        let back: Vec<(u64, RecordRef<'_>)> = frame.records().map(|r| r.unwrap()).collect();
        assert_eq!(back[0].1.origin_scheme(), "mqtt");
        assert_eq!(
            back[0].1.to_record(back[0].0).meta.origin,
            Origin::Mqtt {
                topic: "sensors/d1/reading".into()
            }
        );
        assert_eq!(back[1].1.origin_scheme(), "serial");
        let serial = back[1].1.to_record(back[1].0);
        assert_eq!(
            serial.meta.origin,
            Origin::Serial {
                port: "/dev/ttyUSB0".into()
            }
        );
        assert_eq!(serial.meta.route.as_deref(), Some("r1"));
        assert_eq!(&serial.payload[..], b"{\"b\":2}");

        // The encoder writes those two exactly as before.
        let mut enc = FrameEncoder::default();
        enc.begin(7);
        for (seq, r) in &back {
            enc.push(&r.to_record(*seq));
        }
        let mut again = Vec::new();
        enc.finish_into(&mut again);
        assert_eq!(
            again, old,
            "MQTT and serial records are encoded as they always were"
        );

        let mut command = record(2);
        command.meta.origin = Origin::Kafka {
            topic: "devices.commands.gw".into(),
            partition: 3,
            offset: 1_234_567,
        };
        command.meta.dead_letter = Some(Box::new(DeadLetterInfo {
            id: 0,
            reason: Reason::Expired,
            errors: vec![Violation::whole("expired at 2024-01-01T00:00:00Z")],
            original_len: None,
        }));
        enc.begin(9);
        enc.push(&command);
        let mut bytes = Vec::new();
        enc.finish_into(&mut bytes);
        let frame = Frame::parse(&bytes).unwrap();
        let (seq, back) = frame.records().next().unwrap().unwrap();
        assert_eq!(back.origin_scheme(), "kafka");
        assert_eq!(back.origin, "devices.commands.gw/3@1234567");
        let mut expected = command.clone();
        expected.meta.dead_letter.as_mut().unwrap().id = 9;
        assert_eq!(back.to_record(seq), expected);
        assert_eq!(
            expected.meta.origin.to_string(),
            "kafka:devices.commands.gw/3@1234567"
        );
    }

    #[test]
    fn damage_is_detected() {
        let mut enc = FrameEncoder::default();
        enc.begin(0);
        enc.push(&record(1));
        let mut bytes = Vec::new();
        enc.finish_into(&mut bytes);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(Frame::parse(&flipped).unwrap_err(), CodecError::Checksum);
        assert_eq!(
            Frame::parse(&bytes[..bytes.len() - 1]).unwrap_err(),
            CodecError::Truncated("frame body")
        );
        assert_eq!(frame_len(&bytes[..5]).unwrap(), None);
        assert_eq!(
            frame_len(b"XXXXXXXXXXXXXXXX").unwrap_err(),
            CodecError::Magic
        );
    }
}
