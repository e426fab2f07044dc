//! The librdkafka side of publishing: the producer's configuration, the one place that
//! classifies Kafka errors, and the client context whose delivery callback collects reports
//! (slot number and outcome) for the publisher to settle in bulk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientContext;
use thiserror::Error;

use crate::config::{is_secret_name, redact, KafkaConfig, SecretFileError};
use crate::telemetry::Stats;

/// A Kafka client (producer or consumer) that could not be set up. Its message never shows the
/// value of a secret property.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A `[kafka.property_files]` file cannot be used.
    #[error("kafka.property_files: {0}")]
    Secret(#[from] SecretFileError),
    /// librdkafka refused the configuration (secret values shown as `***`).
    #[error("{0}")]
    Rejected(String),
}

/// Our defaults for every client, then `[kafka.properties]` and `[kafka.property_files]`
/// (files read now).
pub fn apply_properties(
    config: &mut ClientConfig,
    kafka: &KafkaConfig,
) -> Result<(), SecretFileError> {
    for (key, value) in kafka.client_properties()? {
        config.set(key, value);
    }
    Ok(())
}

/// librdkafka's `error` for `config` (built from `kafka`) as a [`ClientError`] whose message
/// shows `***` for the value of every property whose name says it is secret or that was read
/// from a file, and for the value of a property librdkafka does not know (a misspelled
/// `sasl.pasword` is still a password).
pub fn rejected(error: &KafkaError, config: &ClientConfig, kafka: &KafkaConfig) -> ClientError {
    let secret = |key: &str| is_secret_name(key) || kafka.property_files.contains_key(key);
    let map = config.config_map();
    let mut secrets: Vec<&str> = (map.iter())
        .filter(|(key, _)| secret(key))
        .map(|(_, value)| *value)
        .collect();
    let message = match error {
        KafkaError::ClientConfig(res, desc, key, value) => {
            let hidden = *res == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN || secret(key);
            if hidden {
                secrets.push(value);
            }
            let shown = if hidden {
                crate::config::REDACTED
            } else {
                value
            };
            format!(
                "librdkafka refused property \"{key}\" = {shown}: {}",
                redact(desc, secrets.iter().copied())
            )
        }
        other => other.to_string(),
    };
    ClientError::Rejected(redact(&message, secrets))
}

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

/// The producer configuration: our defaults, then every `[kafka.properties]` and
/// `[kafka.property_files]` entry.
pub fn client_config(kafka: &KafkaConfig, gateway: &str) -> Result<ClientConfig, ClientError> {
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
    apply_properties(&mut config, kafka)?;
    Ok(config)
}

/// Creates (and drops) a producer from `config`'s `[kafka]` section, so librdkafka reports any
/// unknown property or bad value. Nothing connects.
pub fn producer_config_check(config: &crate::config::Config) -> Result<(), ClientError> {
    let client = client_config(&config.kafka, &config.gateway.id)?;
    client
        .create::<BaseProducer>()
        .map(drop)
        .map_err(|e| rejected(&e, &client, &config.kafka))
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
