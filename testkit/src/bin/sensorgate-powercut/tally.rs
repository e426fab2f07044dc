//! What reached Kafka: a thread reads the readings topic (and its dead-letter topic) from the
//! start, all through the run, and counts each reading's own `seq` from its payload. It reads as
//! the records arrive, so the mock cluster's retention (the oldest records of a partition go
//! past 100,000 records or 5 MB) never drops one unread; [`Tally::skipped`] would show it.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sensorgate_testkit::kafka_reader::Reader;

pub(crate) const TOPIC: &str = "sensors.readings";
pub(crate) const DLQ_TOPIC: &str = "sensors.readings.DLQ";

#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// How many times each `seq` was read from the readings topic.
    pub(crate) count: Vec<u32>,
    /// Records on the readings topic without a readable `seq`.
    pub(crate) unreadable: u64,
    /// Records on the dead-letter topic.
    pub(crate) dead_letters: u64,
    /// Offsets the reader jumped over (records the broker dropped unread).
    pub(crate) skipped: u64,
    /// Records fetched again at an offset already read (not counted anywhere else).
    pub(crate) rereads: u64,
    /// `sensorgate.seq` headers seen: the gateway's number for each record it stored.
    stored: HashSet<String>,
    /// Duplicates with a `sensorgate.seq` already seen: one stored record sent again.
    pub(crate) resent: u64,
    /// Duplicates under a new `sensorgate.seq`: the gateway stored the reading again (the
    /// broker redelivered it).
    pub(crate) stored_again: u64,
    /// When the last record arrived.
    pub(crate) last_record: Option<Instant>,
}

impl Tally {
    pub(crate) fn has(&self, seq: u64) -> bool {
        self.count.get(seq as usize).is_some_and(|c| *c > 0)
    }

    pub(crate) fn records(&self) -> u64 {
        self.count.iter().map(|c| u64::from(*c)).sum()
    }
}

pub(crate) struct Counter {
    pub(crate) tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    /// Reads until dropped; every record also becomes a line of `dump` (tab-separated: topic,
    /// partition, offset, the reading's `seq`, the `sensorgate.seq` header, Unix time in
    /// milliseconds), for looking into duplicates and losses after the run.
    pub(crate) fn start(mut reader: Reader, dump: std::fs::File) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut dump = std::io::BufWriter::new(dump);
                while !stop.load(Ordering::SeqCst) {
                    let Some(record) = reader.poll(Duration::from_millis(200)) else {
                        let _ = dump.flush();
                        continue;
                    };
                    let _ = writeln!(
                        dump,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        record.topic,
                        record.partition,
                        record.offset,
                        seq_of(&record.payload).map_or("-".into(), |s| s.to_string()),
                        record
                            .header("sensorgate.seq")
                            .unwrap_or_else(|| "-".into()),
                        unix_ms()
                    );
                    let mut t = tally.lock().expect("lock");
                    t.last_record = Some(Instant::now());
                    t.skipped = reader.skipped();
                    t.rereads = reader.rereads();
                    if record.topic == DLQ_TOPIC {
                        t.dead_letters += 1;
                        continue;
                    }
                    match seq_of(&record.payload) {
                        Some(seq) => {
                            let i = seq as usize;
                            if t.count.len() <= i {
                                t.count.resize(i + 1, 0);
                            }
                            t.count[i] += 1;
                            let first_store = record
                                .header("sensorgate.seq")
                                .is_some_and(|s| t.stored.insert(s));
                            if t.count[i] > 1 {
                                if first_store {
                                    t.stored_again += 1;
                                } else {
                                    t.resent += 1;
                                }
                            }
                        }
                        None => t.unreadable += 1,
                    }
                }
            })
        };
        Self {
            tally,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Highest `seq` taken from a payload (far more than any run publishes).
const MAX_SEQ: u64 = 100_000_000;

/// The reading's own sequence number, from its JSON payload.
fn seq_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("seq")?
        .as_u64()
        .filter(|s| *s < MAX_SEQ)
}

/// Now as Unix time in milliseconds (to line up the harness's files with the guest's log).
pub(crate) fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
