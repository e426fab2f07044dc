//! What reached Kafka: a thread reads the readings topic (and its dead-letter topic) from the
//! start, all through the run, and counts each reading's own `seq` from its payload. It reads as
//! the records arrive, so the mock cluster's retention (the oldest records of a partition go
//! past 100,000 records or 5 MB) never drops one unread; [`Tally::skipped`] would show it.

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
    pub(crate) fn start(mut reader: Reader) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Some(record) = reader.poll(Duration::from_millis(200)) else {
                        continue;
                    };
                    let mut t = tally.lock().expect("lock");
                    t.last_record = Some(Instant::now());
                    t.skipped = reader.skipped();
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

/// The reading's own sequence number, from its JSON payload.
fn seq_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("seq")?
        .as_u64()
}
