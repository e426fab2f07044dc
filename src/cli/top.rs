//! `sensorgate top`: a live view of a running gateway, for an operator on the device (over SSH,
//! 80×24 is enough). It reads the gateway's `/metrics` every interval (rates are differences
//! between two scrapes) and the admin socket for the latest dead letters (`d`); when the gateway
//! serves no metrics, the admin socket's `queue stats` gives the outbox, DLQ and Kafka state.
//! It never opens the state directory itself, so it cannot get in a starting daemon's way.
//!
//! - On a terminal: a full-screen view (ratatui over crossterm), `q` quits, `d` toggles the
//!   latest dead letters.
//! - Not a terminal (a pipe, a file): one plain line per interval ([`render::row`]).
//! - `--once`: one snapshot as plain text, two scrapes one interval apart so rates are real.
//!
//! - `scrape.rs`: `GET /metrics` and the exposition parser;
//! - `model.rs`: the figures shown, from two scrapes (pure, unit-tested);
//! - `render.rs`: the figures as text sections, shared by the screen and `--once`;
//! - `tui.rs`: the terminal: layout, keys, the dead-letter table.

pub mod model;
pub mod render;
pub mod scrape;
pub mod tui;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use self::model::{Known, Scrape, Tracker, View};
use super::Status;
use crate::admin::{self, AdminError, DeadLetter, Filter, Request, Response};
use crate::config::Config;
use crate::record::{format_ms, now_ms};

/// Errors of `top`.
#[derive(Debug, Error)]
pub enum TopError {
    /// The metrics endpoint cannot be reached or read.
    #[error("metrics endpoint {addr}: {source}")]
    Http {
        /// `host:port`.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The metrics endpoint answered, but not with 200.
    #[error("metrics endpoint {addr} answered {status}")]
    Status {
        /// `host:port`.
        addr: String,
        /// The status line.
        status: String,
    },
    /// A line of `/metrics` is not a sample.
    #[error("metrics: cannot parse `{0}`")]
    Exposition(String),
    /// The admin socket failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// No metrics endpoint and no admin socket to read.
    #[error("nothing to read: [metrics] listen is empty and no admin socket is known")]
    NoSource,
    /// The dead letters need the admin socket, which only the configuration names.
    #[error("no admin socket known: the dead letters need the configuration (--config)")]
    NoAdminSocket,
    /// The terminal cannot be set up or written.
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
    /// The runtime for the admin socket's client cannot start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// `host:port` of `/metrics`; `None` when the gateway serves none.
    pub metrics: Option<String>,
    /// The daemon's admin socket.
    pub admin_socket: Option<PathBuf>,
    /// What the configuration says about the gateway.
    pub known: Known,
    /// Time between scrapes.
    pub interval: Duration,
    /// Print one snapshot and exit.
    pub once: bool,
}

impl TopOptions {
    /// What to watch of the gateway configured at `path`: its metrics endpoint (or `metrics`,
    /// `host:port`, when given) and its admin socket. With `metrics` given, a configuration that
    /// cannot be read only costs the source kinds and the `d` view (said on stderr).
    pub fn from_config(
        path: &Path,
        metrics: Option<String>,
        interval: Duration,
        once: bool,
    ) -> Result<Self, crate::config::ConfigError> {
        let (known, admin_socket, listen) = match Config::load(path) {
            Ok(config) => {
                let mut kinds: BTreeMap<String, &'static str> = config
                    .mqtt
                    .iter()
                    .map(|m| (m.name.clone(), "mqtt"))
                    .collect();
                kinds.extend(config.serial.iter().map(|s| (s.name.clone(), "serial")));
                let known = Known {
                    gateway: Some(config.gateway.id.clone()),
                    source_kinds: kinds,
                    max_bytes: Some(config.queue.max_bytes.bytes()),
                };
                let listen =
                    (!config.metrics.listen.is_empty()).then(|| config.metrics.listen.clone());
                (known, Some(config.gateway.admin_socket_path()), listen)
            }
            Err(e) if metrics.is_some() => {
                eprintln!("sensorgate top: {e} (reading only --metrics)");
                (Known::default(), None, None)
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            metrics: metrics.or(listen).map(|l| scrape::reachable(&l)),
            admin_socket,
            known,
            interval,
            once,
        })
    }
}

/// `sensorgate top` with the configuration at `path`: exit 2 when it cannot be read (and no
/// `metrics` is given), 1 when the gateway cannot be read (`--once`) or the terminal fails.
pub fn main(
    path: &Path,
    metrics: Option<String>,
    interval: Duration,
    once: bool,
    out: &mut dyn Write,
) -> Status {
    let options = match TopOptions::from_config(path, metrics, interval, once) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("sensorgate top: {e}");
            return Status::Usage;
        }
    };
    match run(options, out) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("sensorgate top: {e}");
            Status::CheckFailed
        }
    }
}

/// Most dead letters fetched for the `d` view.
const DEAD_LETTERS: usize = 50;

/// Takes scrapes and turns them into views.
#[derive(Debug)]
pub struct Sampler {
    options: TopOptions,
    tracker: Tracker,
    runtime: tokio::runtime::Runtime,
}

impl Sampler {
    /// A sampler for `options`.
    pub fn new(options: TopOptions) -> Result<Self, TopError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TopError::Runtime)?;
        Ok(Self {
            options,
            tracker: Tracker::default(),
            runtime,
        })
    }

    /// The options.
    pub fn options(&self) -> &TopOptions {
        &self.options
    }

    fn timeout(&self) -> Duration {
        self.options
            .interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// Where the figures come from, for the heading.
    pub fn origin(&self) -> String {
        match (&self.options.metrics, &self.options.admin_socket) {
            (Some(addr), _) => addr.clone(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "-".to_owned(),
        }
    }

    /// A new view from the gateway.
    pub fn sample(&mut self) -> Result<View, TopError> {
        if let Some(addr) = &self.options.metrics {
            let metrics = scrape::fetch(addr, self.timeout())?;
            let scrape = Scrape {
                at: Instant::now(),
                metrics,
            };
            return Ok(self.tracker.update(scrape, &self.options.known));
        }
        match self.admin(Request::QueueStats)? {
            Response::Queue(report) => {
                Ok(self
                    .tracker
                    .update_from_queue(&report, &self.options.known, now_ms()))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The latest dead letters, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, TopError> {
        let request = Request::DlqList {
            filter: Filter {
                limit: Some(DEAD_LETTERS),
                ..Filter::default()
            },
        };
        if self.options.admin_socket.is_none() {
            return Err(TopError::NoAdminSocket);
        }
        match self.admin(request)? {
            Response::DeadLetters(mut list) => {
                list.reverse();
                Ok(list)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn admin(&self, request: Request) -> Result<Response, TopError> {
        let path = self
            .options
            .admin_socket
            .as_ref()
            .ok_or(TopError::NoSource)?;
        let call = admin::call_daemon(path, &request);
        let limit = self.timeout() * 2;
        self.runtime
            .block_on(async { tokio::time::timeout(limit, call).await })
            .map_err(|_| {
                TopError::Admin(AdminError::Socket {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer from the daemon",
                    ),
                })
            })?
            .map_err(TopError::Admin)
    }

    /// `sensorgate top: gateway pi-07 (0.1.0) via 127.0.0.1:9898`.
    pub fn heading(&self, view: Option<&View>) -> String {
        let gateway = self.options.known.gateway.as_deref().unwrap_or("?");
        let version = view
            .and_then(|v| v.version.as_deref())
            .map_or(String::new(), |v| format!(" ({v})"));
        format!(
            "sensorgate top: gateway {gateway}{version} via {}",
            self.origin()
        )
    }
}

fn unexpected(response: &Response) -> TopError {
    TopError::Admin(AdminError::Protocol(format!(
        "unexpected response: {response:?}"
    )))
}

/// `HH:MM:SS` (UTC) of a millisecond timestamp.
pub fn clock(ms: u64) -> String {
    let text = format_ms(ms);
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// Runs `top`: the terminal view on a terminal, lines on a pipe, one snapshot with `--once`.
pub fn run(options: TopOptions, out: &mut dyn Write) -> Result<Status, TopError> {
    let once = options.once;
    let mut sampler = Sampler::new(options)?;
    if once {
        return snapshot(&mut sampler, out);
    }
    if std::io::stdout().is_terminal() {
        return tui::run(&mut sampler);
    }
    lines(&mut sampler, out)
}

fn snapshot(sampler: &mut Sampler, out: &mut dyn Write) -> Result<Status, TopError> {
    sampler.sample()?;
    std::thread::sleep(sampler.options.interval);
    let view = sampler.sample()?;
    let heading = format!(
        "{} at {} UTC",
        sampler.heading(Some(&view)),
        clock(now_ms())
    );
    out.write_all(render::snapshot(&heading, &view).as_bytes())
        .map_err(TopError::Terminal)?;
    Ok(Status::Ok)
}

/// One line per interval until the output goes away; a gateway that stops answering gives a
/// line saying so, and the lines resume when it is back.
fn lines(sampler: &mut Sampler, out: &mut dyn Write) -> Result<Status, TopError> {
    let write = |out: &mut dyn Write, text: &str| writeln!(out, "{text}").and_then(|_| out.flush());
    if write(out, &sampler.heading(None))
        .and_then(|_| write(out, &render::row_head()))
        .is_err()
    {
        return Ok(Status::Ok);
    }
    let mut next = Instant::now();
    let mut first = true;
    loop {
        let line = match sampler.sample() {
            // The first scrape has no rates yet.
            Ok(_) if first => None,
            Ok(view) => Some(render::row(&clock(now_ms()), &view)),
            Err(e) => Some(format!("{:<8} {e}", clock(now_ms()))),
        };
        first = false;
        if let Some(line) = line {
            if write(out, &line).is_err() {
                // The reader went away (`top | head`).
                return Ok(Status::Ok);
            }
        }
        next += sampler.options.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
