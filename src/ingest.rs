//! Ingest: the sources that receive readings and submit them, classified, to the committer.
//! Each source runs as its own task. MQTT acknowledges a reading to the broker only after the
//! committer made it durable; a serial line cannot be acknowledged, so a serial source submits
//! each line as soon as it is framed.
//!
//! - [`mqtt`]: QoS 1 subscriptions on a persistent session.
//! - [`serial`]: a serial port (USB or UART), reopened with backoff when the device goes away.
//! - [`frame`]: the serial sources' line framing and `json-lines`/`csv` decoding (no I/O; the
//!   classifier decodes a serial dead letter with it again when it is replayed).

pub mod frame;
pub mod mqtt;
pub mod serial;
