//! MQTT link faults between the gateway and a real mosquitto, injected by the test kit's proxy.

mod common;

use std::time::Duration;

use common::*;
use sensorgate::config::Config;

const LONG: Duration = Duration::from_secs(120);

/// The link drops right after the first CONNACK, before the broker saw the SUBSCRIBE: the
/// broker keeps a persistent session without a subscription and says `session_present` from
/// then on. The gateway must subscribe again anyway, or every later reading is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_lost_with_the_first_connection_is_made_again() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let proxy = Proxy::start(mqtt.port).await;
    proxy.cut_after_connack(1);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &proxy.url(), &kafka.bootstrap_servers(), "");
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    assert_eq!(
        proxy.cut(),
        1,
        "the first connection was cut after its CONNACK"
    );

    const TOTAL: u64 = 1_000;
    let messages = (0..TOTAL).map(|seq| device_reading(seq, 4)).collect();
    publish_all(mqtt.port, "sensor-lost-subscribe", messages).await;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    assert!(
        missing.is_empty(),
        "only {} of {TOTAL} readings published after the lost SUBSCRIBE reached Kafka",
        TOTAL - missing.len() as u64
    );
    gateway.shutdown().await.unwrap();
}

/// Connections between the gateway and the broker reset every 300 ms while 20,000 readings
/// stream, and the gateway is SIGKILLed twice: every reading mosquitto acknowledged to the
/// sensor reaches Kafka (an acknowledgement of one connection never goes out on the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_every_few_hundred_ms_and_two_sigkills_lose_nothing_the_broker_accepted() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let proxy = std::sync::Arc::new(Proxy::start(mqtt.port).await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.url(), &kafka.bootstrap_servers(), "");
    let log = dir.path().join("gateway.log");
    let mut gateway = spawn_subscribed(&config, &log);

    const TOTAL: u64 = 20_000;
    let resetting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let resets = {
        let (proxy, resetting) = (proxy.clone(), resetting.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while resetting.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.reset();
                n += 1;
            }
            n
        })
    };
    let port = mqtt.port;
    let sensor = tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pacer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for seq in 0..TOTAL {
                if seq % 50 == 0 {
                    tick.tick().await;
                }
                let _ = tx.send(device_reading(seq, 16));
            }
        });
        publish_stream(port, "sensor-resets", rx, TOTAL as usize).await;
        pacer.await.unwrap();
    });

    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    for at in [4_000, 10_000] {
        tokio::task::block_in_place(|| {
            reader.read_until(LONG, "readings in Kafka", |r| r.len() >= at)
        });
        gateway.kill9();
        gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    }
    sensor.await.unwrap();
    // The stream is over: the links stop failing, and what the broker holds must now arrive.
    resetting.store(false, std::sync::atomic::Ordering::SeqCst);
    let resets = resets.await.unwrap();
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    assert!(
        missing.is_empty(),
        "{} readings the broker accepted are not in Kafka, e.g. {:?} ({resets} resets)",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let reconnects = gateway.log_count("Reconnected to MQTT broker");
    eprintln!(
        "resets: {TOTAL} readings, {resets} connection resets, 2 SIGKILLs, {} records in Kafka, \
         {reconnects} reconnects logged by the last gateway",
        reader.records.len()
    );
    assert!(resets >= 3, "the links were reset while readings flowed");
}

/// A backlog of 150,000 readings queued at the broker for the gateway's stopped session (no
/// in-flight limit, as `packaging/mosquitto.conf` ships) is read with a 5 s keep-alive: the
/// broker's PINGRESPs and SUBACK share the stream with the backlog. The gateway must not drop
/// the link (each reconnect makes the broker send every unacknowledged reading again, which can
/// loop), must report the SUBACK, and must deliver each reading once. It counts as up (on
/// `/metrics`, so on `/readyz`) as soon as the backlog flows, not only once the SUBACK behind it
/// arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_the_keep_alive_to_read_is_drained_without_reconnecting() {
    let mqtt = Mosquitto::start_with_inflight(0);
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    pings_every_5s(&config);
    let log = dir.path().join("gateway.log");
    // A first run makes the persistent session and its subscription; then the gateway stops.
    let mut gateway = spawn_subscribed(&config, &log);
    gateway.signal("TERM");
    assert!(gateway.wait().success(), "the gateway stopped cleanly");

    const TOTAL: u64 = 150_000;
    let messages = (0..TOTAL).map(|seq| device_reading(seq, 16)).collect();
    publish_all_fast(mqtt.port, "sensor-backlog", messages, 1000).await;

    let log = dir.path().join("gateway-2.log");
    let port = free_port();
    with_metrics(&config, port);
    let gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    let received_when_up = tokio::task::block_in_place(|| {
        let mut received = 0.0;
        wait_until(LONG, "the source to count as up", || {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                return false;
            }
            let m = scrape(port);
            received = metric(&m, "sensorgate_readings_received_total", None);
            metric(&m, "sensorgate_source_up", Some(("source", "local"))) == 1.0
        });
        received
    });
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    assert!(
        missing.is_empty(),
        "{} queued readings are not in Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let failed = gateway.log_count("MQTT connection failed");
    assert_eq!(
        failed,
        0,
        "the gateway lost its MQTT connection while reading the backlog (keep-alive 5 s):\n{}",
        mqtt_log(&gateway)
    );
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the SUBACK behind the backlog", || {
            gateway.log_count("Subscribed") >= 1
        })
    });
    assert_eq!(
        reader.records.len() as u64,
        TOTAL,
        "readings were delivered twice: the broker sent them again after a reconnect"
    );
    assert!(
        received_when_up < TOTAL as f64,
        "up only after all {TOTAL} queued readings were read ({received_when_up})"
    );
    let log = gateway.log_text();
    let (receiving, subscribed) = (
        log.find("Receiving readings from the session's subscription"),
        log.find("Subscribed"),
    );
    assert!(
        receiving.is_some() && receiving < subscribed,
        "up with the first reading, before the SUBACK:\n{}",
        mqtt_log(&gateway)
    );
    eprintln!("backlog: up after {received_when_up} of {TOTAL} queued readings were received");
}

/// The link from the broker is slower than the readings arriving for the gateway (a weak
/// cellular link): the broker's PINGRESPs wait behind a growing queue of publishes, longer
/// than the keep-alive. Publishes keep arriving, so the link is alive: the gateway must not
/// drop it ("Last pingreq isn't acked"), because each reconnect makes the broker send every
/// unacknowledged reading again, more than the link carried the first time, and the gateway
/// never catches up (seen in the power-cut test bed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_slower_than_the_readings_keeps_its_connection_and_delivers_each_once() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let proxy = Proxy::start(mqtt.port).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.url(), &kafka.bootstrap_servers(), "");
    pings_every_5s(&config);
    let log = dir.path().join("gateway.log");
    let gateway = spawn_subscribed(&config, &log);

    // ~1,000 readings/s of ~75 bytes on the wire through a 30 KB/s link: after 20 s the
    // broker's queue for the gateway holds ~15 s of link time.
    proxy.throttle_downlink(30_000);
    const TOTAL: u64 = 20_000;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for seq in 0..TOTAL {
            if seq % 10 == 0 {
                tick.tick().await;
            }
            let _ = tx.send(device_reading(seq, 16));
        }
    });
    publish_stream(mqtt.port, "sensor-slow-link", rx, TOTAL as usize).await;
    pacer.await.unwrap();
    // Some seconds more at the slow rate, then the link recovers and the rest drains.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let failed_while_slow = gateway.log_count("MQTT connection failed");
    proxy.throttle_downlink(0);

    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, TOTAL));
    assert!(
        missing.is_empty(),
        "{} readings are not in Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(
        failed_while_slow,
        0,
        "the gateway dropped a live, slow link (keep-alive 5 s):\n{}",
        mqtt_log(&gateway)
    );
    assert_eq!(
        reader.records.len() as u64,
        TOTAL,
        "readings were delivered more than once: the broker sent them again after a reconnect"
    );
}

/// A link that breaks again and again, each time after a good connection (a flaky Wi-Fi), is
/// reconnected after the first delay every time: the backoff starts over at each CONNACK.
/// `reconnect_max` is 10 minutes here, so a backoff that kept growing across good connections
/// would wait 200 ms × 2^11 ≈ 7 minutes before the 12th reconnect. The log says it once at
/// warning level, the repeats at debug (the events' rate limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_keeps_breaking_after_good_connections_is_reconnected_after_the_first_delay_each_time(
) {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let proxy = Proxy::start(mqtt.port).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.url(), &kafka.bootstrap_servers(), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_payload = \"1KiB\"",
        "max_payload = \"1KiB\"\nreconnect_max = \"10m\"",
    );
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::spawn(
        &config,
        &dir.path().join("gateway.log"),
        &[("RUST_LOG", "info,sensorgate=debug")],
    );
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });
    const BREAKS: usize = 12;
    for n in 1..=BREAKS {
        proxy.reset();
        tokio::task::block_in_place(|| {
            wait_until(LONG, "the gateway to subscribe again", || {
                gateway.log_count("Subscribed") > n
            })
        });
    }
    let log = gateway.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("MQTT connection failed; reconnecting"))
        .collect();
    let delays: Vec<u64> = failed
        .iter()
        .filter_map(|l| l.split("retry_ms=").nth(1))
        .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert_eq!(
        delays.len(),
        BREAKS,
        "one warning per break, each with its delay:\n{}",
        mqtt_log(&gateway)
    );
    let first = 200.0 * (1.0 + sensorgate::backoff::JITTER);
    assert!(
        delays.iter().all(|&d| d as f64 <= first),
        "each reconnect after a good connection waits the first delay: {delays:?}"
    );
    let warnings = failed.iter().filter(|l| l.contains(" WARN ")).count();
    assert_eq!(
        warnings, 1,
        "one warning, the repeats at debug: {failed:#?}"
    );
    // The same for the readings: every one published now arrives.
    let messages = (0..100).map(|seq| device_reading(seq, 4)).collect();
    publish_all(mqtt.port, "sensor-flaky-link", messages).await;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    let missing = tokio::task::block_in_place(|| reader.read_every_seq(LONG, 100));
    assert!(missing.is_empty(), "missing {missing:?}");
    eprintln!("flaky link: {BREAKS} breaks, reconnect delays {delays:?} ms");
}

/// Sets the source's keep-alive to 5 s in the configuration at `config`, so a dropped link
/// shows within a test.
fn pings_every_5s(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "max_payload = \"1KiB\"",
        "max_payload = \"1KiB\"\nkeep_alive = \"5s\"",
    );
    std::fs::write(config, text).unwrap();
}

/// Starts the gateway with `config`, logging to `log`, and waits for its first SUBACK.
fn spawn_subscribed(config: &std::path::Path, log: &std::path::Path) -> GatewayProcess {
    let gateway = GatewayProcess::spawn(config, log, &[("RUST_LOG", "info")]);
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });
    gateway
}

/// The first 20 lines of the gateway's log about MQTT (for an assertion's message).
fn mqtt_log(gateway: &GatewayProcess) -> String {
    gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("MQTT") || l.contains("ubscrib"))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}
