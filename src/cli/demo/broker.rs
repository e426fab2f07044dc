//! The demo's MQTT broker: rumqttd on a free port of 127.0.0.1.
//!
//! Built with the `demo` feature (the default in a source checkout), the broker runs inside this
//! process. The Debian package builds the daemon without it, to keep rumqttd and its
//! dependencies out of `/usr/bin/sensorgate`, and ships the broker as the helper program
//! [`HELPER`] (built with the feature), which [`start`] runs as a child process. It is looked
//! for beside this executable and in `../lib/sensorgate/` (the package installs
//! `/usr/lib/sensorgate/sensorgate-demo-broker`); [`HELPER_ENV`] names another program (the
//! qemu check runs it through `qemu-*-static`). The helper exits when its standard input
//! closes, so it never outlives the demo, not even a killed one.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DemoError, START_LIMIT};

/// The helper program's file name.
pub const HELPER: &str = "sensorgate-demo-broker";
/// Environment variable naming the helper program to run instead of looking for [`HELPER`].
pub const HELPER_ENV: &str = "SENSORGATE_DEMO_BROKER";

/// A running broker; a child process is stopped on drop (rumqttd inside this process has no
/// stop call: its threads live until the process ends).
#[derive(Debug)]
pub struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What runs the broker, for the demo's first line.
    pub fn describe(&self) -> String {
        match &self.child {
            Some(child) => format!("rumqttd in {HELPER}, pid {}", child.id()),
            None => "rumqttd, in this process".to_owned(),
        }
    }

    /// Runs `program` (a [`HELPER`]) as the broker.
    pub fn spawn(program: &Path) -> Result<Self, DemoError> {
        retry_ports(|addr| {
            let mut child = Command::new(program)
                .arg("--listen")
                .arg(addr.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| DemoError::Broker(format!("cannot run {}: {e}", program.display())))?;
            let outcome = wait_listening(addr, || match child.try_wait() {
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    Some(format!(
                        "{} exited ({status}): {}",
                        program.display(),
                        stderr.trim()
                    ))
                }
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            });
            let broker = Self {
                port: addr.port(),
                child: Some(child),
            };
            // On failure, dropping `broker` stops the child.
            outcome.map(|()| broker)
        })
    }

    /// Runs rumqttd on a thread of this process.
    #[cfg(feature = "demo")]
    pub fn in_process() -> Result<Self, DemoError> {
        retry_ports(|addr| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("demo-mqtt-broker".into())
                .spawn(move || {
                    // Returns only when the broker cannot run.
                    let outcome = rumqttd::Broker::new(config(addr)).start();
                    let _ = tx.send(format!("{outcome:?}"));
                })
                .map_err(|e| DemoError::Broker(e.to_string()))?;
            wait_listening(addr, || rx.try_recv().ok())?;
            Ok(Self {
                port: addr.port(),
                child: None,
            })
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the demo's broker: the program [`HELPER_ENV`] names if set; else in this process
/// when built with the `demo` feature; else the [`HELPER`] found by [`find_helper`].
pub fn start() -> Result<Broker, DemoError> {
    if let Some(program) = std::env::var_os(HELPER_ENV) {
        return Broker::spawn(Path::new(&program));
    }
    #[cfg(feature = "demo")]
    {
        Broker::in_process()
    }
    #[cfg(not(feature = "demo"))]
    {
        let candidates = helper_candidates();
        match candidates.iter().find(|p| p.is_file()) {
            Some(program) => Broker::spawn(program),
            None => Err(DemoError::Broker(format!(
                "{HELPER} is not installed (looked for {}); the Debian package installs it, \
                 and `cargo run --release -- demo` in a source checkout builds the broker in",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }
}

/// Where [`HELPER`] may be: beside this executable, then in `../lib/sensorgate/`.
pub fn helper_candidates() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    vec![dir.join(HELPER), dir.join("../lib/sensorgate").join(HELPER)]
}

/// The helper program's work: runs the broker on `listen` until standard input closes (the
/// demo ended or died). Returns an error only when the broker cannot run.
#[cfg(feature = "demo")]
pub fn serve(listen: SocketAddr) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let broker_tx = tx.clone();
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let outcome = rumqttd::Broker::new(config(listen)).start();
            let _ = broker_tx.send(Err(format!("rumqttd on {listen}: {outcome:?}")));
        })
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(Ok(()));
        })
        .map_err(|e| e.to_string())?;
    rx.recv().unwrap_or(Ok(()))
}

/// Tries `attempt` on a few free ports: a free port can be taken between choosing and binding it.
fn retry_ports(
    mut attempt: impl FnMut(SocketAddr) -> Result<Broker, DemoError>,
) -> Result<Broker, DemoError> {
    let mut last = None;
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| DemoError::Broker(format!("no free port: {e}")))?;
        match attempt(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(broker) => return Ok(broker),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| DemoError::Broker("no attempt made".into())))
}

/// Waits until `addr` accepts connections, or `failed` reports why it never will.
fn wait_listening(
    addr: SocketAddr,
    mut failed: impl FnMut() -> Option<String>,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(why) = failed() {
            return Err(DemoError::Broker(why));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DemoError::Broker(format!(
        "not listening on {addr} after {} s",
        START_LIMIT.as_secs()
    )))
}

#[cfg(feature = "demo")]
fn config(listen: SocketAddr) -> rumqttd::Config {
    use std::collections::HashMap;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 1 << 20,
        // Unacknowledged QoS 1 publishes per connection, both ways: the simulator keeps up to
        // 1,000 in flight, and the gateway acknowledges only after its group commit.
        max_inflight_count: usize::from(crate::cli::simulate::INFLIGHT) * 2,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 1000,
            // The broker keeps a commit log per topic in memory: 10 segments of 10 MiB.
            max_segment_size: 10 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("demo".to_owned(), server)])),
        ..Default::default()
    }
}
