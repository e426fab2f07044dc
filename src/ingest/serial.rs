//! Serial source (tokio-serial): one reading per line from a USB serial adapter or a UART.
//!
//! The task opens the port, reads, frames lines ([`super::frame`]) and submits each one,
//! classified, to the committer. A serial line cannot be acknowledged, so there is nothing to
//! wait for: a line is submitted as soon as it is framed (`ack: None`) and is durable with the
//! next group commit. Whatever the device sends while the port is closed is lost.
//!
//! When the device goes away (end of file or an I/O error: USB unplug, adapter reset) the task
//! logs it once, drops the port and reopens it by path with backoff (100 ms doubling up to
//! `reconnect_max`) until the device is back; an absent device at start-up is the same loop,
//! so the gateway starts without it. A hung-up tty stays readable and returns 0 bytes forever,
//! so the port must be dropped, never read again. The backoff starts over only after the port
//! stayed open for [`STABLE`], so a device that keeps dropping out is not reopened in a tight
//! loop. Opening runs on the blocking pool: `open(2)` and `tcsetattr` on a USB adapter can
//! take a while.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::time::{sleep, Instant};
use tokio_serial::{SerialPortBuilder, SerialStream};
use tokio_util::sync::CancellationToken;

use super::frame::{Decoder, Line, LineSplitter};
use crate::backoff::Backoff;
use crate::config::{FlowControl, Parity, SerialConfig, SERIAL_RECONNECT_MIN};
use crate::outbox::committer::{Request, Submission, Submitter};
use crate::pipeline::{Classifier, Framed};
use crate::record::{now_ms, Origin, Reading, Reason, Violation};
use crate::telemetry::{PortStats, Stats};

/// A port that stayed open this long was working: the reopen backoff starts over.
pub const STABLE: Duration = Duration::from_secs(10);

/// Bytes asked for per read.
const READ_CHUNK: usize = 8 << 10;

/// Errors of a serial source's configuration (device errors are retried, never returned).
#[derive(Debug, Error)]
pub enum SerialError {
    /// The device path is not UTF-8 (the serial library takes text).
    #[error("device path {0:?} is not valid UTF-8")]
    Device(std::path::PathBuf),
    /// A `columns` entry does not parse.
    #[error("columns: {0}")]
    Columns(String),
}

/// Why reading from an open port ended.
#[derive(Debug)]
enum End {
    /// Shutdown was requested.
    Stopped,
    /// The committer is gone (the gateway is stopping).
    PipelineClosed,
    /// The device closed the stream (a pty whose other end went away, some USB drivers).
    Eof,
    /// A read failed (USB unplug: EIO).
    Failed(std::io::Error),
}

/// What the log already said about the device being unavailable, so an outage is logged once.
#[derive(Debug, PartialEq)]
enum Announced {
    Nothing,
    /// "The device went away."
    Lost,
    /// "Cannot open the device" with this error kind.
    OpenFailed(tokio_serial::ErrorKind),
}

/// One `[[serial]]` source.
#[derive(Debug)]
pub struct SerialSource {
    config: SerialConfig,
    name: Arc<str>,
    device: String,
    decoder: Decoder,
    classifier: Arc<Classifier>,
    submit: Submitter,
    port: Arc<PortStats>,
}

impl SerialSource {
    /// A source that classifies with `classifier`, submits to `submit` and counts in
    /// `stats.serial_port(name)`.
    pub fn new(
        config: SerialConfig,
        classifier: Arc<Classifier>,
        submit: Submitter,
        stats: &Stats,
    ) -> Result<Self, SerialError> {
        let device = config
            .device
            .to_str()
            .ok_or_else(|| SerialError::Device(config.device.clone()))?
            .to_owned();
        let decoder = Decoder::for_source(&config).map_err(SerialError::Columns)?;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            port: stats.serial_port(&config.name),
            device,
            decoder,
            classifier,
            submit,
            config,
        })
    }

    fn builder(&self) -> SerialPortBuilder {
        use tokio_serial::{DataBits, StopBits};
        let c = &self.config;
        tokio_serial::new(self.device.as_str(), c.baud)
            .data_bits(match c.data_bits {
                5 => DataBits::Five,
                6 => DataBits::Six,
                7 => DataBits::Seven,
                _ => DataBits::Eight,
            })
            .parity(match c.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Odd => tokio_serial::Parity::Odd,
                Parity::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(match c.stop_bits {
                2 => StopBits::Two,
                _ => StopBits::One,
            })
            .flow_control(match c.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
    }

    async fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let builder = self.builder();
        let port = tokio::task::spawn_blocking(move || builder.open_native())
            .await
            .map_err(|e| {
                tokio_serial::Error::new(tokio_serial::ErrorKind::Unknown, e.to_string())
            })??;
        SerialStream::try_from(port)
    }

    /// Reads until `stop` is cancelled, reopening the device whenever it goes away. Device
    /// errors never end the task.
    pub async fn run(self, stop: CancellationToken) {
        let name = self.name.clone();
        let device = self.device.as_str();
        let mut splitter = LineSplitter::new(self.config.max_line_bytes.bytes() as usize);
        let mut backoff = Backoff::doubling(SERIAL_RECONNECT_MIN, self.config.reconnect_max);
        let mut was_open = false;
        let mut failures = 0u32;
        let mut announced = Announced::Nothing;
        let mut down_since: Option<Instant> = None;
        tracing::info!(source = %name, device, baud = self.config.baud, format = self.config.format.as_str(), "Opening serial port");

        loop {
            let opened = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                opened = self.open() => opened,
            };
            match opened {
                Ok(port) => {
                    if was_open || failures > 0 {
                        self.port.reconnected();
                        tracing::info!(
                            source = %name,
                            device,
                            attempts = failures + 1,
                            down_ms = down_since.map_or(0, |t| t.elapsed().as_millis() as u64),
                            "Serial device is back; reading again"
                        );
                    } else {
                        tracing::info!(source = %name, device, "Serial port open");
                    }
                    failures = 0;
                    self.port.set_open(true);
                    let opened_at = Instant::now();
                    let mut end = self.pump(port, &mut splitter, &stop).await;
                    self.port.set_open(false);
                    // The device went away (or we stop) mid-line: the partial line entered the
                    // gateway, so it is classified like any other (usually a dead letter).
                    if let Some(line) = splitter.finish() {
                        if !matches!(end, End::PipelineClosed) && !self.submit_line(line).await {
                            end = End::PipelineClosed;
                        }
                    }
                    match end {
                        End::Stopped | End::PipelineClosed => break,
                        End::Eof => {
                            tracing::warn!(source = %name, device, "Serial device closed the connection (unplugged?); reopening with backoff")
                        }
                        End::Failed(e) => {
                            tracing::warn!(source = %name, device, error = %e, "Serial device failed (unplugged?); reopening with backoff")
                        }
                    }
                    was_open = true;
                    announced = Announced::Lost;
                    down_since = Some(Instant::now());
                    if opened_at.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    failures += 1;
                    down_since.get_or_insert_with(Instant::now);
                    let kind = e.kind();
                    match announced {
                        Announced::Lost => {
                            tracing::debug!(source = %name, device, error = %e, attempts = failures, "Serial device still away");
                            announced = Announced::OpenFailed(kind);
                        }
                        Announced::OpenFailed(k) if k == kind => {
                            tracing::debug!(source = %name, device, error = %e, attempts = failures, "Serial device still away");
                        }
                        _ => {
                            let hint = match kind {
                                tokio_serial::ErrorKind::Io(
                                    std::io::ErrorKind::PermissionDenied,
                                ) => "the gateway's user needs to be in group dialout",
                                tokio_serial::ErrorKind::NoDevice => {
                                    "another program may hold the port"
                                }
                                _ => "it will be used as soon as it appears",
                            };
                            tracing::warn!(source = %name, device, error = %e, hint, "Cannot open serial device; retrying with backoff");
                            announced = Announced::OpenFailed(kind);
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep(backoff.next_delay()) => {}
            }
        }
        tracing::info!(source = %name, device, "Serial source stopped");
    }

    /// Reads and submits lines until the port or the pipeline ends, or `stop`.
    async fn pump(
        &self,
        mut port: SerialStream,
        splitter: &mut LineSplitter,
        stop: &CancellationToken,
    ) -> End {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut lines = Vec::new();
        loop {
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => return End::Stopped,
                read = port.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) => return End::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return End::Failed(e),
            };
            self.port.read(n);
            splitter.push(&buf[..n], |line| lines.push(line));
            for line in lines.drain(..) {
                if !self.submit_line(line).await {
                    return End::PipelineClosed;
                }
            }
        }
    }

    /// Decodes, classifies and submits one line; false when the committer is gone.
    async fn submit_line(&self, line: Line) -> bool {
        let (payload, framed) = match line {
            Line::Complete(bytes) => {
                let framed = Framed::line(&self.decoder, &bytes);
                (bytes, framed)
            }
            Line::TooLong { head, len } => (head, self.too_long(len)),
        };
        let reading = Reading {
            source: self.name.clone(),
            origin: Origin::Serial {
                port: self.device.clone(),
            },
            payload,
            received_at_ms: now_ms(),
        };
        let record = self.classifier.classify_framed(reading, framed);
        self.port.line(record.meta.dead_letter.is_some());
        self.submit
            .send(Request::Record(Submission { record, ack: None }))
            .await
            .is_ok()
    }

    fn too_long(&self, len: u64) -> Framed {
        let max = self.config.max_line_bytes.bytes();
        Framed::Rejected {
            reason: Reason::FrameTooLong,
            errors: vec![Violation::whole(format!(
                "line of {len} bytes exceeds max_line_bytes ({max}); stored truncated to {max} bytes"
            ))],
            original_len: Some(len),
        }
    }
}
