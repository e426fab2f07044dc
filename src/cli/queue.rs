//! `sensorgate queue stats`: outbox depth, bytes, oldest record age, records per route, DLQ
//! size, and (from a running daemon only) the Kafka connection state and last delivery.

use std::io::Write;

use super::Status;
use crate::admin::{self, AdminError, Mode, Request, Response};
use crate::config::Config;
use crate::record::{format_ms, now_ms};

/// Prints the figures, as text or as JSON with `--json`.
pub async fn stats(config: &Config, json: bool, out: &mut dyn Write) -> Result<Status, AdminError> {
    let (report, mode) = match admin::call(config, Request::QueueStats).await? {
        (Response::Queue(r), mode) => (r, mode),
        (other, _) => {
            return Err(AdminError::Protocol(format!(
                "unexpected response: {other:?}"
            )))
        }
    };
    if json {
        let value = serde_json::json!({
            "daemon_running": mode == Mode::Daemon,
            "stats": report,
        });
        serde_json::to_writer_pretty(&mut *out, &value)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        writeln!(out)?;
        return Ok(Status::Ok);
    }
    let q = &report.queue;
    writeln!(out, "outbox depth:        {}", q.depth)?;
    writeln!(out, "outbox bytes:        {}", q.bytes)?;
    match q.oldest_received_ms {
        Some(ms) => writeln!(
            out,
            "oldest record:       {} ({} s ago)",
            format_ms(ms),
            now_ms().saturating_sub(ms) / 1000
        )?,
        None => writeln!(out, "oldest record:       - (empty)")?,
    }
    writeln!(out, "per route:")?;
    for (route, n) in &report.routes {
        let name = if route.is_empty() {
            "(no route)"
        } else {
            route
        };
        writeln!(out, "  {name:<30} {n}")?;
    }
    writeln!(
        out,
        "dead letters:        {} ({} bytes)",
        q.dead_letters, q.dead_letter_bytes
    )?;
    match &report.kafka {
        Some(k) => {
            let state = if k.down {
                "down (all brokers unreachable)"
            } else if k.circuit_open {
                "backing off (circuit open)"
            } else {
                "up"
            };
            writeln!(out, "kafka:               {state}")?;
            writeln!(
                out,
                "last delivery:       {}",
                k.last_delivery_ms.map_or("never".to_owned(), format_ms)
            )?;
        }
        None => {
            writeln!(out, "kafka:               unknown (daemon not running)")?;
            writeln!(out, "last delivery:       unknown (daemon not running)")?;
        }
    }
    if let Some(n) = report.dlq_evicted {
        writeln!(out, "dlq evicted:         {n} (since the daemon started)")?;
    }
    for (name, d) in &report.downlinks {
        use crate::telemetry::downlink::CommandResult;
        let state = if !d.up {
            "MQTT down (consumption paused)"
        } else if d.circuit_open {
            "probing (circuit half-open)"
        } else {
            "up"
        };
        writeln!(out, "downlink {name}:")?;
        writeln!(out, "  state:             {state}")?;
        writeln!(
            out,
            "  commands:          {} delivered, {} dead letters ({} not-json, {} schema, {} no-target, {} expired)",
            d.count(CommandResult::Delivered),
            d.dead_letters(),
            d.count(CommandResult::NotJson),
            d.count(CommandResult::Schema),
            d.count(CommandResult::NoTarget),
            d.count(CommandResult::Expired),
        )?;
        writeln!(out, "  held:              {}", d.held)?;
        writeln!(out, "  retries:           {}", d.retries)?;
        let lag = d
            .lag
            .iter()
            .map(|(p, l)| format!("{p}: {l}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(out, "  consumer lag:      {} ({lag})", d.lag_total())?;
    }
    Ok(Status::Ok)
}
