//! The operator tools end to end: `simulate` → real mosquitto → a subscriber; `simulate` →
//! mosquitto → gateway → Kafka (mock cluster) → `tail --stats` (the acceptance test of the
//! issue); and the binary's `tail` and `simulate` as an operator runs them.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sensorgate::cli::simulate::{self, SimulateOptions, Summary, Target, Until};
use sensorgate::cli::tail::{self, TailOptions};
use sensorgate::config::Config;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(120);

fn simulate_options(url: &str, devices: u32, count: u64, invalid_ratio: f64) -> SimulateOptions {
    SimulateOptions {
        target: Target::Mqtt {
            url: url.to_owned(),
            client_id: format!("tools-simulate-{}", free_port()),
            topic_prefix: "sensors".to_owned(),
        },
        devices,
        rate: 0.0,
        invalid_ratio,
        until: Until::Count(count),
        seed: Some(42),
        commands: None,
        expect_commands: None,
    }
}

async fn simulate(options: &SimulateOptions) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = simulate::run(options, &mut out, CancellationToken::new())
        .await
        .expect("simulate");
    (summary, String::from_utf8(out).unwrap())
}

/// Subscribes to `filter` at QoS 1 and returns once the broker confirmed the subscription; the
/// returned task collects `expected` publishes (or panics at its deadline).
async fn subscriber(
    port: u16,
    filter: &str,
    expected: usize,
) -> tokio::task::JoinHandle<Vec<(String, Vec<u8>)>> {
    let mut options = MqttOptions::new(format!("tools-sub-{}", free_port()), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no SUBACK");
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
        }
    }
    tokio::spawn(async move {
        let _client = client;
        let mut received = Vec::new();
        while received.len() < expected {
            assert!(
                Instant::now() < deadline,
                "subscriber got only {} of {expected}",
                received.len()
            );
            match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    received.push((p.topic, p.payload.to_vec()));
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
            }
        }
        received
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_publishes_every_reading_per_device_to_mosquitto() {
    let mqtt = Mosquitto::start();
    let (devices, count) = (7u32, 3000u64);
    let collect = subscriber(mqtt.port, "sensors/+/reading", count as usize).await;

    let (summary, out) = simulate(&simulate_options(&mqtt.url(), devices, count, 0.1)).await;
    assert_eq!(summary.sent, count, "{out}");
    assert_eq!(summary.acknowledged, count, "{out}");
    assert!(
        out.contains(&format!("Acknowledged {count} of {count}")),
        "{out}"
    );
    let received = collect.await.unwrap();

    // Round robin: device i publishes on its own topic every `devices`-th reading.
    let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut invalid = [0u64; 3];
    for (topic, payload) in &received {
        *per_topic.entry(topic.clone()).or_default() += 1;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            invalid[2] += 1;
            continue;
        };
        match (v["device_id"].as_str(), v["temperature_c"].is_number()) {
            (None, _) => invalid[1] += 1,
            (Some(_), false) => invalid[0] += 1,
            (Some(device), true) => {
                assert_eq!(topic, &format!("sensors/{device}/reading"));
                seqs.entry(device.to_owned())
                    .or_default()
                    .push(v["seq"].as_u64().unwrap());
            }
        }
    }
    for i in 0..devices {
        let expected = (count - u64::from(i)).div_ceil(u64::from(devices));
        assert_eq!(
            per_topic[&format!("sensors/dev-{:04}/reading", i + 1)],
            expected
        );
    }
    assert_eq!(invalid, summary.invalid);
    assert!(summary.invalid_total() > 0);
    for (device, valid) in &summary.valid {
        let expected: Vec<u64> = (0..*valid).collect();
        assert_eq!(seqs[device], expected, "{device}: seq 0, 1, 2… in order");
    }
}

/// Publishes probes on a topic no route matches until the gateway has received one, so it is
/// subscribed. The probes go to the unrouted DLQ topic, which the test does not read.
async fn wait_until_subscribed(port: u16, gateway: &sensorgate::app::Handle) {
    let deadline = Instant::now() + LONG;
    loop {
        publish_all(
            port,
            "tools-probe",
            vec![("sensors/probe/status".to_owned(), b"{}".to_vec())],
        )
        .await;
        let wait = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait && gateway.stats().snapshot().received_total() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if gateway.stats().snapshot().received_total() > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway never subscribed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_through_the_gateway_and_tail_stats_report_the_same_counts() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let gateway = sensorgate::app::start(Config::load(&path).unwrap()).unwrap();
    wait_until_subscribed(mqtt.port, &gateway).await;

    let (devices, count) = (8u32, 4000u64);
    let (sent, out) = simulate(&simulate_options(&mqtt.url(), devices, count, 0.05)).await;
    assert_eq!(sent.acknowledged, count, "{out}");

    let options = TailOptions {
        brokers: kafka.bootstrap_servers(),
        topics: vec!["sensors.readings".into(), "sensors.readings.DLQ".into()],
        group: format!("tools-test-{}", free_port()),
        from_beginning: true,
        stats: true,
        count: Some(count),
        // Only a safety net: the run ends at `count`.
        idle_exit: Some(LONG),
        stats_every: LONG,
        properties: Vec::new(),
    };
    let mut table = Vec::new();
    let tailed = tail::run(&options, &mut table, CancellationToken::new())
        .await
        .expect("tail");
    let table = String::from_utf8(table).unwrap();
    assert_eq!(tailed.records, count, "{table}");
    let stats = tailed.stats.expect("--stats");

    assert_eq!(stats.devices.len(), devices as usize, "{table}");
    for (device, valid) in &sent.valid {
        let d = &stats.devices[device];
        assert_eq!(d.readings, *valid, "{device}\n{table}");
        assert_eq!(d.seqs.missing(), 0, "{device}\n{table}");
        assert_eq!(d.seqs.duplicates(), 0, "{device}\n{table}");
        assert_eq!(d.seqs.bounds(), Some((0, valid - 1)));
        assert!(d.field("temperature_c").is_some() && d.field("battery_v").is_some());
        assert!(
            table.contains(&format!("{device}  ")),
            "{device} missing from\n{table}"
        );
    }
    let [temperature_string, missing_id, not_json] = sent.invalid;
    assert!(temperature_string > 0 && missing_id > 0 && not_json > 0);
    assert_eq!(
        stats.reasons,
        BTreeMap::from([
            ("schema".to_owned(), temperature_string + missing_id),
            ("not-json".to_owned(), not_json),
        ]),
        "{table}"
    );
    assert_eq!(
        stats.devices.values().map(|d| d.dead_letters).sum::<u64>(),
        temperature_string
    );
    assert_eq!(stats.without_device, missing_id + not_json);
    assert!(table.contains("dead letters by reason:"), "{table}");

    gateway.shutdown().await.unwrap();
}

/// A record to produce: key, payload, headers.
type Produced<'a> = (Option<&'a str>, &'a [u8], &'a [(&'a str, &'a str)]);

fn produce(bootstrap: &str, topic: &str, records: &[Produced<'_>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (key, payload, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in *headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .payload(payload)
            .partition(0)
            .headers(h);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn tail_prints_each_record_on_one_line_with_its_sensorgate_headers() {
    let kafka = kafka(&["t.readings"]);
    let bootstrap = kafka.bootstrap_servers();
    produce(
        &bootstrap,
        "t.readings",
        &[
            (
                Some("dev-0001"),
                br#"{"device_id":"dev-0001","seq":0}"#,
                &[("sensorgate.gateway", "gw-1"), ("sensorgate.seq", "17")],
            ),
            (
                None,
                b"\xff\x00binary",
                &[
                    ("sensorgate.gateway", "gw-1"),
                    ("sensorgate.seq", "18"),
                    ("sensorgate.reason", "not-json"),
                    ("other", "not shown"),
                ],
            ),
            (None, b"two\nlines", &[]),
        ],
    );
    let group = format!("tools-tail-{}", free_port());
    // The mock cluster keeps a group that its last member left in "joining" for the session
    // timeout (less 1 s) before the next member may join; a real broker empties it at once.
    let run = |count: &str| {
        Command::new(env!("CARGO_BIN_EXE_sensorgate"))
            .args(["tail", "--brokers", &bootstrap, "--topic", "t.readings"])
            .args(["--group", &group, "--from-beginning", "--count", count])
            .args(["--idle-exit", "60s", "-X", "session.timeout.ms=6000"])
            .output()
            .unwrap()
    };
    let output = run("3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"t.readings/0@0 key=dev-0001 sensorgate.gateway=gw-1 sensorgate.seq=17 | {"device_id":"dev-0001","seq":0}"#,
            "t.readings/0@1 key=- sensorgate.gateway=gw-1 sensorgate.seq=18 sensorgate.reason=not-json | 0xff0062696e617279",
            r"t.readings/0@2 key=- | two\nlines",
        ]
    );

    // The group committed its offsets: a second run in the same group sees only what is new.
    produce(&bootstrap, "t.readings", &[(None, b"fourth", &[])]);
    let group_again = run("1");
    assert_eq!(
        String::from_utf8_lossy(&group_again.stdout),
        "t.readings/0@3 key=- | fourth\n"
    );
}

#[test]
fn tail_stats_prints_the_table_periodically_and_on_sigint_then_exits_0() {
    let kafka = kafka(&["t.stats"]);
    let bootstrap = kafka.bootstrap_servers();
    produce(
        &bootstrap,
        "t.stats",
        &[
            (
                None,
                br#"{"device_id":"d1","seq":0,"temperature_c":20.5}"#,
                &[],
            ),
            (
                None,
                br#"{"device_id":"d1","seq":2,"temperature_c":21}"#,
                &[],
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let stdout_path = dir.path().join("stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["tail", "--brokers", &bootstrap, "--topic", "t.stats"])
        .args(["--group", "tools-stats", "--from-beginning", "--stats"])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = || std::fs::read_to_string(&stdout_path).unwrap_or_default();
    // The periodic table (every 5 s) shows both records once they are consumed.
    wait_until(LONG, "a table with both records", || {
        stdout().contains("== 2 records")
    });
    let tables_before = stdout().matches("== ").count();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    wait_until(LONG, "tail to exit", || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(0), "{}", stdout());
    let text = stdout();
    assert_eq!(
        text.matches("== ").count(),
        tables_before + 1,
        "a final table: {text}"
    );
    let last = &text[text.rfind("== ").unwrap()..];
    assert!(last.starts_with("== 2 records"), "{last}");
    assert!(last.contains("d1: missing seq 1"), "{last}");
    assert!(last.contains("temperature_c 21 [20.5 .. 21]"), "{last}");
}

#[test]
fn simulate_writes_json_lines_to_a_serial_device_path() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("ttyS-sim");
    // Serial ports exist before anyone writes to them; the simulator never creates the path.
    std::fs::write(&port, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["simulate", "--serial", port.to_str().unwrap()])
        .args(["--devices", "3", "--rate", "0", "--count", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Wrote 30 of 30"), "{stdout}");
    let written = std::fs::read_to_string(&port).unwrap();
    let lines: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    assert_eq!(lines[0]["device_id"], "dev-0001");
    assert_eq!(lines[29]["device_id"], "dev-0003");
    assert_eq!(lines[29]["seq"], 9);

    let missing = dir.path().join("ttyUSB-gone");
    let output = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["simulate", "--serial", missing.to_str().unwrap()])
        .args(["--devices", "1", "--rate", "0", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ttyUSB-gone"));
    assert!(!missing.exists());
}
