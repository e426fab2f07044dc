//! Catching up after an outage, measured on the gateway *process* (the release binary, or
//! `SENSORGATE_BIN`), with mosquitto as a child process and librdkafka's mock cluster in this
//! bench process, so the gateway's own CPU, memory and writes are what is counted.
//!
//! - backlog drain: N readings (1% invalid) queued in mosquitto for the gateway's persistent
//!   session while it is stopped; the gateway starts; time until all are in Kafka.
//! - outbox drain: M readings stored while Kafka is down, then Kafka comes back: time to the
//!   first delivery and the drain rate; peak RSS while filling and while draining; bytes the
//!   process wrote per stored byte and per payload byte, and the state directory's size.
//!
//! Run on purpose: `cargo bench --bench drain [-- backlog|outbox] [-- N M]`. Under `cargo test`
//! it only says how to run it. The figures are printed; nothing is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(900);

/// The gateway's log filter: `warn`, or `SENSORGATE_BENCH_LOG` (e.g. `sensorgate::publish=debug`).
fn log_filter() -> String {
    std::env::var("SENSORGATE_BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "drain benchmark: run with `cargo bench --bench drain [-- backlog|outbox] [-- N M]`"
        );
        return;
    }
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let backlog = numbers.first().copied().unwrap_or(100_000);
    let outbox = numbers.get(1).copied().unwrap_or(500_000);
    let only = |name: &str| {
        !args.iter().any(|a| a == "backlog" || a == "outbox") || args.iter().any(|a| a == name)
    };
    println!("gateway binary: {}", gateway_binary().display());
    // As the systemd unit runs it (Environment=MALLOC_ARENA_MAX=2), unless set otherwise.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        std::env::set_var("MALLOC_ARENA_MAX", "2");
    }
    println!(
        "MALLOC_ARENA_MAX={}",
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_default()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if only("backlog") {
        runtime.block_on(backlog_drain(backlog));
    }
    if only("outbox") {
        runtime.block_on(outbox_drain(outbox));
    }
}

/// `n` readings for 50 devices, every 100th invalid (temperature out of range).
fn readings(range: std::ops::Range<u64>) -> (Vec<(String, Vec<u8>)>, u64) {
    let mut payload_bytes = 0;
    let messages = range
        .map(|seq| {
            let device = format!("dev-{:02}", seq % 50);
            let payload = if seq % 100 == 99 {
                format!(r#"{{"device_id":"{device}","seq":{seq},"temperature_c":999}}"#)
                    .into_bytes()
            } else {
                reading(&device, seq)
            };
            payload_bytes += payload.len() as u64;
            (format!("sensors/{device}/reading"), payload)
        })
        .collect();
    (messages, payload_bytes)
}

struct Setup {
    mqtt: Mosquitto,
    kafka: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    state: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
}

fn setup() -> Setup {
    // No inflight limit: the broker sends as fast as the gateway acknowledges its commits.
    let mqtt = Mosquitto::start_with_inflight(0);
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    // On the machine's disk (not a tmpfs), so that syncs cost what they cost.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace(
            "max_payload = \"1KiB\"",
            "max_payload = \"1KiB\"\nclient_id = \"bench-gw\"",
        )
        .replace("max_bytes = \"64MiB\"", "max_bytes = \"512MiB\"")
        .replace(
            "message_timeout = \"120s\"",
            &format!(
                "message_timeout = \"30s\"\n{}",
                std::env::var("SENSORGATE_BENCH_KAFKA").unwrap_or_default()
            ),
        );
    // One fixed client id, so the session outlives the gateway between runs.
    let text = text
        .lines()
        .filter(|l| !l.starts_with("client_id = \"sensorgate-test-"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("gateway.log");
    Setup {
        mqtt,
        kafka,
        config,
        state,
        log,
        port,
        _dir: dir,
    }
}

fn delivered(port: u16) -> f64 {
    metric_sum(&scrape(port), "sensorgate_kafka_deliveries_total")
}

fn gauge(port: u16, name: &str) -> f64 {
    metric(&scrape(port), name, None)
}

async fn wait_subscribed(port: u16) {
    wait_for(LIMIT, "the gateway to subscribe", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric(
                &scrape(port),
                "sensorgate_source_up",
                Some(("source", "local")),
            ) == 1.0
    })
    .await;
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let meta = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                // Blocks on disk, not the apparent size.
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512
            };
        }
    }
    total
}

async fn backlog_drain(n: u64) {
    let s = setup();
    // Create the persistent session and its subscription, then stop the gateway.
    let mut gw = GatewayProcess::spawn(&s.config, &s.log, &[("RUST_LOG", &log_filter())]);
    wait_subscribed(s.port).await;
    gw.signal("TERM");
    tokio::task::block_in_place(|| gw.wait());

    let (messages, _) = readings(0..n);
    let t = Instant::now();
    publish_all_fast(s.mqtt.port, "bench-sensor", messages, 1000).await;
    println!(
        "backlog: {n} readings queued in mosquitto in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let gw = GatewayProcess::spawn(&s.config, &s.log, &[("RUST_LOG", &log_filter())]);
    let mut peak_kib = 0;
    wait_for(LIMIT, "every reading in Kafka", || {
        peak_kib = peak_kib.max(gw.usage().hwm_kib);
        std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok() && delivered(s.port) >= n as f64
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    let usage = gw.usage();
    println!(
        "backlog drain: {n} readings in {secs:.2}s = {:.0} readings/s; gateway CPU {:.1} µs/reading \
         ({:.2}s user+sys); peak RSS {:.1} MiB (at the end: {:.1} MiB anonymous, {:.1} MiB file); {} threads",
        n as f64 / secs,
        usage.cpu_seconds * 1e6 / n as f64,
        usage.cpu_seconds,
        usage.hwm_kib.max(peak_kib) as f64 / 1024.0,
        usage.rss_anon_kib as f64 / 1024.0,
        usage.rss_file_kib as f64 / 1024.0,
        usage.threads,
    );
    if let Some(path) = std::env::var_os("SENSORGATE_BENCH_SMAPS") {
        let _ = std::fs::copy(format!("/proc/{}/smaps", gw.pid()), path);
    }
    // A clean stop (for profilers that write their report at exit).
    let mut gw = gw;
    gw.signal("TERM");
    tokio::task::block_in_place(|| gw.wait());
    drop(gw);
    drop(s.mqtt);
}

async fn outbox_drain(m: u64) {
    let s = setup();
    let gw = GatewayProcess::spawn(&s.config, &s.log, &[("RUST_LOG", &log_filter())]);
    wait_subscribed(s.port).await;
    let idle = gw.usage();
    s.kafka.broker_down(-1).unwrap();
    wait_for(LIMIT, "the gateway to see Kafka down", || {
        gauge(s.port, "sensorgate_kafka_up") == 0.0
    })
    .await;

    let (messages, payload_bytes) = readings(0..m);
    let t = Instant::now();
    publish_all_fast(s.mqtt.port, "bench-sensor", messages, 1000).await;
    wait_for(LIMIT, "every reading in the outbox", || {
        gauge(s.port, "sensorgate_outbox_records") >= m as f64
    })
    .await;
    let fill_secs = t.elapsed().as_secs_f64();
    let filled = gw.usage();
    let stored = gauge(s.port, "sensorgate_outbox_bytes");
    let on_disk = dir_bytes(&s.state);
    let written = filled.write_bytes - idle.write_bytes;
    println!(
        "outbox fill: {m} readings stored in {fill_secs:.1}s ({:.0}/s) with Kafka down; peak RSS {:.1} MiB; \
         outbox {:.1} MiB, payloads {:.1} MiB; written {:.1} MiB = {:.2}x stored, {:.2}x payload; \
         state directory {:.1} MiB = {:.2}x stored",
        m as f64 / fill_secs,
        filled.hwm_kib as f64 / 1024.0,
        stored / 1048576.0,
        payload_bytes as f64 / 1048576.0,
        written as f64 / 1048576.0,
        written as f64 / stored,
        written as f64 / payload_bytes as f64,
        on_disk as f64 / 1048576.0,
        on_disk as f64 / stored,
    );

    let before = gw.usage();
    let start = Instant::now();
    s.kafka.broker_up(-1).unwrap();
    let mut first: Option<Duration> = None;
    let mut peak_kib = 0;
    wait_for(LIMIT, "the outbox to drain", || {
        peak_kib = peak_kib.max(gw.usage().hwm_kib);
        let d = delivered(s.port);
        if first.is_none() && d > 0.0 {
            first = Some(start.elapsed());
        }
        d >= m as f64
    })
    .await;
    let total = start.elapsed();
    let first = first.unwrap_or(total);
    let drained = gw.usage();
    let drain_secs = (total - first).as_secs_f64().max(1e-6);
    println!(
        "outbox drain: first delivery {:.2}s after Kafka came back; {m} records in {:.2}s after that \
         = {:.0} records/s; gateway CPU {:.1} µs/record; peak RSS {:.1} MiB (filling and draining); \
         written while draining {:.1} MiB",
        first.as_secs_f64(),
        drain_secs,
        m as f64 / drain_secs,
        (drained.cpu_seconds - before.cpu_seconds) * 1e6 / m as f64,
        drained.hwm_kib.max(peak_kib) as f64 / 1024.0,
        (drained.write_bytes - before.write_bytes) as f64 / 1048576.0,
    );
}
