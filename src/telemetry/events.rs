//! Operational events: each failure, loss or recovery an operator may need to know about is a
//! named struct here, and its [`Event::emit`] is the one place that logs it and counts it. The
//! message, its level, its fields and its metric sit together, and a new failure mode gets a new
//! struct rather than a `tracing::warn!` and a counter call somewhere in the data path.
//!
//! One rate-limiting rule for all of them ([`Limiter`]): an event of one kind about one subject
//! (a source, a topic, the outbox) is logged at its level the first time, then at most once per
//! [`LOG_EVERY`] while it keeps happening. The ones in between are logged at debug, and the next
//! line at its level says how many there were (`repeats`). A recovery event ends the run, so
//! the next failure is logged at once. Counters are never limited: `/metrics` counts every one.

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Stats;

/// How often one kind of event about one subject is logged at its level at most.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// What an event carries about an error: shown in the log (Display), and Debug for the struct.
pub trait Detail: Display + Debug {}
impl<T: Display + Debug + ?Sized> Detail for T {}

/// Something that happened: logs and counts it.
pub trait Event {
    /// Logs (under the rate limit) and counts the event.
    fn emit(self, stats: &Stats);
}

/// Which events were logged at their level lately (see the module doc).
#[derive(Debug, Default)]
pub struct Limiter {
    runs: Mutex<HashMap<&'static str, HashMap<Box<str>, Run>>>,
}

#[derive(Debug)]
struct Run {
    logged_at: Instant,
    held: u64,
}

impl Limiter {
    /// `Some(repeats)`: log this one at its level, `repeats` were held back since the last one;
    /// `None`: log it at debug.
    pub fn admit(&self, kind: &'static str, subject: &str) -> Option<u64> {
        self.admit_at(kind, subject, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, subject: &str, now: Instant) -> Option<u64> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let runs = runs.entry(kind).or_default();
        match runs.get_mut(subject) {
            Some(run) if now.duration_since(run.logged_at) < LOG_EVERY => {
                run.held += 1;
                None
            }
            Some(run) => {
                let repeats = std::mem::take(&mut run.held);
                run.logged_at = now;
                Some(repeats)
            }
            None => {
                runs.insert(
                    subject.into(),
                    Run {
                        logged_at: now,
                        held: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// The condition behind `kind` is over for `subject`: its next event is logged at once.
    pub fn clear(&self, kind: &'static str, subject: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runs) = runs.get_mut(kind) {
            runs.remove(subject);
        }
    }
}

/// Logs at `$level` if the limiter admits `$kind` about `$subject` (with a `repeats` field),
/// else at debug.
macro_rules! limited {
    ($stats:expr, $kind:expr, $subject:expr, $level:ident, $($rest:tt)+) => {
        match $stats.events.admit($kind, $subject) {
            Some(repeats) => tracing::$level!(repeats, $($rest)+),
            None => tracing::debug!($($rest)+),
        }
    };
}

/// An MQTT connection failed or could not be made; the source reconnects after `retry`.
#[derive(Debug)]
pub struct MqttLinkLost<'a> {
    /// The source.
    pub source: &'a str,
    /// What failed.
    pub error: &'a dyn Detail,
    /// The delay before the next attempt.
    pub retry: Duration,
    /// What the operator may have to change, when the error suggests it.
    pub hint: Option<&'static str>,
}

impl Event for MqttLinkLost<'_> {
    fn emit(self, stats: &Stats) {
        stats.mqtt_reconnect(self.source);
        let retry_ms = self.retry.as_millis() as u64;
        limited!(stats, "mqtt-link-lost", self.source, warn, source = %self.source, error = %self.error, retry_ms, hint = self.hint, "MQTT connection failed; reconnecting with backoff");
    }
}

/// A downlink's MQTT broker is unreachable or does not acknowledge: consumption is paused and
/// the link retried after `retry`.
#[derive(Debug)]
pub struct DownlinkLinkLost<'a> {
    /// The downlink.
    pub downlink: &'a str,
    /// What failed.
    pub error: &'a dyn Detail,
    /// Consecutive failures.
    pub attempts: u32,
    /// The delay before the next attempt.
    pub retry: Duration,
    /// Commands held until the link is back.
    pub held: usize,
}

impl Event for DownlinkLinkLost<'_> {
    fn emit(self, stats: &Stats) {
        let retry_ms = self.retry.as_millis() as u64;
        limited!(stats, "downlink-link-lost", self.downlink, warn, downlink = %self.downlink, error = %self.error, attempts = self.attempts, retry_ms, held = self.held, "MQTT broker of the downlink unreachable or not acknowledging; consumption paused, retrying with backoff");
    }
}

/// The broker sent a packet over the source's limit: rumqttc dropped the connection unread.
#[derive(Debug)]
pub struct MqttPacketTooLarge<'a> {
    /// The source.
    pub source: &'a str,
    /// The packet's size.
    pub bytes: usize,
    /// The source's packet limit.
    pub limit: usize,
}

impl Event for MqttPacketTooLarge<'_> {
    fn emit(self, stats: &Stats) {
        stats.mqtt_oversize(self.source);
        limited!(stats, "mqtt-packet-too-large", self.source, error, source = %self.source, bytes = self.bytes, limit = self.limit, "MQTT broker sent a packet larger than max_payload allows; dropped the connection without reading it (a QoS 1 publish comes back on every reconnect: make the broker refuse it, max_packet_size in mosquitto)");
    }
}

/// The broker refused one of the source's subscriptions; it is asked again after `retry`.
#[derive(Debug)]
pub struct MqttSubscriptionRefused<'a> {
    /// The source.
    pub source: &'a str,
    /// The SUBACK's return codes.
    pub codes: &'a dyn Debug,
    /// The delay before the next SUBSCRIBE.
    pub retry: Duration,
}

impl Event for MqttSubscriptionRefused<'_> {
    fn emit(self, stats: &Stats) {
        stats.source_up(self.source, false);
        let retry_ms = self.retry.as_millis() as u64;
        limited!(stats, "mqtt-subscription-refused", self.source, error, source = %self.source, codes = ?self.codes, retry_ms, "MQTT broker refused a subscription; retrying with backoff");
    }
}

/// A commit (or, after a latching error, a probe write) failed: nothing in it is acknowledged.
#[derive(Debug)]
pub struct OutboxWriteFailed<'a> {
    /// What failed.
    pub error: &'a dyn Detail,
    /// Readings waiting for the commit.
    pub waiting: usize,
}

impl Event for OutboxWriteFailed<'_> {
    fn emit(self, stats: &Stats) {
        stats.outbox_write_failed();
        limited!(stats, "outbox-write-failed", "", error, error = %self.error, waiting = self.waiting, "Cannot write the outbox (disk full or failing?); readings stay unacknowledged and are retried until it can be written");
    }
}

/// A commit succeeded after failures.
#[derive(Debug)]
pub struct OutboxWritable {
    /// Failed attempts before it.
    pub attempts: u32,
}

impl Event for OutboxWritable {
    fn emit(self, stats: &Stats) {
        stats.outbox_writable();
        stats.events.clear("outbox-write-failed", "");
        tracing::info!(attempts = self.attempts, "Outbox writes succeed again");
    }
}

/// The outbox was full under `drop-oldest`: its oldest unsent records were deleted.
#[derive(Debug)]
pub struct OutboxEvicted {
    /// Records deleted.
    pub records: u64,
    /// `queue.max_bytes`.
    pub max_bytes: u64,
}

impl Event for OutboxEvicted {
    fn emit(self, stats: &Stats) {
        stats.dropped(self.records);
        limited!(
            stats,
            "outbox-evicted",
            "",
            warn,
            evicted = self.records,
            max_bytes = self.max_bytes,
            "Outbox full: evicted the oldest records not yet sent (policy drop-oldest)"
        );
    }
}

/// Part of an outbox segment file does not read back: its records are skipped.
#[derive(Debug)]
pub struct OutboxCorrupt<'a> {
    /// The segment file.
    pub file: &'a std::path::Path,
    /// Where the damage starts.
    pub offset: u64,
    /// How long it is.
    pub bytes: u64,
    /// Records lost, when the frame header said.
    pub records: Option<u64>,
    /// Why it does not read.
    pub error: &'a dyn Detail,
}

impl Event for OutboxCorrupt<'_> {
    fn emit(self, stats: &Stats) {
        stats.outbox_corrupt(self.records.unwrap_or(0));
        // Never limited: each damaged place is its own.
        tracing::error!(
            file = %self.file.display(),
            offset = self.offset,
            bytes = self.bytes,
            records_lost = self.records,
            error = %self.error,
            "Outbox segment is corrupt: skipped the damaged bytes; the file is kept for recovery"
        );
    }
}

/// Dead letters arrived while they filled their share of the outbox: they were dropped.
#[derive(Debug)]
pub struct DeadLettersDropped {
    /// Dead letters dropped.
    pub dropped: u64,
}

impl Event for DeadLettersDropped {
    fn emit(self, stats: &Stats) {
        stats.dead_letters_dropped(self.dropped);
        limited!(stats, "dead-letters-dropped", "", warn, dropped = self.dropped, "Dead letters fill their share of the outbox (queue.dead_letter_share): dropping new ones until the DLQ topic takes some");
    }
}

/// Dead letters fit in their share of the outbox again.
#[derive(Debug)]
pub struct DeadLettersFitAgain;

impl Event for DeadLettersFitAgain {
    fn emit(self, stats: &Stats) {
        stats.events.clear("dead-letters-dropped", "");
        tracing::info!("Dead letters fit in the outbox again");
    }
}

/// The local dead-letter store went over its `[dlq]` bounds: its oldest entries were deleted.
#[derive(Debug)]
pub struct DlqEvicted {
    /// Entries deleted.
    pub evicted: u64,
    /// `dlq.max_entries`.
    pub max_entries: u64,
    /// `dlq.max_bytes`.
    pub max_bytes: u64,
    /// `dlq.max_age`, in seconds.
    pub max_age_s: u64,
}

impl Event for DlqEvicted {
    fn emit(self, stats: &Stats) {
        stats.dlq_evicted(self.evicted);
        limited!(
            stats,
            "dlq-evicted",
            "",
            warn,
            evicted = self.evicted,
            max_entries = self.max_entries,
            max_bytes = self.max_bytes,
            max_age_s = self.max_age_s,
            "Local dead-letter store over its [dlq] bounds: evicted the oldest dead letters"
        );
    }
}

/// Kafka refused a record for good: it moved to the local dead-letter store.
#[derive(Debug)]
pub struct RecordRejected<'a> {
    /// The record's outbox sequence number.
    pub seq: u64,
    /// Its Kafka topic.
    pub topic: &'a str,
    /// Its source.
    pub source: &'a str,
    /// Kafka's error.
    pub error: &'a str,
}

impl Event for RecordRejected<'_> {
    fn emit(self, stats: &Stats) {
        limited!(stats, "record-rejected", self.topic, error, seq = self.seq, topic = %self.topic, source = %self.source, error = %self.error, "Kafka rejected a record permanently; moved it to the local dead-letter store");
    }
}

/// A Kafka partition has not confirmed records for `waited`: its records are held in the outbox
/// (and the partition probed with one) while the others flow.
#[derive(Debug)]
pub struct PartitionHeld<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: u32,
    /// How long it went unconfirmed.
    pub waited: Duration,
}

impl Event for PartitionHeld<'_> {
    fn emit(self, stats: &Stats) {
        let subject = format!("{}/{}", self.topic, self.partition);
        limited!(stats, "partition-held", &subject, warn, topic = %self.topic, partition = self.partition, waited_s = self.waited.as_secs(), "Kafka partition is not confirming records; holding its records in the outbox while the others flow");
    }
}

/// The cluster answered that a topic does not exist: its records wait and are retried.
#[derive(Debug)]
pub struct TopicMissing<'a> {
    /// The topic.
    pub topic: &'a str,
}

impl Event for TopicMissing<'_> {
    fn emit(self, stats: &Stats) {
        limited!(stats, "topic-missing", self.topic, warn, topic = %self.topic, "Kafka has no such topic; its records wait in the outbox and are retried");
    }
}

/// The idempotent producer hit a fatal error and was replaced by a new one.
#[derive(Debug)]
pub struct ProducerRecreated;

impl Event for ProducerRecreated {
    fn emit(self, stats: &Stats) {
        stats.producer_restarted();
        limited!(
            stats,
            "producer-recreated",
            "",
            warn,
            "Recreated the Kafka producer after a fatal error"
        );
    }
}

/// A reload (SIGHUP) swapped in new routes and schemas, or failed and kept the old ones.
#[derive(Debug)]
pub enum Reloaded<'a> {
    /// The new set is in use.
    Done {
        /// Routes in it.
        routes: usize,
    },
    /// The old set stays.
    Failed {
        /// Why.
        error: &'a dyn Detail,
    },
}

impl Event for Reloaded<'_> {
    fn emit(self, stats: &Stats) {
        match self {
            Self::Done { routes } => {
                stats.reloaded(true);
                tracing::info!(routes, "Reloaded routes and schemas");
            }
            Self::Failed { error } => {
                stats.reloaded(false);
                tracing::error!(error = %error, "Reload failed; keeping the previous routes and schemas");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_logged_once_per_interval_and_subject_with_the_repeats_between() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("lost", "a", t0), Some(0));
        assert_eq!(limiter.admit_at("lost", "a", t0), None);
        assert_eq!(limiter.admit_at("lost", "a", t0 + LOG_EVERY / 2), None);
        // Another subject, another kind: their own runs.
        assert_eq!(limiter.admit_at("lost", "b", t0), Some(0));
        assert_eq!(limiter.admit_at("full", "a", t0), Some(0));
        assert_eq!(limiter.admit_at("lost", "a", t0 + LOG_EVERY), Some(2));
        assert_eq!(limiter.admit_at("lost", "a", t0 + LOG_EVERY), None);
        // A recovery ends the run: the next failure is logged at once.
        limiter.clear("lost", "a");
        assert_eq!(limiter.admit_at("lost", "a", t0 + LOG_EVERY), Some(0));
    }
}
