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
async fn partitions_that_stop_confirming_are_held_probed_and_drained_in_order_when_kafka_is_back() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    // A partition not confirming for 1 s is held; with a window of 40 records, the held
    // partitions fill it, so their unsent records are taken back from librdkafka and each
    // partition is probed with backoff: an outage of a few seconds goes through holding,
    // purging, probing and draining.
    let config = config_with(
        dir.path(),
        &mqtt,
        &kafka.bootstrap_servers(),
        "message_timeout = \"1s\"\nmax_in_flight = 40",
    );
    let gateway = start_gateway(config).await;
    // A first reading while Kafka is up, so the gateway knows the topic's partitions and the
    // outage strikes records already handed to librdkafka.
    publish_all(
        mqtt.port,
        "sensor-warmup",
        vec![("sensors/dev-0/reading".into(), reading("dev-0", 10_000))],
    )
    .await;
    wait_for(LONG, "the first reading delivered", || {
        gateway.outbox().stats().depth == 0 && gateway.stats().snapshot().delivered >= 1
    })
    .await;

    kafka.broker_down(-1).unwrap();
    let messages = (0..500u64).map(|seq| device_reading(seq, 5)).collect();
    publish_all(mqtt.port, "sensor-timeouts", messages).await;
    wait_for(LONG, "held partitions and probes", || {
        let s = gateway.stats().snapshot();
        s.circuit_open && s.retries >= 2
    })
    .await;
    assert_eq!(
        gateway.outbox().stats().depth,
        500,
        "nothing leaves the outbox while Kafka is down"
    );

    kafka.broker_up(-1).unwrap();
    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "all 501 readings", |r| {
            r.iter()
                .map(|r| r.json()["seq"].as_u64())
                .collect::<HashSet<_>>()
                .len()
                >= 501
        })
    });
    // Per device, the first copy of each reading comes in the order it was published.
    assert_first_copies_in_order(&reader.records, |seq| seq == 10_000);
    let stats = gateway.stats().snapshot();
    assert!(!stats.circuit_open, "every partition confirms again");
    eprintln!(
        "outage test: {} delivery failures, {} probes, {} records read for 500 readings",
        stats.delivery_failures,
        stats.retries,
        reader.records.len()
    );
    gateway.shutdown().await.unwrap();
}

/// One partition of one topic cannot be written for longer than `message_timeout` (its leader
/// broker is down) while two topics are routed: the other topic and the other partitions keep
/// flowing, the stuck partition's readings all arrive once its leader is back, and per device
/// (after removing duplicates) Kafka holds the readings in the order they were published.
///
/// A leader-less partition (`partition_leader(.., None)`) would be closer, but librdkafka
/// 2.12's mock cluster crashes answering a Produce for one (a NULL leader in
/// `rd_kafka_mock_Produce_reply_tags_partition_write`), so the partition's own broker goes down
/// and every other partition is led by another broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_cannot_be_written_holds_only_itself_and_drains_in_order_when_it_can() {
    init_logging();
    const READINGS: &str = "sensors.readings";
    const STATUS: &str = "sensors.status";
    const DEVICES: u64 = 16;
    let mqtt = Mosquitto::start();
    let kafka = kafka(&[READINGS, STATUS]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let body = std::fs::read_to_string(&path).unwrap().replace(
        "message_timeout = \"120s\"",
        "message_timeout = \"1s\"\nmax_in_flight = 64",
    ) + &format!(
        "\n[[route]]\nsource = \"local\"\ntopic_filter = \"sensors/+/status\"\n\
         schema = \"reading.v1.json\"\nkafka_topic = \"{STATUS}\"\nkey = \"/device_id\"\n"
    );
    std::fs::write(&path, body).unwrap();
    for topic in [READINGS, STATUS] {
        for partition in 0..4 {
            kafka.partition_leader(topic, partition, Some(1)).unwrap();
        }
    }
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &[READINGS, STATUS])
    });

    // Warm-up: one reading per device on each topic, to learn which partition a device's
    // readings take.
    let warmup = (0..DEVICES)
        .flat_map(|d| {
            let device = format!("dev-{d}");
            [
                (
                    format!("sensors/{device}/reading"),
                    reading(&device, 100_000 + d),
                ),
                (
                    format!("sensors/{device}/status"),
                    reading(&device, 200_000 + d),
                ),
            ]
        })
        .collect();
    publish_all(mqtt.port, "sensor-warmup", warmup).await;
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "the warm-up readings", |r| {
            r.len() as u64 >= 2 * DEVICES
        })
    });
    let partition_of: std::collections::HashMap<String, i32> = reader
        .on(READINGS)
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.partition))
        .collect();
    let stuck = partition_of["dev-0"];
    let flowing_devices: Vec<u64> = (0..DEVICES)
        .filter(|d| partition_of[&format!("dev-{d}")] != stuck)
        .collect();
    assert!(
        !flowing_devices.is_empty() && flowing_devices.len() < DEVICES as usize,
        "the devices spread over several partitions: {partition_of:?}"
    );

    kafka.partition_leader(READINGS, stuck, Some(2)).unwrap();
    kafka.broker_down(2).unwrap();
    // 20 readings per device and topic; seq: reading n of device d is n * DEVICES + d, status
    // readings are offset by 10,000.
    const PER_DEVICE: u64 = 20;
    let messages = (0..PER_DEVICE * DEVICES)
        .flat_map(|seq| {
            let device = format!("dev-{}", seq % DEVICES);
            [
                (format!("sensors/{device}/reading"), reading(&device, seq)),
                (
                    format!("sensors/{device}/status"),
                    reading(&device, 10_000 + seq),
                ),
            ]
        })
        .collect();
    publish_all(mqtt.port, "sensor-leaderless", messages).await;

    let flowing: HashSet<u64> = (0..PER_DEVICE * DEVICES)
        .filter(|seq| flowing_devices.contains(&(seq % DEVICES)))
        .collect();
    let others_arrived = tokio::task::block_in_place(|| {
        reader.try_read_until(LONG, |records| {
            let seqs = seqs_of(records);
            (0..PER_DEVICE * DEVICES).all(|s| seqs.contains(&(10_000 + s)))
                && flowing.iter().all(|s| seqs.contains(s))
        })
    });
    if !others_arrived {
        let mut per_partition = std::collections::BTreeMap::<(String, i32), usize>::new();
        for r in &reader.records {
            *per_partition
                .entry((r.topic.clone(), r.partition))
                .or_default() += 1;
        }
        panic!(
            "the other topic and the partitions with a leader did not keep flowing while \
             partition {stuck} of {READINGS} was stuck; records per partition: {per_partition:?}; \
             outbox depth {}",
            gateway.outbox().stats().depth
        );
    }
    let early = seqs_of(&reader.records);
    let stuck_seen = (0..PER_DEVICE * DEVICES)
        .filter(|s| !flowing.contains(s) && early.contains(s))
        .count();
    assert_eq!(
        stuck_seen, 0,
        "readings of partition {stuck}, whose leader is down, reached Kafka"
    );
    wait_for(LONG, "the stuck partition to be held", || {
        gateway.stats().snapshot().circuit_open
    })
    .await;

    kafka.broker_up(2).unwrap();
    tokio::task::block_in_place(|| {
        reader.read_until(
            LONG,
            "every reading of the partition whose leader is back",
            |r| {
                let seqs = seqs_of(r);
                (0..PER_DEVICE * DEVICES).all(|s| seqs.contains(&s))
            },
        )
    });
    assert_first_copies_in_order(&reader.records, |seq| seq >= 100_000);
    wait_for(LONG, "every partition to confirm again", || {
        !gateway.stats().snapshot().circuit_open && gateway.outbox().stats().depth == 0
    })
    .await;
    gateway.shutdown().await.unwrap();
}

/// Per topic and device (the record key), the first copy of each reading (by `seq`) comes in the
/// order it was published: later copies are duplicates, allowed; `skip` leaves out warm-ups.
fn assert_first_copies_in_order(records: &[Received], skip: impl Fn(u64) -> bool) {
    let mut seen = HashSet::new();
    let mut last: std::collections::HashMap<(&str, &str), u64> = Default::default();
    for r in records {
        let seq = r.json()["seq"].as_u64().unwrap();
        if skip(seq) || !seen.insert(seq) {
            continue;
        }
        let device = (r.topic.as_str(), r.key.as_deref().unwrap_or_default());
        if let Some(before) = last.insert(device, seq) {
            assert!(
                before < seq,
                "{device:?}: reading {seq} reached Kafka after {before}"
            );
        }
    }
}
