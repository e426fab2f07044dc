//! Hostile input against the gateway as a process: what one huge MQTT publish costs, and what
//! the shipped mosquitto settings do with it.

mod common;

use std::os::unix::fs::PermissionsExt as _;
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
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            &qos.to_string(),
        ])
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
    wait_for(LONG, "the source to connect", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            // One source: the sum is its value, 0 until it registered.
            && tokio::task::block_in_place(|| metric_sum(&scrape(port), "sensorgate_source_up")) == 1.0
    })
    .await;

    // Three 64 MiB publishes (this broker has no packet limit of its own). Each is refused
    // before it is read: counted and logged, no 64 MiB frame. Each is sent once the source is
    // up again (a QoS 0 publish that finds the gateway between connections is not kept for it);
    // mosquitto may send one it was cut off writing again on a reconnect, so the count can
    // grow past three: the broker's own limit is what keeps such a publish out (the next test).
    let huge = huge_file(dir.path());
    let metric_now = |name: &str| tokio::task::block_in_place(|| metric_sum(&scrape(port), name));
    for n in 1..=3 {
        wait_for(LONG, "the source to be up again", || {
            metric_now("sensorgate_source_up") == 1.0
        })
        .await;
        assert!(mosquitto_pub(mqtt.port, 0, "sensors/d1/reading", &huge));
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let refused = metric_now("sensorgate_mqtt_oversize_packets_total");
            if refused >= f64::from(n) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for oversize packet {n} to be refused ({refused}):\n{}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Each one is counted; the log says it at error level once (then at most once a minute,
    // the events' rate limit).
    assert!(daemon.log_count("larger than max_payload allows") >= 1);
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
            // One source: the sum is its value, 0 until it registered.
            && tokio::task::block_in_place(|| metric_sum(&scrape(port), "sensorgate_source_up")) == 1.0
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
fn publish_as(
    port: u16,
    user: Option<(&str, &str)>,
    topic: &str,
    message: &[u8],
) -> (bool, String) {
    let mut command = Command::new(mosquitto_client("mosquitto_pub"));
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ]);
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
            .replace(
                "listener 1883 127.0.0.1",
                &format!("listener {port} 127.0.0.1"),
            )
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
    // A secret file others can read is refused (issue 13's secrets part).
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_serves_a_bounded_number_of_clients_at_once() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let config = sensorgate::config::Config::load(&path).unwrap();
    let socket = config.gateway.admin_socket_path();
    let gateway = start_gateway(config).await;

    // Clients that connect and say nothing hold their places (for the request timeout).
    let idle: Vec<UnixStream> = (0..sensorgate::admin::server::MAX_CLIENTS)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut extra = UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut extra, b"{\"cmd\":\"queue-stats\"}\n").unwrap();
    extra.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    tokio::task::block_in_place(|| extra.read_to_string(&mut answer)).unwrap();
    assert!(answer.contains("admin clients at once"), "{answer:?}");

    // Once they go, requests are served again.
    drop(idle);
    wait_for(LONG, "a request served", || {
        let request = sensorgate::admin::Request::QueueStats;
        let socket = socket.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(sensorgate::admin::call_daemon(&socket, &request))
                .is_ok()
        })
    })
    .await;
    gateway.shutdown().await.unwrap();
}

/// A gateway process taking payloads up to 256 KiB, with metrics, running as the unit runs it
/// (MALLOC_ARENA_MAX=2: a blocking thread gets no arena of its own), its source connected.
struct BigPayloads {
    path: std::path::PathBuf,
    port: u16,
    daemon: GatewayProcess,
}

impl BigPayloads {
    async fn start(dir: &Path, mqtt: &Mosquitto, kafka: &str, extra_queue: &str) -> Self {
        let path = write_config(dir, &mqtt.url(), kafka, extra_queue);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("max_payload = \"1KiB\"", "max_payload = \"256KiB\"");
        std::fs::write(&path, text).unwrap();
        let port = free_port();
        with_metrics(&path, port);
        let daemon = GatewayProcess::spawn(&path, &dir.join("log"), &[("MALLOC_ARENA_MAX", "2")]);
        let gateway = Self { path, port, daemon };
        wait_for(LONG, "the source to connect", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && gateway.metric("sensorgate_source_up") == 1.0
        })
        .await;
        gateway
    }

    fn metric(&self, name: &str) -> f64 {
        tokio::task::block_in_place(|| metric_sum(&scrape(self.port), name))
    }

    /// Starts measuring the peak resident set from now; returns the resident set now.
    fn reset_peak(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.daemon.pid()), "5").unwrap();
        self.daemon.usage().rss_kib
    }

    /// How far the peak resident set rose above `base` KiB.
    fn growth(&self, base: u64) -> u64 {
        self.daemon.usage().hwm_kib.saturating_sub(base)
    }
}

/// 200 payloads of 200 KiB: 40 MB.
const BIG: usize = 200;
const BIG_BYTES: usize = 200 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_readings_is_stored_and_sent_without_holding_the_burst_in_memory() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let gateway = BigPayloads::start(dir.path(), &mqtt, &kafka.bootstrap_servers(), "").await;

    // Valid readings padded to 200 KiB: they go to the outbox's segments and on to Kafka.
    let pad = "x".repeat(BIG_BYTES);
    let messages: Vec<_> = (0..BIG)
        .map(|seq| {
            let body =
                format!(r#"{{"device_id":"d1","seq":{seq},"temperature_c":20,"pad":"{pad}"}}"#);
            ("sensors/d1/reading".to_owned(), body.into_bytes())
        })
        .collect();
    let base = gateway.reset_peak();
    publish_all(mqtt.port, "sensor-big", messages).await;
    wait_for(LONG, "every reading delivered to Kafka", || {
        gateway.metric("sensorgate_kafka_deliveries_total") == BIG as f64
    })
    .await;
    let growth = gateway.growth(base);
    eprintln!(
        "{BIG} readings of {} KiB grew the daemon's peak RSS by {growth} KiB",
        BIG_BYTES >> 10
    );
    // The way in holds one commit's worth (2 MiB) in the channel and one in the batch; the way
    // out a window of 2 MiB and librdkafka's copy: 10-12 MiB measured. Before that bound the
    // burst was held whole, in the channel, the batch and its frames: 35 MiB measured.
    assert!(
        growth < 24 << 10,
        "the burst grew the daemon's resident set by {growth} KiB (the burst is {} KiB)",
        BIG * (BIG_BYTES >> 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_export_is_streamed_not_built_whole_in_the_daemon_or_the_cli() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    // Dead letters may fill the outbox here: this test is about the admin answer.
    let gateway = BigPayloads::start(
        dir.path(),
        &mqtt,
        &kafka.bootstrap_servers(),
        "dead_letter_share = 1.0",
    )
    .await;

    let junk = vec![b'x'; BIG_BYTES];
    let messages: Vec<_> = (0..BIG)
        .map(|_| ("sensors/d1/reading".to_owned(), junk.clone()))
        .collect();
    publish_all(mqtt.port, "sensor-junk", messages).await;
    wait_for(LONG, "the dead letters stored", || {
        gateway.metric("sensorgate_dlq_entries") == BIG as f64
    })
    .await;
    // Their copies for the DLQ topic pass through the producer's buffers: that peak is not the
    // export's, and overlapping it made this measure anything from 0.5 to 18 MiB.
    wait_for(LONG, "the dead letters' DLQ copies delivered", || {
        gateway.metric("sensorgate_outbox_records") == 0.0
    })
    .await;

    // The peak from now on: the export must not cost the store's size.
    let base = gateway.reset_peak();
    // The CLI streams too: halfway through its output it holds one dead letter, not the
    // answer (it read the whole answer before printing its first line).
    let mut cli = Command::new(gateway_binary())
        .args(["dlq", "export", "--config"])
        .arg(&gateway.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let (mut lines, mut line, mut cli_anon) = (0, Vec::new(), 0);
    while std::io::BufRead::read_until(&mut out, b'\n', &mut line).unwrap() > 0 {
        lines += 1;
        line.clear();
        if lines == BIG / 2 {
            cli_anon = ProcUsage::of(cli.id()).rss_anon_kib;
        }
    }
    let status = cli.wait().unwrap();
    assert!(status.success(), "dlq export failed: {status}");
    assert_eq!(lines, BIG);
    eprintln!("halfway through the export the CLI held {cli_anon} KiB of anonymous memory");
    assert!(
        cli_anon < 16 << 10,
        "the CLI held {cli_anon} KiB halfway through the export (the store holds {} KiB)",
        BIG * (BIG_BYTES >> 10)
    );
    let growth = gateway.growth(base);
    eprintln!("dlq export of {BIG} dead letters grew the daemon's peak RSS by {growth} KiB");
    assert!(
        growth < 16 << 10,
        "the export grew the daemon's resident set by {growth} KiB (the store holds {} KiB)",
        BIG * (BIG_BYTES >> 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_show_and_list_escape_control_characters_of_a_payload() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let gateway = start_gateway(sensorgate::config::Config::load(&path).unwrap()).await;
    // Clears the screen and rings the bell on a terminal that prints it raw.
    let hostile =
        b"\x1b[2J\x1b]0;owned\x07\r{\"device_id\":\"d1\",\"seq\":1,\"temperature_c\":900}".to_vec();
    publish_all(
        mqtt.port,
        "sensor-hostile",
        vec![("sensors/d1/reading".to_owned(), hostile)],
    )
    .await;
    wait_for(LONG, "the dead letter", || {
        gateway.outbox().dlq().size().entries == 1
    })
    .await;
    gateway.shutdown().await.unwrap();

    let run = |args: &[&str]| {
        let out = Command::new(gateway_binary())
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&["dlq", "list", "--json"]);
    let id = serde_json::from_str::<serde_json::Value>(&list).unwrap()[0]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    for text in [run(&["dlq", "show", &id]), run(&["dlq", "list"])] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "raw control characters: {text:?}"
        );
    }
    let show = run(&["dlq", "show", &id]);
    assert!(show.contains(r"\u{1b}[2J\u{1b}]0;owned\u{7}\r{"), "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_a_bounded_number_of_connections_at_once() {
    use std::net::TcpStream;
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    with_metrics(&path, port);
    let gateway = start_gateway(sensorgate::config::Config::load(&path).unwrap()).await;
    let get = || tokio::task::block_in_place(|| http_get(port, "/healthz"));
    assert_eq!(get().0, 200);

    // Connections that send nothing hold their places (up to the 5 s exchange limit).
    let idle: Vec<TcpStream> = (0..sensorgate::telemetry::http::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let (code, body) = get();
    assert_eq!((code, body.as_str()), (503, "busy\n"));

    drop(idle);
    wait_for(LONG, "the endpoint to answer again", || get().0 == 200).await;
    gateway.shutdown().await.unwrap();
}
