//! Serial pipeline ceiling: a "sensor" writes JSON lines into a socat pseudo-terminal as fast as
//! the pty takes them; the gateway (in process) frames, validates, group-commits and publishes
//! them to librdkafka's mock cluster. Prints lines/s until the last one is confirmed by Kafka,
//! with and without fsync, next to what the pty alone carries (a plain reader counting lines),
//! so the gateway's share of the ceiling is visible. A pty has no baud rate: a real port at
//! 115200 baud 8N1 carries 11,520 bytes/s, some 210 lines/s of these 54-byte lines.
//!
//! Run on purpose: `cargo bench --bench serial` (optionally `-- 200000` lines).
//! Under `cargo test` it only says how to run it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use sensorgate::config::Config;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("serial benchmark: run with `cargo bench --bench serial [-- N]`");
        return;
    }
    let total: u64 = args
        .iter()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(200_000);
    let stream = lines(total);
    println!(
        "{total} lines, {:.1} MiB ({} bytes per line on average)",
        stream.len() as f64 / (1 << 20) as f64,
        stream.len() as u64 / total
    );
    pty_alone(&stream, total);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(gateway(&stream, total, true));
    runtime.block_on(gateway(&stream, total, false));
}

fn lines(total: u64) -> Vec<u8> {
    let mut stream = Vec::new();
    for seq in 0..total {
        stream.extend_from_slice(&reading(&format!("dev-{}", seq % 8), seq));
        stream.push(b'\n');
    }
    stream
}

/// The pty pair (and socat relaying between its ends) with a reader that only counts lines.
fn pty_alone(stream: &[u8], total: u64) {
    let dir = tempfile::tempdir().unwrap();
    let socat = Socat::start(dir.path());
    let mut device = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(socat.device())
            .unwrap()
    };
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        let mut seen = 0u64;
        while seen < total {
            let n = device.read(&mut buf).unwrap();
            assert!(n > 0, "the pty closed early");
            seen += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    });
    socat.sensor().write_all(stream).unwrap();
    reader.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pty alone (socat, a reader counting lines): {total} lines in {secs:.2}s = {:.0} lines/s, {:.1} MiB/s",
        total as f64 / secs,
        stream.len() as f64 / secs / (1 << 20) as f64
    );
}

async fn gateway(stream: &[u8], total: u64, fsync: bool) {
    let kafka = kafka(&["serial.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let socat = Socat::start(dir.path());
    let sources = format!(
        r#"
[[serial]]
name = "bench"
device = "{}"

[[route]]
source = "bench"
schema = "reading.v1.json"
kafka_topic = "serial.readings"
key = "/device_id"
"#,
        socat.device().display()
    );
    let path = write_serial_config(
        dir.path(),
        &kafka.bootstrap_servers(),
        None,
        &format!("fsync = {fsync}"),
        &sources,
    );
    let gateway = sensorgate::app::start(Config::load(&path).unwrap()).unwrap();
    wait_for(Duration::from_secs(30), "the port to open", || {
        gateway
            .stats()
            .snapshot()
            .serial
            .get("bench")
            .is_some_and(|p| p.open)
    })
    .await;

    let start = Instant::now();
    let sensor = socat.sensor();
    let data = stream.to_vec();
    let writer = std::thread::spawn(move || {
        (&sensor).write_all(&data).unwrap();
        Instant::now()
    });
    wait_for(Duration::from_secs(600), "delivery", || {
        gateway.stats().snapshot().delivered >= total
    })
    .await;
    let delivered = start.elapsed();
    let written = writer.join().unwrap() - start;
    let s = gateway.stats().snapshot();
    let port = s.serial["bench"];
    assert_eq!(
        (port.lines, port.dead_letters, s.delivered),
        (total, 0, total),
        "every line delivered, none dead"
    );
    println!(
        "gateway, fsync={fsync}: {total} lines: written into the pty in {:.2}s, all in Kafka after \
         {:.2}s = {:.0} lines/s end to end; {} group commits, {:.1} lines per commit",
        written.as_secs_f64(),
        delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64(),
        s.commits,
        s.committed as f64 / s.commits.max(1) as f64,
    );
    gateway.shutdown().await.unwrap();
}
