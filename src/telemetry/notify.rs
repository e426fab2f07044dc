//! systemd integration through sd_notify: READY=1 once the outbox is open and the sources have
//! started, STATUS= every few seconds, STOPPING=1 on shutdown, and WATCHDOG=1 only while the
//! pipeline shows signs of life.
//!
//! The watchdog does not ping from a timer alone: the publisher beats on every turn of its loop
//! (at least once a second, even while waiting on Kafka), and the committer marks how long it has
//! been inside one batch. If either is stuck for longer than half the watchdog interval (at least
//! [`MIN_STALL`]), pings stop and systemd restarts the service.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::outbox::Outbox;
use crate::record::now_ms;

/// Shortest stall that withholds the watchdog.
pub const MIN_STALL: Duration = Duration::from_secs(3);
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Longest a message waits for room in systemd's queue: the sends run on the async runtime's
/// workers, which a busy systemd must not hold up. A message that cannot go is dropped (logged
/// at debug level); the next STATUS= or WATCHDOG=1 follows within seconds.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(100);

fn send(message: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = send_to(&path, message) {
            tracing::debug!(error = %e, message, "sd_notify failed");
        }
    }
}

/// Sends one sd_notify datagram to `socket` (a path, or `@name` in the abstract namespace),
/// waiting at most [`SEND_TIMEOUT`]. The message ends with a newline, as libsystemd's and the
/// sd-notify crate's do (systemd does not need it; tools that read the socket line by line do).
pub fn send_to(socket: &OsStr, message: &str) -> std::io::Result<()> {
    let message = format!("{message}\n");
    let datagram = UnixDatagram::unbound()?;
    datagram.set_write_timeout(Some(SEND_TIMEOUT))?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            datagram.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// Tells systemd we are ready.
pub fn ready() {
    send("READY=1");
}

/// Tells systemd we are stopping.
pub fn stopping() {
    send("STOPPING=1");
}

/// Tells systemd a reload started (then call [`ready`]).
pub fn reloading() {
    send("RELOADING=1");
}

/// The one-line status shown by `systemctl status`.
pub fn status_line(stats: &Stats, outbox: &Outbox) -> String {
    let s = stats.snapshot();
    let q = outbox.stats();
    let mut line = String::new();
    if s.outbox_write_failing {
        line.push_str("OUTBOX FAILING: cannot write (disk full?), readings not acknowledged; ");
    }
    let _ = std::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "outbox {} records ({:.1} MiB); Kafka {}{}; delivered {}; dead letters {}",
            q.depth,
            q.bytes as f64 / (1 << 20) as f64,
            if s.kafka_down { "down" } else { "up" },
            if s.circuit_open { ", backing off" } else { "" },
            s.delivered,
            s.dead_letters_total(),
        ),
    );
    for (name, d) in &s.downlinks {
        use crate::telemetry::downlink::CommandResult;
        let _ = std::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "; downlink {name} {}, {} commands delivered, lag {}",
                if !d.up {
                    "MQTT down"
                } else if d.circuit_open {
                    "probing"
                } else {
                    "up"
                },
                d.count(CommandResult::Delivered),
                d.lag_total()
            ),
        );
    }
    line
}

/// The watchdog interval systemd asked for, as `sd_watchdog_enabled(3)` reads it: `WATCHDOG_USEC`,
/// unless `WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends STATUS= and (when systemd asked for it) WATCHDOG=1 until `stop` is cancelled.
pub async fn run(stats: Arc<Stats>, outbox: Arc<Outbox>, stop: CancellationToken) {
    let watchdog = watchdog_interval();
    let tick = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let stall_limit = watchdog.map_or(MIN_STALL, |w| (w / 2).max(MIN_STALL));
    let mut last_status = tokio::time::Instant::now() - STATUS_EVERY;
    let mut stalled = false;
    loop {
        if last_status.elapsed() >= STATUS_EVERY {
            send(&format!(
                "STATUS={}",
                status_line(&stats, &outbox).replace('\n', " ")
            ));
            last_status = tokio::time::Instant::now();
        }
        if watchdog.is_some() {
            let stalled_for = Duration::from_millis(stats.heartbeats.stalled_for_ms(now_ms()));
            if stalled_for < stall_limit {
                send("WATCHDOG=1");
                if stalled {
                    tracing::info!("Pipeline is making progress again; watchdog pings resumed");
                    stalled = false;
                }
            } else if !stalled {
                stalled = true;
                tracing::error!(
                    stalled_s = stalled_for.as_secs(),
                    "Pipeline task stalled; withholding watchdog pings so systemd restarts the service"
                );
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_the_socket_and_a_full_queue_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        // Nobody reads any more: once the queue is full, each send gives up after the timeout
        // instead of waiting for room (a blocking send never returned here).
        let sender = std::thread::spawn(move || {
            let status = format!("STATUS={}", "x".repeat(1000));
            (0..2000).find_map(|_| send_to(path.as_os_str(), &status).err())
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !sender.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "a send to a full queue blocked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let error = sender.join().unwrap().expect("the queue filled up");
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{error:?}"
        );
        drop(systemd);
    }

    #[test]
    fn an_abstract_socket_name_is_used_as_such() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("sensorgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
