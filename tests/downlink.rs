//! The downlink end to end: commands produced into librdkafka's mock cluster, consumed by the
//! gateway and published to a real mosquitto, received by devices subscribed there. In order and
//! once when nothing fails; nothing lost across a broker outage (consumption paused meanwhile)
//! or two SIGKILLs of the gateway (offsets never ahead of what the broker acknowledged); the
//! gateway process's memory flat with a backlog waiting behind an outage; commands that Kafka
//! deleted before they were consumed reported; invalid, untargetable and expired commands
//! dead-lettered with their reason, the others delivered.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sensorgate::admin::{self, Filter, Request, Response, Selection};
use sensorgate::app::Handle;
use sensorgate::config::Config;
use sensorgate::record::Reason;
use sensorgate::telemetry::downlink::{CommandResult, DownlinkSnapshot};

const LONG: Duration = Duration::from_secs(120);
const DLQ_TOPIC: &str = "devices.commands.test-gw.DLQ";

fn downlink(gateway: &Handle) -> DownlinkSnapshot {
    gateway
        .stats()
        .snapshot()
        .downlinks
        .get("commands")
        .cloned()
        .unwrap_or_default()
}

async fn start(config: &std::path::Path) -> Handle {
    let gateway = start_gateway(Config::load(config).unwrap()).await;
    wait_for(LONG, "the downlink to connect", || downlink(&gateway).up).await;
    gateway
}

/// Turns on the metrics endpoint of the config at `config` on a free port, and returns it.
fn serve_metrics(config: &std::path::Path) -> u16 {
    let port = free_port();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(config, text).unwrap();
    port
}

/// The gateway as a process (as the systemd unit runs it), with its metrics endpoint.
struct Watched {
    gateway: GatewayProcess,
    metrics: u16,
}

impl Watched {
    /// Starts it on a downlink config in `dir` and waits until the downlink is up with its
    /// partitions assigned.
    fn spawn(dir: &std::path::Path, mqtt_url: &str, bootstrap: &str) -> Self {
        let config = write_downlink_config(dir, mqtt_url, bootstrap, "", "");
        let metrics = serve_metrics(&config);
        let gateway = GatewayProcess::spawn(
            &config,
            &dir.join("gateway.log"),
            &[("RUST_LOG", "info"), ("MALLOC_ARENA_MAX", "2")],
        );
        let watched = Self { gateway, metrics };
        tokio::task::block_in_place(|| {
            wait_until(LONG, "the downlink up with its partitions", || {
                std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok()
                    && watched.gauge("sensorgate_downlink_up") == 1.0
                    && scrape(metrics)
                        .samples
                        .iter()
                        .any(|s| s.metric == "sensorgate_downlink_consumer_lag")
            })
        });
        watched
    }

    /// A per-downlink gauge of downlink `commands`.
    fn gauge(&self, name: &str) -> f64 {
        metric(&scrape(self.metrics), name, Some(("downlink", "commands")))
    }

    /// The consumer lag over every partition.
    fn lag(&self) -> f64 {
        metric_sum(&scrape(self.metrics), "sensorgate_downlink_consumer_lag")
    }

    /// Commands the broker acknowledged.
    fn delivered(&self) -> f64 {
        metric(
            &scrape(self.metrics),
            "sensorgate_downlink_commands_total",
            Some(("result", "delivered")),
        )
    }
}

/// `text` without the terminal colour codes of the log.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A command of about 1 KiB, keyed by its device.
fn padded(device: &str, seq: u64) -> (String, Vec<u8>) {
    let payload = format!(
        r#"{{"device_id":"{device}","seq":{seq},"action":"set","pad":"{}"}}"#,
        "x".repeat(1000)
    );
    (device.to_owned(), payload.into_bytes())
}

/// `n` commands round-robin over `devices` devices, numbered per device from `first[device]`.
fn commands(devices: usize, n: usize, next: &mut BTreeMap<String, u64>) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let device = format!("dev-{:02}", i % devices);
            let seq = next.entry(device.clone()).or_default();
            let payload = command(&device, *seq);
            *seq += 1;
            (device, payload)
        })
        .collect()
}

/// Asserts that every device received its commands `0..n` with each first delivery in order;
/// returns the duplicates.
fn assert_in_order(devices: &Devices, expected: &BTreeMap<String, u64>) -> usize {
    let (firsts, duplicates) = first_deliveries(&devices.received(), "seq");
    for (device, n) in expected {
        let got = firsts.get(device).cloned().unwrap_or_default();
        assert_eq!(
            got,
            (0..*n).collect::<Vec<u64>>(),
            "{device}: commands missing or out of order"
        );
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_commands_reach_ten_devices_once_each_in_order() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_downlink_config(dir.path(), &mqtt.url(), &bootstrap, "", "");
    let devices = Devices::start(mqtt.port, "devices-order").await;
    let gateway = start(&config).await;
    // The assignment is seen before any command arrives: the lag of every partition is known.
    wait_for(LONG, "the lag of the assigned partitions", || {
        downlink(&gateway).lag.len() == 4
    })
    .await;

    let mut next = BTreeMap::new();
    let records = commands(10, 1000, &mut next);
    produce(&bootstrap, COMMANDS_TOPIC, &records).await;
    wait_for(LONG, "1,000 commands at the devices", || {
        devices.total() >= 1000
    })
    .await;
    let duplicates = assert_in_order(&devices, &next);
    assert_eq!(duplicates, 0, "nothing failed, so nothing is sent twice");
    assert_eq!(devices.total(), 1000);
    assert!(next.values().all(|n| *n == 100));

    // Every offset is committed once acknowledged; the lag goes to zero.
    let high = high_watermarks(&bootstrap, COMMANDS_TOPIC);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "every offset committed", || {
            committed(&bootstrap, COMMANDS_GROUP, COMMANDS_TOPIC) == high
        })
    });
    wait_for(LONG, "the lag gauge at 0", || {
        let d = downlink(&gateway);
        !d.lag.is_empty() && d.lag_total() == 0
    })
    .await;
    let d = downlink(&gateway);
    assert_eq!(d.count(CommandResult::Delivered), 1000);
    assert_eq!(d.dead_letters(), 0);
    assert_eq!((d.held, d.circuit_open, d.retries), (0, false, 0));
    eprintln!(
        "order test: 1000 commands to 10 devices, {} received, {duplicates} duplicates, committed {high:?}",
        devices.total()
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_pauses_consumption_and_loses_no_command() {
    let mut mqtt = Mosquitto::start_persistent();
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    const MAX_IN_FLIGHT: u64 = 50;
    let config = write_downlink_config(
        dir.path(),
        &mqtt.url(),
        &bootstrap,
        "",
        &format!("max_in_flight = {MAX_IN_FLIGHT}"),
    );
    let devices = Devices::start(mqtt.port, "devices-outage").await;
    let gateway = start(&config).await;

    // Mid-stream: 500 commands, and the broker goes away once devices have some of them.
    let mut next = BTreeMap::new();
    let first = commands(10, 500, &mut next);
    produce(&bootstrap, COMMANDS_TOPIC, &first).await;
    wait_for(LONG, "the first commands at the devices", || {
        devices.total() >= 100
    })
    .await;
    let stopped = std::time::Instant::now();
    tokio::task::block_in_place(|| mqtt.stop());
    wait_for(LONG, "the downlink to see the broker gone", || {
        let d = downlink(&gateway);
        !d.up && d.circuit_open
    })
    .await;
    let outage = std::time::Instant::now();
    let delivered_at_stop = downlink(&gateway).count(CommandResult::Delivered);

    // During the outage: 1,500 more commands. Consumption pauses: the lag grows by about what
    // was produced, while what the gateway holds stays within max_in_flight.
    let during = commands(10, 1500, &mut next);
    produce(&bootstrap, COMMANDS_TOPIC, &during).await;
    let mut max_held = 0;
    let mut max_lag = 0;
    wait_for(
        LONG,
        "the lag to show the commands produced meanwhile",
        || {
            let d = downlink(&gateway);
            max_held = max_held.max(d.held);
            max_lag = max_lag.max(d.lag_total());
            assert!(d.held <= MAX_IN_FLIGHT, "held {} > max_in_flight", d.held);
            d.lag_total() >= 1500 && d.paused
        },
    )
    .await;
    // Several seconds of outage, sampled: nothing is delivered, the bound holds.
    while outage.elapsed() < Duration::from_secs(5) {
        let d = downlink(&gateway);
        max_held = max_held.max(d.held);
        assert!(d.held <= MAX_IN_FLIGHT, "held {} > max_in_flight", d.held);
        assert!(d.paused && d.circuit_open && !d.up, "{d:?}");
        assert_eq!(d.count(CommandResult::Delivered), delivered_at_stop);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retries = downlink(&gateway).retries;
    assert!(
        retries >= 2,
        "the gateway kept retrying with backoff ({retries})"
    );
    // The operator sees it: `queue stats` (through the daemon) and systemd's STATUS= line.
    let mut stats = Vec::new();
    sensorgate::cli::queue::stats(&Config::load(&config).unwrap(), false, &mut stats)
        .await
        .unwrap();
    let stats = String::from_utf8(stats).unwrap();
    assert!(
        stats.contains("downlink commands:") && stats.contains("MQTT down (consumption paused)"),
        "{stats}"
    );
    let lag = downlink(&gateway).lag_total();
    assert!(
        stats.contains(&format!("consumer lag:      {lag} (")),
        "{stats}"
    );
    let status = sensorgate::telemetry::notify::status_line(gateway.stats(), gateway.outbox());
    assert!(status.contains("downlink commands MQTT down"), "{status}");

    tokio::task::block_in_place(|| mqtt.restart());
    let down_for = stopped.elapsed();
    let last = commands(10, 500, &mut next);
    produce(&bootstrap, COMMANDS_TOPIC, &last).await;
    wait_for(LONG, "every command at the devices", || {
        devices.distinct("seq") >= 2500
    })
    .await;
    let duplicates = assert_in_order(&devices, &next);
    wait_for(LONG, "the breaker closed and the lag at 0", || {
        let d = downlink(&gateway);
        d.up && !d.circuit_open && !d.paused && d.lag_total() == 0 && !d.lag.is_empty()
    })
    .await;
    eprintln!(
        "outage test: 2500 commands, broker down {:.1} s ({delivered_at_stop} delivered before), \
         {retries} retries, lag up to {max_lag}, held at most {max_held} (max_in_flight \
         {MAX_IN_FLIGHT}), {} received, {duplicates} duplicates",
        down_for.as_secs_f64(),
        devices.total()
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_12_mib_behind_a_broker_outage_does_not_grow_the_gateways_memory() {
    let mut mqtt = Mosquitto::start();
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let watched = Watched::spawn(dir.path(), &mqtt.url(), &bootstrap);
    let Watched { gateway, .. } = &watched;
    let (gauge, lag, delivered) = (
        |name: &str| watched.gauge(name),
        || watched.lag(),
        || watched.delivered(),
    );
    // Warm up: 1,000 commands of 1 KiB delivered, so the baseline has every buffer in use.
    // A hundred keys spread the commands evenly over the partitions.
    let batch = |from: u64, n: u64| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|seq| padded(&format!("dev-{:03}", seq % 100), seq))
            .collect()
    };
    let producer = Producer::new(&bootstrap);
    producer.send(COMMANDS_TOPIC, &batch(0, 1000)).await;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the warm-up commands delivered", || {
            delivered() >= 1000.0 && lag() == 0.0
        })
    });
    let before = gateway.usage();

    // The broker goes away; 12,000 commands (12 MiB) pile up in Kafka. (The mock cluster keeps
    // at most 5 MiB per partition: beyond that it deletes the oldest, as retention would.)
    tokio::task::block_in_place(|| mqtt.stop());
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the breaker open", || {
            gauge("sensorgate_downlink_circuit_open") == 1.0
        })
    });
    const BACKLOG: u64 = 12_000;
    for chunk in 0..BACKLOG / 4000 {
        producer
            .send(COMMANDS_TOPIC, &batch(1000 + chunk * 4000, 4000))
            .await;
    }
    let mut peak_rss = 0;
    let mut max_held = 0.0f64;
    let mut paused = true;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the lag to show the backlog", || {
            peak_rss = peak_rss.max(gateway.usage().rss_kib);
            max_held = max_held.max(gauge("sensorgate_downlink_held_commands"));
            lag() >= BACKLOG as f64
        })
    });
    // A hundred more samples with the backlog waiting: still paused, memory flat.
    let mut samples = 0;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "100 samples of the waiting gateway", || {
            peak_rss = peak_rss.max(gateway.usage().rss_kib);
            max_held = max_held.max(gauge("sensorgate_downlink_held_commands"));
            paused &= gauge("sensorgate_downlink_paused") == 1.0;
            samples += 1;
            samples >= 100
        })
    });
    let grown_kib = peak_rss.saturating_sub(before.rss_kib);
    eprintln!(
        "backlog test: {BACKLOG} commands of 1 KiB waiting behind the outage: RSS {} KiB before, \
         peak {peak_rss} KiB during (+{grown_kib} KiB), held at most {max_held}, lag {}",
        before.rss_kib,
        lag()
    );
    // 12 MiB waiting in Kafka; what the gateway may take is its window (100 commands) and
    // librdkafka's prefetch (1 MiB): a generous bound that taking the backlog would break.
    assert!(
        grown_kib < 6 << 10,
        "the gateway grew by {grown_kib} KiB while {BACKLOG} commands waited in Kafka"
    );
    assert!(max_held <= 100.0, "held {max_held} > max_in_flight");
    assert!(paused, "the partitions stayed paused");

    // The broker is back: the backlog drains.
    tokio::task::block_in_place(|| mqtt.restart());
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the backlog delivered", || {
            delivered() >= (1000 + BACKLOG) as f64 && lag() == 0.0
        })
    });
    assert_eq!(
        gateway.log_count("Kafka offsets skipped"),
        0,
        "no command was deleted by the mock cluster before it was consumed"
    );
    drop(watched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_retention_deleted_before_consumption_are_reported() {
    let mut mqtt = Mosquitto::start();
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let watched = Watched::spawn(dir.path(), &mqtt.url(), &bootstrap);
    let producer = Producer::new(&bootstrap);
    // One device, one partition: a first command delivered, then the broker goes away.
    let (partition, first) = producer.send(COMMANDS_TOPIC, &[padded("dev-1", 0)]).await[0];
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the first command delivered", || {
            watched.delivered() == 1.0 && watched.lag() == 0.0
        })
    });
    tokio::task::block_in_place(|| mqtt.stop());
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the breaker open", || {
            watched.gauge("sensorgate_downlink_circuit_open") == 1.0
        })
    });
    // 8 MiB for that partition: the mock cluster keeps 5 MiB of it and deletes the oldest,
    // as a topic's retention would while the gateway waits.
    let backlog: Vec<_> = (1..=8000).map(|seq| padded("dev-1", seq)).collect();
    for chunk in backlog.chunks(2000) {
        producer.send(COMMANDS_TOPIC, chunk).await;
    }
    let (low, high) = tokio::task::block_in_place(|| {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            COMMANDS_TOPIC,
            partition,
            Duration::from_secs(10),
        )
        .unwrap()
    });
    assert!(
        low > first + 1,
        "the mock cluster deleted commands (low watermark {low})"
    );

    // The broker is back: what is left is delivered, and the gap is in the log.
    tokio::task::block_in_place(|| mqtt.restart());
    tokio::task::block_in_place(|| {
        wait_until(LONG, "what is left delivered", || {
            watched.delivered() >= (1 + high - low) as f64 && watched.lag() == 0.0
        })
    });
    let log = strip_ansi(&watched.gateway.log_text());
    let warning = log
        .lines()
        .find(|l| l.contains("Kafka offsets skipped"))
        .unwrap_or_else(|| panic!("no warning about the skipped offsets:\n{log}"));
    // Fields of the warning, e.g. `partition=2 from=1 to=3866 skipped=3866`.
    let field = |name: &str| -> i64 {
        let value = warning
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in: {warning}"));
        value.parse().unwrap()
    };
    assert_eq!(field("partition"), i64::from(partition), "{warning}");
    assert_eq!(
        field("from"),
        first + 1,
        "the gap starts after the delivered command"
    );
    // It reaches at least the low watermark read after the backlog was produced.
    assert!(field("to") + 1 >= low, "low watermark {low}: {warning}");
    assert_eq!(
        field("skipped"),
        field("to") - field("from") + 1,
        "{warning}"
    );
    eprintln!("retention test: low watermark {low} after the backlog; {warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_mid_stream_delivers_every_command_at_least_once() {
    let mqtt = Mosquitto::start();
    // The gateway reaches the broker through a proxy that can swallow traffic: the second kill
    // hits while the gateway holds commands it consumed and published but the broker never
    // acknowledged (and never got), the moment a premature commit would lose them.
    let proxy = Proxy::start(mqtt.port).await;
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_downlink_config(dir.path(), &proxy.url(), &bootstrap, "", "");
    let metrics = serve_metrics(&config);
    let log = dir.path().join("gateway.log");
    let devices = Devices::start(mqtt.port, "devices-crash").await;
    let env = [("RUST_LOG", "info")];
    let mut gateway = GatewayProcess::spawn(&config, &log, &env);

    // 3,000 commands for 10 devices, produced in chunks of 25 every 100 ms.
    const TOTAL: usize = 3000;
    let mut next = BTreeMap::new();
    let all = commands(10, TOTAL, &mut next);
    let producer = {
        let bootstrap = bootstrap.clone();
        let all = all.clone();
        tokio::spawn(async move {
            let producer = Producer::new(&bootstrap);
            let mut out = Vec::new();
            for chunk in all.chunks(25) {
                out.extend(producer.send(COMMANDS_TOPIC, chunk).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out
        })
    };
    let committed_now =
        || tokio::task::block_in_place(|| committed(&bootstrap, COMMANDS_GROUP, COMMANDS_TOPIC));

    // Kill 1: while commands flow, once some offsets are committed.
    let mut committed_at_kill = Vec::new();
    let mut held_at_kill = Vec::new();
    wait_for(LONG, "commands at the devices", || devices.total() >= 600).await;
    tokio::task::block_in_place(|| {
        wait_until(LONG, "300 offsets committed", || {
            committed(&bootstrap, COMMANDS_GROUP, COMMANDS_TOPIC)
                .values()
                .sum::<i64>()
                >= 300
        })
    });
    committed_at_kill.push(committed_now());
    held_at_kill.push(None);
    gateway.kill9();
    let first_mid_stream = devices.distinct("seq") < TOTAL;
    gateway = GatewayProcess::spawn(&config, &log, &env);

    // Kill 2: while the broker swallows what the gateway publishes.
    wait_for(LONG, "commands at the devices", || {
        devices.distinct("seq") >= 1500
    })
    .await;
    proxy.blackhole(true);
    let held = || metric(&scrape(metrics), "sensorgate_downlink_held_commands", None);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to hold unacknowledged commands", || {
            held() >= 50.0
        })
    });
    // A commit interval (1 s) and more: a wrong commit of those commands would happen now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held_at_kill.push(Some(held()));
    committed_at_kill.push(committed_now());
    gateway.kill9();
    let second_mid_stream = devices.distinct("seq") < TOTAL;
    proxy.blackhole(false);
    gateway = GatewayProcess::spawn(&config, &log, &env);
    let offsets = producer.await.unwrap();

    // No committed offset was ever ahead of what the broker had acknowledged: every command
    // below an offset committed before a kill reaches the devices (had the gateway committed
    // commands the broker never got, nothing would send them again).
    let committed_before: Vec<(String, u64)> = all
        .iter()
        .zip(&offsets)
        .filter(|(_, (partition, offset))| {
            committed_at_kill
                .iter()
                .any(|c| c.get(partition).is_some_and(|c| offset < c))
        })
        .map(|((device, payload), _)| {
            let seq = serde_json::from_slice::<serde_json::Value>(payload).unwrap()["seq"]
                .as_u64()
                .unwrap();
            (device.clone(), seq)
        })
        .collect();
    wait_for(
        Duration::from_secs(60),
        "every command committed before a kill at the devices (a commit was ahead of the broker's acknowledgements)",
        || {
            let (firsts, _) = first_deliveries(&devices.received(), "seq");
            committed_before
                .iter()
                .all(|(device, seq)| firsts.get(device).is_some_and(|s| s.contains(seq)))
        },
    )
    .await;
    wait_for(LONG, "every command at the devices", || {
        devices.distinct("seq") >= TOTAL
    })
    .await;
    let duplicates = assert_in_order(&devices, &next);
    let high = high_watermarks(&bootstrap, COMMANDS_TOPIC);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "every offset committed", || {
            committed(&bootstrap, COMMANDS_GROUP, COMMANDS_TOPIC) == high
        })
    });
    eprintln!(
        "SIGKILL test: {TOTAL} commands, kills mid-stream: {first_mid_stream}/{second_mid_stream}, \
         {} received, {duplicates} duplicates; committed before the kills: {committed_at_kill:?}; \
         held (published, unacknowledged) at the second: {:?}",
        devices.total(),
        held_at_kill[1]
    );
    assert!(
        first_mid_stream && second_mid_stream,
        "both kills hit mid-stream"
    );
    assert!(
        committed_at_kill.iter().all(|c| !c.is_empty()),
        "offsets were being committed"
    );
    gateway.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_untargetable_and_expired_commands_are_dead_letters_and_the_others_delivered() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&[COMMANDS_TOPIC, DLQ_TOPIC]);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_downlink_config(dir.path(), &mqtt.url(), &bootstrap, "", "");
    let devices = Devices::start(mqtt.port, "devices-dead").await;
    let gateway = start(&config).await;

    // One partition (one key), so the good commands surround the bad ones in Kafka order.
    let key = "dev-01".to_owned();
    let records: Vec<(String, Vec<u8>)> = [
        r#"{"device_id":"dev-01","seq":0,"action":"set"}"#,
        r#"{"device_id":"dev-01","seq":1,"action":"set""#,
        r#"{"device_id":"dev-01","seq":2,"action":"fly"}"#,
        r#"{"seq":3,"action":"set"}"#,
        r#"{"device_id":"dev-01","seq":4,"action":"set","expires_at":"2020-01-01T00:00:00Z"}"#,
        r#"{"device_id":"dev-01","seq":5,"action":"reboot","expires_at":"2999-01-01T00:00:00+02:00"}"#,
        r#"{"device_id":"dev-01","seq":6,"action":"calibrate"}"#,
    ]
    .iter()
    .map(|c| (key.clone(), c.as_bytes().to_vec()))
    .collect();
    produce(&bootstrap, COMMANDS_TOPIC, &records).await;

    wait_for(LONG, "the good commands at the device", || {
        devices.total() >= 3
    })
    .await;
    let mut reader = tokio::task::block_in_place(|| Reader::new(&bootstrap, &[DLQ_TOPIC]));
    tokio::task::block_in_place(|| {
        reader.read_until(LONG, "4 dead letters in the DLQ topic", |r| r.len() >= 4)
    });
    let high = high_watermarks(&bootstrap, COMMANDS_TOPIC);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "dead letters' offsets committed too", || {
            committed(&bootstrap, COMMANDS_GROUP, COMMANDS_TOPIC) == high
        })
    });
    let (firsts, duplicates) = first_deliveries(&devices.received(), "seq");
    assert_eq!(firsts["dev-01"], [0, 5, 6]);
    assert_eq!(duplicates, 0);

    // In the DLQ topic: the original bytes, the reason and the errors as headers.
    let mut dlq: Vec<(String, Vec<u8>, BTreeMap<String, String>)> = reader
        .records
        .iter()
        .map(|r| {
            let reason = r.headers["sensorgate.reason"].clone();
            (
                reason,
                r.payload.clone(),
                r.headers.clone().into_iter().collect(),
            )
        })
        .collect();
    dlq.sort_by_key(|(_, payload, _)| records.iter().position(|(_, p)| p == payload));
    let reasons: Vec<&str> = dlq.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(reasons, ["not-json", "schema", "no-target", "expired"]);
    for (i, (_, payload, headers)) in dlq.iter().enumerate() {
        assert_eq!(payload, &records[i + 1].1, "payload bytes untouched");
        assert_eq!(headers["sensorgate.source"], "commands");
        assert_eq!(headers["sensorgate.gateway"], "test-gw");
        assert_eq!(headers["sensorgate.schema"], "command.v1.json");
        assert!(
            headers["sensorgate.origin"].starts_with("kafka:devices.commands.test-gw/"),
            "{headers:?}"
        );
    }
    assert!(
        dlq[1].2["sensorgate.errors"].contains("/action"),
        "{:?}",
        dlq[1].2
    );
    assert!(
        dlq[2].2["sensorgate.errors"].contains("/device_id"),
        "{:?}",
        dlq[2].2
    );
    assert!(
        dlq[3].2["sensorgate.errors"].contains("expired at 2020-01-01"),
        "{:?}",
        dlq[3].2
    );

    // In the local store, listed by the downlink's name, through the running daemon.
    let loaded = Config::load(&config).unwrap();
    let filter = Filter {
        source: Some("commands".into()),
        ..Filter::default()
    };
    let Response::DeadLetters(stored) = admin::call(&loaded, Request::DlqList { filter })
        .await
        .unwrap()
        .0
    else {
        panic!("not a list")
    };
    let reasons: Vec<Reason> = stored.iter().filter_map(|d| d.reason()).collect();
    assert_eq!(
        reasons,
        [
            Reason::NotJson,
            Reason::Schema,
            Reason::NoTarget,
            Reason::Expired
        ]
    );
    assert!(stored.iter().all(|d| d
        .meta
        .origin
        .to_string()
        .starts_with("kafka:devices.commands.test-gw/")));
    // What the operator types: `dlq list --source commands` and `dlq show ID`.
    let cli_filter = Filter {
        source: Some("commands".into()),
        ..Filter::default()
    };
    let mut listed = Vec::new();
    sensorgate::cli::dlq::list(&loaded, cli_filter, false, &mut listed)
        .await
        .unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert!(listed.contains("4 dead letter(s)"), "{listed}");
    for reason in ["not-json", "schema", "no-target", "expired"] {
        let line = listed.lines().find(|l| l.contains(reason)).unwrap_or("");
        assert!(
            line.contains("commands") && line.contains("kafka:devices.commands.test-gw/"),
            "{reason}: {listed}"
        );
    }
    let mut shown = Vec::new();
    sensorgate::cli::dlq::show(&loaded, stored[2].id, false, &mut shown)
        .await
        .unwrap();
    let shown = String::from_utf8(shown).unwrap();
    for needle in [
        "reason:      no-target",
        "source:      commands",
        "kafka topic: devices.commands.test-gw.DLQ",
        r#"{"seq":3,"action":"set"}"#,
    ] {
        assert!(shown.contains(needle), "`{needle}` missing from:\n{shown}");
    }
    let d = downlink(&gateway);
    assert_eq!(
        [
            d.count(CommandResult::Delivered),
            d.count(CommandResult::NotJson),
            d.count(CommandResult::Schema),
            d.count(CommandResult::NoTarget),
            d.count(CommandResult::Expired)
        ],
        [3, 1, 1, 1, 1]
    );

    // Replay: the expired and untargetable ones still fail; the schema one too, until the
    // schema is fixed and the gateway restarted with it. Then it goes through the downlink.
    let ids: Vec<u64> = stored.iter().map(|d| d.id).collect();
    let replay = |ids: Vec<u64>| {
        let loaded = loaded.clone();
        async move {
            match admin::call(
                &loaded,
                Request::DlqReplay {
                    select: Selection::Ids(ids),
                },
            )
            .await
            .unwrap()
            .0
            {
                Response::Replayed(report) => report,
                other => panic!("{other:?}"),
            }
        }
    };
    let report = replay(ids[1..].to_vec()).await;
    assert!(report.moved.is_empty(), "{report:?}");
    let failed: Vec<Reason> = report.failed.iter().map(|f| f.reason).collect();
    assert_eq!(failed, [Reason::Schema, Reason::NoTarget, Reason::Expired]);

    gateway.shutdown().await.unwrap();
    let fixed = COMMAND_SCHEMA.replace(r#""calibrate"]"#, r#""calibrate", "fly"]"#);
    std::fs::write(dir.path().join("schemas/command.v1.json"), fixed).unwrap();
    let gateway = start(&config).await;
    // `dlq replay ID`: through the running downlink, to the device.
    let mut replayed = Vec::new();
    let status =
        sensorgate::cli::dlq::replay(&loaded, Selection::Ids(vec![ids[1]]), false, &mut replayed)
            .await
            .unwrap();
    let replayed = String::from_utf8(replayed).unwrap();
    assert_eq!(status, sensorgate::cli::Status::Ok, "{replayed}");
    assert!(
        replayed.contains(&format!(
            "moved   {} -> delivered through its downlink, MQTT topic devices/dev-01/commands",
            ids[1]
        )),
        "{replayed}"
    );
    wait_for(LONG, "the replayed command at the device", || {
        devices.total() >= 4
    })
    .await;
    assert_eq!(devices.received()["dev-01"][3]["action"], "fly");
    let Response::DeadLetters(left) = admin::call(
        &loaded,
        Request::DlqList {
            filter: Filter::default(),
        },
    )
    .await
    .unwrap()
    .0
    else {
        panic!("not a list")
    };
    assert_eq!(left.len(), 3, "the replayed one left the store");
    assert_eq!(downlink(&gateway).replayed, 1);
    gateway.shutdown().await.unwrap();
}
