//! Pipeline throughput: a sensor publishes readings to a real mosquitto at QoS 1, the gateway
//! (in process) validates, group-commits and publishes them to librdkafka's mock cluster.
//! Prints readings/s end to end, readings per group commit, and the time to drain a backlog
//! built during a Kafka outage.
//!
//! Run on purpose: `cargo bench --bench pipeline` (optionally `-- 200000` readings).
//! Under `cargo test` it only says how to run it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use sensorgate::config::Config;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("pipeline benchmark: run with `cargo bench --bench pipeline [-- N]`");
        return;
    }
    let total: u64 = args
        .iter()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(total, true));
    runtime.block_on(run(total, false));
}

async fn run(total: u64, fsync: bool) {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &mqtt.url(),
        &kafka.bootstrap_servers(),
        &format!("fsync = {fsync}"),
    );
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    let messages = |range: std::ops::Range<u64>| {
        range
            .map(|seq| {
                let device = format!("dev-{}", seq % 8);
                (format!("sensors/{device}/reading"), reading(&device, seq))
            })
            .collect::<Vec<_>>()
    };

    // 1. Steady state: publish and deliver.
    let start = Instant::now();
    publish_all(mqtt.port, "bench-sensor", messages(0..total)).await;
    let published = start.elapsed();
    wait_for(Duration::from_secs(600), "delivery", || {
        gateway.stats().snapshot().delivered == total
    })
    .await;
    let delivered = start.elapsed();
    let s = gateway.stats().snapshot();
    println!(
        "fsync={fsync}: {total} readings: broker accepted in {:.2}s, all in Kafka after {:.2}s \
         = {:.0} readings/s end to end; {} group commits, {:.1} readings per commit",
        published.as_secs_f64(),
        delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64(),
        s.commits,
        s.committed as f64 / s.commits.max(1) as f64,
    );

    // 2. Backlog: Kafka down while `total` readings arrive, then drain.
    kafka.broker_down(-1).unwrap();
    wait_for(Duration::from_secs(60), "brokers down", || {
        gateway.stats().snapshot().kafka_down
    })
    .await;
    publish_all(mqtt.port, "bench-sensor", messages(total..2 * total)).await;
    wait_for(
        Duration::from_secs(600),
        "the backlog in the outbox",
        || gateway.outbox().stats().depth == total,
    )
    .await;
    let bytes = gateway.outbox().stats().bytes;
    let start = Instant::now();
    kafka.broker_up(-1).unwrap();
    wait_for(Duration::from_secs(600), "the backlog to drain", || {
        gateway.outbox().stats().depth == 0
    })
    .await;
    println!(
        "fsync={fsync}: backlog of {total} readings ({:.1} MiB in the outbox) drained in {:.2}s = {:.0} readings/s",
        bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64(),
        total as f64 / start.elapsed().as_secs_f64()
    );
    gateway.shutdown().await.unwrap();
}
