//! `sensorgate dlq list|show|replay|purge|export`: the local dead-letter store, through the
//! running daemon's admin socket or, when no daemon runs, the state directory (see
//! [`crate::admin`]).

use std::io::Write;

use super::Status;
use crate::admin::{self, AdminError, DeadLetter, Filter, Mode, Request, Response, Selection};
use crate::config::Config;
use crate::record::format_ms;

use super::tail::{escape_controls as clean, write_bytes};

fn unexpected(response: &Response) -> AdminError {
    AdminError::Protocol(format!("unexpected response: {response:?}"))
}

async fn dead_letters(config: &Config, request: Request) -> Result<Vec<DeadLetter>, AdminError> {
    match admin::call(config, request).await? {
        (Response::DeadLetters(list), _) => Ok(list),
        (other, _) => Err(unexpected(&other)),
    }
}

fn first_error(d: &DeadLetter) -> String {
    let text = d.errors().first().map_or(String::new(), |v| {
        if v.instance_path.is_empty() {
            v.message.clone()
        } else {
            format!("{}: {}", v.instance_path, v.message)
        }
    });
    let text = clean(&text.replace('\n', " ")).into_owned();
    if text.chars().count() > 72 {
        format!("{}…", text.chars().take(71).collect::<String>())
    } else {
        text
    }
}

/// `dlq list`: a table, or one JSON array with `--json`, written as the dead letters arrive.
pub async fn list(
    config: &Config,
    filter: Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let mut count = 0u64;
    if json {
        admin::each_dead_letter(config, filter, |d| {
            out.write_all(if count == 0 { b"[\n" } else { b",\n" })?;
            serde_json::to_writer_pretty(&mut *out, &d)
                .map_err(|e| AdminError::Protocol(e.to_string()))?;
            count += 1;
            Ok(())
        })
        .await?;
        writeln!(out, "{}", if count == 0 { "[]" } else { "\n]" })?;
        return Ok(Status::Ok);
    }
    writeln!(
        out,
        "{:<20} {:<24} {:<16} {:<12} {:<32} FIRST ERROR",
        "ID", "RECEIVED", "REASON", "SOURCE", "TOPIC/PORT"
    )?;
    admin::each_dead_letter(config, filter, |d| {
        writeln!(
            out,
            "{:<20} {:<24} {:<16} {:<12} {:<32} {}",
            d.id,
            format_ms(d.meta.received_at_ms),
            d.reason().map_or("?", |r| r.as_str()),
            clean(&d.meta.source),
            clean(&d.meta.origin.to_string()),
            first_error(&d)
        )?;
        count += 1;
        Ok(())
    })
    .await?;
    writeln!(out, "{count} dead letter(s)")?;
    Ok(Status::Ok)
}

/// `dlq show ID`: metadata, every violation, the payload (text when UTF-8, hex otherwise).
pub async fn show(
    config: &Config,
    id: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let Some(d) = dead_letters(config, Request::DlqShow { id })
        .await?
        .into_iter()
        .next()
    else {
        writeln!(out, "no dead letter with id {id}")?;
        return Ok(Status::CheckFailed);
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &d)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        writeln!(out)?;
        return Ok(Status::Ok);
    }
    let m = &d.meta;
    writeln!(out, "id:          {}", d.id)?;
    writeln!(
        out,
        "reason:      {}",
        d.reason().map_or("?", |r| r.as_str())
    )?;
    writeln!(out, "received:    {}", format_ms(m.received_at_ms))?;
    // Everything that came from a device or a broker is printed with its control characters
    // escaped, as `tail` does: a payload must not drive the operator's terminal.
    writeln!(out, "gateway:     {}", clean(&m.gateway))?;
    writeln!(out, "source:      {}", clean(&m.source))?;
    writeln!(out, "origin:      {}", clean(&m.origin.to_string()))?;
    writeln!(
        out,
        "route:       {}",
        clean(m.route.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "schema:      {}",
        clean(m.schema.as_deref().unwrap_or("-"))
    )?;
    writeln!(out, "kafka topic: {}", clean(&m.kafka_topic))?;
    if let Some(len) = m.dead_letter.as_ref().and_then(|i| i.original_len) {
        writeln!(out, "original:    {len} bytes (stored truncated)")?;
    }
    writeln!(out, "errors:")?;
    for v in d.errors() {
        writeln!(
            out,
            "  - at `{}` (schema `{}`): {}",
            clean(&v.instance_path),
            clean(&v.schema_path),
            clean(&v.message)
        )?;
    }
    let bytes = d.payload_bytes()?;
    match std::str::from_utf8(&bytes) {
        Ok(_) => {
            writeln!(
                out,
                "payload ({} bytes, UTF-8, control characters escaped):",
                bytes.len()
            )?;
            write_bytes(out, &bytes)?;
            writeln!(out)?;
        }
        Err(_) => writeln!(
            out,
            "payload ({} bytes, not UTF-8, hex):\n{}",
            bytes.len(),
            hex::encode(&bytes)
        )?,
    }
    Ok(Status::Ok)
}

fn mode_note(mode: Mode) -> &'static str {
    match mode {
        Mode::Daemon => "via the running daemon",
        Mode::Direct => "daemon not running: state directory opened directly",
    }
}

/// `dlq replay`: exit 0 when every selected dead letter moved, 1 otherwise.
pub async fn replay(
    config: &Config,
    select: Selection,
    json: bool,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let (report, mode) = match admin::call(config, Request::DlqReplay { select }).await? {
        (Response::Replayed(r), mode) => (r, mode),
        (other, _) => return Err(unexpected(&other)),
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        writeln!(out)?;
    } else {
        writeln!(out, "Replay ({})", mode_note(mode))?;
        for m in &report.moved {
            match &m.mqtt_topic {
                Some(topic) => writeln!(
                    out,
                    "moved   {} -> delivered through its downlink, MQTT topic {topic}",
                    m.id
                )?,
                None => writeln!(out, "moved   {} -> outbox, topic {}", m.id, m.kafka_topic)?,
            }
        }
        for f in &report.failed {
            writeln!(out, "failed  {} ({}), stays in the DLQ:", f.id, f.reason)?;
            for v in &f.errors {
                writeln!(out, "          at `{}`: {}", v.instance_path, v.message)?;
            }
        }
        for id in &report.missing {
            writeln!(out, "missing {id}: no such dead letter")?;
        }
        writeln!(
            out,
            "{} moved, {} still failing, {} missing",
            report.moved.len(),
            report.failed.len(),
            report.missing.len()
        )?;
    }
    Ok(if report.failed.is_empty() && report.missing.is_empty() {
        Status::Ok
    } else {
        Status::CheckFailed
    })
}

/// `dlq purge`: exit 0 unless an id was missing.
pub async fn purge(
    config: &Config,
    select: Selection,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let (report, mode) = match admin::call(config, Request::DlqPurge { select }).await? {
        (Response::Purged(r), mode) => (r, mode),
        (other, _) => return Err(unexpected(&other)),
    };
    for id in &report.missing {
        writeln!(out, "missing {id}: no such dead letter")?;
    }
    writeln!(
        out,
        "purged {} dead letter(s) ({})",
        report.purged.len(),
        mode_note(mode)
    )?;
    Ok(if report.missing.is_empty() {
        Status::Ok
    } else {
        Status::CheckFailed
    })
}

/// `dlq export --format jsonl`: one [`DeadLetter`] JSON object per line.
pub async fn export(config: &Config, out: &mut dyn Write) -> Result<Status, AdminError> {
    admin::each_dead_letter(config, Filter::default(), |d| {
        serde_json::to_writer(&mut *out, &d).map_err(|e| AdminError::Protocol(e.to_string()))?;
        writeln!(out)?;
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(Status::Ok)
}
