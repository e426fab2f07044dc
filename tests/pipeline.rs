//! End-to-end: real mosquitto → gateway (in process) → librdkafka mock cluster.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use sensorgate::config::Config;
use sensorgate::record::Reason;

const LONG: Duration = Duration::from_secs(90);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_kafka_in_order_and_bad_ones_become_dead_letters() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&[
        "sensors.readings",
        "sensors.readings.DLQ",
        "sensorgate.unrouted.DLQ",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let gateway = start_gateway(Config::load(&path).unwrap()).await;

    // 8 devices × 125 valid readings, interleaved; 50 schema violations; 5 non-JSON (one of
    // them bad UTF-8); 5 on a topic no route matches; 1 over the 1 KiB payload limit.
    let mut messages = Vec::new();
    for seq in 0..125u64 {
        for d in 0..8 {
            let device = format!("dev-{d}");
            messages.push((format!("sensors/{device}/reading"), reading(&device, seq)));
        }
        if seq < 50 {
            let bad = format!(r#"{{"device_id":"dev-bad","seq":{seq},"temperature_c":"hot"}}"#);
            messages.push(("sensors/dev-bad/reading".to_owned(), bad.into_bytes()));
        }
    }
    for i in 0..4 {
        messages.push((
            "sensors/dev-x/reading".to_owned(),
            format!("{{truncated {i}").into_bytes(),
        ));
    }
    messages.push((
        "sensors/dev-x/reading".to_owned(),
        b"\xff\xfe\x00binary".to_vec(),
    ));
    for i in 0..5 {
        messages.push((
            "sensors/dev-x/status".to_owned(),
            format!(r#"{{"up":{i}}}"#).into_bytes(),
        ));
    }
    messages.push(("sensors/dev-x/reading".to_owned(), vec![b' '; 2048]));
    publish_all(mqtt.port, "sensor-e2e", messages).await;

    let mut reader = blocking(|| {
        Reader::new(
            &kafka.bootstrap_servers(),
            &[
                "sensors.readings",
                "sensors.readings.DLQ",
                "sensorgate.unrouted.DLQ",
            ],
        )
    });
    blocking(|| {
        reader.read_until(LONG, "every record", |r| {
            r.iter().filter(|r| r.topic == "sensors.readings").count() >= 1000
                && r.iter()
                    .filter(|r| r.topic == "sensors.readings.DLQ")
                    .count()
                    >= 56
                && r.iter()
                    .filter(|r| r.topic == "sensorgate.unrouted.DLQ")
                    .count()
                    >= 5
        })
    });

    // Valid readings: each device in one partition, in order, keyed, with the headers.
    let valid = reader.on("sensors.readings");
    assert_eq!(valid.len(), 1000);
    let mut per_device: BTreeMap<String, (HashSet<i32>, Vec<u64>)> = BTreeMap::new();
    let mut gateway_seqs = HashSet::new();
    for r in &valid {
        let doc = r.json();
        let device = doc["device_id"].as_str().unwrap().to_owned();
        assert_eq!(
            r.key.as_deref(),
            Some(device.as_str()),
            "keyed by /device_id"
        );
        assert_eq!(
            r.headers.get("sensorgate.gateway").map(String::as_str),
            Some("test-gw")
        );
        let seq: u64 = r.headers["sensorgate.seq"].parse().unwrap();
        assert!(gateway_seqs.insert(seq), "sensorgate.seq {seq} is unique");
        let entry = per_device.entry(device).or_default();
        entry.0.insert(r.partition);
        entry.1.push(doc["seq"].as_u64().unwrap());
    }
    assert_eq!(per_device.len(), 8);
    for (device, (partitions, seqs)) in &per_device {
        assert_eq!(
            partitions.len(),
            1,
            "{device} spans partitions {partitions:?}"
        );
        assert_eq!(
            seqs,
            &(0..125).collect::<Vec<_>>(),
            "{device} out of order or incomplete"
        );
    }

    // Dead letters in Kafka: original bytes, reason and errors in headers.
    let dlq = reader.on("sensors.readings.DLQ");
    let reasons = |records: &[&Received]| {
        let mut counts = BTreeMap::new();
        for r in records {
            *counts
                .entry(r.headers["sensorgate.reason"].clone())
                .or_insert(0) += 1;
        }
        counts
    };
    assert_eq!(
        reasons(&dlq),
        BTreeMap::from([
            ("not-json".into(), 5),
            ("schema".into(), 50),
            ("too-large".into(), 1)
        ])
    );
    let schema_dead = dlq
        .iter()
        .find(|r| r.headers["sensorgate.reason"] == "schema")
        .unwrap();
    let errors: serde_json::Value =
        serde_json::from_str(&schema_dead.headers["sensorgate.errors"]).unwrap();
    assert_eq!(errors[0]["instance_path"], "/temperature_c");
    assert!(errors[0]["schema_path"].as_str().unwrap().contains("type"));
    assert_eq!(schema_dead.headers["sensorgate.source"], "local");
    assert_eq!(schema_dead.headers["sensorgate.schema"], "reading.v1.json");
    assert_eq!(schema_dead.headers["sensorgate.gateway"], "test-gw");
    assert!(schema_dead.headers.contains_key("sensorgate.received_at"));
    assert!(
        dlq.iter().any(|r| r.payload == b"\xff\xfe\x00binary"),
        "bad UTF-8 kept byte for byte"
    );
    let unrouted = reader.on("sensorgate.unrouted.DLQ");
    assert_eq!(reasons(&unrouted), BTreeMap::from([("no-route".into(), 5)]));

    // The local DLQ holds the same dead letters with their violations.
    let local = gateway.outbox().dlq().all().unwrap();
    let mut local_reasons = BTreeMap::new();
    for r in &local {
        *local_reasons
            .entry(r.meta.dead_letter.as_ref().unwrap().reason)
            .or_insert(0) += 1;
    }
    assert_eq!(
        local_reasons,
        BTreeMap::from([
            (Reason::NoRoute, 5),
            (Reason::NotJson, 5),
            (Reason::Schema, 50),
            (Reason::TooLarge, 1)
        ])
    );
    let schema_local = local
        .iter()
        .find(|r| r.meta.dead_letter.as_ref().unwrap().reason == Reason::Schema)
        .unwrap();
    assert_eq!(
        schema_local.meta.dead_letter.as_ref().unwrap().errors[0].instance_path,
        "/temperature_c"
    );
    let too_large = local
        .iter()
        .find(|r| r.meta.dead_letter.as_ref().unwrap().reason == Reason::TooLarge)
        .unwrap();
    assert_eq!(
        too_large.meta.dead_letter.as_ref().unwrap().original_len,
        Some(2048)
    );

    let stats = gateway.stats().snapshot();
    assert_eq!(stats.received_total(), 1000 + 50 + 5 + 5 + 1);
    assert_eq!(stats.valid, 1000);
    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_wait_in_the_outbox_while_kafka_is_down() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let gateway = start_gateway(Config::load(&path).unwrap()).await;

    kafka.broker_down(-1).unwrap();
    wait_for(LONG, "librdkafka to see every broker down", || {
        gateway.stats().snapshot().kafka_down
    })
    .await;
    let messages = (0..5000u64).map(|seq| device_reading(seq, 10)).collect();
    publish_all(mqtt.port, "sensor-outage", messages).await;

    // Every reading is durable in the outbox, none delivered.
    wait_for(LONG, "5000 readings in the outbox", || {
        gateway.outbox().stats().depth == 5000
    })
    .await;
    assert_eq!(gateway.stats().snapshot().delivered, 0);
    assert!(gateway.outbox().stats().oldest_received_ms.is_some());

    kafka.broker_up(-1).unwrap();
    let mut reader = blocking(|| Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]));
    blocking(|| reader.read_until(LONG, "5000 readings", |r| r.len() >= 5000));
    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    // Give any duplicate a chance to show up before counting: read until the gateway is idle.
    gateway.shutdown().await.unwrap();
    blocking(|| reader.read_until(Duration::from_secs(2), "nothing", |_| true));

    let seqs: HashSet<u64> = reader
        .records
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 5000, "every reading delivered");
    assert_eq!(
        reader.records.len(),
        5000,
        "none delivered twice within one run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_window_shared_by_partitions_delivers_everything_in_order() {
    init_logging();
    let mqtt = Mosquitto::start_with_inflight(0);
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    // 40 records in flight, 10 per partition: partitions are held and released all the time.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "message_timeout = \"120s\"",
        "message_timeout = \"120s\"\nmax_in_flight = 40",
    );
    std::fs::write(&path, text).unwrap();
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    const TOTAL: u64 = 20_000;
    let messages = (0..TOTAL).map(|seq| device_reading(seq, 16)).collect();
    publish_all_fast(mqtt.port, "sensor-window", messages, 1000).await;
    let mut reader = blocking(|| Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]));
    let done = blocking(|| reader.try_read_until(LONG, |r| r.len() as u64 >= TOTAL));
    let seen: HashSet<u64> = reader
        .records
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(
        done,
        "{} of {TOTAL} delivered; outbox {:?}",
        seen.len(),
        gateway.outbox().stats()
    );
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reader.records {
        let seq = r.json()["seq"].as_u64().unwrap();
        let device = r.key.clone().unwrap();
        if let Some(before) = last.insert(device.clone(), seq) {
            assert!(before < seq, "{device}: {seq} after {before}");
        }
    }
    gateway.shutdown().await.unwrap();
}
