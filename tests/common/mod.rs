//! The test kit shared by the end-to-end tests and the benchmarks, split by concern: a real
//! mosquitto broker and an MQTT sensor (`broker`), librdkafka's mock Kafka cluster and a reader
//! (`kafka`, with a producer and the committed offsets of a group), gateway configurations
//! (`config`), socat pseudo-terminals (`serial`), the gateway in process (`gateway`) and as a
//! process, with its CPU, memory and I/O (`process`), devices that receive downlink commands
//! (`devices`), a small tmpfs to fill (`disk`), a TCP proxy that can swallow traffic (`proxy`), log capture (`log_capture`), a
//! real Prometheus server and promtool (`prometheus`), a program in a tmux terminal (`tmux`),
//! and a whole deployment, broker, Kafka and gateway process (`running`). Every wait polls a
//! condition against a deadline.

#![allow(dead_code, unreachable_pub, unused_imports)]

mod broker;
mod config;
mod devices;
mod disk;
mod gateway;
mod kafka;
mod log_capture;
mod process;
mod prometheus;
mod proxy;
mod running;
mod serial;
mod tls;
mod tmux;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use broker::*;
pub use config::*;
pub use devices::*;
pub use disk::*;
pub use gateway::*;
pub use kafka::*;
pub use log_capture::capture as logs;
pub use log_capture::init_logging;
pub use process::*;
pub use prometheus::*;
pub use proxy::*;
pub use running::*;
pub use serial::*;
pub use tls::*;
pub use tmux::*;

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
