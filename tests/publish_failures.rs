//! How the publisher handles Kafka failures: permanent ones become `publish-rejected` dead
//! letters, transient ones are retried from the outbox after a backoff until delivered.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sensorgate::config::Config;
use sensorgate::record::Reason;

const LONG: Duration = Duration::from_secs(90);

fn config_with(
    dir: &std::path::Path,
    mqtt: &Mosquitto,
    bootstrap: &str,
    kafka_extra: &str,
) -> Config {
    let path = write_config(dir, &mqtt.url(), bootstrap, "");
    let body = std::fs::read_to_string(&path)
        .unwrap()
        .replace("message_timeout = \"120s\"", kafka_extra);
    std::fs::write(&path, body).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_permanently_becomes_a_publish_rejected_dead_letter() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    // librdkafka refuses messages over message.max.bytes before sending them.
    let config = config_with(
        dir.path(),
        &mqtt,
        &kafka.bootstrap_servers(),
        "message_timeout = \"120s\"\n[kafka.properties]\n\"message.max.bytes\" = 1000",
    );
    let gateway = start_gateway(config).await;

    let big = format!(
        r#"{{"device_id":"d-big","seq":1,"temperature_c":20,"note":"{}"}}"#,
        "x".repeat(900)
    );
    let messages = vec![
        ("sensors/d1/reading".to_owned(), reading("d1", 0)),
        ("sensors/d-big/reading".to_owned(), big.clone().into_bytes()),
        ("sensors/d1/reading".to_owned(), reading("d1", 2)),
    ];
    publish_all(mqtt.port, "sensor-rejected", messages).await;

    wait_for(LONG, "the outbox to drain", || {
        let s = gateway.stats().snapshot();
        s.delivered == 2 && gateway.outbox().stats().depth == 0
    })
    .await;
    let dead = gateway.outbox().dlq().all().unwrap();
    assert_eq!(dead.len(), 1);
    let info = dead[0].meta.dead_letter.as_ref().unwrap();
    assert_eq!(info.reason, Reason::PublishRejected);
    assert!(
        info.errors[0].message.contains("sensors.readings"),
        "{:?}",
        info.errors
    );
    assert_eq!(dead[0].payload, big.as_bytes(), "original bytes kept");
    assert_eq!(
        gateway.stats().snapshot().dead_letters["publish-rejected"],
        1
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusal_on_delivery_is_dead_lettered_and_every_reading_stays_accounted_for() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    // librdkafka caches a topic's authorization error until the next metadata refresh; refresh
    // often so the topic recovers within the test.
    let config = config_with(
        dir.path(),
        &mqtt,
        &kafka.bootstrap_servers(),
        "message_timeout = \"120s\"\n[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = 500",
    );
    let gateway = start_gateway(config).await;

    // The next produce request is refused as unauthorized.
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    publish_all(
        mqtt.port,
        "sensor-auth",
        vec![("sensors/d1/reading".to_owned(), reading("d1", 0))],
    )
    .await;
    wait_for(LONG, "the refused reading in the local DLQ", || {
        gateway.outbox().dlq().all().unwrap().len() == 1
    })
    .await;
    let dead = gateway.outbox().dlq().all().unwrap();
    let info = dead[0].meta.dead_letter.as_ref().unwrap();
    assert_eq!(info.reason, Reason::PublishRejected);
    assert!(
        info.errors[0].message.contains("authorization"),
        "{:?}",
        info.errors
    );

    // Later readings are either delivered or, while librdkafka still holds the cached error,
    // dead-lettered too: every one is accounted for, none lost or stuck.
    let messages = (1..=20)
        .map(|s| ("sensors/d1/reading".to_owned(), reading("d1", s)))
        .collect();
    publish_all(mqtt.port, "sensor-auth", messages).await;
    wait_for(LONG, "every reading delivered or dead-lettered", || {
        let s = gateway.stats().snapshot();
        s.delivered + s.dead_letters["publish-rejected"] == 21
            && gateway.outbox().stats().depth == 0
    })
    .await;
    let delivered = gateway.stats().snapshot().delivered as usize;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "the delivered readings", |r| r.len() >= delivered)
    });
    assert_eq!(
        gateway.outbox().dlq().all().unwrap().len() + reader.records.len(),
        21
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_deliveries_are_retried_from_the_outbox_until_kafka_is_back() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    // Deliveries fail after 1 s, so an outage of a few seconds exercises backoff and re-sending.
    let config = config_with(
        dir.path(),
        &mqtt,
        &kafka.bootstrap_servers(),
        "message_timeout = \"1s\"",
    );
    let gateway = start_gateway(config).await;

    kafka.broker_down(-1).unwrap();
    wait_for(LONG, "librdkafka to see every broker down", || {
        gateway.stats().snapshot().kafka_down
    })
    .await;
    let messages = (0..500u64)
        .map(|seq| {
            let device = format!("dev-{}", seq % 5);
            (format!("sensors/{device}/reading"), reading(&device, seq))
        })
        .collect();
    publish_all(mqtt.port, "sensor-timeouts", messages).await;
    wait_for(LONG, "failed deliveries and a retry", || {
        let s = gateway.stats().snapshot();
        s.delivery_failures > 0 && s.retries >= 2
    })
    .await;
    assert_eq!(
        gateway.outbox().stats().depth,
        500,
        "nothing leaves the outbox while Kafka is down"
    );

    kafka.broker_up(-1).unwrap();
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "all 500 readings", |r| {
            r.iter()
                .map(|r| r.json()["seq"].as_u64())
                .collect::<HashSet<_>>()
                .len()
                >= 500
        })
    });
    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    let stats = gateway.stats().snapshot();
    assert!(!stats.circuit_open);
    eprintln!(
        "timeouts test: {} delivery failures, {} retry rounds, {} records read for 500 readings",
        stats.delivery_failures,
        stats.retries,
        reader.records.len()
    );
    gateway.shutdown().await.unwrap();
}
