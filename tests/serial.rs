//! End-to-end: a sensor writing to a real pseudo-terminal (socat) → gateway serial source (in
//! process) → librdkafka mock cluster. Killing socat is a USB unplug; starting it again under
//! the same link names is the device coming back.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::logs;
use common::*;
use sensorgate::app::Handle;
use sensorgate::config::Config;
use sensorgate::record::Reason;
use sensorgate::telemetry::PortSnapshot;

const LONG: Duration = Duration::from_secs(90);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn port(gateway: &Handle, name: &str) -> PortSnapshot {
    gateway
        .stats()
        .snapshot()
        .serial
        .get(name)
        .copied()
        .unwrap_or_default()
}

async fn wait_open(gateway: &Handle, name: &str) {
    wait_for(
        LONG,
        &format!("serial source {name} to open its port"),
        || port(gateway, name).open,
    )
    .await;
}

/// A `[[serial]]` table and its route to `topic`; `extra` lands in the `[[serial]]` table.
fn source(name: &str, device: &Path, topic: &str, extra: &str) -> String {
    format!(
        r#"
[[serial]]
name = "{name}"
device = "{}"
reconnect_max = "200ms"
{extra}

[[route]]
source = "{name}"
schema = "reading.v1.json"
kafka_topic = "{topic}"
key = "/device_id"
"#,
        device.display()
    )
}

const CSV_COLUMNS: &str = r#"format = "csv"
columns = ["device_id:string", "seq:integer", "temperature_c:number", "humidity_pct:integer", "window_open:bool"]"#;

fn subdir(dir: &Path, name: &str) -> std::path::PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    sub
}

fn seqs(records: &[&Received]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_csv_lines_reach_kafka_in_order() {
    logs::capture_logs();
    let kafka = kafka(&["serial.readings", "serial.csv"]);
    let dir = tempfile::tempdir().unwrap();
    let uno = Socat::start(&subdir(dir.path(), "uno"));
    let esp = Socat::start(&subdir(dir.path(), "esp"));
    let sources = source("uno", &uno.device(), "serial.readings", "")
        + &source("esp", &esp.device(), "serial.csv", CSV_COLUMNS);
    let path = write_serial_config(dir.path(), &kafka.bootstrap_servers(), None, "", &sources);
    let gateway = sensorgate::app::start(Config::load(&path).unwrap()).unwrap();
    wait_open(&gateway, "uno").await;
    wait_open(&gateway, "esp").await;

    // 2,000 JSON lines in one burst, alternating LF and CRLF.
    let mut stream = Vec::new();
    let mut lines = Vec::new();
    for seq in 0..2000u64 {
        let line = reading("uno-1", seq);
        stream.extend_from_slice(&line);
        stream.extend_from_slice(if seq % 2 == 0 { b"\n" } else { b"\r\n" });
        lines.push(line);
    }
    let sent_bytes = stream.len() as u64;
    let writer = uno.sensor();
    let writer = std::thread::spawn(move || (&writer).write_all(&stream).unwrap());
    esp.write(b"kitchen,0,21.5,40,1\r\nhall, 1, -3, 55, 0\n\"attic, north\",2,19,60,true\n");

    let mut reader = blocking(|| {
        Reader::new(
            &kafka.bootstrap_servers(),
            &["serial.readings", "serial.csv"],
        )
    });
    blocking(|| {
        reader.read_until(LONG, "2,000 JSON and 3 CSV readings", |r| {
            r.iter().filter(|r| r.topic == "serial.readings").count() >= 2000
                && r.iter().filter(|r| r.topic == "serial.csv").count() >= 3
        })
    });
    writer.join().unwrap();

    let json = reader.on("serial.readings");
    assert_eq!(json.len(), 2000);
    assert_eq!(seqs(&json), (0..2000).collect::<Vec<_>>(), "in order");
    for (record, line) in json.iter().zip(&lines) {
        assert_eq!(&record.payload, line, "json-lines bytes are sent untouched");
        assert_eq!(record.key.as_deref(), Some("uno-1"));
    }

    let csv = reader.on("serial.csv");
    let payloads: Vec<&str> = csv
        .iter()
        .map(|r| std::str::from_utf8(&r.payload).unwrap())
        .collect();
    let mut payloads_sorted = payloads.clone();
    payloads_sorted
        .sort_by_key(|p| serde_json::from_str::<serde_json::Value>(p).unwrap()["seq"].as_u64());
    assert_eq!(
        payloads_sorted,
        [
            r#"{"device_id":"kitchen","seq":0,"temperature_c":21.5,"humidity_pct":40,"window_open":true}"#,
            r#"{"device_id":"hall","seq":1,"temperature_c":-3,"humidity_pct":55,"window_open":false}"#,
            r#"{"device_id":"attic, north","seq":2,"temperature_c":19,"humidity_pct":60,"window_open":true}"#,
        ]
    );
    assert!(csv.iter().any(|r| r.key.as_deref() == Some("kitchen")));

    let stats = gateway.stats().snapshot();
    assert_eq!(stats.dead_letters_total(), 0, "{:?}", stats.dead_letters);
    let uno_port = stats.serial["uno"];
    assert_eq!(
        (
            uno_port.lines,
            uno_port.bytes,
            uno_port.dead_letters,
            uno_port.reconnects
        ),
        (2000, sent_bytes, 0, 0)
    );
    assert_eq!(stats.serial["esp"].lines, 3);
    wait_for(LONG, "the outbox to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    gateway.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_become_dead_letters_and_reading_goes_on() {
    logs::capture_logs();
    let kafka = kafka(&[
        "serial.readings",
        "serial.readings.DLQ",
        "serial.csv",
        "serial.csv.DLQ",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let uno = Socat::start(&subdir(dir.path(), "uno"));
    let esp = Socat::start(&subdir(dir.path(), "esp"));
    let sources = source(
        "uno",
        &uno.device(),
        "serial.readings",
        "max_line_bytes = 256",
    ) + &source("esp", &esp.device(), "serial.csv", CSV_COLUMNS);
    let path = write_serial_config(dir.path(), &kafka.bootstrap_servers(), None, "", &sources);
    let gateway = sensorgate::app::start(Config::load(&path).unwrap()).unwrap();
    wait_open(&gateway, "uno").await;
    wait_open(&gateway, "esp").await;

    let over_long = format!(
        r#"{{"device_id":"uno-1","seq":99,"temperature_c":20,"pad":"{}"}}"#,
        "x".repeat(1000)
    )
    .into_bytes();
    // (line, reason if it is a dead letter); the first is the tail of a line the device
    // printed before the port was opened.
    let json_lines: Vec<(Vec<u8>, Option<Reason>)> = vec![
        (b"ature_c\":21.5}".to_vec(), Some(Reason::NotJson)),
        (reading("uno-1", 0), None),
        (over_long.clone(), Some(Reason::FrameTooLong)),
        (reading("uno-1", 1), None),
        (
            b"\xff\xfe{\"device_id\":\"uno-1\"}\xc3".to_vec(),
            Some(Reason::NotJson),
        ),
        (reading("uno-1", 2), None),
        (
            br#"{"device_id":"uno-1","seq":3,"temperature_c":500}"#.to_vec(),
            Some(Reason::Schema),
        ),
        (reading("uno-1", 4), None),
        (
            br#"{"device_id":"uno-1","seq":"#.to_vec(),
            Some(Reason::NotJson),
        ),
        (reading("uno-1", 5), None),
    ];
    let csv_lines: Vec<(Vec<u8>, Option<Reason>)> = vec![
        (b"kitchen,0,21.5,40,1".to_vec(), None),
        (b"kitchen,1,warm,40,1".to_vec(), Some(Reason::BadCsv)),
        (b"kitchen,2".to_vec(), Some(Reason::BadCsv)),
        (b"kitchen,3,22,41,0".to_vec(), None),
        (b"kitchen,4,200,41,0".to_vec(), Some(Reason::Schema)),
    ];
    let join = |lines: &[(Vec<u8>, Option<Reason>)]| {
        let mut stream = Vec::new();
        for (line, _) in lines {
            stream.extend_from_slice(line);
            stream.extend_from_slice(b"\r\n");
        }
        stream
    };
    uno.write(&join(&json_lines));
    esp.write(&join(&csv_lines));

    let topics = [
        "serial.readings",
        "serial.readings.DLQ",
        "serial.csv",
        "serial.csv.DLQ",
    ];
    let mut reader = blocking(|| Reader::new(&kafka.bootstrap_servers(), &topics));
    let count = |r: &[Received], topic: &str| r.iter().filter(|r| r.topic == topic).count();
    blocking(|| {
        reader.read_until(LONG, "every good and bad line", |r| {
            count(r, "serial.readings") >= 5
                && count(r, "serial.readings.DLQ") >= 5
                && count(r, "serial.csv") >= 2
                && count(r, "serial.csv.DLQ") >= 3
        })
    });

    // Every good line is delivered, in order.
    assert_eq!(seqs(&reader.on("serial.readings")), [0, 1, 2, 4, 5]);
    assert_eq!(seqs(&reader.on("serial.csv")), [0, 3]);

    // Every bad line is in the DLQ topic with its reason and its bytes (an over-long line:
    // its first max_line_bytes bytes).
    let expected = |lines: &[(Vec<u8>, Option<Reason>)]| -> BTreeMap<Vec<u8>, String> {
        lines
            .iter()
            .filter_map(|(line, reason)| {
                let reason = (*reason)?;
                let stored = if reason == Reason::FrameTooLong {
                    line[..256].to_vec()
                } else {
                    line.clone()
                };
                Some((stored, reason.as_str().to_owned()))
            })
            .collect()
    };
    let dead = |topic: &str| -> BTreeMap<Vec<u8>, String> {
        reader
            .on(topic)
            .iter()
            .map(|r| (r.payload.clone(), r.headers["sensorgate.reason"].clone()))
            .collect()
    };
    assert_eq!(dead("serial.readings.DLQ"), expected(&json_lines));
    assert_eq!(dead("serial.csv.DLQ"), expected(&csv_lines));
    let bad_csv = reader
        .on("serial.csv.DLQ")
        .into_iter()
        .find(|r| r.payload == b"kitchen,1,warm,40,1")
        .unwrap();
    let errors: serde_json::Value =
        serde_json::from_str(&bad_csv.headers["sensorgate.errors"]).unwrap();
    assert_eq!(errors[0]["instance_path"], "/temperature_c");
    assert_eq!(bad_csv.headers["sensorgate.source"], "esp");
    assert_eq!(
        bad_csv.headers["sensorgate.origin"],
        format!("serial:{}", esp.device().display()),
        "the port is recorded"
    );

    // The local dead-letter store has them too, the over-long line with its real length.
    let local = gateway.outbox().dlq().all().unwrap();
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    for record in &local {
        *reasons
            .entry(record.meta.dead_letter.as_ref().unwrap().reason)
            .or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            (Reason::NotJson, 3),
            (Reason::Schema, 2),
            (Reason::FrameTooLong, 1),
            (Reason::BadCsv, 2)
        ])
    );
    let too_long = local
        .iter()
        .find(|r| r.meta.dead_letter.as_ref().unwrap().reason == Reason::FrameTooLong)
        .unwrap();
    assert_eq!(
        too_long.meta.dead_letter.as_ref().unwrap().original_len,
        Some(over_long.len() as u64)
    );

    let stats = gateway.stats().snapshot();
    assert_eq!(
        (stats.serial["uno"].lines, stats.serial["uno"].dead_letters),
        (10, 5)
    );
    assert_eq!(
        (stats.serial["esp"].lines, stats.serial["esp"].dead_letters),
        (5, 3)
    );
    gateway.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_device_is_reopened_when_it_returns() {
    logs::capture_logs();
    let kafka = kafka(&["serial.readings", "serial.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let mut device = Socat::start(&subdir(dir.path(), "unplug"));
    let sources = source("unplug", &device.device(), "serial.readings", "");
    let path = write_serial_config(dir.path(), &kafka.bootstrap_servers(), None, "", &sources);
    let gateway = sensorgate::app::start(Config::load(&path).unwrap()).unwrap();
    wait_open(&gateway, "unplug").await;

    // The sensor writes until the cable is pulled under it.
    let sensor = device.sensor();
    let writer = std::thread::spawn(move || {
        let mut seq = 0u64;
        loop {
            let mut line = reading("dev-u", seq);
            line.push(b'\n');
            if (&sensor).write_all(&line).is_err() {
                return seq;
            }
            seq += 1;
            if seq % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    wait_for(LONG, "readings before the unplug", || {
        port(&gateway, "unplug").lines >= 200
    })
    .await;
    device.unplug();
    let written = blocking(|| writer.join().unwrap());
    wait_for(LONG, "the gateway to notice the unplug", || {
        !port(&gateway, "unplug").open
    })
    .await;

    // Away for a few seconds: many reopen attempts (backoff capped at 200ms), one warning.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!gateway.is_finished(), "the gateway keeps running");
    assert_eq!(port(&gateway, "unplug").reconnects, 0);

    device.plug();
    wait_for(LONG, "the port to be reopened", || {
        let p = port(&gateway, "unplug");
        p.open && p.reconnects == 1
    })
    .await;
    let after: Vec<u64> = (1_000_000..1_000_300).collect();
    let mut stream = Vec::new();
    for &seq in &after {
        stream.extend_from_slice(&reading("dev-u", seq));
        stream.push(b'\n');
    }
    blocking(|| device.write(&stream));

    let mut reader = blocking(|| Reader::new(&kafka.bootstrap_servers(), &["serial.readings"]));
    blocking(|| {
        reader.read_until(LONG, "the readings written after the return", |r| {
            r.iter()
                .filter(|r| r.json()["seq"].as_u64() >= Some(1_000_000))
                .count()
                >= after.len()
        })
    });
    let delivered = seqs(&reader.on("serial.readings"));
    let (before, since): (Vec<u64>, Vec<u64>) = delivered.into_iter().partition(|&s| s < 1_000_000);
    assert_eq!(since, after, "every reading after the return, in order");
    assert!(
        before.len() >= 200 && before.windows(2).all(|w| w[0] < w[1]),
        "readings before the unplug arrive in order ({} of {written} written)",
        before.len()
    );
    assert!(!gateway.is_finished());

    let warnings = logs::warnings_of("unplug");
    assert!(
        (1..=2).contains(&warnings.len()),
        "the outage is logged once, not once per attempt: {warnings:#?}"
    );
    assert!(logs::of("unplug")
        .iter()
        .any(|e| e.message.contains("back")));
    gateway.shutdown().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_absent_at_start_is_used_once_plugged_in() {
    logs::capture_logs();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "serial.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let mut device = Socat::absent(&subdir(dir.path(), "late"));
    let sources = source("late", &device.device(), "serial.readings", "");
    let path = write_serial_config(
        dir.path(),
        &kafka.bootstrap_servers(),
        Some(&mqtt.url()),
        "",
        &sources,
    );
    let gateway = sensorgate::app::start(Config::load(&path).unwrap())
        .expect("the gateway starts without the serial device");

    // The other sources run meanwhile. (Until the gateway's first subscription is in place the
    // broker has no session to queue for, so publish until one arrives.)
    let mut reader = blocking(|| {
        Reader::new(
            &kafka.bootstrap_servers(),
            &["sensors.readings", "serial.readings"],
        )
    });
    let deadline = std::time::Instant::now() + LONG;
    for seq in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "no MQTT reading arrived"
        );
        publish_all(
            mqtt.port,
            "sensor-absent",
            vec![("sensors/m1/reading".to_owned(), reading("m1", seq))],
        )
        .await;
        if blocking(|| {
            reader.try_read_until(Duration::from_secs(1), |r| {
                r.iter().any(|r| r.topic == "sensors.readings")
            })
        }) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!gateway.is_finished());
    assert!(!port(&gateway, "late").open);
    assert_eq!(
        logs::warnings_of("late").len(),
        1,
        "one warning however many attempts: {:#?}",
        logs::warnings_of("late")
    );

    blocking(|| device.plug());
    wait_open(&gateway, "late").await;
    let mut stream = Vec::new();
    for seq in 0..100u64 {
        stream.extend_from_slice(&reading("late-1", seq));
        stream.push(b'\n');
    }
    blocking(|| device.write(&stream));
    blocking(|| {
        reader.read_until(LONG, "100 serial readings", |r| {
            r.iter().filter(|r| r.topic == "serial.readings").count() >= 100
        })
    });
    assert_eq!(
        seqs(&reader.on("serial.readings")),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(port(&gateway, "late").reconnects, 1);
    let seen: HashSet<String> = reader.records.iter().map(|r| r.topic.clone()).collect();
    assert_eq!(seen.len(), 2);
    gateway.shutdown().await.expect("a clean stop");
}
