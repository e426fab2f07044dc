//! Real TLS, with certificates made here by the `openssl` command: mosquitto with listeners
//! that require a client certificate (mutual TLS), and a Kafka client's handshake against an
//! `openssl s_server` endpoint. A wrong CA, a wrong host name, an expired certificate and a
//! missing client certificate each fail with a clear error in the log, and lose nothing: MQTT
//! readings stay with the broker (nothing was acknowledged), readings bound for Kafka stay in
//! the outbox; both are delivered once the certificates are right. An ignored test does the
//! Kafka cases against a real Kafka-protocol broker (tansu behind socat's TLS);
//! `scripts/kafka-tls.sh` builds tansu and runs it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn readings(from: u64, to: u64) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|seq| ("sensors/tls-1/reading".to_owned(), reading("tls-1", seq)))
        .collect()
}

/// `config`'s text with `url` as its MQTT broker and `lines` added to its `[[mqtt]]` source,
/// written to `path`.
fn mqtt_variant(base: &str, url: &str, lines: &str, path: &Path) {
    let text = base
        .replacen(
            "url = \"mqtt://127.0.0.1:0\"",
            &format!("url = \"{url}\""),
            1,
        )
        .replacen(
            "max_payload = \"1KiB\"",
            &format!("max_payload = \"1KiB\"\n{lines}"),
            1,
        );
    std::fs::write(path, text).unwrap();
}

/// Stops `gateway` with SIGTERM and waits for it.
fn stop(mut gateway: GatewayProcess) {
    gateway.signal("TERM");
    let status = gateway.wait();
    assert!(status.success(), "the gateway exited with {status:?}");
}

/// The sequence numbers read back from `sensors.readings`, once `count` distinct ones arrived.
fn delivered(reader: &mut Reader, count: usize) -> BTreeSet<u64> {
    let seqs = |got: &[Received]| {
        got.iter()
            .filter_map(|r| r.json()["seq"].as_u64())
            .collect::<BTreeSet<u64>>()
    };
    reader.read_until(LIMIT, "every reading in Kafka", |got| {
        seqs(got).len() >= count
    });
    seqs(
        &reader
            .on("sensors.readings")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>(),
    )
}

#[test]
fn mqtt_mutual_tls_works_and_each_bad_certificate_fails_clearly_losing_nothing() {
    if !have_tool("openssl", "mqtt mutual TLS") || !have_tool("mosquitto", "mqtt mutual TLS") {
        return;
    }
    let certs = Certs::generate();
    let broker = TlsMosquitto::start(&certs);
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mqtt://127.0.0.1:0",
        &kafka.bootstrap_servers(),
        "",
    );
    let base = std::fs::read_to_string(&config).unwrap();
    let file = |name: &str| certs.path(name).display().to_string();
    let mutual = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    );
    let good = format!("mqtts://127.0.0.1:{}", broker.good);

    // The session (and its subscription) is made over mutual TLS; then the gateway stops and
    // the sensors publish: the broker holds their readings for it.
    mqtt_variant(&base, &good, &mutual, &config);
    let gateway = GatewayProcess::spawn(&config, &dir.path().join("good.log"), &[]);
    wait_until(LIMIT, "the source to subscribe over mutual TLS", || {
        gateway.log_count("Subscribed") == 1
    });
    stop(gateway);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(publish_all(broker.plain, "tls-sensor", readings(0, 20)));

    let wrong_ca = mutual.replace(&file("ca.pem"), &file("wrong-ca.pem"));
    let no_client_cert = format!("ca_file = \"{}\"\n", file("ca.pem"));
    let system_store_only = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        file("client.pem"),
        file("client.key")
    );
    let cases = [
        (
            "a CA that did not sign the broker's certificate",
            good.clone(),
            wrong_ca,
            "(self-signed certificate in certificate chain)",
        ),
        (
            "the system's CAs, which do not hold the test CA",
            good.clone(),
            system_store_only.clone(),
            "(self-signed certificate in certificate chain)",
        ),
        (
            "no client certificate",
            good.clone(),
            no_client_cert,
            "set cert_file and key_file",
        ),
        (
            "a certificate for another host",
            format!("mqtts://127.0.0.1:{}", broker.wrong_host),
            mutual.clone(),
            "(IP address mismatch)",
        ),
        (
            "an expired certificate",
            format!("mqtts://127.0.0.1:{}", broker.expired),
            mutual.clone(),
            "certificate has expired",
        ),
    ];
    for (i, (what, url, lines, expected)) in cases.iter().enumerate() {
        mqtt_variant(&base, url, lines, &config);
        let gateway = GatewayProcess::spawn(&config, &dir.path().join(format!("bad-{i}.log")), &[]);
        wait_until(LIMIT, what, || {
            gateway.log_count("MQTT connection failed") > 0
        });
        let log = gateway.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("MQTT connection failed"))
            .unwrap();
        assert!(
            line.contains(expected),
            "{what}: expected `{expected}` in: {line}"
        );
        assert!(
            !log.contains("Subscribed") && !log.contains("panicked"),
            "{what}:\n{log}"
        );
        stop(gateway);
    }
    let mut reader = Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]);
    assert!(
        !reader.try_read_until(Duration::from_secs(2), |got| !got.is_empty()),
        "a reading reached Kafka through a bad TLS connection"
    );

    // Right at last, with the CA found in the system's store (SSL_CERT_DIR, beside entries that
    // cannot be read): every reading the broker held is delivered.
    let store = dir.path().join("certs");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(certs.path("ca.pem"), store.join("test-ca.pem")).unwrap();
    let rehash = std::process::Command::new("openssl")
        .arg("rehash")
        .arg(&store)
        .status()
        .unwrap();
    assert!(rehash.success());
    std::fs::write(store.join("garbage.pem"), "not a certificate\n").unwrap();
    std::os::unix::fs::symlink("/nonexistent/ca.pem", store.join("dangling.pem")).unwrap();
    mqtt_variant(&base, &good, &system_store_only, &config);
    let store_env = store.display().to_string();
    let gateway = GatewayProcess::spawn(
        &config,
        &dir.path().join("store.log"),
        &[("SSL_CERT_DIR", &store_env)],
    );
    let seqs = delivered(&mut reader, 20);
    assert_eq!(seqs, (0..20).collect::<BTreeSet<u64>>());
    stop(gateway);
}

/// A Kafka TLS case: what, the server's certificate, `[kafka.properties]`, the gateway's
/// environment, and the TLS alert the server must receive (empty: the handshake succeeds).
type KafkaCase<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, &'a str);

/// Starts the gateway with `config`, waits for its subscription, and publishes readings `from`
/// to `from + 5` to mosquitto at `mqtt_port`.
fn spawn_and_publish(
    config: &Path,
    log: &Path,
    envs: &[(&str, &str)],
    runtime: &tokio::runtime::Runtime,
    mqtt_port: u16,
    from: u64,
) -> GatewayProcess {
    let gateway = GatewayProcess::spawn(config, log, envs);
    wait_until(LIMIT, "the source to subscribe", || {
        gateway.log_count("Subscribed") == 1
    });
    runtime.block_on(publish_all(
        mqtt_port,
        "kafka-tls-sensor",
        readings(from, from + 5),
    ));
    gateway
}

/// `base` with Kafka at `brokers` and `properties` as its `[kafka.properties]`, written to
/// `path`.
fn kafka_variant(base: &str, brokers: &str, properties: &str, path: &Path) {
    let text = base
        .replacen(
            "brokers = \"127.0.0.1:0\"",
            &format!("brokers = \"{brokers}\""),
            1,
        )
        .replacen(
            "message_timeout = \"120s\"",
            &format!("message_timeout = \"120s\"\n[kafka.properties]\n{properties}"),
            1,
        );
    std::fs::write(path, text).unwrap();
}

#[test]
fn kafka_tls_finds_the_system_cas_and_bad_certificates_keep_readings_in_the_outbox() {
    if !have_tool("openssl", "Kafka TLS") || !have_tool("mosquitto", "Kafka TLS") {
        return;
    }
    let certs = Certs::generate();
    let mqtt = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), "127.0.0.1:0", "");
    let base = std::fs::read_to_string(&config).unwrap();
    let file = |name: &str| certs.path(name).display().to_string();
    let ca = |name: &str| {
        format!(
            "\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
            file(name)
        )
    };
    let ca_file = file("ca.pem");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // (what, server certificate, properties, environment, the TLS alert the server receives).
    // librdkafka logs "certificate verify failed" for each bad case (it would tell why only
    // through a verify callback, which rdkafka does not offer); the alert the gateway sends
    // the server names the reason.
    let cases: [KafkaCase; 4] = [
        (
            "wrong CA",
            "server",
            ca("wrong-ca.pem"),
            vec![],
            "alert unknown ca",
        ),
        (
            "wrong host name",
            "wrong-host",
            ca("ca.pem"),
            vec![],
            "alert bad certificate",
        ),
        (
            "expired certificate",
            "expired",
            ca("ca.pem"),
            vec![],
            "alert certificate expired",
        ),
        (
            "the default CA store (no ssl.ca.location)",
            "server",
            "\"security.protocol\" = \"SSL\"\n".to_owned(),
            vec![("SSL_CERT_FILE", ca_file.as_str())],
            "",
        ),
    ];
    let mut published = 0;
    for (i, (what, cert, properties, envs, expected)) in cases.iter().enumerate() {
        let server = TlsServer::start(
            &certs.path(&format!("{cert}.pem")),
            &certs.path(&format!("{cert}.key")),
            &dir.path().join(format!("s_server-{i}.log")),
        );
        kafka_variant(
            &base,
            &format!("127.0.0.1:{}", server.port),
            properties,
            &config,
        );
        let log = dir.path().join(format!("kafka-{i}.log"));
        let gateway = spawn_and_publish(&config, &log, envs, &runtime, mqtt.port, published);
        published += 5;
        if expected.is_empty() {
            // The handshake verified the server against the CA found through OpenSSL's default
            // paths (SSL_CERT_FILE here; /etc/ssl/certs on Debian): s_server saw it complete.
            wait_until(LIMIT, "a verified TLS handshake", || {
                server.output().contains("CIPHER is")
            });
            assert!(
                !gateway.log_text().contains("verify failed"),
                "{}",
                gateway.log_text()
            );
        } else {
            wait_until(LIMIT, what, || {
                gateway
                    .log_text()
                    .contains("certificate verify failed: broker certificate could not be verified")
                    && server.output().contains(expected)
            });
        }
        assert!(!gateway.log_text().contains("panicked"));
        stop(gateway);
    }

    // Everything waited in the outbox: pointed at a (plaintext) Kafka, the gateway delivers it.
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    kafka_variant(&base, &kafka.bootstrap_servers(), "", &config);
    let gateway = GatewayProcess::spawn(&config, &dir.path().join("kafka-plain.log"), &[]);
    let mut reader = Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]);
    let seqs = delivered(&mut reader, published as usize);
    assert_eq!(seqs, (0..published).collect::<BTreeSet<u64>>());
    stop(gateway);
}

/// Creates `topics` (3 partitions) on a TLS broker at `bootstrap` whose CA is `ca`.
fn create_topics(bootstrap: &str, ca: &str, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca)
        .create()
        .expect("an admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("CreateTopics");
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

/// Kafka over TLS to a real Kafka-protocol broker process (tansu, behind socat's TLS: see
/// [`TlsTansu`]). A wrong CA, a wrong host name and an expired certificate each fail the
/// handshake with librdkafka's "certificate verify failed" and deliver nothing: the readings
/// wait in the outbox. Then the broker with the right certificate gets all of them, over TLS.
#[test]
#[ignore = "needs the tansu broker: scripts/kafka-tls.sh builds it and runs this"]
fn kafka_over_tls_to_a_real_broker_delivers_and_a_bad_certificate_keeps_readings_in_the_outbox() {
    let tansu = TlsTansu::binary()
        .expect("SENSORGATE_TANSU names no tansu binary: run scripts/kafka-tls.sh");
    if !have_tool("openssl", "Kafka over TLS to tansu")
        || !have_tool("socat", "Kafka over TLS to tansu")
    {
        return;
    }
    let certs = Certs::generate();
    let mqtt = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), "127.0.0.1:0", "");
    let base = std::fs::read_to_string(&config).unwrap();
    let trusting = |ca: &str| {
        let ca = certs.path(ca).display().to_string();
        format!("\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{ca}\"\n")
    };
    let ca = certs.path("ca.pem").display().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topics = ["sensors.readings", "sensors.readings.DLQ"];
    let port = free_port();

    // (what, the broker's certificate, the CA the gateway trusts).
    let bad = [
        ("wrong CA", "server", "wrong-ca.pem"),
        ("wrong host name", "wrong-host", "ca.pem"),
        ("expired certificate", "expired", "ca.pem"),
    ];
    let mut published = 0;
    for (i, (what, cert, trusted)) in bad.into_iter().enumerate() {
        let broker = TlsTansu::start(
            &tansu,
            &certs.path(&format!("{cert}.pem")),
            &certs.path(&format!("{cert}.key")),
            &dir.path().join(format!("tansu-{i}.log")),
        );
        kafka_variant(&base, &broker.address(), &trusting(trusted), &config);
        with_metrics(&config, port);
        let log = dir.path().join(format!("bad-{i}.log"));
        let gateway = spawn_and_publish(&config, &log, &[], &runtime, mqtt.port, published);
        published += 5;
        let deadline = std::time::Instant::now() + LIMIT;
        while !(gateway.log_text().contains("certificate verify failed")
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric_sum(&scrape(port), "sensorgate_outbox_records") == published as f64)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: timed out waiting for a failed verification and {published} records in \
                 the outbox\ngateway:\n{}\nbroker:\n{}",
                gateway.log_text(),
                std::fs::read_to_string(&broker.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            metric_sum(&scrape(port), "sensorgate_kafka_deliveries_total"),
            0.0,
            "{what}"
        );
        stop(gateway);
    }

    // The broker with the right certificate: everything arrives, over TLS.
    let broker = TlsTansu::start(
        &tansu,
        &certs.path("server.pem"),
        &certs.path("server.key"),
        &dir.path().join("tansu.log"),
    );
    create_topics(&broker.address(), &ca, &topics);
    kafka_variant(&base, &broker.address(), &trusting("ca.pem"), &config);
    with_metrics(&config, port);
    let log = dir.path().join("tls.log");
    let gateway = spawn_and_publish(&config, &log, &[], &runtime, mqtt.port, published);
    published += 5;
    let mut reader = Reader::with_properties(
        &broker.address(),
        &["sensors.readings"],
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
    );
    let seqs = delivered(&mut reader, published as usize);
    assert_eq!(seqs, (0..published).collect::<BTreeSet<u64>>());
    assert!(
        !gateway.log_text().contains("verify failed"),
        "{}",
        gateway.log_text()
    );
    eprintln!(
        "over TLS to tansu: 15 readings waited out a wrong CA, a wrong host name and an expired \
         certificate in the outbox, then all {published} arrived ({} records)",
        reader.records.len()
    );
    stop(gateway);
}
