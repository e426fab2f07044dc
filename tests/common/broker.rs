//! mosquitto as a child process on a free port, and an MQTT sensor that publishes at QoS 1.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

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
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on a free port; retries with another port if the one picked was taken
    /// between choosing it and mosquitto binding it (another test's broker, say).
    pub fn start() -> Self {
        Self::start_with_inflight(100)
    }

    /// Like [`Mosquitto::start`] with `max_inflight_messages` set to `inflight` (0: no limit):
    /// how many unacknowledged QoS 1 messages the broker sends one subscriber at a time.
    pub fn start_with_inflight(inflight: u32) -> Self {
        for _ in 0..5 {
            if let Some(broker) = Self::try_start(inflight) {
                return broker;
            }
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    /// Like [`Mosquitto::start`] with `persistence true` in a directory of its own: sessions
    /// and queued messages survive [`Mosquitto::stop`] and [`Mosquitto::restart`].
    pub fn start_persistent() -> Self {
        for _ in 0..5 {
            if let Some(broker) = Self::try_start_with(100, true) {
                return broker;
            }
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    /// Like [`Mosquitto::start`] with `settings` (mosquitto.conf lines) added.
    pub fn start_with_settings(settings: &str) -> Self {
        for _ in 0..5 {
            if let Some(broker) = Self::try_start_full(100, false, settings) {
                return broker;
            }
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    /// mosquitto with the whole configuration `conf(port)` makes for the port it is given.
    pub fn start_with_conf(conf: impl Fn(u16) -> String) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let path = dir.path().join("mosquitto.conf");
            std::fs::write(&path, conf(port)).unwrap();
            if let Some(child) = spawn_mosquitto(&path, port) {
                return Self {
                    port,
                    child,
                    conf: path,
                    _dir: dir,
                };
            }
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    fn try_start(inflight: u32) -> Option<Self> {
        Self::try_start_with(inflight, false)
    }

    fn try_start_with(inflight: u32, persistent: bool) -> Option<Self> {
        Self::try_start_full(inflight, persistent, "")
    }

    fn try_start_full(inflight: u32, persistent: bool, settings: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let persistence = if persistent {
            format!(
                "persistence true\npersistence_location {}/\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 max_queued_messages 1000000\nmax_inflight_messages {inflight}\nuser root\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n{settings}\n"
            ),
        )
        .unwrap();
        let child = spawn_mosquitto(&conf, port)?;
        Some(Self {
            port,
            child,
            conf,
            _dir: dir,
        })
    }

    /// Stops the broker cleanly (SIGTERM: a persistent one saves its database) and waits.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port with the same configuration.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn_mosquitto(&self.conf, self.port) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not restart on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Starts mosquitto with `conf` and waits until it listens on `port`; `None` if it exited (the
/// port was taken).
fn spawn_mosquitto(conf: &Path, port: u16) -> Option<Child> {
    let mut child = Command::new(mosquitto_binary())
        .arg("-c")
        .arg(conf)
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
            return Some(child);
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    total: usize,
) {
    publish_window(mqtt_port, client, rx, total, 100).await;
}

/// Like [`publish_all`], with up to `window` publishes awaiting their PUBACK (for load).
pub async fn publish_all_fast(
    mqtt_port: u16,
    client: &str,
    messages: Vec<(String, Vec<u8>)>,
    window: u16,
) {
    let total = messages.len();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for message in messages {
        tx.send(message).unwrap();
    }
    drop(tx);
    publish_window(mqtt_port, client, rx, total, window).await;
}

async fn publish_window(
    mqtt_port: u16,
    client: &str,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    total: usize,
    window: u16,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(client, "127.0.0.1", mqtt_port);
    options
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(window);
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
    let deadline = Instant::now() + Duration::from_secs(600);
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
