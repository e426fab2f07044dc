//! `dlq replay` of a large store while readings stream: real mosquitto and a real
//! pseudo-terminal (socat) → gateway (in process) → librdkafka mock cluster, the replay run as
//! the operator runs it (`sensorgate dlq replay --all` over the admin socket).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use sensorgate::config::Config;

const LONG: Duration = Duration::from_secs(300);

/// Dead letters from MQTT and from the CSV port; readings published during the replay.
const MQTT_DEAD: u64 = 45_000;
const CSV_DEAD: u64 = 5_000;
const LIVE: u64 = 20_000;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The serial port's table: CSV lines to `serial.csv`, checked against the readings' schema.
fn csv_source(device: &Path) -> String {
    format!(
        r#"
[[serial]]
name = "esp"
device = "{}"
format = "csv"
columns = ["device_id:string", "seq:integer", "temperature_c:number"]

[[route]]
source = "esp"
schema = "reading.v1.json"
kafka_topic = "serial.csv"
key = "/device_id"
"#,
        device.display()
    )
}

/// How many times each `(device_id, seq)` of `topic` arrived.
fn copies(reader: &Reader, topic: &str) -> BTreeMap<(String, u64), usize> {
    let mut seen = BTreeMap::new();
    for r in reader.on(topic) {
        let v = r.json();
        let key = (
            v["device_id"].as_str().unwrap_or_default().to_owned(),
            v["seq"].as_u64().unwrap_or(u64::MAX),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_50000_dead_letters_while_readings_stream_sends_each_once_csv_ones_included() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&[
        "sensors.readings",
        "sensors.readings.DLQ",
        "serial.csv",
        "serial.csv.DLQ",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let esp_dir = dir.path().join("esp");
    std::fs::create_dir_all(&esp_dir).unwrap();
    let esp = Socat::start(&esp_dir);
    let path = write_serial_config(
        dir.path(),
        &kafka.bootstrap_servers(),
        Some(&mqtt.url()),
        "",
        &csv_source(&esp.device()),
    );
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    wait_for(LONG, "the serial port open", || {
        gateway
            .stats()
            .snapshot()
            .serial
            .get("esp")
            .is_some_and(|p| p.open)
    })
    .await;

    // Too hot for the schema (at most 125 °C): every one becomes a dead letter.
    let hot: Vec<_> = (0..MQTT_DEAD)
        .map(|seq| {
            let device = format!("mqtt-{}", seq % 10);
            let body = format!(r#"{{"device_id":"{device}","seq":{seq},"temperature_c":200}}"#);
            (format!("sensors/{device}/reading"), body.into_bytes())
        })
        .collect();
    let mut lines = String::new();
    for seq in 0..CSV_DEAD {
        lines.push_str(&format!("csv-{},{seq},200\n", seq % 10));
    }
    let writer = std::thread::spawn(move || {
        esp.write(lines.as_bytes());
        esp
    });
    publish_all_fast(mqtt.port, "sensor-hot", hot, 500).await;
    let _esp = writer.join().unwrap();
    let dead = MQTT_DEAD + CSV_DEAD;
    wait_for(
        LONG,
        "every hot reading dead-lettered and sent to its DLQ topic",
        || gateway.outbox().dlq().size().entries == dead && gateway.outbox().stats().depth == 0,
    )
    .await;

    // The schema is fixed (up to 250 °C) and reloaded; then the whole store is replayed while
    // valid readings keep arriving.
    let schema = READING_SCHEMA.replace(r#""maximum": 125"#, r#""maximum": 250"#);
    assert_ne!(schema, READING_SCHEMA);
    std::fs::write(dir.path().join("schemas/reading.v1.json"), schema).unwrap();
    gateway.reload().unwrap();
    let live: Vec<_> = (0..LIVE).map(|seq| device_reading(seq, 4)).collect();
    let streaming = tokio::spawn(publish_all_fast(mqtt.port, "sensor-live", live, 100));
    let config = path.clone();
    let replay = blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_sensorgate"))
            .args(["dlq", "replay", "--all", "--json", "--config"])
            .arg(&config)
            .env_remove("SENSORGATE_CONFIG")
            .output()
            .unwrap()
    });
    let report: serde_json::Value = serde_json::from_slice(&replay.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&replay.stderr)));
    let first = |what: &str| {
        let list = report[what].as_array().cloned().unwrap_or_default();
        format!(
            "{} {what}, first: {:?}",
            list.len(),
            &list[..list.len().min(3)]
        )
    };
    assert!(
        replay.status.success(),
        "{}; {}",
        first("failed"),
        first("missing")
    );
    assert_eq!(
        report["failed"].as_array().map(Vec::len),
        Some(0),
        "nothing still fails"
    );
    assert_eq!(
        report["moved"].as_array().map(Vec::len),
        Some(dead as usize),
        "every dead letter moved"
    );
    streaming.await.unwrap();

    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    assert_eq!(
        gateway.outbox().dlq().size().entries,
        0,
        "the store is empty"
    );

    let mut reader = blocking(|| {
        Reader::new(
            &kafka.bootstrap_servers(),
            &["sensors.readings", "serial.csv"],
        )
    });
    blocking(|| {
        reader.read_until(LONG, "every replayed and live reading", |r| {
            r.len() as u64 >= MQTT_DEAD + CSV_DEAD + LIVE
        })
    });
    // Whatever else is still on its way arrives within a second of the last (nothing is
    // asserted on that, it only lets a duplicate show).
    blocking(|| reader.try_read_until(Duration::from_secs(1), |_| false));

    let readings = copies(&reader, "sensors.readings");
    let replayed: Vec<_> = readings
        .iter()
        .filter(|((d, _), _)| d.starts_with("mqtt-"))
        .collect();
    assert_eq!(
        replayed.len() as u64,
        MQTT_DEAD,
        "every MQTT dead letter reached Kafka"
    );
    let twice: Vec<_> = replayed.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(twice.is_empty(), "replayed more than once: {twice:?}");
    let streamed = readings
        .keys()
        .filter(|(d, _)| d.starts_with("dev-"))
        .count() as u64;
    assert_eq!(
        streamed, LIVE,
        "every reading published during the replay reached Kafka"
    );

    let csv = copies(&reader, "serial.csv");
    assert_eq!(
        csv.len() as u64,
        CSV_DEAD,
        "every CSV dead letter reached Kafka, as JSON"
    );
    let twice: Vec<_> = csv.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(twice.is_empty(), "replayed more than once: {twice:?}");

    gateway.shutdown().await.unwrap();
}
