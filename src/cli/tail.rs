//! `sensorgate tail`: consume Kafka topics as a consumer group and either print every record on
//! one line or (`--stats`) aggregate per device.
//!
//! Offsets: a record's offset is stored only after it was printed or counted, and stored
//! offsets are committed every few seconds and at exit, so a second `tail` in the same group
//! carries on where the first stopped. `--from-beginning` applies when the group has no
//! committed offset yet (like `kafka-console-consumer`); a new `--group` reads everything again.
//!
//! Statistics ([`TailStats`]): per `device_id` in the JSON payload, the number of readings,
//! their rate (by the records' Kafka timestamps, which the gateway sets to the time it received
//! the reading), last/min/max of every numeric field, and the missing and duplicate values of
//! `seq`. Records with a `sensorgate.reason` header are dead letters: they are counted per reason
//! (and per device when their payload names one) but their `seq` is not checked, since a DLQ topic
//! only ever holds some of a device's readings.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::ClientConfig;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "sensorgate-tail";
/// The header that marks a dead letter.
pub const REASON_HEADER: &str = "sensorgate.reason";
/// How often buffered output is flushed while records arrive.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How many missing ranges the table lists per device.
const GAPS_SHOWN: usize = 5;

/// Errors of `tail`.
#[derive(Debug, Error)]
pub enum TailError {
    /// The consumer could not be created or subscribed.
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Options of `tail`.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics to consume (at least one).
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Start at the earliest offset when the group has no committed offset.
    pub from_beginning: bool,
    /// Aggregate per device instead of printing records.
    pub stats: bool,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this long without a record (counted from the start, too).
    pub idle_exit: Option<Duration>,
    /// How often `--stats` prints the table while running.
    pub stats_every: Duration,
    /// librdkafka properties (`security.protocol`, `session.timeout.ms`, …), applied last.
    pub properties: Vec<(String, String)>,
}

/// What a `tail` run consumed.
#[derive(Debug, Clone, Default)]
pub struct TailSummary {
    /// Records consumed.
    pub records: u64,
    /// The aggregate, with `--stats`.
    pub stats: Option<TailStats>,
}

/// Why the consume loop ended.
enum End {
    Done,
    /// The reader of our output went away (`tail | head`): stop quietly.
    BrokenPipe,
}

/// Consumes until `--count`, `--idle-exit` or `stop`; prints to `out`.
pub async fn run(
    options: &TailOptions,
    out: &mut (dyn Write + Send),
    stop: CancellationToken,
) -> Result<TailSummary, TailError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("client.id", "sensorgate-tail")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "5000")
        // Offsets are stored by hand once a record was handled, so commits never run ahead.
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            if options.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        );
    for (key, value) in &options.properties {
        config.set(key, value);
    }
    let consumer: StreamConsumer = config.create()?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topics = ?topics, group = %options.group, "Consuming");

    let mut out = BufWriter::with_capacity(64 << 10, out);
    let mut summary = TailSummary {
        records: 0,
        stats: options.stats.then(TailStats::default),
    };
    let start = Instant::now();
    let end = consume(&consumer, options, &mut out, &mut summary, start, stop).await;
    let end = match end {
        Ok(end) => end,
        Err(TailError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => End::BrokenPipe,
        Err(e) => return Err(e),
    };
    if let (End::Done, Some(stats)) = (&end, &summary.stats) {
        stats.write_table(&mut out, start.elapsed())?;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing consumed, nothing to commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "Could not commit the consumed offsets"),
    }
    Ok(summary)
}

async fn consume(
    consumer: &StreamConsumer,
    options: &TailOptions,
    out: &mut BufWriter<&mut (dyn Write + Send)>,
    summary: &mut TailSummary,
    start: Instant,
    stop: CancellationToken,
) -> Result<End, TailError> {
    if options.count == Some(0) {
        return Ok(End::Done);
    }
    let mut stream = consumer.stream();
    let mut idle_deadline = options.idle_exit.map(|d| start + d);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let every = options.stats_every.max(Duration::from_millis(100));
    let mut table = tokio::time::interval_at((start + every).into(), every);
    table.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let far = start + Duration::from_secs(365 * 24 * 3600);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(End::Done),
            message = stream.next() => match message {
                Some(Ok(message)) => {
                    handle(&message, out, summary)?;
                    if let Err(e) = consumer.store_offset_from_message(&message) {
                        tracing::warn!(error = %e, "Could not store an offset");
                    }
                    if let Some(idle) = options.idle_exit {
                        idle_deadline = Some(Instant::now() + idle);
                    }
                    if options.count.is_some_and(|n| summary.records >= n) {
                        return Ok(End::Done);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
                None => return Ok(End::Done),
            },
            _ = tokio::time::sleep_until(idle_deadline.unwrap_or(far).into()), if idle_deadline.is_some() => {
                return Ok(End::Done);
            }
            _ = table.tick(), if summary.stats.is_some() => {
                if let Some(stats) = &summary.stats {
                    stats.write_table(out, start.elapsed())?;
                    out.flush()?;
                }
            }
            _ = flush.tick() => out.flush()?,
        }
    }
}

fn handle(
    message: &BorrowedMessage<'_>,
    out: &mut impl Write,
    summary: &mut TailSummary,
) -> Result<(), TailError> {
    summary.records += 1;
    match &mut summary.stats {
        Some(stats) => {
            let reason = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == REASON_HEADER)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            });
            stats.add(
                message.payload(),
                reason.as_deref(),
                message.timestamp().to_millis(),
            );
        }
        None => write_record(out, message)?,
    }
    Ok(())
}

/// One line: `topic/partition@offset key=… sensorgate.*=… | payload`.
fn write_record(out: &mut impl Write, message: &BorrowedMessage<'_>) -> std::io::Result<()> {
    write!(
        out,
        "{}/{}@{} key=",
        message.topic(),
        message.partition(),
        message.offset()
    )?;
    match message.key() {
        Some(key) => write_bytes(out, key)?,
        None => out.write_all(b"-")?,
    }
    if let Some(headers) = message.headers() {
        for header in headers.iter().filter(|h| h.key.starts_with("sensorgate.")) {
            write!(out, " {}=", header.key)?;
            write_bytes(out, header.value.unwrap_or_default())?;
        }
    }
    out.write_all(b" | ")?;
    write_bytes(out, message.payload().unwrap_or_default())?;
    out.write_all(b"\n")
}

/// Text when UTF-8 (control characters escaped, so a record stays on one line), hex otherwise.
pub(crate) fn write_bytes(out: &mut (impl Write + ?Sized), bytes: &[u8]) -> std::io::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.write_all(escape_controls(text).as_bytes()),
        Err(_) => write!(out, "0x{}", hex::encode(bytes)),
    }
}

/// `text` with its control characters (newlines, escapes that would drive the terminal)
/// written as Rust escapes (`\n`, `\u{1b}`).
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The set of sequence numbers seen, as disjoint inclusive ranges, plus the duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    ranges: BTreeMap<u64, u64>,
    distinct: u64,
    duplicates: u64,
}

impl SeqSet {
    /// Adds `seq`; `false` when it was seen before (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        if let Some((_, &end)) = self.ranges.range(..=seq).next_back() {
            if seq <= end {
                self.duplicates += 1;
                return false;
            }
        }
        let left = self
            .ranges
            .range(..seq)
            .next_back()
            .filter(|(_, &end)| end.checked_add(1) == Some(seq))
            .map(|(&start, _)| start);
        let right = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|&end| (next, end)));
        match (left, right) {
            (Some(start), Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(start, end);
            }
            (Some(start), None) => {
                self.ranges.insert(start, seq);
            }
            (None, Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(seq, end);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        self.distinct += 1;
        true
    }

    /// Distinct values seen.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Values seen more than once (each repetition counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Values missing between the lowest and the highest seen.
    pub fn missing(&self) -> u64 {
        match (self.ranges.first_key_value(), self.ranges.last_key_value()) {
            (Some((&low, _)), Some((_, &high))) => high - low + 1 - self.distinct,
            _ => 0,
        }
    }

    /// The missing ranges (inclusive), lowest first.
    pub fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .zip(self.ranges.iter().skip(1))
            .map(|((_, &end), (&next, _))| (end + 1, next - 1))
    }

    /// Lowest and highest value seen.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        Some((
            *self.ranges.first_key_value()?.0,
            *self.ranges.last_key_value()?.1,
        ))
    }
}

/// Last, minimum and maximum of one numeric field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldStats {
    /// The latest value.
    pub last: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// What `--stats` knows about one device.
#[derive(Debug, Clone, Default)]
pub struct DeviceStats {
    /// Readings (records that are not dead letters).
    pub readings: u64,
    /// Dead letters whose payload names this device.
    pub dead_letters: u64,
    /// `seq` of the readings.
    pub seqs: SeqSet,
    /// Readings without an integer `seq`.
    pub without_seq: u64,
    /// Numeric fields of the readings (other than `seq`), in the order first seen.
    pub fields: Vec<(String, FieldStats)>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl DeviceStats {
    /// Readings per second between the first and the last reading's timestamp.
    pub fn rate(&self) -> Option<f64> {
        let span = self.last_ms? - self.first_ms?;
        (span > 0).then(|| (self.readings.saturating_sub(1)) as f64 * 1000.0 / span as f64)
    }

    /// The statistics of a numeric field.
    pub fn field(&self, name: &str) -> Option<&FieldStats> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    fn add_reading(&mut self, object: &serde_json::Map<String, serde_json::Value>, ts_ms: i64) {
        self.readings += 1;
        self.first_ms = Some(self.first_ms.map_or(ts_ms, |t| t.min(ts_ms)));
        self.last_ms = Some(self.last_ms.map_or(ts_ms, |t| t.max(ts_ms)));
        match object.get("seq").and_then(serde_json::Value::as_u64) {
            Some(seq) => {
                self.seqs.insert(seq);
            }
            None => self.without_seq += 1,
        }
        for (name, value) in object {
            let Some(value) = value.as_f64().filter(|_| name != "seq") else {
                continue;
            };
            match self.fields.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => {
                    s.last = value;
                    s.min = s.min.min(value);
                    s.max = s.max.max(value);
                }
                None => self.fields.push((
                    name.clone(),
                    FieldStats {
                        last: value,
                        min: value,
                        max: value,
                    },
                )),
            }
        }
    }
}

/// The `--stats` aggregate.
#[derive(Debug, Clone, Default)]
pub struct TailStats {
    /// Per `device_id`.
    pub devices: BTreeMap<String, DeviceStats>,
    /// Dead letters per `sensorgate.reason`.
    pub reasons: BTreeMap<String, u64>,
    /// Every record.
    pub records: u64,
    /// Records whose payload is not a JSON object with a string `device_id`.
    pub without_device: u64,
}

impl TailStats {
    /// Counts one record: its payload, its `sensorgate.reason` header (dead letters) and its
    /// timestamp in milliseconds (the current time when it has none).
    pub fn add(&mut self, payload: Option<&[u8]>, reason: Option<&str>, timestamp_ms: Option<i64>) {
        self.records += 1;
        if let Some(reason) = reason {
            match self.reasons.get_mut(reason) {
                Some(n) => *n += 1,
                None => {
                    self.reasons.insert(reason.to_owned(), 1);
                }
            }
        }
        let value = payload.and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
        let object = value.as_ref().and_then(serde_json::Value::as_object);
        let Some((object, device)) = object.and_then(|o| {
            o.get("device_id")
                .and_then(serde_json::Value::as_str)
                .map(|d| (o, d))
        }) else {
            self.without_device += 1;
            return;
        };
        // Look up by `&str` first: the id is copied only for a new device.
        if !self.devices.contains_key(device) {
            self.devices
                .insert(device.to_owned(), DeviceStats::default());
        }
        let Some(stats) = self.devices.get_mut(device) else {
            return;
        };
        if reason.is_some() {
            stats.dead_letters += 1;
        } else {
            let ts = timestamp_ms.unwrap_or_else(|| crate::record::now_ms() as i64);
            stats.add_reading(object, ts);
        }
    }

    /// Readings (not dead letters) over all devices.
    pub fn readings(&self) -> u64 {
        self.devices.values().map(|d| d.readings).sum()
    }

    /// Dead letters over all reasons.
    pub fn dead_letters(&self) -> u64 {
        self.reasons.values().sum()
    }

    /// Prints the table.
    pub fn write_table(&self, out: &mut impl Write, elapsed: Duration) -> std::io::Result<()> {
        let secs = elapsed.as_secs_f64();
        writeln!(
            out,
            "== {} records in {secs:.1} s: {} readings from {} devices, {} dead letters, {} without a device_id ==",
            self.records,
            self.readings(),
            self.devices.len(),
            self.dead_letters(),
            self.without_device
        )?;
        if !self.devices.is_empty() {
            let width = self
                .devices
                .keys()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(6);
            writeln!(
                out,
                "{:<width$}  {:>9}  {:>8}  {:>7}  {:>10}  {:>6}  last [min .. max]",
                "device", "readings", "rate/s", "missing", "duplicates", "dead"
            )?;
            for (id, d) in &self.devices {
                let rate = d
                    .rate()
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
                write!(
                    out,
                    "{id:<width$}  {:>9}  {rate:>8}  {:>7}  {:>10}  {:>6}",
                    d.readings,
                    d.seqs.missing(),
                    d.seqs.duplicates(),
                    d.dead_letters
                )?;
                for (name, f) in &d.fields {
                    write!(
                        out,
                        "  {name} {} [{} .. {}]",
                        number(f.last),
                        number(f.min),
                        number(f.max)
                    )?;
                }
                writeln!(out)?;
                if d.seqs.missing() > 0 {
                    let gaps: Vec<String> = d
                        .seqs
                        .gaps()
                        .take(GAPS_SHOWN)
                        .map(|(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    let more = d.seqs.gaps().count().saturating_sub(GAPS_SHOWN);
                    let more = if more > 0 {
                        format!(" and {more} more gaps")
                    } else {
                        String::new()
                    };
                    writeln!(out, "  {id}: missing seq {}{more}", gaps.join(", "))?;
                }
                if d.without_seq > 0 {
                    writeln!(
                        out,
                        "  {id}: {} readings without an integer seq",
                        d.without_seq
                    )?;
                }
            }
        }
        if !self.reasons.is_empty() {
            writeln!(out, "dead letters by reason:")?;
            for (reason, n) in &self.reasons {
                writeln!(out, "  {reason:<18} {n:>9}")?;
            }
        }
        Ok(())
    }
}

/// A number for the table: integers as such, others with up to three decimals.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(device: &str, seq: u64, t: f64) -> Vec<u8> {
        format!(r#"{{"device_id":"{device}","seq":{seq},"temperature_c":{t},"ok":true}}"#)
            .into_bytes()
    }

    #[test]
    fn seq_set_finds_gaps_and_duplicates_in_any_order() {
        let mut s = SeqSet::default();
        for seq in [0, 1, 2, 5, 6, 9, 3, 3, 0, 8] {
            s.insert(seq);
        }
        assert_eq!(s.distinct(), 8);
        assert_eq!(s.duplicates(), 2);
        assert_eq!(s.missing(), 2);
        assert_eq!(s.gaps().collect::<Vec<_>>(), [(4, 4), (7, 7)]);
        assert_eq!(s.bounds(), Some((0, 9)));
        // Filling a hole merges the ranges on both sides.
        assert!(s.insert(4));
        assert!(s.insert(7));
        assert_eq!(s.missing(), 0);
        assert_eq!(s.gaps().count(), 0);
        assert_eq!(s.ranges.len(), 1);
    }

    #[test]
    fn seq_set_counts_from_the_first_seen_value_and_handles_the_extremes() {
        let mut s = SeqSet::default();
        assert_eq!(s.missing(), 0);
        s.insert(1000);
        s.insert(1001);
        assert_eq!(s.missing(), 0, "a stream joined in the middle has no gap");
        s.insert(u64::MAX);
        s.insert(u64::MAX);
        assert_eq!(s.duplicates(), 1);
        assert_eq!(s.missing(), u64::MAX - 1002);
    }

    #[test]
    fn stats_aggregate_per_device() {
        let mut stats = TailStats::default();
        for (seq, t) in [(0, 20.5), (1, 19.0), (2, 23.25), (4, 21.0), (4, 21.0)] {
            stats.add(
                Some(&reading("a", seq, t)),
                None,
                Some(1_000 + seq as i64 * 500),
            );
        }
        stats.add(Some(&reading("b", 7, 1.0)), None, Some(0));
        let a = &stats.devices["a"];
        assert_eq!(a.readings, 5);
        assert_eq!(a.seqs.missing(), 1);
        assert_eq!(a.seqs.duplicates(), 1);
        assert_eq!(
            a.field("temperature_c"),
            Some(&FieldStats {
                last: 21.0,
                min: 19.0,
                max: 23.25
            })
        );
        assert!(a.field("seq").is_none() && a.field("ok").is_none());
        // 5 readings over 2 s (4 intervals).
        assert_eq!(a.rate(), Some(2.0));
        assert_eq!(stats.devices["b"].rate(), None);
        assert_eq!(stats.readings(), 6);

        let mut table = Vec::new();
        stats
            .write_table(&mut table, Duration::from_secs(2))
            .unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("6 records"), "{table}");
        assert!(table.contains("temperature_c 21 [19 .. 23.25]"), "{table}");
        assert!(table.contains("a: missing seq 3"), "{table}");
    }

    #[test]
    fn dead_letters_are_counted_per_reason_without_seq_checks() {
        let mut stats = TailStats::default();
        stats.add(Some(&reading("a", 0, 20.0)), None, Some(0));
        stats.add(
            Some(br#"{"device_id":"a","seq":5,"temperature_c":"hot"}"#),
            Some("schema"),
            None,
        );
        stats.add(
            Some(br#"{"seq":5,"temperature_c":2}"#),
            Some("schema"),
            None,
        );
        stats.add(Some(b"garbage"), Some("not-json"), None);
        stats.add(Some(b"\xff\xfe"), Some("not-json"), None);
        stats.add(None, Some("no-route"), None);
        assert_eq!(stats.records, 6);
        assert_eq!(
            stats.reasons,
            BTreeMap::from([
                ("schema".to_owned(), 2),
                ("not-json".to_owned(), 2),
                ("no-route".to_owned(), 1)
            ])
        );
        assert_eq!(stats.dead_letters(), 5);
        assert_eq!(stats.without_device, 4);
        let a = &stats.devices["a"];
        assert_eq!((a.readings, a.dead_letters), (1, 1));
        assert_eq!(
            a.seqs.missing(),
            0,
            "a dead letter's seq is not a reading's"
        );

        let mut table = Vec::new();
        stats
            .write_table(&mut table, Duration::from_secs(1))
            .unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("dead letters by reason:"), "{table}");
        assert!(table.contains("  not-json"), "{table}");
    }

    #[test]
    fn bytes_print_as_one_line_of_text_or_as_hex() {
        let mut out = Vec::new();
        write_bytes(&mut out, b"{\"a\":1}").unwrap();
        out.push(b' ');
        write_bytes(&mut out, b"two\nlines\t").unwrap();
        out.push(b' ');
        write_bytes(&mut out, b"\xff\x00").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":1} two\nlines\t 0xff00"#
        );
    }

    #[test]
    fn numbers_print_compactly() {
        assert_eq!(number(21.0), "21");
        assert_eq!(number(3.912), "3.912");
        assert_eq!(number(45.25), "45.25");
        assert_eq!(number(-0.1), "-0.1");
    }
}
