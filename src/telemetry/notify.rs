//! systemd integration through sd_notify: READY=1 once the outbox is open and the sources have
//! started, STATUS= every few seconds, STOPPING=1 on shutdown, and WATCHDOG=1 only while the
//! pipeline shows signs of life.
//!
//! The watchdog does not ping from a timer alone: the publisher beats on every turn of its loop
//! (at least once a second, even while waiting on Kafka), and the committer marks how long it has
//! been inside one batch. If either is stuck for longer than half the watchdog interval (at least
//! [`MIN_STALL`]), pings stop and systemd restarts the service.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::outbox::Outbox;
use crate::record::now_ms;

/// Shortest stall that withholds the watchdog.
pub const MIN_STALL: Duration = Duration::from_secs(3);
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// Tells systemd we are ready.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Tells systemd we are stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Tells systemd a reload started (then call [`ready`]).
pub fn reloading() {
    send(&[NotifyState::Reloading]);
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
/// unless `WATCHDOG_PID` names another process. (The sd-notify crate also requires
/// `WATCHDOG_PID` to be present, which libsystemd does not.)
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
            send(&[NotifyState::Status(&status_line(&stats, &outbox))]);
            last_status = tokio::time::Instant::now();
        }
        if watchdog.is_some() {
            let stalled_for = Duration::from_millis(stats.heartbeats.stalled_for_ms(now_ms()));
            if stalled_for < stall_limit {
                send(&[NotifyState::Watchdog]);
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
