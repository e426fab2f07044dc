//! The virtual machine: qemu (TCG) booting the Debian kernel with the test bed's initramfs and
//! the gateway's state directory on its own virtio disk. [`Vm::cut`] is the power cut: SIGKILL
//! to qemu, so whatever the guest had not yet written to its virtual disk is gone.
//!
//! Networking is qemu's user mode: the guest is 10.0.2.15/24 with no default route, so the only
//! address it can reach is 10.0.2.2, which qemu maps to the host's 127.0.0.1. The host reaches
//! the gateway's metrics endpoint through one forward on 127.0.0.1. Nothing else is reachable.
//!
//! The console (the guest's ttyS0) is read line by line: lines from the guest's `/init` start
//! with `powercut:`; the gateway's own log lines are counted by level, and ERROR lines that
//! contain "corrupt" are the opens that found the store corrupt.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What a boot needs.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) qemu: PathBuf,
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
    pub(crate) disk: PathBuf,
    pub(crate) memory_mb: u32,
    /// Host port (on 127.0.0.1) forwarded to the guest's metrics endpoint, port 9898.
    pub(crate) metrics_port: u16,
    /// Where the guest's second serial port (ttyS1: strace output) goes, if anywhere.
    pub(crate) trace_dir: Option<PathBuf>,
}

/// What the console showed during one boot.
#[derive(Debug, Default)]
pub(crate) struct Console {
    /// When the guest's `/init` said it started the gateway (once per start).
    pub(crate) gateway_starts: Vec<Instant>,
    /// `/init`'s lines about a gateway that exited.
    pub(crate) exits: Vec<String>,
    /// The state disk did not mount.
    pub(crate) mount_failed: bool,
    /// The kernel panicked.
    pub(crate) panicked: bool,
    /// The state directory as `/init` listed it before the gateway started.
    pub(crate) state_listing: Vec<String>,
    /// The gateway's ERROR lines.
    pub(crate) errors: Vec<String>,
    /// The gateway's WARN lines.
    pub(crate) warnings: Vec<String>,
    /// ERROR lines containing "corrupt": opens that found the store corrupt.
    pub(crate) corrupt: Vec<String>,
}

pub(crate) struct Vm {
    child: Child,
    pub(crate) booted_at: Instant,
    console: Arc<Mutex<Console>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Vm {
    /// Boots the machine; the console goes to `log` (each line with seconds since boot).
    pub(crate) fn boot(machine: &Machine, boot: usize, log: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(&machine.qemu);
        command
            .args(["-accel", "tcg", "-smp", "1", "-m"])
            .arg(machine.memory_mb.to_string())
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-rtc", "base=utc", "-serial", "stdio"]);
        if let Some(dir) = &machine.trace_dir {
            std::fs::create_dir_all(dir)?;
            command
                .arg("-serial")
                .arg(format!("file:{}/boot-{boot:03}.log", dir.display()));
        }
        command
            .arg("-kernel")
            .arg(&machine.kernel)
            .arg("-initrd")
            .arg(&machine.initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio",
                machine.disk.display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:9898",
                machine.metrics_port
            ))
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", machine.qemu.display()))?;
        let booted_at = Instant::now();
        let stdout = child.stdout.take().context("qemu's stdout")?;
        let console = Arc::new(Mutex::new(Console::default()));
        let mut file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let reader = {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match lines.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = clean(&String::from_utf8_lossy(&raw));
                    let t = booted_at.elapsed().as_secs_f64();
                    let _ = writeln!(file, "[{t:8.3}] {line}");
                    console.lock().expect("lock").take(&line);
                }
            })
        };
        Ok(Self {
            child,
            booted_at,
            console,
            reader: Some(reader),
        })
    }

    pub(crate) fn console(&self) -> MutexGuard<'_, Console> {
        self.console.lock().expect("lock")
    }

    /// Whether qemu exited by itself (a kernel panic with `-no-reboot`, say).
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The power cut: SIGKILL to qemu. Returns what the console showed.
    pub(crate) fn cut(mut self) -> Console {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.console.lock().expect("lock"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    fn take(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("powercut: ") {
            if rest.starts_with("gateway starting") {
                self.gateway_starts.push(Instant::now());
            } else if rest.starts_with("gateway exited") {
                self.exits.push(rest.to_owned());
            } else if rest.starts_with("MOUNT FAILED") {
                self.mount_failed = true;
            } else if let Some(entry) = rest.strip_prefix("state: ") {
                self.state_listing.push(entry.to_owned());
            }
        } else if line.contains("Kernel panic") {
            self.panicked = true;
        } else if let Some(level) = log_level(line) {
            match level {
                "ERROR" => {
                    if line.to_ascii_lowercase().contains("corrupt") {
                        self.corrupt.push(line.to_owned());
                    }
                    self.errors.push(line.to_owned());
                }
                "WARN" => self.warnings.push(line.to_owned()),
                _ => {}
            }
        }
    }
}

/// The level of a gateway log line (`<timestamp> LEVEL target: message`), if it is one.
fn log_level(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let _time = words.next()?;
    words
        .next()
        .filter(|w| matches!(*w, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE"))
}

/// The line without its end, carriage returns and ANSI escape sequences.
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// The gateway's `/readyz` through the forward: `Some(body)` when it answered 200.
pub(crate) fn ready(metrics_port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_classified() {
        let mut c = Console::default();
        for line in [
            "powercut: gateway starting at 4.2s",
            "powercut: state: drwxr-xr-x 2 0 0 4096 outbox",
            "2026-01-01T00:00:00.000000Z ERROR sensorgate::outbox: Outbox database is corrupt: moved",
            "2026-01-01T00:00:00.000000Z ERROR sensorgate::publish: Kafka delivery failed",
            "2026-01-01T00:00:00.000000Z  WARN sensorgate::ingest: MQTT connection failed",
            "2026-01-01T00:00:00.000000Z  INFO sensorgate::app: Starting",
            "powercut: gateway exited with status 1",
        ] {
            c.take(line);
        }
        assert_eq!(c.gateway_starts.len(), 1);
        assert_eq!(c.state_listing.len(), 1);
        assert_eq!(c.errors.len(), 2);
        assert_eq!(c.corrupt.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.exits, ["gateway exited with status 1"]);
    }

    #[test]
    fn escape_sequences_and_line_ends_are_removed() {
        assert_eq!(
            clean("\x1b[2m2026\x1b[0m \x1b[31mERROR\x1b[0m x\r\n"),
            "2026 ERROR x"
        );
    }
}
