//! Settling what librdkafka reports, watching partitions (stalls, probes, purges when held
//! partitions take the window), and telling the outbox how far delivery got.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer as _, PurgeConfig};

use super::{Loop, PublishError};
use crate::outbox::codec::Frame;
use crate::publish::circuit::Circuit;
use crate::publish::kafka::{classify_code, Failure};
use crate::telemetry::events::{Event as _, PartitionHeld};
use crate::telemetry::LatencyBatch;

impl Loop<'_> {
    /// Settles every delivery report collected since the last call.
    pub(super) fn settle_reports(&mut self) -> Result<(), PublishError> {
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
        let (mut delivered, mut delivered_dead) = (0u64, 0u64);
        let mut latency = LatencyBatch::default();
        for report in reports.drain(..) {
            let Some(entry) = self.slab.remove(report.slot) else {
                continue;
            };
            self.weight = self.weight.saturating_sub(u64::from(entry.weight));
            let part = self.parts.get(entry.topic, entry.partition);
            part.in_flight = part.in_flight.saturating_sub(1);
            part.waiting_since = (part.in_flight > 0).then_some(now);
            match report.error {
                None => {
                    self.tracker.settle(entry.seq);
                    delivered += 1;
                    if entry.dead {
                        delivered_dead += 1;
                    }
                    self.topics.get_mut(entry.topic).delivered += 1;
                    latency.observe(now.saturating_duration_since(entry.sent_at));
                    if part.circuit != Circuit::Closed {
                        part.circuit = Circuit::Closed;
                        part.probe_at = None;
                        part.backoff.reset();
                        let name = self.topics.get(entry.topic).name.clone();
                        tracing::info!(topic = %name, partition = entry.partition, "Kafka partition accepts records again");
                    }
                }
                Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
                    // Taken back by a purge: sent again when its partition is released.
                    part.hold_from(entry.seq);
                }
                Some(RDKafkaErrorCode::Fatal) => {
                    part.hold_from(entry.seq);
                    self.fatal = true;
                }
                Some(code) => match classify_code(code) {
                    Failure::Permanent if !unknown_topic(code) || self.topic_gone(entry.topic) => {
                        self.rejected
                            .push((entry.seq, KafkaError::MessageProduction(code).to_string()));
                    }
                    Failure::Permanent | Failure::Transient => {
                        self.topics.get_mut(entry.topic).failed += 1;
                        if unknown_topic(code) {
                            let t = self.topics.get_mut(entry.topic);
                            t.unknown_since.get_or_insert(now);
                            // Ask for metadata again at once.
                            t.refresh_at = now;
                        }
                        tracing::debug!(seq = entry.seq, error = %code, "Delivery failed; its partition is held and retried");
                        self.open(entry.topic, entry.partition, entry.seq);
                    }
                    Failure::Fatal => {
                        self.parts
                            .get(entry.topic, entry.partition)
                            .hold_from(entry.seq);
                        self.fatal = true;
                    }
                },
            }
        }
        self.reports = reports;
        if self
            .producer
            .context()
            .flags
            .fatal
            .swap(false, Ordering::SeqCst)
        {
            self.fatal = true;
        }
        if delivered > 0 {
            let topics = &mut self.topics;
            self.p.stats.delivered_many(
                topics
                    .iter_mut()
                    .filter(|(_, t)| t.delivered > 0)
                    .map(|(_, t)| (t.name.clone(), std::mem::take(&mut t.delivered)))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(n, c)| (&**n, *c)),
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
        }
        for (_, t) in self.topics.iter_mut() {
            if t.failed > 0 {
                self.p
                    .stats
                    .delivery_failed_many(&t.name, std::mem::take(&mut t.failed));
            }
        }
        if !self.rejected.is_empty() {
            self.settle_rejected()?;
        }
        Ok(())
    }

    fn topic_gone(&self, topic: u16) -> bool {
        self.topics
            .get(topic)
            .unknown_since
            .is_some_and(|t| t.elapsed() > self.p.kafka.message_timeout)
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

    /// Stalls, probes and the window: a partition whose oldest record waited too long is held;
    /// a held partition with nothing in flight gets a probe time, and turns half-open at it;
    /// when held partitions take the window, librdkafka's unsent records are taken back.
    pub(super) fn watch_partitions(&mut self) -> Result<(), PublishError> {
        self.refresh_waiting_topics();
        let now = Instant::now();
        let limit = self.p.kafka.message_timeout;
        let mut stalled_in_flight = 0usize;
        let mut newly_stalled = Vec::new();
        let mut any_open = false;
        for (key, part) in self.parts.iter_mut() {
            if part.circuit != Circuit::Open && part.stalled(limit, now) {
                part.circuit = Circuit::Open;
                newly_stalled.push(*key);
            }
            if part.circuit == Circuit::Open {
                any_open = true;
                stalled_in_flight += part.in_flight;
                if part.in_flight == 0 {
                    match part.probe_at {
                        None => {
                            part.probe_at = Some(now + part.backoff.next_delay());
                            self.p.stats.retry();
                        }
                        Some(t) if now >= t => part.circuit = Circuit::HalfOpen,
                        Some(_) => {}
                    }
                }
            } else if part.circuit == Circuit::HalfOpen && part.stalled(limit, now) {
                // The probe is stuck too: back off longer.
                part.circuit = Circuit::Open;
                part.probe_at = None;
            }
        }
        for (topic, partition) in newly_stalled {
            let name = self.topics.get(topic).name.clone();
            PartitionHeld {
                topic: &name,
                partition,
                waited: limit,
            }
            .emit(&self.p.stats);
            // A stalled partition may have lost its leader: look again soon.
            self.topics.get_mut(topic).refresh_at = now;
        }
        // Records waiting for a topic's metadata while the cluster cannot be asked count as a
        // held partition too.
        any_open |= self
            .topics
            .iter()
            .any(|(_, t)| t.pending_from.is_some() && t.metadata_retry.attempts() > 0);
        self.p.stats.set_circuit_open(any_open);
        // Held partitions take more than half of the window: take back what librdkafka has not
        // sent yet (for every partition: a purge only cuts the tail of a queue, so each
        // partition's order stays), at most once per stall limit.
        if stalled_in_flight * 2 >= self.window
            && self
                .last_purge
                .is_none_or(|t| now.duration_since(t) >= limit)
        {
            self.last_purge = Some(now);
            tracing::warn!(
                held = stalled_in_flight,
                "Held Kafka partitions fill the window: taking their unsent records back into the outbox"
            );
            self.producer.purge(PurgeConfig::default().queue());
            // Every purged record's report is queued now: settle them all before sending again,
            // so that no partition sends a later record before its purged ones.
            loop {
                self.producer.poll(Duration::ZERO);
                let queued = self
                    .producer
                    .context()
                    .reports
                    .lock()
                    .map_or(0, |r| r.len());
                if queued == 0 {
                    break;
                }
                self.settle_reports()?;
            }
        }
        Ok(())
    }

    /// Tells the outbox how far delivery got (when it changed, or once a second).
    pub(super) fn report_progress(&mut self) -> Result<(), PublishError> {
        // Everything below `sent` was handed over or settled; records of held partitions below
        // it are still unsent, so the lowest of their first unsent records bounds it.
        let held_from = self
            .parts
            .iter()
            .filter_map(|(_, p)| p.pending_from)
            .chain(self.topics.iter().filter_map(|(_, t)| t.pending_from))
            .min()
            .unwrap_or(u64::MAX);
        let sent = self.high.min(held_from).max(self.tracker.base());
        let state = (self.tracker.base(), self.tracker.above(), sent);
        let second = self.oldest_at.elapsed() >= Duration::from_secs(1);
        if state == self.reported && !second {
            return Ok(());
        }
        if second || self.slab.is_empty() {
            self.oldest_ms = self.slab.iter().map(|e| e.received_at_ms).min();
            self.oldest_at = Instant::now();
        }
        let oldest = if self.tracker.base() >= self.p.outbox.committed_end() {
            None
        } else {
            self.oldest_ms.or(self.p.outbox.stats().oldest_received_ms)
        };
        self.p.outbox.settle(state.0, state.1, state.2, oldest)?;
        self.reported = state;
        Ok(())
    }
}

fn unknown_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}
