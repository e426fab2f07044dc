//! The MQTT broker of the test bed: mosquitto on the host, on 127.0.0.1, with persistence on and
//! `max_queued_messages` raised (the default, 1000, would drop readings queued for the gateway's
//! session while the virtual machine is off).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub(crate) struct Mosquitto {
    pub(crate) port: u16,
    child: Child,
}

impl Mosquitto {
    /// Starts mosquitto on `port` with its persistence and log in `dir`; `debug`: log every
    /// packet (PUBLISH, PUBACK with their packet ids).
    pub(crate) fn start(binary: &Path, dir: &Path, port: u16, debug: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("mosquitto.conf");
        // As root, mosquitto drops to the user `mosquitto`, who could not write `dir`.
        let user = if is_root() { "user root\n" } else { "" };
        let debug = if debug { "log_type debug\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 persistence true\npersistence_location {}/\nautosave_interval 60\n\
                 max_queued_messages 1000000\n{user}\
                 log_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\n{debug}",
                dir.display(),
                dir.join("mosquitto.log").display()
            ),
        )?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited ({status}); see {}",
                    dir.join("mosquitto.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("mosquitto did not listen on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { port, child })
    }

    /// Lines of mosquitto's log that say it dropped messages.
    pub(crate) fn dropped_warnings(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("mosquitto.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("dropped"))
            .count()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of `candidates` that exists, else the bare name (found on `PATH`).
pub(crate) fn find_binary(name: &str, candidates: &[&str]) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}
