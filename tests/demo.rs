//! `sensorgate demo` in process, shortened: every count of the summary must agree with the
//! others and with what a consumer read back from Kafka, both ways (readings to Kafka, commands
//! from Kafka to the simulated devices). And the demo's broker helper, which the Debian package
//! ships because its daemon is built without the broker.

use std::time::Duration;

use sensorgate::cli::demo::commands::PER_DEVICE;
use sensorgate::cli::demo::{
    self, DemoOptions, COMMANDS_DLQ_TOPIC, READINGS_DLQ_TOPIC, READINGS_TOPIC, STATUS_MESSAGES,
    UNROUTED_DLQ_TOPIC,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_delivers_everything_and_reads_back_consistent_counts() {
    let options = DemoOptions {
        duration: Duration::from_secs(6),
        devices: 5,
        rate: 200.0,
        invalid_ratio: 0.1,
        outage: Duration::from_secs(2),
        seed: Some(42),
        progress_every: Duration::from_secs(1),
    };
    let mut out = Vec::new();
    let summary = demo::run(&options, &mut out).await.expect("demo runs");
    let out = String::from_utf8(out).unwrap();

    assert!(summary.consistent(), "{:?}\n{out}", summary.checks());
    assert!(out.contains("consistent: yes"), "{out}");
    assert!(
        out.contains("Kafka goes down") && out.contains("Kafka is back"),
        "{out}"
    );

    let dead = summary.dead_letters_total();
    assert!(summary.sent > 500, "{out}");
    assert_eq!(summary.acknowledged, summary.sent, "{out}");
    assert_eq!(summary.status_messages, STATUS_MESSAGES);
    assert_eq!(summary.serial_skipped, None, "{out}");
    assert!(
        summary.serial_lines > 0,
        "the serial sensor wrote lines: {out}"
    );
    assert_eq!(
        summary.received,
        summary.sent + STATUS_MESSAGES + summary.serial_lines,
        "{out}"
    );
    assert_eq!(summary.received, summary.valid + dead, "{out}");
    // The round trip: every valid command reached its device; one invalid and one expired
    // command are dead letters, in their DLQ topic too.
    assert_eq!(summary.commands_valid, 5 * PER_DEVICE);
    assert_eq!(summary.commands_produced, summary.commands_valid + 2);
    assert!(summary.commands_received >= summary.commands_valid, "{out}");
    assert_eq!(
        summary.command_dead_letters,
        [("expired".to_owned(), 1), ("schema".to_owned(), 1)].into(),
        "{out}"
    );
    assert_eq!(summary.read(COMMANDS_DLQ_TOPIC), 2, "{out}");
    assert!(out.contains("commands produced into"), "{out}");
    assert_eq!(summary.delivered, summary.received + 2, "{out}");
    assert_eq!(summary.read(READINGS_TOPIC), summary.valid, "{out}");
    assert_eq!(
        summary.read(READINGS_DLQ_TOPIC) + summary.read(UNROUTED_DLQ_TOPIC),
        dead,
        "{out}"
    );
    assert_eq!(summary.read(UNROUTED_DLQ_TOPIC), STATUS_MESSAGES, "{out}");
    // Every tenth serial line is out of range on purpose.
    assert_eq!(
        summary.sent_invalid + summary.serial_lines / 10,
        summary.read(READINGS_DLQ_TOPIC),
        "{out}"
    );
    assert!(summary.peak_outbox_during_outage > 0, "{out}");
}

/// The broker helper the Debian package ships (`sensorgate demo` runs it when the daemon is
/// built without the `demo` feature): a real MQTT client connects to it.
#[tokio::test]
async fn the_broker_helper_accepts_mqtt_clients() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let helper = std::path::Path::new(env!("CARGO_BIN_EXE_sensorgate-demo-broker"));
    let broker = demo::broker::Broker::spawn(helper).expect("the helper starts");
    assert!(
        broker.describe().contains("sensorgate-demo-broker"),
        "{}",
        broker.describe()
    );
    let (_client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("probe", "127.0.0.1", broker.port()), 8);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("a CONNACK within 10 s")
    .expect("the connection succeeds");
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
}

/// The helper ends when its standard input closes, so it cannot outlive a demo that was killed.
#[test]
fn the_broker_helper_exits_when_its_input_closes() {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sensorgate-demo-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the helper never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the helper still runs 10 s after its input closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
