//! The gateway as a separate process, killed with SIGKILL: nothing the MQTT broker accepted from
//! a sensor is lost, because the gateway acknowledges only what it has committed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sensorgate::config::QueueConfig;
use sensorgate::outbox::Outbox;

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_readings_flow_loses_nothing_the_broker_accepted() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });

    // A sensor publishing 20,000 readings at about 5,000/s, QoS 1.
    const TOTAL: u64 = 20_000;
    let port = mqtt.port;
    let finished = Arc::new(AtomicBool::new(false));
    let sensor = {
        let finished = finished.clone();
        tokio::spawn(async move {
            let mut chunk = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut all = Vec::new();
            for seq in 0..TOTAL {
                chunk.push(device_reading(seq, 16));
                if chunk.len() == 50 {
                    all.push(std::mem::take(&mut chunk));
                }
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let pacer = tokio::spawn(async move {
                for c in all {
                    tick.tick().await;
                    for m in c {
                        let _ = tx.send(m);
                    }
                }
            });
            publish_stream(port, "sensor-crash", rx, TOTAL as usize).await;
            pacer.await.unwrap();
            finished.store(true, Ordering::SeqCst);
        })
    };

    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    // Kill it three times while readings flow, restarting it each time.
    let mut kills_mid_stream = 0;
    for at in [2_000, 6_000, 10_000] {
        tokio::task::block_in_place(|| {
            reader.read_until(LONG, "readings in Kafka", |r| r.len() >= at)
        });
        gateway.kill9();
        if !finished.load(Ordering::SeqCst) {
            kills_mid_stream += 1;
        }
        gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    }

    sensor.await.unwrap();
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    if !missing.is_empty() {
        let stats = std::process::Command::new(gateway_binary())
            .args(["queue", "stats", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        panic!(
            "{} readings acknowledged by the broker are not in Kafka, e.g. {:?}; the gateway says:\n{}",
            missing.len(),
            &missing[..missing.len().min(40)],
            String::from_utf8_lossy(&stats.stdout)
        );
    }
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for r in &reader.records {
        *counts.entry(r.json()["seq"].as_u64().unwrap()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "SIGKILL test: {TOTAL} readings, {kills_mid_stream} of 3 kills mid-stream, \
         {} records in Kafka, {duplicates} duplicates",
        reader.records.len()
    );
    assert!((0..TOTAL).all(|seq| counts.contains_key(&seq)), "zero loss");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("corrupt"),
        "sled opened cleanly after every kill"
    );
    gateway.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_not_yet_committed_at_the_crash_is_redelivered_by_the_broker() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    // A commit window of an hour: the readings are received but never committed.
    let config = write_config(
        dir.path(),
        &mqtt.url(),
        &kafka.bootstrap_servers(),
        "commit_interval = \"1h\"",
    );
    let log = dir.path().join("gateway.log");
    let mut gateway =
        GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "sensorgate=trace,info")]);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });

    let messages = (0..3u64)
        .map(|seq| ("sensors/dev-1/reading".to_owned(), reading("dev-1", seq)))
        .collect();
    publish_all(mqtt.port, "sensor-uncommitted", messages).await;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to receive 3 readings", || {
            gateway.log_count("Reading received") >= 3
        })
    });
    gateway.kill9();

    // Nothing was committed...
    {
        let outbox = Outbox::open(
            &dir.path().join("state"),
            &QueueConfig::default(),
            &sensorgate::config::DlqConfig::default(),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(
            outbox.stats().depth,
            0,
            "the readings were not committed before the kill"
        );
    }
    // ...and after a restart the broker redelivers them (persistent session, no PUBACK sent).
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("commit_interval = \"1h\"", "");
    std::fs::write(&config, text).unwrap();
    let _gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "the 3 redelivered readings", |r| r.len() >= 3)
    });
    let seqs: Vec<u64> = reader
        .records
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 1, 2]);
}

/// A longer soak, run on purpose: `SOAK_KILLS=50 cargo test --release --test crash -- --ignored`.
/// Kills the gateway at pseudo-random moments while a sensor publishes, restarts it each time,
/// and checks that sled opened cleanly every time and that nothing the broker accepted was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: run on purpose"]
async fn soak_repeated_sigkills() {
    let kills: u32 = std::env::var("SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();

    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    // The first connection creates the session: readings published before the subscription
    // exists are dropped by the broker, so wait for it.
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });

    let total = u64::from(kills) * 2_000;
    let port = mqtt.port;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sensor = tokio::spawn(publish_stream(port, "sensor-soak", rx, total as usize));
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for seq in 0..total {
            if seq % 50 == 0 {
                tick.tick().await;
            }
            let _ = tx.send(device_reading(seq, 16));
        }
    });
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(100 + rng % 900)).await;
        gateway.kill9();
        gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    }
    pacer.await.unwrap();
    sensor.await.unwrap();
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    // Count distinct readings incrementally: re-scanning every record on each check is quadratic.
    let seen = std::cell::RefCell::new((0usize, std::collections::HashSet::new()));
    tokio::task::block_in_place(|| {
        reader.read_until(Duration::from_secs(300), "every reading", |records| {
            let mut seen = seen.borrow_mut();
            for r in &records[seen.0..] {
                seen.1.insert(r.json()["seq"].as_u64().unwrap());
            }
            seen.0 = records.len();
            if seen.1.len() as u64 + 50 > total && (seen.1.len() as u64) < total {
                let missing: Vec<u64> = (0..total)
                    .filter(|s| !seen.1.contains(s))
                    .take(20)
                    .collect();
                eprintln!("missing: {missing:?}");
            }
            seen.1.len() as u64 == total
        })
    });
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "soak: {kills} kills, {total} readings, {} records in Kafka ({} duplicates), {} corrupt opens",
        reader.records.len(),
        reader.records.len() as u64 - total,
        text.matches("Outbox database is corrupt").count()
    );
    assert!(!text.contains("Outbox database is corrupt"));
    gateway.kill9();
}
