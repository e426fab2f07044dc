//! Hostile input against the gateway as a process: what one huge MQTT publish costs, and what
//! the shipped mosquitto settings do with it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

/// 64 MiB: far over the test config's `max_payload` (1 KiB) and its packet limit.
const HUGE: usize = 64 << 20;

/// Publishes `payload` from a file with mosquitto_pub at `qos`; whether the broker took it.
fn mosquitto_pub(port: u16, qos: u8, topic: &str, payload: &Path) -> bool {
    Command::new(mosquitto_client("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", &qos.to_string()])
        .args(["-t", topic, "-f"])
        .arg(payload)
        .status()
        .expect("mosquitto_pub (mosquitto-clients) must be installed")
        .success()
}

fn mosquitto_client(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    name.to_owned()
}

fn huge_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("huge.json");
    let mut body = vec![b' '; HUGE];
    body[0] = b'[';
    body[HUGE - 1] = b']';
    std::fs::write(&path, body).unwrap();
    path
}

/// Peak resident memory the test allows the gateway: less than one huge payload (it idles near
/// 45 MiB as a debug build with librdkafka's buffers).
const RSS_LIMIT_KIB: u64 = (HUGE as u64) >> 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_publish_is_refused_unread_and_counted_and_memory_stays_bounded() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    with_metrics(&path, port);
    let log = dir.path().join("log");
    let mut daemon = GatewayProcess::spawn(&path, &log, &[]);
    let metric = |name: &str, label: Option<(&str, &str)>| {
        tokio::task::block_in_place(|| metric(&scrape(port), name, label))
    };
    wait_for(LONG, "the source to connect", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric("sensorgate_source_up", Some(("source", "local"))) == 1.0
    })
    .await;

    // Three 64 MiB publishes (this broker has no packet limit of its own). Each is refused
    // before it is read: counted and logged, no 64 MiB frame. mosquitto sends a message it was
    // cut off writing again on every reconnect, even at QoS 0, so the count keeps growing: the
    // broker's own limit is what keeps such a publish out (the next test).
    let huge = huge_file(dir.path());
    for _ in 0..3 {
        assert!(mosquitto_pub(mqtt.port, 0, "sensors/d1/reading", &huge));
    }
    wait_for(LONG, "three oversize packets refused", || {
        tokio::task::block_in_place(|| {
            metric_sum(&scrape(port), "sensorgate_mqtt_oversize_packets_total")
        }) >= 3.0
    })
    .await;
    assert!(daemon.log_count("larger than max_payload allows") >= 3);
    assert!(daemon.try_wait().is_none(), "the gateway exited");
    let usage = daemon.usage();
    assert!(
        usage.hwm_kib < RSS_LIMIT_KIB,
        "peak resident set {} KiB, limit {RSS_LIMIT_KIB} KiB",
        usage.hwm_kib
    );
}

/// The `max_packet_size` of `packaging/mosquitto.conf`.
fn shipped_max_packet_size() -> String {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/mosquitto.conf"
    ))
    .unwrap();
    conf.lines()
        .find(|l| l.starts_with("max_packet_size "))
        .expect("packaging/mosquitto.conf sets max_packet_size")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_broker_limit_refuses_huge_qos1_publishes_before_the_gateway_sees_them() {
    let mqtt = Mosquitto::start_with_settings(&shipped_max_packet_size());
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    with_metrics(&path, port);
    let log = dir.path().join("log");
    let daemon = GatewayProcess::spawn(&path, &log, &[]);
    let metric = |name: &str, label: Option<(&str, &str)>| {
        tokio::task::block_in_place(|| metric(&scrape(port), name, label))
    };
    wait_for(LONG, "the source to connect", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric("sensorgate_source_up", Some(("source", "local"))) == 1.0
    })
    .await;

    // At QoS 1 a huge publish the gateway could not read would come back on every reconnect:
    // the broker must refuse it. mosquitto disconnects the publisher.
    let huge = huge_file(dir.path());
    for _ in 0..3 {
        assert!(
            !mosquitto_pub(mqtt.port, 1, "sensors/d1/reading", &huge),
            "the broker took a 64 MiB publish"
        );
    }
    let messages: Vec<_> = (0..20)
        .map(|s| ("sensors/d1/reading".to_owned(), reading("d1", s)))
        .collect();
    publish_all(mqtt.port, "sensor-after-huge", messages).await;
    wait_for(LONG, "the readings delivered", || {
        tokio::task::block_in_place(|| {
            metric_sum(&scrape(port), "sensorgate_kafka_deliveries_total")
        }) == 20.0
    })
    .await;
    assert_eq!(
        metric(
            "sensorgate_mqtt_oversize_packets_total",
            Some(("source", "local"))
        ),
        0.0
    );
    assert_eq!(
        metric(
            "sensorgate_source_reconnects_total",
            Some(("source", "local"))
        ),
        0.0
    );
    let usage = daemon.usage();
    assert!(
        usage.hwm_kib < RSS_LIMIT_KIB,
        "peak resident set {} KiB, limit {RSS_LIMIT_KIB} KiB",
        usage.hwm_kib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_publishes_under_drop_oldest_does_not_evict_valid_readings() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    // A 4 MiB outbox (256 KiB segments) under the default drop-oldest: dead letters may take
    // 10% of it.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_bytes = \"64MiB\"", "max_bytes = \"4MiB\"");
    std::fs::write(&path, text).unwrap();
    let gateway = start_gateway(sensorgate::config::Config::load(&path).unwrap()).await;

    // Kafka is away: everything waits in the outbox.
    kafka.broker_down(-1).unwrap();
    wait_for(LONG, "librdkafka to see every broker down", || {
        gateway.stats().snapshot().kafka_down
    })
    .await;
    let valid: Vec<_> = (0..1000)
        .map(|s| ("sensors/d1/reading".to_owned(), reading("d1", s)))
        .collect();
    publish_all_fast(mqtt.port, "sensor-valid", valid, 100).await;
    wait_for(LONG, "1000 readings in the outbox", || {
        gateway.outbox().stats().depth == 1000
    })
    .await;

    // 20,000 invalid publishes, about 8 MB of dead letters: twice the whole outbox.
    let junk = format!("not json {}", "x".repeat(300)).into_bytes();
    let flood: Vec<_> = (0..20_000)
        .map(|_| ("sensors/evil/reading".to_owned(), junk.clone()))
        .collect();
    publish_all_fast(mqtt.port, "sensor-flood", flood, 500).await;
    wait_for(LONG, "every publish stored or dropped", || {
        let s = gateway.stats().snapshot();
        gateway.outbox().stats().depth + s.dead_letters_dropped + s.dropped == 21_000
    })
    .await;
    let s = gateway.stats().snapshot();
    assert_eq!(s.dropped, 0, "readings were evicted");
    assert!(
        s.dead_letters_dropped >= 15_000,
        "{} dead letters dropped",
        s.dead_letters_dropped
    );

    // Every valid reading is delivered once Kafka is back.
    kafka.broker_up(-1).unwrap();
    let mut reader = tokio::task::block_in_place(|| {
        let mut reader = Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]);
        reader.read_until(LONG, "1000 readings", |r| r.len() >= 1000);
        reader
    });
    let seqs: std::collections::BTreeSet<u64> = reader
        .records
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..1000).collect());
    gateway.shutdown().await.unwrap();
    reader.records.clear();
}

/// `mosquitto_passwd -b` (`-c`: a new file).
fn add_user(file: &Path, user: &str, password: &str, create: bool) {
    let mut command = Command::new(mosquitto_client("mosquitto_passwd"));
    if create {
        command.arg("-c");
    }
    let ok = command
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd (mosquitto) must be installed")
        .success();
    assert!(ok, "mosquitto_passwd {user}");
}

/// mosquitto_pub of `message` as `user` (none: anonymous) at QoS 1: exit status and stderr.
fn publish_as(port: u16, user: Option<(&str, &str)>, topic: &str, message: &[u8]) -> (bool, String) {
    let mut command = Command::new(mosquitto_client("mosquitto_pub"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic]);
    if let Some((user, password)) = user {
        command.args(["-u", user, "-P", password]);
    }
    let out = command
        .arg("-m")
        .arg(std::ffi::OsStr::new(std::str::from_utf8(message).unwrap()))
        .output()
        .expect("mosquitto_pub (mosquitto-clients) must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_broker_snippet_refuses_anonymous_clients_and_devices_publish_only_their_own_topic(
) {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("sensorgate.passwd");
    add_user(&passwd, "sensorgate", "gateway-secret", true);
    add_user(&passwd, "d1", "d1-secret", false);
    let acl = dir.path().join("sensorgate.acl");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/mosquitto.acl"),
        &acl,
    )
    .unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/mosquitto.conf"
    ))
    .unwrap();
    assert!(shipped.contains("\nallow_anonymous false\n"));
    // The shipped snippet, on a free port, with the files here and no persistence directory.
    let mqtt = Mosquitto::start_with_conf(|port| {
        shipped
            .replace("listener 1883 127.0.0.1", &format!("listener {port} 127.0.0.1"))
            .replace("/etc/mosquitto/sensorgate.passwd", passwd.to_str().unwrap())
            .replace("/etc/mosquitto/sensorgate.acl", acl.to_str().unwrap())
            .replace("persistence true", "persistence false")
    });

    // The gateway logs in as sensorgate and may subscribe (start_gateway waits for a SUBACK
    // that grants every filter).
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, "gateway-secret\n").unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "topics = [\"sensors/#\"]",
        &format!(
            "topics = [\"sensors/#\"]\nusername = \"sensorgate\"\npassword_file = \"{}\"",
            password_file.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    let gateway = start_gateway(sensorgate::config::Config::load(&path).unwrap()).await;

    // Anonymous clients and wrong passwords are refused at CONNECT.
    let (ok, stderr) = publish_as(mqtt.port, None, "sensors/d1/reading", &reading("d1", 9));
    assert!(!ok && stderr.contains("not authorised"), "{stderr}");
    let (ok, stderr) = publish_as(
        mqtt.port,
        Some(("d1", "guess")),
        "sensors/d1/reading",
        &reading("d1", 9),
    );
    assert!(!ok && stderr.contains("not authorised"), "{stderr}");

    // d1 publishes on d2's topic (the broker acknowledges and discards it), then on its own.
    let d1 = Some(("d1", "d1-secret"));
    assert!(publish_as(mqtt.port, d1, "sensors/d2/reading", &reading("d2", 2)).0);
    assert!(publish_as(mqtt.port, d1, "sensors/d1/reading", &reading("d1", 1)).0);
    let reader = tokio::task::block_in_place(|| {
        let mut reader = Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]);
        reader.read_until(LONG, "d1's own reading", |r| !r.is_empty());
        reader
    });
    // The broker handles one client's publishes in order: had the first passed, it would have
    // arrived first.
    assert_eq!(reader.records[0].json()["device_id"], "d1");
    assert_eq!(
        gateway.stats().snapshot().received.get("local").copied(),
        Some(1)
    );
    gateway.shutdown().await.unwrap();
}
