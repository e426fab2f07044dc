//! The publish loop, on its own thread: takes committed frames (in memory from the committer
//! while it keeps up, from the segment files when it is behind or after a restart), hands their
//! records to librdkafka within a window bounded in records and bytes, polls for delivery
//! reports and settles them in bulk: per wake-up one watermark update, one counter update per
//! topic, one segment clean-up.
//!
//! Failures ([`super::kafka::classify`]):
//! - permanent (too large, not authorized, unknown topic…): the record goes to the local DLQ as
//!   `publish-rejected` and counts as settled;
//! - transient (brokers down, timeouts): the window drains, the circuit opens for a backoff
//!   delay (ended early as soon as a metadata request succeeds: a broker is back), then the
//!   log is read again from the oldest unsettled record, skipping what is settled;
//! - fatal (the idempotent producer is unusable): as transient, and the producer is recreated.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::backoff::{Backoff, Circuit};
use super::kafka::{classify_code, client_config, Context, Failure, Producer, Report};
use super::window::{Slab, Tracker};
use crate::config::{KafkaConfig, RetryConfig};
use crate::outbox::codec::{Frame, RecordRef};
use crate::outbox::committer::Handoff;
use crate::outbox::{Committed, LogReader, Outbox, OutboxError};
use crate::record::format_ms;
use crate::telemetry::{LatencyBatch, Stats};

/// Errors that stop the publisher.
#[derive(Debug, Error)]
pub enum PublishError {
    /// librdkafka refused the producer configuration.
    #[error("cannot create the Kafka producer (check [kafka] and [kafka.properties]): {0}")]
    Producer(#[source] KafkaError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The dead-letter store failed.
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
}

/// Debug builds only: a file whose presence wedges the publisher (`SENSORGATE_TEST_STALL_FILE`),
/// so tests can show that a stuck task stops the systemd watchdog.
fn test_stall_file() -> Option<std::path::PathBuf> {
    if cfg!(debug_assertions) {
        std::env::var_os("SENSORGATE_TEST_STALL_FILE").map(Into::into)
    } else {
        None
    }
}

/// A record handed to librdkafka.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    weight: u32,
    topic: u16,
    dead: bool,
    received_at_ms: u64,
    sent_at: Instant,
}

/// Drains the outbox into Kafka.
#[derive(Debug)]
pub struct Publisher {
    outbox: Arc<Outbox>,
    handoff: Arc<Handoff>,
    kafka: KafkaConfig,
    retry: RetryConfig,
    gateway: String,
    stats: Arc<Stats>,
}

impl Publisher {
    /// A publisher for `outbox`, fed by `handoff`.
    pub fn new(
        outbox: Arc<Outbox>,
        handoff: Arc<Handoff>,
        kafka: KafkaConfig,
        retry: RetryConfig,
        gateway: String,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            outbox,
            handoff,
            kafka,
            retry,
            gateway,
            stats,
        }
    }

    /// Builds a producer; an error here is a configuration problem.
    pub fn create_producer(&self) -> Result<(), PublishError> {
        self.producer().map(drop)
    }

    fn producer(&self) -> Result<Producer, PublishError> {
        client_config(&self.kafka, &self.gateway)
            .create_with_context(Context::new(self.stats.clone()))
            .map_err(PublishError::Producer)
    }

    /// Publishes until `stop` is cancelled; then lets in-flight deliveries finish for up to
    /// `grace` and returns. Records not confirmed by then stay in the outbox. Blocks the calling
    /// thread (run it with `spawn_blocking`).
    pub fn run(self, stop: CancellationToken, grace: Duration) -> Result<(), PublishError> {
        let producer = self.producer()?;
        let start = self.outbox.settled();
        let mut lp = Loop {
            reader: self.outbox.reader(start),
            p: &self,
            producer,
            slab: Slab::default(),
            tracker: Tracker::new(start),
            cursor: start,
            pending: None,
            current: None,
            weight: 0,
            backoff: Backoff::new(self.retry.clone()),
            circuit: Circuit::Closed,
            rewind: false,
            topics: Topics::default(),
            seq_text: String::new(),
            rejected: Vec::new(),
            reports: Vec::new(),
            settled_reported: (u64::MAX, u64::MAX, u64::MAX),
            oldest_at: Instant::now(),
            oldest_ms: None,
        };
        lp.run(&stop, grace)
    }
}

/// Topic names seen, numbered for the window entries.
#[derive(Debug, Default)]
struct Topics {
    names: Vec<Arc<str>>,
    delivered: Vec<u64>,
    failed: Vec<u64>,
}

impl Topics {
    fn id(&mut self, name: &str) -> u16 {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            return i as u16;
        }
        self.names.push(name.into());
        self.delivered.push(0);
        self.failed.push(0);
        (self.names.len() - 1).min(usize::from(u16::MAX)) as u16
    }
}

struct Loop<'a> {
    p: &'a Publisher,
    producer: Producer,
    reader: LogReader,
    slab: Slab<InFlight>,
    tracker: Tracker,
    /// Next sequence number to send.
    cursor: u64,
    /// The committer's commit being consumed.
    pending: Option<Committed>,
    /// The frame being sent.
    current: Option<Bytes>,
    /// Bytes in flight.
    weight: u64,
    backoff: Backoff,
    circuit: Circuit,
    /// A transient failure happened: drain, back off, read again from the watermark.
    rewind: bool,
    topics: Topics,
    seq_text: String,
    rejected: Vec<(u64, String)>,
    reports: Vec<Report>,
    settled_reported: (u64, u64, u64),
    oldest_at: Instant,
    oldest_ms: Option<u64>,
}

impl std::fmt::Debug for Loop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("cursor", &self.cursor)
            .field("in_flight", &self.slab.len())
            .finish()
    }
}

impl Loop<'_> {
    fn run(&mut self, stop: &CancellationToken, grace: Duration) -> Result<(), PublishError> {
        let stall = test_stall_file();
        let mut deadline: Option<Instant> = None;
        loop {
            self.p.stats.heartbeats.publisher_beat();
            if let Some(file) = &stall {
                if file.exists() {
                    tracing::warn!("Test stall file present: the publisher blocks");
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if deadline.is_none() && stop.is_cancelled() {
                deadline = Some(Instant::now() + grace);
            }
            self.settle_reports()?;
            if let Some(at) = deadline {
                if self.slab.is_empty() {
                    break;
                }
                if Instant::now() >= at {
                    tracing::warn!(
                        unconfirmed = self.slab.len(),
                        "Stop grace period over with deliveries unconfirmed; they stay in the outbox"
                    );
                    break;
                }
                self.producer.poll(Duration::from_millis(50));
                continue;
            }
            if self.rewind {
                if self.slab.is_empty() {
                    self.back_off(stop)?;
                } else {
                    self.producer.poll(Duration::from_millis(100));
                }
                continue;
            }
            let sent = self.fill()?;
            self.report_progress()?;
            if self.slab.is_empty() && sent == 0 {
                // Idle: wait for the committer; serve librdkafka's events (errors, broker state)
                // ten times a second meanwhile.
                self.p.handoff.wait(Duration::from_millis(100));
                self.producer.poll(Duration::ZERO);
            } else {
                self.producer
                    .poll(Duration::from_millis(if sent > 0 { 0 } else { 20 }));
            }
        }
        self.settle_reports()?;
        self.report_progress()?;
        let _ = self.producer.flush(Duration::from_millis(100));
        Ok(())
    }

    /// Sends records until the window is full or nothing committed is left; returns how many.
    fn fill(&mut self) -> Result<usize, PublishError> {
        let max_records = self.p.circuit_window(self.circuit);
        let max_bytes = self.p.kafka.max_in_flight_bytes.bytes();
        let mut sent = 0;
        let now = Instant::now();
        while self.slab.len() < max_records && self.weight < max_bytes {
            let Some(frame) = self.next_frame()? else {
                break;
            };
            let parsed = match Frame::parse(&frame) {
                Ok(f) => f,
                Err(e) => {
                    // Checked when read; reaching this means memory went bad. Skip it loudly.
                    tracing::error!(error = %e, "Outbox frame does not parse; skipping it");
                    self.cursor = self.cursor.max(frame_end(&frame).unwrap_or(self.cursor));
                    self.current = None;
                    continue;
                }
            };
            if parsed.first_seq > self.cursor {
                // A gap: records evicted, or sequence numbers a migration skipped.
                self.tracker.settle_range(self.cursor, parsed.first_seq);
                self.cursor = parsed.first_seq;
            }
            let mut full = false;
            for item in parsed.records() {
                let (seq, record) = match item {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "Outbox record does not decode; skipping the rest of its frame");
                        self.cursor = parsed.end_seq();
                        break;
                    }
                };
                if seq < self.cursor {
                    continue;
                }
                if self.slab.len() >= max_records || self.weight >= max_bytes {
                    full = true;
                    break;
                }
                if self.tracker.is_settled(seq) {
                    self.cursor = seq + 1;
                    continue;
                }
                match self.send(seq, &record, now)? {
                    Sent::Yes => {
                        sent += 1;
                        self.cursor = seq + 1;
                    }
                    Sent::Settled => self.cursor = seq + 1,
                    Sent::Later => {
                        full = true;
                        break;
                    }
                }
            }
            if full {
                self.current = Some(frame);
                break;
            }
            self.cursor = self.cursor.max(parsed.end_seq());
            self.current = None;
            if self.rewind {
                break;
            }
        }
        Ok(sent)
    }

    /// The frame holding `self.cursor`: the one being sent, the committer's next, or from disk.
    fn next_frame(&mut self) -> Result<Option<Bytes>, PublishError> {
        if let Some(frame) = &self.current {
            if frame_end(frame).is_some_and(|end| end > self.cursor) {
                return Ok(self.current.take());
            }
            self.current = None;
        }
        if let Some(skip) = self.p.outbox.skip_evicted(self.cursor) {
            self.tracker.settle_range(self.cursor, skip);
            self.cursor = skip;
        }
        loop {
            if self.pending.is_none() {
                self.pending = self.p.handoff.pop();
            }
            match &self.pending {
                Some(c) if c.end_seq <= self.cursor => self.pending = None,
                _ => break,
            }
        }
        if let Some(front) = self.pending.as_mut() {
            if front.first_seq <= self.cursor {
                // Split off the first frame of the commit.
                let Some(len) = crate::outbox::codec::frame_len(&front.frames)
                    .ok()
                    .flatten()
                    .filter(|l| *l <= front.frames.len())
                else {
                    self.pending = None;
                    return Ok(None);
                };
                let frame = front.frames.split_to(len);
                match frame_end(&frame) {
                    Some(end) => front.first_seq = end,
                    None => front.first_seq = front.end_seq,
                }
                if front.frames.is_empty() {
                    self.pending = None;
                }
                return Ok(Some(frame));
            }
        }
        // Behind the committer (or its frames were dropped): read the log.
        if self.cursor >= self.p.outbox.committed_end() {
            return Ok(None);
        }
        if self.reader_position() != self.cursor {
            self.reader.seek(self.cursor);
        }
        let frame = self.reader.next_frame()?;
        Ok(frame)
    }

    fn reader_position(&self) -> u64 {
        self.reader.position()
    }

    fn send(
        &mut self,
        seq: u64,
        record: &RecordRef<'_>,
        now: Instant,
    ) -> Result<Sent, PublishError> {
        let topic = self.topics.id(record.kafka_topic);
        self.seq_text.clear();
        let _ = write!(self.seq_text, "{}", self.p.outbox.sequence_number(seq));
        let mut headers =
            OwnedHeaders::new_with_capacity(if record.dead.is_some() { 9 } else { 2 })
                .insert(Header {
                    key: "sensorgate.gateway",
                    value: Some(self.p.gateway.as_bytes()),
                })
                .insert(Header {
                    key: "sensorgate.seq",
                    value: Some(self.seq_text.as_bytes()),
                });
        if let Some(dead) = &record.dead {
            let received = format_ms(record.received_at_ms);
            let id = seq.to_string();
            let origin = format!("{}:{}", record.origin_scheme(), record.origin);
            for (key, value) in [
                ("sensorgate.reason", dead.reason.as_str()),
                ("sensorgate.errors", dead.errors_json),
                ("sensorgate.source", record.source),
                ("sensorgate.schema", record.schema.unwrap_or("")),
                ("sensorgate.received_at", received.as_str()),
                ("sensorgate.origin", origin.as_str()),
                ("sensorgate.id", id.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
        }
        let weight = record.weight() as u32;
        let slot = self.slab.insert(InFlight {
            seq,
            weight,
            topic,
            dead: record.dead.is_some(),
            received_at_ms: record.received_at_ms,
            sent_at: now,
        });
        let mut message = BaseRecord::<str, [u8], usize>::with_opaque_to(record.kafka_topic, slot)
            .payload(record.payload)
            .headers(headers)
            .timestamp(record.received_at_ms as i64);
        if let Some(key) = record.key {
            message = message.key(key);
        }
        match self.producer.send(message) {
            Ok(()) => {
                self.weight += u64::from(weight);
                Ok(Sent::Yes)
            }
            Err((e, _)) => {
                self.slab.remove(slot);
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
                if code == RDKafkaErrorCode::QueueFull {
                    return Ok(Sent::Later);
                }
                match classify_code(code) {
                    Failure::Permanent => {
                        self.reject(seq, record, &e.to_string())?;
                        Ok(Sent::Settled)
                    }
                    Failure::Transient | Failure::Fatal => {
                        tracing::debug!(error = %e, "Kafka refused to queue a record; retrying after a backoff");
                        self.rewind = true;
                        Ok(Sent::Later)
                    }
                }
            }
        }
    }

    fn reject(
        &mut self,
        seq: u64,
        record: &RecordRef<'_>,
        error: &str,
    ) -> Result<(), PublishError> {
        tracing::error!(
            seq,
            topic = %record.kafka_topic,
            source = %record.source,
            error = %error,
            "Kafka rejected a record permanently; moved it to the local dead-letter store"
        );
        self.p.outbox.dlq().publish_rejected(seq, record, error)?;
        self.tracker.settle(seq);
        Ok(())
    }

    /// Settles every delivery report collected since the last call.
    fn settle_reports(&mut self) -> Result<(), PublishError> {
        let mut reports = std::mem::take(&mut self.reports);
        std::mem::swap(
            &mut *self
                .producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            &mut reports,
        );
        if reports.is_empty() {
            self.reports = reports;
            return Ok(());
        }
        let now = Instant::now();
        let mut delivered = 0u64;
        let mut delivered_dead = 0u64;
        let mut latency = LatencyBatch::default();
        let mut failed = false;
        for report in reports.drain(..) {
            let Some(entry) = self.slab.remove(report.slot) else {
                continue;
            };
            self.weight = self.weight.saturating_sub(u64::from(entry.weight));
            match report.error {
                None => {
                    self.tracker.settle(entry.seq);
                    delivered += 1;
                    if entry.dead {
                        delivered_dead += 1;
                    }
                    self.topics.delivered[usize::from(entry.topic)] += 1;
                    latency.observe(now.saturating_duration_since(entry.sent_at));
                }
                Some(code) => match classify_code(code) {
                    Failure::Permanent => {
                        self.rejected
                            .push((entry.seq, KafkaError::MessageProduction(code).to_string()));
                    }
                    Failure::Transient | Failure::Fatal => {
                        self.topics.failed[usize::from(entry.topic)] += 1;
                        tracing::debug!(seq = entry.seq, error = %code, "Delivery failed; will retry from the outbox");
                        failed = true;
                    }
                },
            }
        }
        self.reports = reports;
        if delivered > 0 {
            self.p.stats.delivered_many(
                self.topics
                    .names
                    .iter()
                    .zip(self.topics.delivered.iter_mut())
                    .filter(|(_, n)| **n > 0)
                    .map(|(t, n)| (&**t, std::mem::take(n))),
                delivered,
                delivered_dead,
                &latency,
            );
            if self
                .producer
                .context()
                .flags
                .down
                .swap(false, Ordering::SeqCst)
            {
                tracing::info!("Kafka is reachable again");
            }
            self.p.stats.set_kafka_down(false);
            if self.circuit != Circuit::Closed {
                tracing::info!(
                    attempts = self.backoff.attempts(),
                    "Kafka deliveries succeed again"
                );
                self.circuit = Circuit::Closed;
                self.backoff.reset();
            }
        }
        for (i, n) in self.topics.failed.iter_mut().enumerate() {
            if *n > 0 {
                self.p
                    .stats
                    .delivery_failed_many(&self.topics.names[i], std::mem::take(n));
            }
        }
        if failed {
            self.rewind = true;
        }
        if !self.rejected.is_empty() {
            self.settle_rejected()?;
        }
        Ok(())
    }

    /// Moves records Kafka refused permanently to the local DLQ, reading them back from the log
    /// in one pass.
    fn settle_rejected(&mut self) -> Result<(), PublishError> {
        let mut rejected = std::mem::take(&mut self.rejected);
        rejected.sort_unstable_by_key(|(seq, _)| *seq);
        let mut reader = self.p.outbox.reader(rejected[0].0);
        let mut next = 0;
        while next < rejected.len() {
            let Some(frame) = reader.next_frame()? else {
                break;
            };
            let Ok(parsed) = Frame::parse(&frame) else {
                continue;
            };
            for item in parsed.records() {
                let Ok((seq, record)) = item else { break };
                while next < rejected.len() && rejected[next].0 < seq {
                    next += 1;
                }
                if next < rejected.len() && rejected[next].0 == seq {
                    let error = rejected[next].1.clone();
                    self.reject(seq, &record, &error)?;
                    next += 1;
                }
            }
        }
        // Anything not found in the log was evicted meanwhile: settled as dropped already.
        for (seq, _) in &rejected[next.min(rejected.len())..] {
            self.tracker.settle(*seq);
        }
        Ok(())
    }

    /// Tells the outbox how far delivery got (at most once per call, when it changed).
    fn report_progress(&mut self) -> Result<(), PublishError> {
        let state = (self.tracker.base(), self.tracker.above(), self.cursor);
        if state == self.settled_reported && self.oldest_at.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        if self.oldest_at.elapsed() >= Duration::from_secs(1) || self.slab.is_empty() {
            self.oldest_ms = self.slab.iter().map(|e| e.received_at_ms).min();
            self.oldest_at = Instant::now();
        }
        let oldest = if self.tracker.base() >= self.p.outbox.committed_end() {
            None
        } else {
            self.oldest_ms.or(self.p.outbox.stats().oldest_received_ms)
        };
        self.p
            .outbox
            .settle(state.0, state.1, state.2.max(state.0), oldest)?;
        self.settled_reported = state;
        Ok(())
    }

    /// Every delivery settled after a transient failure: wait out the backoff (ending early when
    /// a broker answers), then read the log again from the watermark with a single probe.
    fn back_off(&mut self, stop: &CancellationToken) -> Result<(), PublishError> {
        self.p.stats.set_circuit_open(true);
        self.circuit = Circuit::Open;
        let delay = self.backoff.next_delay();
        self.p.stats.retry();
        let attempts = self.backoff.attempts();
        if attempts == 1 || attempts.is_power_of_two() {
            tracing::warn!(
                attempts,
                delay_ms = delay.as_millis() as u64,
                depth = self.p.outbox.stats().depth,
                "Kafka deliveries are failing; retrying from the outbox after a backoff"
            );
        }
        let until = Instant::now() + delay;
        while Instant::now() < until && !stop.is_cancelled() {
            self.p.stats.heartbeats.publisher_beat();
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            // A broker that answers ends the wait: resume at once, not at the end of the delay.
            let started = Instant::now();
            if self
                .producer
                .client()
                .fetch_metadata(None, step.max(Duration::from_millis(50)))
                .is_ok()
                && !self.producer.context().flags.fatal.load(Ordering::SeqCst)
            {
                break;
            }
            if let Some(rest) = step.checked_sub(started.elapsed()) {
                std::thread::sleep(rest.min(Duration::from_millis(200)));
            }
        }
        if self.producer.context().flags.fatal.load(Ordering::SeqCst) {
            self.producer = self.p.producer()?;
            self.p.stats.producer_restarted();
            tracing::warn!("Recreated the Kafka producer after a fatal error");
        }
        self.p.stats.set_circuit_open(false);
        self.cursor = self.tracker.base();
        self.current = None;
        self.rewind = false;
        self.circuit = Circuit::HalfOpen;
        Ok(())
    }
}

enum Sent {
    /// Handed to librdkafka.
    Yes,
    /// Settled without sending (dead-lettered).
    Settled,
    /// Not now: the window or librdkafka's queue is full, or a failure stops sending.
    Later,
}

/// The sequence number after the last record of a frame.
fn frame_end(frame: &[u8]) -> Option<u64> {
    // first_seq and count sit at the start of the body.
    let body = frame.get(crate::outbox::codec::FRAME_HEADER..)?;
    let first = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    Some(first + u64::from(count))
}

impl Publisher {
    fn circuit_window(&self, circuit: Circuit) -> usize {
        circuit.window(self.kafka.max_in_flight)
    }
}
