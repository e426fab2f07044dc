//! A deliberately small HTTP/1.1 endpoint: `GET /metrics` (Prometheus text), `GET /healthz`
//! (the process answers) and `GET /readyz` (outbox writable and at least one source up; Kafka's
//! state is reported in the body but is not a condition, since we buffer). One request per
//! connection, 8 KiB request limit, 5 s for the whole exchange, at most [`MAX_CONNECTIONS`] at
//! once: one more is answered `503` at once (without reading it) and closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::process::ProcessStats;
use super::prometheus::{render, Gauges};
use super::Stats;
use crate::outbox::Outbox;

/// What the endpoint reads.
#[derive(Debug)]
pub struct Endpoint {
    /// Counters.
    pub stats: Arc<Stats>,
    /// Outbox gauges.
    pub outbox: Arc<Outbox>,
    /// The outbox's policy when full, as configured (`drop-oldest`, `block`): the label of the
    /// drop counter.
    pub policy: &'static str,
}

impl Endpoint {
    fn gauges(&self) -> Gauges {
        Gauges {
            queue: self.outbox.stats(),
            max_bytes: self.outbox.max_bytes(),
            now_ms: crate::record::now_ms(),
            policy: self.policy,
            process: ProcessStats::read(),
        }
    }

    /// Status line and body for a request.
    pub fn respond(&self, method: &str, path: &str) -> (u16, &'static str, String) {
        if method != "GET" {
            return (405, "text/plain", "only GET\n".into());
        }
        match path.split('?').next().unwrap_or("") {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                render(&self.stats.snapshot(), &self.gauges()),
            ),
            "/healthz" => (200, "text/plain", "ok\n".into()),
            "/readyz" => {
                let s = self.stats.snapshot();
                let ready = (s.sources_up.is_empty() || s.sources_up.values().any(|up| *up))
                    && !s.outbox_write_failing;
                let body = serde_json::json!({
                    "ready": ready,
                    "outbox": if s.outbox_write_failing { "failing" } else { "open" },
                    "sources": s.sources_up,
                    "kafka": if s.kafka_down { "down" } else { "up" },
                    "outbox_records": self.outbox.stats().depth,
                });
                (
                    if ready { 200 } else { 503 },
                    "application/json",
                    format!("{body}\n"),
                )
            }
            _ => (404, "text/plain", "not found\n".into()),
        }
    }
}

/// Connections served at once: a scraper or two, health probes, an operator's curl.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // As many again may be told `503` (read briefly first, so that closing does not reset the
    // connection under the answer); past those, connections are closed at once.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), handle(stream, &endpoint))
                                .await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    tracing::debug!(
                        limit = MAX_CONNECTIONS,
                        "Metrics endpoint busy; refusing a connection"
                    );
                    if let Ok(slot) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), refuse(stream)).await;
                            drop(slot);
                        });
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "Metrics endpoint cannot accept connections");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";

/// Answers `503` and ends its side, then reads what the client sends until it closes (the
/// caller bounds this to a second): closing over unread bytes would reset the connection, and
/// a client whose request arrived after the answer would lose the answer.
async fn refuse(mut stream: TcpStream) -> std::io::Result<()> {
    stream.write_all(BUSY.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 8192];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn handle(mut stream: TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > 8192 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, content_type, body) = endpoint.respond(method, path);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
