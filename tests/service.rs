//! Running as a service: the metrics endpoint, sd_notify (READY, STATUS, WATCHDOG and its
//! withdrawal when the pipeline wedges) and SIGHUP reloads of schemas.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use sensorgate::config::Config;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_test_sent_and_health_endpoints_answer() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    with_metrics(&path, port);
    let gateway = start_gateway(Config::load(&path).unwrap()).await;

    let mut messages: Vec<_> = (0..100)
        .map(|s| ("sensors/d1/reading".to_owned(), reading("d1", s)))
        .collect();
    messages.extend((0..7).map(|_| ("sensors/d1/reading".to_owned(), b"not json".to_vec())));
    messages.extend((0..3).map(|_| ("sensors/d1/other".to_owned(), b"{}".to_vec())));
    publish_all(mqtt.port, "sensor-metrics", messages).await;
    wait_for(LONG, "every record delivered", || {
        gateway.stats().snapshot().delivered == 110
    })
    .await;

    let m = tokio::task::block_in_place(|| scrape(port));
    assert_eq!(
        metric(
            &m,
            "sensorgate_readings_received_total",
            Some(("source", "local"))
        ),
        110.0
    );
    assert_eq!(metric(&m, "sensorgate_readings_valid_total", None), 100.0);
    assert_eq!(
        metric(
            &m,
            "sensorgate_dead_letters_total",
            Some(("reason", "not-json"))
        ),
        7.0
    );
    assert_eq!(
        metric(
            &m,
            "sensorgate_dead_letters_total",
            Some(("reason", "no-route"))
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "sensorgate_kafka_deliveries_total",
            Some(("topic", "sensors.readings"))
        ),
        100.0
    );
    assert_eq!(
        metric(
            &m,
            "sensorgate_kafka_deliveries_total",
            Some(("topic", "sensors.readings.DLQ"))
        ),
        7.0
    );
    assert_eq!(metric(&m, "sensorgate_outbox_records", None), 0.0);
    assert_eq!(metric(&m, "sensorgate_dlq_entries", None), 10.0);
    assert_eq!(
        metric(&m, "sensorgate_source_up", Some(("source", "local"))),
        1.0
    );
    assert_eq!(metric(&m, "sensorgate_kafka_up", None), 1.0);
    let count = m
        .samples
        .iter()
        .find(|s| s.metric == "sensorgate_kafka_publish_latency_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            other => panic!("{other:?}"),
        })
        .unwrap();
    assert_eq!(count, 110.0, "one latency observation per delivery");

    let (code, body) = tokio::task::block_in_place(|| http_get(port, "/healthz"));
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = tokio::task::block_in_place(|| http_get(port, "/readyz"));
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["kafka"], "up");

    // Kafka down is reported, but does not make the gateway unready: it buffers.
    kafka.broker_down(-1).unwrap();
    wait_for(LONG, "Kafka down", || gateway.stats().snapshot().kafka_down).await;
    let (code, body) = tokio::task::block_in_place(|| http_get(port, "/readyz"));
    assert_eq!(code, 200);
    assert!(body.contains("\"kafka\":\"down\""), "{body}");
    let (code, _) = tokio::task::block_in_place(|| http_get(port, "/nope"));
    assert_eq!(code, 404);
    kafka.broker_up(-1).unwrap();
    gateway.shutdown().await.unwrap();
}

/// Reads notifications until `want` matches one, returning everything read.
fn recv_until(socket: &UnixDatagram, limit: Duration, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no matching notification; got {seen:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(&want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn sd_notify_reports_ready_status_and_watchdog_and_the_watchdog_stops_when_wedged() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stall = dir.path().join("stall");
    let log = dir.path().join("log");
    let _daemon = GatewayProcess::spawn(
        &path,
        &log,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
            ("SENSORGATE_TEST_STALL_FILE", stall.to_str().unwrap()),
        ],
    );
    recv_until(&socket, LONG, |l| l == "READY=1");
    recv_until(&socket, LONG, |l| l.starts_with("STATUS=outbox 0 records"));
    recv_until(&socket, LONG, |l| l == "WATCHDOG=1");
    recv_until(&socket, LONG, |l| l == "WATCHDOG=1");

    // Wedge the publisher: the watchdog pings must stop.
    std::fs::write(&stall, b"").unwrap();
    wait_until(LONG, "the daemon to notice the stall", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Pipeline task stalled")
    });
    // Drain what was sent before the stall was noticed, then expect silence from the watchdog
    // for several of its intervals.
    while socket.recv(&mut [0u8; 4096]).is_ok() {}
    let quiet_until = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    while Instant::now() < quiet_until {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                !msg.contains("WATCHDOG=1"),
                "watchdog pinged while the publisher was wedged; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_fixed_schema_and_keeps_the_old_one_when_the_new_is_broken() {
    let mqtt = Mosquitto::start();
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

    // 200 °C breaks the schema (maximum 125).
    let hot = || {
        vec![(
            "sensors/d1/reading".to_owned(),
            br#"{"device_id":"d1","seq":1,"temperature_c":200}"#.to_vec(),
        )]
    };
    publish_all(mqtt.port, "sensor-hup", hot()).await;
    wait_for(LONG, "a schema dead letter", || {
        metric("sensorgate_dead_letters_total", Some(("reason", "schema"))) == 1.0
    })
    .await;

    // The operator widens the range and reloads: the same reading now passes.
    let schema = dir.path().join("schemas/reading.v1.json");
    std::fs::write(
        &schema,
        READING_SCHEMA.replace("\"maximum\": 125", "\"maximum\": 300"),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_for(LONG, "a successful reload", || {
        metric("sensorgate_schema_reloads_total", Some(("result", "ok"))) == 1.0
    })
    .await;
    publish_all(mqtt.port, "sensor-hup", hot()).await;
    wait_for(LONG, "the reading to pass", || {
        metric("sensorgate_readings_valid_total", None) == 1.0
    })
    .await;

    // A broken schema is refused; the previous one stays in force.
    std::fs::write(&schema, "{ \"type\": ").unwrap();
    daemon.signal("HUP");
    wait_for(LONG, "a failed reload", || {
        metric(
            "sensorgate_schema_reloads_total",
            Some(("result", "failed")),
        ) == 1.0
    })
    .await;
    publish_all(mqtt.port, "sensor-hup", hot()).await;
    wait_for(LONG, "the reading to pass under the kept schema", || {
        metric("sensorgate_readings_valid_total", None) == 2.0
    })
    .await;
    assert_eq!(
        metric("sensorgate_dead_letters_total", Some(("reason", "schema"))),
        1.0
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("Reload failed; keeping the previous routes and schemas"));
}
