//! Helpers for end-to-end tests: a real mosquitto broker as a child process, librdkafka's mock
//! Kafka cluster, a Kafka reader, an MQTT sensor, and a gateway configuration writer. Every wait
//! polls a condition against a deadline.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Waits until `cond` holds, panicking with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_until`].
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    PathBuf::from("mosquitto")
}

/// A mosquitto broker on a free port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on a free port; retries with another port if the one picked was taken
    /// between choosing it and mosquitto binding it (another test's broker, say).
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(broker) = Self::try_start() {
                return broker;
            }
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 1000000\nmax_inflight_messages 100\nuser root\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto must be installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Our own child must be the one listening: if it exited, the port was taken.
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    port,
                    child,
                    _dir: dir,
                });
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// librdkafka's in-process mock cluster with the given topics (4 partitions each).
pub fn kafka(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    for topic in topics {
        cluster.create_topic(topic, 4, 1).expect("create topic");
    }
    cluster
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

fn received(m: &rdkafka::message::BorrowedMessage<'_>) -> Received {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Reads every partition of some topics from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Received>,
}

impl Reader {
    pub fn new(bootstrap: &str, topics: &[&str]) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sensorgate-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .unwrap();
                }
            }
        }
        consumer.assign(&list).expect("assign");
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    /// Polls until `done(records)` holds or `limit` passes (then panics with `what`). The
    /// condition is checked whenever the consumer is caught up, or every 1,000 records.
    pub fn read_until(&mut self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; have {} records",
                self.records.len()
            );
            for _ in 0..1000 {
                match self.consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => self.records.push(received(&m)),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        }
    }

    /// Polls for up to `limit` and says whether `done(records)` holds by then.
    pub fn try_read_until(&mut self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(&self.records) && Instant::now() < deadline {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                self.records.push(received(&m));
            }
        }
        done(&self.records)
    }

    pub fn on(&self, topic: &str) -> Vec<&Received> {
        self.records.iter().filter(|r| r.topic == topic).collect()
    }
}

/// The schema used by the tests: device_id, seq and a temperature in range.
pub const READING_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["device_id", "seq", "temperature_c"],
  "properties": {
    "device_id": {"type": "string", "minLength": 1},
    "seq": {"type": "integer", "minimum": 0},
    "temperature_c": {"type": "number", "minimum": -60, "maximum": 125}
  }
}"#;

/// Writes a gateway config (and its schema) into `dir` and returns the config path.
/// `extra_queue` lands in `[queue]`.
pub fn write_config(dir: &Path, mqtt_url: &str, brokers: &str, extra_queue: &str) -> PathBuf {
    let client_id = unique_client_id();
    let sources = format!(
        r#"
[[mqtt]]
name = "local"
url = "{mqtt_url}"
client_id = "{client_id}"
topics = ["sensors/#"]
max_payload = "1KiB"

[[route]]
source = "local"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "sensors.readings"
key = "/device_id"
"#
    );
    write_gateway_config(dir, brokers, extra_queue, &sources)
}

/// An MQTT client id no other gateway of this test binary uses.
fn unique_client_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("sensorgate-test-{}-{n}", std::process::id())
}

/// Writes the schema and a configuration whose common sections (gateway, queue, Kafka, retry,
/// no metrics listener) are followed by `sources` (sources and routes); returns its path.
/// `extra_queue` lands in `[queue]`.
fn write_gateway_config(dir: &Path, brokers: &str, extra_queue: &str, sources: &str) -> PathBuf {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(schemas.join("reading.v1.json"), READING_SCHEMA).unwrap();
    let path = dir.join("sensorgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
id = "test-gw"
state_dir = "state"
schemas_dir = "schemas"

[queue]
max_bytes = "64MiB"
{extra_queue}

[kafka]
brokers = "{brokers}"
message_timeout = "120s"

[metrics]
listen = ""

[retry]
initial = "100ms"
max = "2s"
{sources}
"#
        ),
    )
    .unwrap();
    path
}

/// A valid reading.
pub fn reading(device: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"{device}","seq":{seq},"temperature_c":{}}}"#,
        20.0 + (seq % 10) as f64
    )
    .into_bytes()
}

/// Publishes `messages` (topic, payload) at QoS 1 in order and returns once the broker
/// acknowledged every one of them.
pub async fn publish_all(mqtt_port: u16, client: &str, messages: Vec<(String, Vec<u8>)>) {
    let total = messages.len();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for message in messages {
        tx.send(message).unwrap();
    }
    drop(tx);
    publish_stream(mqtt_port, client, rx, total).await;
}

/// Publishes what arrives on `rx` at QoS 1 and returns once the broker acknowledged `total`.
pub async fn publish_stream(
    mqtt_port: u16,
    client: &str,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    total: usize,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(client, "127.0.0.1", mqtt_port);
    options
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let publisher = tokio::spawn(async move {
        while let Some((topic, payload)) = rx.recv().await {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while acked < total {
        assert!(
            Instant::now() < deadline,
            "broker acknowledged only {acked} of {total}"
        );
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("sensor connection failed: {e}"),
            Err(_) => {}
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Sends the gateway's logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts a gateway in process and waits until its MQTT source `local` has subscribed, so no
/// reading published afterwards can be dropped by the broker for want of a subscriber.
pub async fn start_gateway(config: sensorgate::config::Config) -> sensorgate::app::Handle {
    let gateway = sensorgate::app::start(config).expect("gateway starts");
    wait_for(
        Duration::from_secs(60),
        "the MQTT source to subscribe",
        || gateway.stats().snapshot().sources_up.get("local") == Some(&true),
    )
    .await;
    gateway
}

/// A pseudo-terminal pair made by socat, standing in for a serial device: the sensor writes to
/// `<dir>/ttyA`, the gateway reads `<dir>/ttyB`. Killing socat is an unplug (the reader sees
/// end-of-file); starting it again with the same link names is the device coming back. Killed
/// on drop.
pub struct Socat {
    dir: PathBuf,
    child: Option<Child>,
    sensor: Option<std::fs::File>,
}

impl Socat {
    /// Links in `dir`, not started yet (the device is absent).
    pub fn absent(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            child: None,
            sensor: None,
        }
    }

    /// Starts a pair with links in `dir`.
    pub fn start(dir: &Path) -> Self {
        let mut socat = Self::absent(dir);
        socat.plug();
        socat
    }

    /// The path the gateway opens.
    pub fn device(&self) -> PathBuf {
        self.dir.join("ttyB")
    }

    fn sensor_path(&self) -> PathBuf {
        self.dir.join("ttyA")
    }

    /// Starts socat (again) under the same link names and opens the sensor's end. The sensor's
    /// end stays open as long as socat runs: socat quits when every opener of a pty left.
    pub fn plug(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        assert!(self.child.is_none(), "socat is already running");
        // A link left by a killed socat points to a pty that is gone (or reused): remove it
        // so that waiting for the links waits for the new ones.
        let _ = std::fs::remove_file(self.sensor_path());
        let _ = std::fs::remove_file(self.device());
        let child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.sensor_path().display()
            ))
            .arg(format!("pty,raw,echo=0,link={}", self.device().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "socat's pty links", || {
            self.sensor_path().exists() && self.device().exists()
        });
        let sensor = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(self.sensor_path())
            .expect("open the sensor's end of the pty");
        self.sensor = Some(sensor);
    }

    /// Kills socat without warning, like pulling the USB cable, and removes the links as udev
    /// removes `/dev/serial/by-id/…` (a killed socat leaves them pointing at a pty number
    /// that the next pty, maybe another test's, reuses).
    pub fn unplug(&mut self) {
        self.sensor = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.sensor_path());
        let _ = std::fs::remove_file(self.device());
    }

    /// Whether socat is running.
    pub fn is_plugged(&self) -> bool {
        self.child.is_some()
    }

    /// A handle on the sensor's end for a writer thread; writes fail once socat is gone.
    pub fn sensor(&self) -> std::fs::File {
        self.sensor
            .as_ref()
            .expect("socat is running")
            .try_clone()
            .expect("clone the pty handle")
    }

    /// Writes `bytes` as the sensor (blocks while the gateway does not read).
    pub fn write(&self, bytes: &[u8]) {
        use std::io::Write;
        self.sensor().write_all(bytes).expect("write to the pty");
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// Writes a gateway config for serial tests into `dir` and returns its path: the reading
/// schema, an optional MQTT source `local` with its route to `sensors.readings`, and `sources`
/// (TOML text with `[[serial]]` and `[[route]]` tables) appended as they are. `extra_queue`
/// lands in `[queue]`.
pub fn write_serial_config(
    dir: &Path,
    brokers: &str,
    mqtt_url: Option<&str>,
    extra_queue: &str,
    sources: &str,
) -> PathBuf {
    let mqtt = match mqtt_url {
        Some(url) => format!(
            r#"
[[mqtt]]
name = "local"
url = "{url}"
client_id = "{}"
topics = ["sensors/#"]

[[route]]
source = "local"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "sensors.readings"
key = "/device_id"
"#,
            unique_client_id()
        ),
        None => String::new(),
    };
    write_gateway_config(dir, brokers, extra_queue, &format!("{mqtt}\n{sources}"))
}

/// What the gateway logged, captured for assertions (installed once per test binary by
/// [`capture_logs`]; `RUST_LOG` additionally prints the logs as [`init_logging`] does).
pub mod logs {
    use std::fmt::Debug;
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    /// One log event at INFO or above.
    #[derive(Debug, Clone)]
    pub struct Logged {
        pub level: Level,
        pub source: Option<String>,
        pub message: String,
    }

    static EVENTS: Mutex<Vec<Logged>> = Mutex::new(Vec::new());

    #[derive(Default)]
    struct Fields {
        source: Option<String>,
        message: String,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "source" => self.source = Some(format!("{value:?}")),
                _ => {}
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.message = value.to_owned(),
                "source" => self.source = Some(value.to_owned()),
                _ => {}
            }
        }
    }

    struct Capture;

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            EVENTS.lock().unwrap().push(Logged {
                level: *event.metadata().level(),
                source: fields.source,
                message: fields.message,
            });
        }
    }

    /// Installs the capturing subscriber (once; later calls do nothing).
    pub fn capture_logs() {
        use tracing_subscriber::Layer as _;
        let print = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .with(print)
            .try_init();
    }

    /// Every event logged for source `name` at WARN or ERROR.
    pub fn warnings_of(name: &str) -> Vec<Logged> {
        EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.level <= Level::WARN && e.source.as_deref() == Some(name))
            .cloned()
            .collect()
    }

    /// Every event logged for source `name` at INFO or above.
    pub fn of(name: &str) -> Vec<Logged> {
        EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.source.as_deref() == Some(name))
            .cloned()
            .collect()
    }
}
