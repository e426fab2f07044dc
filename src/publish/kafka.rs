//! The librdkafka side of publishing: the producer's configuration, the one place that
//! classifies Kafka errors, and the client context whose delivery callback collects reports
//! (slot number and outcome) for the publisher to settle in bulk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::telemetry::Stats;

/// How a failed delivery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retry from the outbox after a backoff.
    Transient,
    /// Retrying cannot help: dead-letter the record.
    Permanent,
    /// The producer is unusable: recreate it, then retry.
    Fatal,
}

/// Classifies a Kafka error.
pub fn classify(error: &KafkaError) -> Failure {
    match error.rdkafka_error_code() {
        Some(code) => classify_code(code),
        None => Failure::Transient,
    }
}

/// Classifies a librdkafka error code.
pub fn classify_code(code: RDKafkaErrorCode) -> Failure {
    use RDKafkaErrorCode as C;
    match code {
        C::Fatal => Failure::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::InvalidTopic
        | C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::PolicyViolation => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// The producer configuration: our defaults, then every `[kafka.properties]` entry.
pub fn client_config(kafka: &KafkaConfig, gateway: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    let window_kib = (kafka.max_in_flight_bytes.bytes() / 1024).max(1024) * 2;
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("sensorgate-{gateway}"))
        .set("enable.idempotence", "true")
        .set("compression.type", kafka.compression.as_str())
        .set("linger.ms", kafka.linger.as_millis().to_string())
        // librdkafka never drops a record by itself: a queued record timing out while later
        // ones of its partition are sent would reorder that partition. The publisher holds a
        // stalled partition after `kafka.message_timeout` instead (see publisher.rs).
        .set("message.timeout.ms", "0")
        // librdkafka's own bound stays above the publisher's window.
        .set(
            "queue.buffering.max.messages",
            (kafka.max_in_flight * 2 + 1000).to_string(),
        )
        .set("queue.buffering.max.kbytes", window_kib.to_string())
        // Reconnect within a second once a broker is back (librdkafka's default grows to 10 s).
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &kafka.properties {
        config.set(key, value.to_string());
    }
    config
}

/// Creates (and drops) a producer from `config`'s `[kafka]` section, so librdkafka reports any
/// unknown property or bad value. Nothing connects.
pub fn producer_config_check(config: &crate::config::Config) -> Result<(), KafkaError> {
    client_config(&config.kafka, &config.gateway.id)
        .create::<BaseProducer>()
        .map(drop)
}

/// One delivery report.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The record's slot in the publisher's window.
    pub slot: usize,
    /// `None` when Kafka confirmed the record.
    pub error: Option<RDKafkaErrorCode>,
}

/// Flags the librdkafka callbacks raise for the publish loop.
#[derive(Debug, Default)]
pub struct Flags {
    /// The idempotent producer hit a fatal error.
    pub fatal: AtomicBool,
    /// librdkafka reports every broker down.
    pub down: AtomicBool,
}

/// librdkafka callbacks: logs into tracing, reports into a buffer, state into flags.
#[derive(Debug)]
pub struct Context {
    stats: Arc<Stats>,
    /// Raised by the error callback.
    pub flags: Arc<Flags>,
    /// Filled by the delivery callback (on the thread that polls), drained by the publisher.
    pub reports: Mutex<Vec<Report>>,
}

impl Context {
    /// A context counting into `stats`.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            flags: Arc::default(),
            reports: Mutex::new(Vec::new()),
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(facility = fac, "librdkafka: {message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                self.flags.fatal.store(true, Ordering::SeqCst);
                tracing::error!(%reason, "Kafka producer hit a fatal error; it will be recreated");
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                if !self.flags.down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(%reason, "All Kafka brokers are down; readings are buffered in the outbox");
                }
                self.stats.set_kafka_down(true);
            }
            _ => tracing::debug!(%error, %reason, "Kafka client error"),
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let error = match result {
            Ok(_) => None,
            Err((e, _)) => Some(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown)),
        };
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Report { slot, error });
    }
}

/// The producer type.
pub type Producer = BaseProducer<Context>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_once() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Permanent
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Permanent
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::UnknownTopic)),
            Failure::Permanent
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::AllBrokersDown)),
            Failure::Transient
        );
        assert_eq!(
            classify(&e(RDKafkaErrorCode::NotEnoughReplicas)),
            Failure::Transient
        );
        assert_eq!(classify(&e(RDKafkaErrorCode::Fatal)), Failure::Fatal);
    }
}
