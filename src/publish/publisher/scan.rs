//! Reading the log and handing records over: the main scan, rescans for released partitions,
//! partition choice and topic metadata.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};

use super::{frame_end, InFlight, Loop, PublishError, Rescan};
use crate::outbox::codec::{Frame, RecordRef};
use crate::publish::circuit::Circuit;
use crate::publish::kafka::{classify_code, Failure};
use crate::publish::partition::partition_of;
use crate::record::format_ms;
use crate::telemetry::events::{Event as _, RecordRejected, TopicMissing};

/// How long a metadata request may block the publisher.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a known topic's metadata (partition count, leaders) is refreshed.
const METADATA_EVERY: Duration = Duration::from_secs(30);

/// What happened to a record the scan looked at.
enum Step {
    /// Handed to librdkafka (or settled without it).
    Done,
    /// Left for later (its partition or topic is held); the scan goes on.
    Skipped,
    /// The window or librdkafka's queue is full: stop here, come back to this record.
    Stop,
}

impl Loop<'_> {
    /// Looks at records from the cursor until the window is full or nothing committed is left;
    /// returns how many were handed over.
    pub(super) fn fill(&mut self) -> Result<usize, PublishError> {
        self.maybe_start_rescan();
        let max_bytes = self.p.kafka.max_in_flight_bytes.bytes();
        let mut sent = 0;
        let now = Instant::now();
        'frames: while self.slab.len() < self.window && self.weight < max_bytes {
            if let Some(r) = &self.rescan {
                if self.cursor >= r.end {
                    self.finish_rescan();
                    self.maybe_start_rescan();
                    continue;
                }
            }
            let Some(frame) = self.next_frame()? else {
                if self.rescan.is_some() {
                    // Nothing left to read below the rescan's end (evicted, say): it is done.
                    self.cursor = self.rescan.as_ref().map_or(self.cursor, |r| r.end);
                    continue;
                }
                break;
            };
            let parsed = match Frame::parse(&frame) {
                Ok(f) => f,
                Err(e) => {
                    // Checked when read; reaching this means memory went bad. Skip it loudly.
                    tracing::error!(error = %e, "Outbox frame does not parse; skipping it");
                    self.cursor = self.cursor.max(frame_end(&frame).unwrap_or(self.cursor));
                    self.high = self.high.max(self.cursor);
                    continue;
                }
            };
            if parsed.first_seq > self.cursor {
                // A gap: records evicted, or sequence numbers a migration skipped.
                self.tracker.settle_range(self.cursor, parsed.first_seq);
                self.cursor = parsed.first_seq;
            }
            for item in parsed.records() {
                let (seq, record) = match item {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "Outbox record does not decode; skipping the rest of its frame");
                        break;
                    }
                };
                if seq < self.cursor {
                    continue;
                }
                if self.slab.len() >= self.window || self.weight >= max_bytes {
                    self.current = Some(frame);
                    break 'frames;
                }
                match self.look_at(seq, &record, now)? {
                    Step::Done => {
                        sent += 1;
                        self.cursor = seq + 1;
                    }
                    Step::Skipped => self.cursor = seq + 1,
                    Step::Stop => {
                        self.current = Some(frame);
                        break 'frames;
                    }
                }
                self.high = self.high.max(self.cursor);
            }
            self.cursor = self.cursor.max(parsed.end_seq());
            self.high = self.high.max(self.cursor);
            self.current = None;
        }
        Ok(sent)
    }

    /// Decides about one record: send it, leave it for its held partition, or stop.
    fn look_at(
        &mut self,
        seq: u64,
        record: &RecordRef<'_>,
        now: Instant,
    ) -> Result<Step, PublishError> {
        if self.tracker.is_settled(seq) {
            return Ok(Step::Skipped);
        }
        let topic = self.topics.id(record.kafka_topic);
        let count = self.partition_count(topic);
        let rescanning = seq < self.high;
        if count == 0 || self.topics.get(topic).pending_from.is_some() {
            // No partition count yet (Kafka unreachable, or the topic does not exist): the
            // whole topic waits, in order, from its first such record.
            if count == 0 && self.topic_gone_for_good(topic) {
                self.reject(
                    seq,
                    record,
                    "the topic does not exist (metadata said so for longer than kafka.message_timeout)",
                )?;
                return Ok(Step::Done);
            }
            let t = self.topics.get_mut(topic);
            t.pending_from = Some(t.pending_from.map_or(seq, |p| p.min(seq)));
            return Ok(Step::Skipped);
        }
        let partition = partition_of(record.key, seq, count);
        let leaderless = self
            .topics
            .get(topic)
            .leaders
            .get(partition as usize)
            .is_some_and(|l| *l < 0);
        let share = self.share;
        let part = self.parts.get(topic, partition);
        let busy = !leaderless && part.circuit == Circuit::Closed && part.in_flight >= share;
        if rescanning {
            // Below the high-water mark only the records of released partitions are sent.
            let released = self.rescan.as_ref().and_then(|r| {
                r.released
                    .iter()
                    .position(|(k, _)| *k == (topic, partition))
            });
            let pending = part.pending_from.is_some_and(|f| f <= seq);
            let stopped = released
                .and_then(|i| self.rescan.as_ref().map(|r| r.released[i].1))
                .unwrap_or(false);
            match (released, pending) {
                // It left a record unsent in this pass: its later ones wait for the next pass,
                // or they would overtake it.
                (Some(_), true) if stopped => return Ok(Step::Skipped),
                // A healthy partition with its share in flight: wait for confirmations.
                (Some(_), true) if busy => return Ok(Step::Stop),
                (Some(i), true) => {
                    if leaderless || !part.may_send(share, now) {
                        if let Some(r) = &mut self.rescan {
                            r.released[i].1 = true;
                        }
                        return Ok(Step::Skipped);
                    }
                }
                _ => return Ok(Step::Skipped),
            }
        } else if part.pending_from.is_some() {
            return Ok(Step::Skipped);
        } else if busy {
            // Its share is in flight and it is not stalled: wait for confirmations rather than
            // hold it (holding would mean reading the log again for it).
            return Ok(Step::Stop);
        } else if leaderless || !part.may_send(share, now) {
            part.hold_from(seq);
            if leaderless && part.circuit == Circuit::Closed {
                part.circuit = Circuit::Open;
            }
            return Ok(Step::Skipped);
        }
        self.send(seq, record, topic, partition, now)
    }

    /// The partition count of a topic, asking the cluster when it is unknown or stale.
    pub(super) fn partition_count(&mut self, topic: u16) -> u32 {
        let now = Instant::now();
        let t = self.topics.get(topic);
        if now < t.refresh_at {
            return t.partitions;
        }
        let name = t.name.clone();
        let result = self
            .producer
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT);
        let t = self.topics.get_mut(topic);
        match result {
            Ok(metadata) => {
                let found = metadata.topics().iter().find(|m| m.name() == &*name);
                match found {
                    Some(m) if m.error().is_none() && !m.partitions().is_empty() => {
                        let mut leaders = vec![-1; m.partitions().len()];
                        for p in m.partitions() {
                            if let Some(slot) = usize::try_from(p.id())
                                .ok()
                                .and_then(|i| leaders.get_mut(i))
                            {
                                *slot = if p.error().is_some() { -1 } else { p.leader() };
                            }
                        }
                        if t.partitions != 0 && t.partitions as usize != leaders.len() {
                            tracing::warn!(topic = %name, before = t.partitions, now = leaders.len(), "Kafka topic's partition count changed; keyed records move with it");
                        }
                        t.partitions = leaders.len() as u32;
                        t.leaders = leaders;
                        t.metadata_retry.reset();
                        t.unknown_since = None;
                        t.refresh_at = now + METADATA_EVERY;
                        // Records that waited for the partition count: each partition holds
                        // them from the first one, and a rescan sends them in order.
                        if let Some(from) = t.pending_from.take() {
                            for partition in 0..t.partitions {
                                self.parts.get(topic, partition).hold_from(from);
                            }
                        }
                    }
                    _ => {
                        // The cluster answered but has no such topic (auto-create off).
                        t.unknown_since.get_or_insert(now);
                        t.refresh_at = now + t.metadata_retry.next_delay();
                        TopicMissing { topic: &name }.emit(&self.p.stats);
                    }
                }
            }
            Err(e) => {
                t.refresh_at = now + t.metadata_retry.next_delay();
                tracing::debug!(topic = %name, error = %e, "Kafka metadata request failed");
            }
        }
        self.topics.get(topic).partitions
    }

    /// Asks again for the metadata of topics whose records wait for it (nothing else would: the
    /// scan passes them by).
    pub(super) fn refresh_waiting_topics(&mut self) {
        let now = Instant::now();
        let due: Vec<u16> = self
            .topics
            .iter()
            .filter(|(_, t)| t.pending_from.is_some() && now >= t.refresh_at)
            .map(|(id, _)| id)
            .collect();
        for topic in due {
            if self.partition_count(topic) == 0 {
                self.p.stats.retry();
            }
        }
    }

    /// Whether the cluster has said for longer than `message_timeout` that a topic does not
    /// exist: its records then become `publish-rejected` dead letters.
    fn topic_gone_for_good(&self, topic: u16) -> bool {
        self.topics
            .get(topic)
            .unknown_since
            .is_some_and(|t| t.elapsed() > self.p.kafka.message_timeout)
    }

    /// Starts a rescan when held partitions may send again.
    pub(super) fn maybe_start_rescan(&mut self) {
        if self.rescan.is_some() {
            return;
        }
        let now = Instant::now();
        let share = self.share;
        let mut from = u64::MAX;
        let mut released = Vec::new();
        for (key, part) in self.parts.iter() {
            if let Some(f) = part.pending_from {
                if part.may_send(share, now) {
                    released.push((*key, false));
                    from = from.min(f);
                }
            }
        }
        if from == u64::MAX || from >= self.high {
            // Nothing to send again below what the main scan has seen.
            for (key, _) in &released {
                let part = self.parts.get(key.0, key.1);
                if part.pending_from.is_some_and(|f| f >= self.high) {
                    part.pending_from = None;
                }
            }
            return;
        }
        self.rescan = Some(Rescan {
            end: self.high,
            released,
        });
        self.cursor = from.max(self.tracker.base());
        self.current = None;
        tracing::debug!(
            from = self.cursor,
            to = self.high,
            "Rescanning the outbox for released partitions"
        );
    }

    /// The rescan reached its end: partitions that sent everything are caught up.
    fn finish_rescan(&mut self) {
        let Some(rescan) = self.rescan.take() else {
            return;
        };
        for (key, stopped) in rescan.released {
            let part = self.parts.get(key.0, key.1);
            if !stopped {
                part.pending_from = None;
            }
        }
        self.cursor = self.cursor.max(rescan.end);
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
            self.high = self.high.max(skip);
        }
        if self.cursor >= self.high {
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
                    front.first_seq = frame_end(&frame).unwrap_or(front.end_seq);
                    if front.frames.is_empty() {
                        self.pending = None;
                    }
                    return Ok(Some(frame));
                }
            }
        }
        // Behind the committer, its frames dropped, or a rescan: read the log.
        if self.cursor >= self.p.outbox.committed_end() {
            return Ok(None);
        }
        if self.reader.position() != self.cursor {
            self.reader.seek(self.cursor);
        }
        Ok(self.reader.next_frame()?)
    }

    fn send(
        &mut self,
        seq: u64,
        record: &RecordRef<'_>,
        topic: u16,
        partition: u32,
        now: Instant,
    ) -> Result<Step, PublishError> {
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
            partition,
            dead: record.dead.is_some(),
            received_at_ms: record.received_at_ms,
            sent_at: now,
        });
        let mut message = BaseRecord::<str, [u8], usize>::with_opaque_to(record.kafka_topic, slot)
            .partition(partition as i32)
            .payload(record.payload)
            .headers(headers)
            .timestamp(record.received_at_ms as i64);
        if let Some(key) = record.key {
            message = message.key(key);
        }
        match self.producer.send(message) {
            Ok(()) => {
                self.weight += u64::from(weight);
                let part = self.parts.get(topic, partition);
                part.in_flight += 1;
                part.waiting_since.get_or_insert(now);
                if part.pending_from.is_some() {
                    // A released partition catching up: its next unsent record is later.
                    part.pending_from = Some(seq + 1);
                }
                Ok(Step::Done)
            }
            Err((e, _)) => {
                self.slab.remove(slot);
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
                if code == RDKafkaErrorCode::QueueFull {
                    return Ok(Step::Stop);
                }
                match classify_code(code) {
                    Failure::Permanent => {
                        self.reject(seq, record, &e.to_string())?;
                        Ok(Step::Done)
                    }
                    Failure::Transient | Failure::Fatal => {
                        tracing::debug!(error = %e, "Kafka refused to queue a record; holding its partition");
                        self.open(topic, partition, seq);
                        Ok(Step::Skipped)
                    }
                }
            }
        }
    }

    /// Moves a record Kafka refused for good to the local DLQ, and settles it.
    pub(super) fn reject(
        &mut self,
        seq: u64,
        record: &RecordRef<'_>,
        error: &str,
    ) -> Result<(), PublishError> {
        RecordRejected {
            seq,
            topic: record.kafka_topic,
            source: record.source,
            error,
        }
        .emit(&self.p.stats);
        self.p.outbox.dlq().publish_rejected(seq, record, error)?;
        self.tracker.settle(seq);
        Ok(())
    }

    /// Holds a partition from `seq` on and opens its circuit: probed after a backoff.
    pub(super) fn open(&mut self, topic: u16, partition: u32, seq: u64) {
        if let Some(r) = &mut self.rescan {
            if let Some(entry) = r
                .released
                .iter_mut()
                .find(|(k, _)| *k == (topic, partition))
            {
                entry.1 = true;
            }
        }
        let part = self.parts.get(topic, partition);
        part.hold_from(seq);
        if part.circuit != Circuit::Open {
            part.circuit = Circuit::Open;
        }
        if part.in_flight == 0 && part.probe_at.is_none() {
            let delay = part.backoff.next_delay();
            part.probe_at = Some(Instant::now() + delay);
            self.p.stats.retry();
        }
    }
}
