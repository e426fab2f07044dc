//! librdkafka's mock Kafka cluster in a separate process: [`MockKafka`] starts the
//! `sensorgate-mock-kafka` binary and controls it.
//!
//! # Why a separate process
//! - CPU time: a benchmark measures the gateway's own CPU apart from the broker's.
//! - Reach: a gateway in another process or in a virtual machine connects to it over TCP.
//!
//! # Addresses
//! The mock brokers listen on 127.0.0.1 and advertise `127.0.0.1:<port>` in their metadata, so a
//! client must reach every broker at `127.0.0.1:<the same port>`: from a virtual machine, forward
//! each of [`MockKafka::ports`] from the guest's own loopback to the host (the power-cut test bed
//! does this with socat in the guest).
//!
//! # Protocol (one line each way, UTF-8)
//! The child prints `bootstrap <host:port,...>` once its brokers listen, then reads one
//! [`Command`] per line on stdin and answers each with `ok` or `error <reason>`. It exits on
//! `quit` and on end of file, so it never outlives a parent that dies.
//!
//! | Command                    | Effect |
//! |----------------------------|--------|
//! | `topic NAME PARTITIONS`    | creates a topic (replication factor 1); unknown topics are also auto-created with 4 partitions |
//! | `down`, `up`               | every broker down (connections closed, new ones refused) or up |
//! | `rtt MILLISECONDS`         | every broker delays its responses by this long (0: none) |
//! | `quit`                     | exits |
//!
//! Retention: librdkafka's mock keeps at most 100,000 records or 5 MB per partition and drops
//! the oldest beyond that; read continuously (see [`crate::kafka_reader`]) or use more
//! partitions when a run sends more.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use thiserror::Error;

/// Name of the binary that hosts the mock cluster.
pub const BINARY: &str = "sensorgate-mock-kafka";

/// How long [`MockKafka`] waits for the child to start or to answer a command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong with the mock cluster's process.
#[derive(Debug, Error)]
pub enum MockKafkaError {
    /// The binary could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The child said something the protocol does not allow, or nothing in time.
    #[error("mock Kafka process: {0}")]
    Protocol(String),
    /// The child refused a command.
    #[error("mock Kafka refused `{command}`: {reason}")]
    Refused {
        /// The command line sent.
        command: String,
        /// The child's reason.
        reason: String,
    },
    /// Writing to the child failed (it exited).
    #[error("mock Kafka process is gone: {0}")]
    Gone(std::io::Error),
}

/// A command of the control protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a topic with this many partitions.
    Topic {
        /// Topic name (no whitespace).
        name: String,
        /// Number of partitions.
        partitions: i32,
    },
    /// Every broker down.
    Down,
    /// Every broker up.
    Up,
    /// Every broker delays responses by this long.
    RoundTripTime(Duration),
    /// Exit.
    Quit,
}

impl Command {
    /// Parses one line of the protocol.
    pub fn parse(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["topic", name, partitions] => Ok(Self::Topic {
                name: (*name).to_owned(),
                partitions: partitions
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("bad partition count {partitions:?}"))?,
            }),
            ["down"] => Ok(Self::Down),
            ["up"] => Ok(Self::Up),
            ["rtt", ms] => Ok(Self::RoundTripTime(Duration::from_millis(
                ms.parse().map_err(|_| format!("bad milliseconds {ms:?}"))?,
            ))),
            ["quit"] => Ok(Self::Quit),
            _ => Err(format!("unknown command {line:?}")),
        }
    }

    /// The command as a protocol line (without the newline).
    pub fn line(&self) -> String {
        match self {
            Self::Topic { name, partitions } => format!("topic {name} {partitions}"),
            Self::Down => "down".into(),
            Self::Up => "up".into(),
            Self::RoundTripTime(d) => format!("rtt {}", d.as_millis()),
            Self::Quit => "quit".into(),
        }
    }
}

/// The mock cluster's process; killed on drop.
#[derive(Debug)]
pub struct MockKafka {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    bootstrap: String,
}

impl MockKafka {
    /// The `sensorgate-mock-kafka` binary: `$SENSORGATE_MOCK_KAFKA` if set, else the one next
    /// to the running executable (or one directory up, for test binaries in `target/*/deps`).
    pub fn default_binary() -> PathBuf {
        if let Some(path) = std::env::var_os("SENSORGATE_MOCK_KAFKA") {
            return path.into();
        }
        let exe = std::env::current_exe().unwrap_or_default();
        let dir = exe.parent().unwrap_or(Path::new("."));
        let beside = dir.join(BINARY);
        if beside.exists() {
            return beside;
        }
        dir.parent().map(|d| d.join(BINARY)).unwrap_or(beside)
    }

    /// Starts `binary` with `brokers` brokers and waits until they listen.
    pub fn start(binary: &Path, brokers: u32) -> Result<Self, MockKafkaError> {
        let mut child = Process::new(binary)
            .arg("--brokers")
            .arg(brokers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| MockKafkaError::Spawn {
                path: binary.to_owned(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(MockKafkaError::Protocol("no pipes to the child".into()));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mock = Self {
            child,
            stdin,
            lines,
            bootstrap: String::new(),
        };
        let first = mock.next_line()?;
        mock.bootstrap = first
            .strip_prefix("bootstrap ")
            .ok_or_else(|| {
                MockKafkaError::Protocol(format!("expected `bootstrap …`, got {first:?}"))
            })?
            .to_owned();
        Ok(mock)
    }

    /// The bootstrap servers, `127.0.0.1:<port>,…`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The brokers' ports on 127.0.0.1.
    pub fn ports(&self) -> Vec<u16> {
        self.bootstrap
            .split(',')
            .filter_map(|b| b.rsplit_once(':')?.1.parse().ok())
            .collect()
    }

    /// The child's process id (to measure its CPU time, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `command` and waits for its answer.
    pub fn send(&mut self, command: &Command) -> Result<(), MockKafkaError> {
        let line = command.line();
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(MockKafkaError::Gone)?;
        let reply = self.next_line()?;
        match reply.strip_prefix("error ") {
            None if reply == "ok" => Ok(()),
            None => Err(MockKafkaError::Protocol(format!(
                "unexpected reply {reply:?} to {line:?}"
            ))),
            Some(reason) => Err(MockKafkaError::Refused {
                command: line,
                reason: reason.to_owned(),
            }),
        }
    }

    /// Creates a topic.
    pub fn create_topic(&mut self, name: &str, partitions: i32) -> Result<(), MockKafkaError> {
        self.send(&Command::Topic {
            name: name.to_owned(),
            partitions,
        })
    }

    /// Takes every broker down (`up = false`) or brings them all back.
    pub fn set_brokers_up(&mut self, up: bool) -> Result<(), MockKafkaError> {
        self.send(if up { &Command::Up } else { &Command::Down })
    }

    /// Every broker delays its responses by `delay`.
    pub fn set_round_trip_time(&mut self, delay: Duration) -> Result<(), MockKafkaError> {
        self.send(&Command::RoundTripTime(delay))
    }

    /// Asks the child to exit and waits for it.
    pub fn stop(mut self) -> Result<(), MockKafkaError> {
        self.send(&Command::Quit)?;
        self.child.wait().map_err(MockKafkaError::Gone)?;
        Ok(())
    }

    fn next_line(&mut self) -> Result<String, MockKafkaError> {
        self.lines.recv_timeout(REPLY_TIMEOUT).map_err(|e| {
            MockKafkaError::Protocol(match e {
                mpsc::RecvTimeoutError::Timeout => format!("no answer within {REPLY_TIMEOUT:?}"),
                mpsc::RecvTimeoutError::Disconnected => "the process exited".into(),
            })
        })
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_lines() {
        for command in [
            Command::Topic {
                name: "sensors.readings".into(),
                partitions: 8,
            },
            Command::Down,
            Command::Up,
            Command::RoundTripTime(Duration::from_millis(250)),
            Command::Quit,
        ] {
            assert_eq!(Command::parse(&command.line()), Ok(command));
        }
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        assert!(Command::parse("topic t 0")
            .unwrap_err()
            .contains("partition"));
        assert!(Command::parse("rtt soon")
            .unwrap_err()
            .contains("milliseconds"));
        assert!(Command::parse("reboot").unwrap_err().contains("unknown"));
    }
}
