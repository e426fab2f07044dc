//! The Kafka publisher: reads the outbox in order, hands records to an idempotent librdkafka
//! producer with a bounded window in flight, and removes each record when its delivery is
//! confirmed.
//!
//! Failures are classified in one place ([`classify`]):
//! - permanent (too large, not authorized, unknown or invalid topic): the record moves to the
//!   local DLQ as `publish-rejected` and the pipeline goes on;
//! - transient (brokers down, timeouts): the window drains, the circuit opens for a backoff
//!   delay, then the outbox is re-read from its head so that every unconfirmed record is sent
//!   again (at-least-once: a record that timed out may have been written, hence duplicates);
//! - fatal (the idempotent producer is unusable): the same as transient, and the producer is
//!   recreated before the next attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientContext;
use thiserror::Error;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use super::backoff::{Backoff, Circuit};
use crate::config::{KafkaConfig, RetryConfig};
use crate::outbox::{Outbox, OutboxError};
use crate::record::{format_ms, Record};
use crate::telemetry::Stats;

/// Errors that stop the publisher.
#[derive(Debug, Error)]
pub enum PublishError {
    /// librdkafka refused the producer configuration.
    #[error("cannot create the Kafka producer (check [kafka] and [kafka.properties]): {0}")]
    Producer(#[source] KafkaError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
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
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::Fatal) => Failure::Fatal,
        Some(
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
            | C::PolicyViolation,
        ) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// librdkafka callbacks: logs into tracing, brokers-down state and fatal errors into flags.
#[derive(Debug)]
struct Context {
    stats: Arc<Stats>,
    flags: Arc<Flags>,
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

impl rdkafka::producer::ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Creates (and drops) a producer from `config`'s `[kafka]` section, so librdkafka reports any
/// unknown property or bad value. Nothing connects.
pub fn producer_config_check(config: &crate::config::Config) -> Result<(), KafkaError> {
    client_config(&config.kafka, &config.gateway.id)
        .create::<FutureProducer>()
        .map(drop)
}

/// The producer configuration: our defaults, then every `[kafka.properties]` entry.
pub fn client_config(kafka: &KafkaConfig, gateway: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("sensorgate-{gateway}"))
        .set("enable.idempotence", "true")
        .set("compression.type", kafka.compression.as_str())
        .set("linger.ms", kafka.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            kafka.message_timeout.as_millis().to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            (kafka.max_in_flight + 1000).max(100_000).to_string(),
        );
    for (key, value) in &kafka.properties {
        config.set(key, value.to_string());
    }
    config
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

/// Drains the outbox into Kafka.
#[derive(Debug)]
pub struct Publisher {
    outbox: Arc<Outbox>,
    kafka: KafkaConfig,
    retry: RetryConfig,
    gateway: String,
    stats: Arc<Stats>,
}

type Producer = FutureProducer<Context>;

/// Flags the librdkafka callbacks raise for the publish loop.
#[derive(Debug, Default)]
struct Flags {
    fatal: AtomicBool,
    down: AtomicBool,
}

impl Publisher {
    /// A publisher for `outbox`.
    pub fn new(
        outbox: Arc<Outbox>,
        kafka: KafkaConfig,
        retry: RetryConfig,
        gateway: String,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            outbox,
            kafka,
            retry,
            gateway,
            stats,
        }
    }

    /// Builds the producer; an error here is a configuration problem.
    pub fn create_producer(&self) -> Result<(), PublishError> {
        self.producer().map(drop)
    }

    fn producer(&self) -> Result<(Producer, Arc<Flags>), PublishError> {
        let flags = Arc::new(Flags::default());
        let producer = client_config(&self.kafka, &self.gateway)
            .create_with_context(Context {
                stats: self.stats.clone(),
                flags: flags.clone(),
            })
            .map_err(PublishError::Producer)?;
        Ok((producer, flags))
    }

    /// Publishes until `stop` is cancelled; then lets in-flight deliveries finish for up to
    /// `grace` and returns. Records not confirmed by then stay in the outbox.
    pub async fn run(self, stop: CancellationToken, grace: Duration) -> Result<(), PublishError> {
        let (mut producer, mut flags) = self.producer()?;
        let mut inflight = FuturesUnordered::new();
        let mut cursor: Option<u64> = None;
        let mut backoff = Backoff::new(self.retry.clone());
        let mut circuit = Circuit::Closed;
        let mut rewind = false;
        let mut deadline: Option<Instant> = None;
        let stall = test_stall_file();

        loop {
            self.stats.heartbeats.publisher_beat();
            if let Some(file) = &stall {
                if file.exists() {
                    // Debug builds only: wedge this task for the watchdog test.
                    tracing::warn!("Test stall file present: the publisher blocks");
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if deadline.is_none() && stop.is_cancelled() {
                deadline = Some(Instant::now() + grace);
            }
            // Fill the window.
            let window = if deadline.is_some() || rewind {
                0
            } else {
                circuit.window(self.kafka.max_in_flight)
            };
            if inflight.len() < window {
                for (seq, record) in self.outbox.read_after(cursor, window - inflight.len())? {
                    match self.send(&producer, seq, &record) {
                        Ok(delivery) => {
                            cursor = Some(seq);
                            let sent = Instant::now();
                            inflight.push(async move { (seq, record, sent, delivery.await) });
                        }
                        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                            break
                        }
                        Err(e) => match classify(&e) {
                            Failure::Permanent => {
                                self.rejected(seq, record, &e)?;
                                cursor = Some(seq);
                            }
                            _ => {
                                tracing::debug!(error = %e, "Kafka refused to queue a record; retrying after a backoff");
                                rewind = true;
                                break;
                            }
                        },
                    }
                }
            }

            if inflight.is_empty() {
                if deadline.is_some() {
                    break;
                }
                if rewind {
                    // Every delivery has settled: wait out the backoff, then re-send from the head.
                    self.stats.set_circuit_open(true);
                    let delay = backoff.next_delay();
                    self.stats.retry();
                    let attempts = backoff.attempts();
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(
                            attempts,
                            delay_ms = delay.as_millis() as u64,
                            depth = self.outbox.stats().depth,
                            "Kafka deliveries are failing; retrying from the outbox after a backoff"
                        );
                    }
                    // Sleep in short steps so the watchdog sees a live task during long backoffs.
                    let until = Instant::now() + delay;
                    while Instant::now() < until && !stop.is_cancelled() {
                        self.stats.heartbeats.publisher_beat();
                        tokio::select! {
                            _ = tokio::time::sleep_until(until.min(Instant::now() + Duration::from_secs(1))) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                    if flags.fatal.load(Ordering::SeqCst) {
                        drop(producer);
                        (producer, flags) = self.producer()?;
                        self.stats.producer_restarted();
                        tracing::warn!("Recreated the Kafka producer after a fatal error");
                    }
                    self.stats.set_circuit_open(false);
                    cursor = None;
                    rewind = false;
                    circuit = Circuit::HalfOpen;
                    continue;
                }
                tokio::select! {
                    _ = self.outbox.wait_for_records() => {}
                    _ = stop.cancelled() => {}
                    // A commit can race with the check above; poll now and then regardless.
                    _ = sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }

            let settled = match deadline {
                Some(at) => tokio::select! {
                    next = inflight.next() => next,
                    _ = tokio::time::sleep_until(at) => {
                        tracing::warn!(
                            unconfirmed = inflight.len(),
                            "Stop grace period over with deliveries unconfirmed; they stay in the outbox"
                        );
                        break;
                    }
                },
                None => tokio::select! {
                    next = inflight.next() => next,
                    _ = stop.cancelled() => continue,
                    // Waiting on Kafka is legitimate: go round the loop to show we are alive.
                    _ = sleep(Duration::from_secs(1)) => continue,
                },
            };
            let Some((seq, record, sent, result)) = settled else {
                continue;
            };
            match result {
                Ok(Ok(_delivery)) => {
                    self.outbox.remove(&[seq])?;
                    self.stats.delivered(
                        &record.meta.kafka_topic,
                        record.meta.dead_letter.is_some(),
                        sent.elapsed(),
                    );
                    if flags.down.swap(false, Ordering::SeqCst) {
                        tracing::info!("Kafka is reachable again");
                    }
                    self.stats.set_kafka_down(false);
                    if circuit != Circuit::Closed {
                        tracing::info!(
                            attempts = backoff.attempts(),
                            "Kafka deliveries succeed again"
                        );
                        circuit = Circuit::Closed;
                        backoff.reset();
                    }
                }
                Ok(Err((e, _))) => match classify(&e) {
                    Failure::Permanent => self.rejected(seq, record, &e)?,
                    Failure::Transient | Failure::Fatal => {
                        self.stats.delivery_failed(&record.meta.kafka_topic);
                        tracing::debug!(seq, error = %e, "Delivery failed; will retry from the outbox");
                        rewind = true;
                    }
                },
                Err(_canceled) => {
                    self.stats.delivery_failed(&record.meta.kafka_topic);
                    rewind = true;
                }
            }
        }
        let _ = producer.flush(Duration::from_millis(100));
        Ok(())
    }

    fn rejected(&self, seq: u64, record: Record, error: &KafkaError) -> Result<(), PublishError> {
        tracing::error!(
            seq,
            topic = %record.meta.kafka_topic,
            source = %record.meta.source,
            error = %error,
            "Kafka rejected a record permanently; moved it to the local dead-letter store"
        );
        self.outbox.reject(seq, record, &error.to_string())?;
        Ok(())
    }

    fn send(
        &self,
        producer: &Producer,
        seq: u64,
        record: &Record,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let seq_text = self.outbox.sequence_number(seq).to_string();
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header {
                key: "sensorgate.gateway",
                value: Some(self.gateway.as_bytes()),
            })
            .insert(Header {
                key: "sensorgate.seq",
                value: Some(seq_text.as_bytes()),
            });
        if let Some(info) = &record.meta.dead_letter {
            let errors = serde_json::to_string(&info.errors).unwrap_or_default();
            let received = format_ms(record.meta.received_at_ms);
            let id = info.id.to_string();
            let origin = record.meta.origin.to_string();
            let schema = record.meta.schema.as_deref().unwrap_or("");
            for (key, value) in [
                ("sensorgate.reason", info.reason.as_str()),
                ("sensorgate.errors", errors.as_str()),
                ("sensorgate.source", record.meta.source.as_str()),
                ("sensorgate.schema", schema),
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
        let mut future = FutureRecord::<str, [u8]>::to(&record.meta.kafka_topic)
            .payload(&record.payload[..])
            .headers(headers)
            .timestamp(record.meta.received_at_ms as i64);
        if let Some(key) = &record.meta.key {
            future = future.key(key.as_str());
        }
        producer.send_result(future).map_err(|(e, _)| e)
    }
}

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
