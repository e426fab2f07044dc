//! A full disk: the state directory on a small tmpfs that the test fills to the last byte while
//! Kafka is down and readings (valid ones and dead letters) keep arriving. Nothing the gateway
//! could not store is acknowledged, the failure shows on `/metrics`, `/readyz`, STATUS= and in
//! one log line, the gateway does not crash-loop; once space is back it stores again by itself
//! (before Kafka returns), and every reading the broker accepted reaches Kafka.
//!
//! The second test fills only the filesystem under the dead-letter database (sled latches its
//! first write error until it is reopened): the gateway must stay up while that disk is full and
//! restart to reopen the database only once it takes writes again.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);
const TOPIC: &str = "sensors.readings";
const DLQ: &str = "sensors.readings.DLQ";

/// Reading `seq`: every 10th breaks the schema (a dead letter, stored in sled as well).
fn message(seq: u64) -> (String, Vec<u8>) {
    let device = format!("dev-{}", seq % 8);
    let payload = if seq % 10 == 9 {
        format!(r#"{{"device_id":"{device}","seq":{seq},"temperature_c":999}}"#).into_bytes()
    } else {
        reading(&device, seq)
    };
    (format!("sensors/{device}/reading"), payload)
}

fn messages(range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    range.map(message).collect()
}

/// What each test runs on: a 16 MiB tmpfs mounted at `mount` under the test's directory (the
/// gateway's state directory is its `state/`), mosquitto, the mock cluster with both topics, and
/// a configuration with metrics on `port`. Fields drop in order: the tmpfs before the directory.
struct Bed {
    disk: Tmpfs,
    mqtt: Mosquitto,
    kafka: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    config: std::path::PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl Bed {
    /// `None` (the test is skipped, loudly) when no tmpfs can be mounted.
    fn new(mount: &str, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let disk = Tmpfs::mount(&dir.path().join(mount), "16m", test)?;
        let mqtt = Mosquitto::start();
        let kafka = kafka(&[TOPIC, DLQ]);
        let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
        let port = free_port();
        with_metrics(&config, port);
        Some(Self {
            disk,
            mqtt,
            kafka,
            config,
            port,
            dir,
        })
    }
}

/// Plays systemd's `Restart=on-failure`: if `gateway` exited, it must have failed, and it is
/// started again, at most once per test.
fn restart_once(
    gateway: &mut GatewayProcess,
    restarts: &mut u32,
    config: &std::path::Path,
    log: &std::path::Path,
    envs: &[(&str, &str)],
) {
    if let Some(status) = gateway.try_wait() {
        assert!(!status.success(), "exited with success while failing");
        *restarts += 1;
        assert!(
            *restarts <= 1,
            "restarted {restarts} times:\n{}",
            gateway.log_text()
        );
        *gateway = GatewayProcess::spawn(config, log, envs);
    }
}

/// Reads sd_notify messages on `socket` until `done` is set and keeps the last STATUS= line
/// (an unread datagram socket fills up and blocks the sender).
fn listen_status(
    socket: UnixDatagram,
    done: Arc<AtomicBool>,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let last = Arc::new(Mutex::new(String::new()));
    let keep = last.clone();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !done.load(Ordering::SeqCst) {
            if let Ok(n) = socket.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if let Some(status) = line.strip_prefix("STATUS=") {
                        *keep.lock().unwrap() = status.to_owned();
                    }
                }
            }
        }
    });
    (last, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_acknowledgements_shows_the_failure_and_recovers_by_itself() {
    const TEST: &str =
        "disk_full::a_full_disk_holds_acknowledgements_shows_the_failure_and_recovers_by_itself";
    let Some(Bed {
        disk,
        mqtt,
        kafka,
        config,
        port,
        dir,
    }) = Bed::new("state", TEST)
    else {
        return;
    };
    let socket_path = dir.path().join("notify.sock");
    let stop_listening = Arc::new(AtomicBool::new(false));
    let (status, listener) = listen_status(
        UnixDatagram::bind(&socket_path).unwrap(),
        stop_listening.clone(),
    );
    let envs = [
        ("RUST_LOG", "info"),
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
    ];
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::spawn(&config, &log, &envs);
    let up = |what: &str, cond: &dyn Fn(&prometheus_parse::Scrape) -> bool| {
        wait_until(LONG, what, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && cond(&scrape(port))
        })
    };
    tokio::task::block_in_place(|| {
        up("the MQTT source to subscribe", &|m| {
            // One source: the sum is its value, 0 until it registered.
            metric_sum(m, "sensorgate_source_up") == 1.0
        })
    });
    kafka.broker_down(-1).unwrap();

    // Kafka is down: readings are stored and wait in the outbox.
    const FIRST: u64 = 3_000;
    const SECOND: u64 = 6_000;
    const TOTAL: u64 = 7_000;
    publish_all(mqtt.port, "sensor-disk-1", messages(0..FIRST)).await;
    tokio::task::block_in_place(|| {
        up("the first readings to be stored", &|m| {
            metric(m, "sensorgate_outbox_records", None) >= FIRST as f64
        })
    });

    // The disk fills up; more readings arrive (the broker accepts them; the gateway must not).
    let ballast = disk.fill("ballast");
    eprintln!("disk full after {ballast} bytes of ballast");
    publish_all(mqtt.port, "sensor-disk-2", messages(FIRST..SECOND)).await;
    let loud = "Cannot write the outbox";
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to hit the full disk", || {
            gateway.log_count(loud) >= 1
        });
        up("the write failure on /metrics, retried", &|m| {
            metric(m, "sensorgate_outbox_write_failing", None) == 1.0
                && metric(m, "sensorgate_outbox_write_errors_total", None) >= 5.0
        });
    });
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(
        code, 503,
        "not ready while the outbox cannot be written: {body}"
    );
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["outbox"], "failing", "{body}");
    tokio::task::block_in_place(|| {
        wait_until(LONG, "STATUS= to show the failure", || {
            status.lock().unwrap().contains("cannot write")
        })
    });
    let stored_while_full = metric(&scrape(port), "sensorgate_outbox_records", None);
    assert!(
        stored_while_full < SECOND as f64,
        "{stored_while_full} records stored on a full disk?"
    );
    assert_eq!(
        gateway.log_count(loud),
        1,
        "one loud log line for the outage, not one per retry:\n{}",
        gateway.log_text()
    );
    assert!(
        gateway.try_wait().is_none(),
        "the gateway exited while the disk was full (a crash loop under systemd):\n{}",
        gateway.log_text()
    );

    // Space comes back, Kafka stays down: storing resumes by itself. The test plays systemd
    // (Restart=on-failure): a gateway that exits must do so with a failure status, at most once.
    disk.free("ballast");
    let mut restarts = 0;
    let mut supervise =
        |gateway: &mut GatewayProcess| restart_once(gateway, &mut restarts, &config, &log, &envs);
    tokio::task::block_in_place(|| {
        wait_until(
            LONG,
            "every reading to be stored after space came back",
            || {
                supervise(&mut gateway);
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && metric(&scrape(port), "sensorgate_outbox_records", None) >= SECOND as f64
            },
        );
        up("the outbox to report writable again", &|m| {
            metric(m, "sensorgate_outbox_write_failing", None) == 0.0
        });
    });
    assert_eq!(http_get(port, "/readyz").0, 200);

    // Kafka returns; more readings; everything the broker accepted reaches Kafka.
    kafka.broker_up(-1).unwrap();
    publish_all(mqtt.port, "sensor-disk-3", messages(SECOND..TOTAL)).await;
    let mut reader =
        tokio::task::block_in_place(|| Reader::new(&kafka.bootstrap_servers(), &[TOPIC, DLQ]));
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    assert!(
        missing.is_empty(),
        "{} acknowledged readings never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    for r in &reader.records {
        let seq = r.json()["seq"].as_u64().unwrap();
        let want = if seq % 10 == 9 { DLQ } else { TOPIC };
        assert_eq!(r.topic, want, "reading {seq}");
    }
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the outbox to drain", || {
            supervise(&mut gateway);
            metric(&scrape(port), "sensorgate_outbox_records", None) == 0.0
        })
    });
    eprintln!(
        "disk full: {TOTAL} readings, {stored_while_full} stored while full, {restarts} restart(s), \
         {} records in Kafka",
        reader.records.len()
    );
    drop(gateway);
    drop(disk);
    stop_listening.store(true, Ordering::SeqCst);
    listener.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_dead_letter_database_is_waited_out_before_the_restart_that_reopens_it(
) {
    const TEST: &str = "disk_full::a_full_disk_under_the_dead_letter_database_is_waited_out_before_the_restart_that_reopens_it";
    // `state/outbox` is sled's directory; the queue's segments (`state/queue`) keep their space.
    let Some(Bed {
        disk,
        mqtt,
        kafka,
        config,
        port,
        dir,
    }) = Bed::new("state/outbox", TEST)
    else {
        return;
    };
    let envs = [("RUST_LOG", "info")];
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::spawn(&config, &log, &envs);
    let metrics = |gateway: &mut GatewayProcess| {
        assert!(
            gateway.try_wait().is_none(),
            "the gateway exited while the database's disk was full (a crash loop under \
             systemd):\n{}",
            gateway.log_text()
        );
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then(|| scrape(port))
    };
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the MQTT source to subscribe", || {
            metrics(&mut gateway).is_some_and(|m| metric_sum(&m, "sensorgate_source_up") == 1.0)
        })
    });
    const FIRST: u64 = 1_000;
    const TOTAL: u64 = 3_000;
    publish_all(mqtt.port, "sensor-dlq-disk-1", messages(0..FIRST)).await;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the first dead letters to be stored", || {
            metrics(&mut gateway)
                .is_some_and(|m| metric(&m, "sensorgate_dlq_entries", None) >= 100.0)
        })
    });

    // The database's disk fills up; more readings (and dead letters) arrive.
    disk.fill("ballast");
    publish_all(mqtt.port, "sensor-dlq-disk-2", messages(FIRST..TOTAL)).await;
    tokio::task::block_in_place(|| {
        wait_until(
            LONG,
            "the failure on /metrics, probed again and again",
            || {
                metrics(&mut gateway).is_some_and(|m| {
                    metric(&m, "sensorgate_outbox_write_failing", None) == 1.0
                        && metric(&m, "sensorgate_outbox_write_errors_total", None) >= 5.0
                })
            },
        )
    });
    assert_eq!(http_get(port, "/readyz").0, 503);

    // Space returns: the gateway exits (with a failure) to reopen the database, and the restart
    // stores and delivers everything the broker accepted.
    disk.free("ballast");
    let mut restarts = 0;
    let mut reader =
        tokio::task::block_in_place(|| Reader::new(&kafka.bootstrap_servers(), &[TOPIC, DLQ]));
    tokio::task::block_in_place(|| {
        reader.try_read_until(LONG, |records| {
            restart_once(&mut gateway, &mut restarts, &config, &log, &envs);
            seqs_of(records).len() as u64 == TOTAL
        })
    });
    let seen = seqs_of(&reader.records);
    let missing: Vec<u64> = (0..TOTAL).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings never reached Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(restarts, 1, "the database was reopened by a restart");
    tokio::task::block_in_place(|| {
        wait_until(LONG, "every dead letter in the local store", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && metric(&scrape(port), "sensorgate_dlq_entries", None) >= (TOTAL / 10) as f64
        })
    });
    eprintln!(
        "dead-letter disk full: {TOTAL} readings, {restarts} restart, {} records in Kafka",
        reader.records.len()
    );
    drop(gateway);
    drop(disk);
}
