//! The admin API: what `sensorgate dlq …` and `sensorgate queue stats` ask, and the one
//! [`Backend`] that answers, over the outbox and the current routes and schemas.
//!
//! sled lets one process open a database, so while `sensorgate run` is up the CLI cannot open
//! the state directory: the daemon serves the API on a Unix socket ([`server`], default
//! `<state_dir>/admin.sock`, mode 0660). [`call`] tries that socket first and, when nobody
//! listens (no socket file, or a stale one: `ENOENT`/`ECONNREFUSED`), opens the state directory
//! itself and runs the same [`Backend`], with the rules compiled from the configuration. The
//! operator never has to know which.
//!
//! # Protocol
//! One JSON [`Request`] on one line (`{"cmd":"dlq-list","filter":{"reason":"schema"}}`), one
//! JSON [`Response`] on one line back, then the daemon closes the connection.

pub mod entries;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};

use crate::config::{Config, ConfigError, WhenFull};
use crate::dlq::DlqError;
use crate::downlink::replay::{self as downlink_replay, Replayer};
use crate::outbox::committer::{self, AckSinks, Committer, Handoff, Replay, Submitter};
use crate::outbox::{Outbox, OutboxError, QueueStats};
use crate::pipeline::{Classifier, Rules, RulesError};
use crate::record::{Meta, Reason, Record, Violation};
use crate::telemetry::downlink::DownlinkSnapshot;
use crate::telemetry::Stats;

/// Longest request or response line accepted (a full export can be large).
pub const MAX_LINE: u64 = 1 << 30;

/// Errors of the admin API.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The admin socket exists but cannot be used (permissions, …).
    #[error("admin socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The outbox failed (direct mode, or in the daemon).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The dead-letter store failed.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The routes or schemas do not compile (needed for replay).
    #[error("{path}: {source}")]
    Rules {
        /// The configuration file.
        path: PathBuf,
        /// What failed.
        source: RulesError,
    },
    /// A message on the socket is not what the protocol says.
    #[error("admin protocol: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(String),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Only this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only those received at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Only those received before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<u64>,
    /// At most this many: the most recent ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, meta: &Meta) -> bool {
        let reason = meta.dead_letter.as_ref().map(|d| d.reason);
        self.reason.is_none_or(|r| reason == Some(r))
            && self.source.as_ref().is_none_or(|s| **s == *meta.source)
            && self.since_ms.is_none_or(|t| meta.received_at_ms >= t)
            && self.before_ms.is_none_or(|t| meta.received_at_ms < t)
    }
}

/// Which dead letters: by id, or every one matching the filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// These ids.
    Ids(Vec<u64>),
    /// Every dead letter the filter matches.
    All(Filter),
}

/// A request to the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Dead letters matching a filter, oldest first.
    DlqList {
        /// Which.
        #[serde(default)]
        filter: Filter,
    },
    /// One dead letter.
    DlqShow {
        /// Its id.
        id: u64,
    },
    /// Re-validate with the current rules; move what passes (and `publish-rejected` entries)
    /// to the outbox.
    DlqReplay {
        /// Which.
        select: Selection,
    },
    /// Delete dead letters.
    DlqPurge {
        /// Which.
        select: Selection,
    },
    /// Every dead letter, with its payload.
    DlqExport,
    /// Outbox and DLQ figures.
    QueueStats,
}

/// How a payload is carried in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The payload is UTF-8 text.
    Utf8,
    /// The payload is base64 (standard alphabet, padded).
    Base64,
}

/// A dead letter as the API and `dlq export` carry it: metadata plus the payload as text when
/// it is UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Id in the local store.
    pub id: u64,
    /// Everything about it but the payload.
    pub meta: Meta,
    /// How `payload` is encoded.
    pub encoding: Encoding,
    /// The payload.
    pub payload: String,
}

impl DeadLetter {
    /// Wraps a stored dead letter.
    pub fn from_record(record: &Record) -> Self {
        let (encoding, payload) = match std::str::from_utf8(&record.payload) {
            Ok(text) => (Encoding::Utf8, text.to_owned()),
            Err(_) => (
                Encoding::Base64,
                base64::engine::general_purpose::STANDARD.encode(&record.payload),
            ),
        };
        Self {
            id: record.meta.dead_letter.as_ref().map_or(0, |d| d.id),
            meta: record.meta.clone(),
            encoding,
            payload,
        }
    }

    /// The payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, AdminError> {
        match self.encoding {
            Encoding::Utf8 => Ok(self.payload.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| AdminError::Protocol(format!("dead letter {}: {e}", self.id))),
        }
    }

    /// The stored record back.
    pub fn to_record(&self) -> Result<Record, AdminError> {
        Ok(Record {
            meta: self.meta.clone(),
            payload: Bytes::from(self.payload_bytes()?),
        })
    }

    /// The reason, if the metadata says (it always does for stored dead letters).
    pub fn reason(&self) -> Option<Reason> {
        self.meta.dead_letter.as_ref().map(|d| d.reason)
    }

    /// Every recorded violation or error.
    pub fn errors(&self) -> &[Violation] {
        self.meta
            .dead_letter
            .as_ref()
            .map_or(&[][..], |d| d.errors.as_slice())
    }
}

/// A dead letter that moved to the outbox, or (a downlink's command) was delivered through its
/// downlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// Its id in the local store (now gone).
    pub id: u64,
    /// The topic it is bound for now (empty for a downlink's command).
    pub kafka_topic: String,
    /// A downlink's command: the MQTT topic whose broker acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_topic: Option<String>,
}

/// A dead letter that still fails and stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillFailing {
    /// Its id.
    pub id: u64,
    /// Why, now.
    pub reason: Reason,
    /// The errors under the current rules.
    pub errors: Vec<Violation>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Moved to the outbox (appended, committed, removed from the store).
    pub moved: Vec<Moved>,
    /// Still failing; left in the store.
    pub failed: Vec<StillFailing>,
    /// Ids that are not in the store.
    pub missing: Vec<u64>,
}

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// Deleted.
    pub purged: Vec<u64>,
    /// Ids that are not in the store.
    pub missing: Vec<u64>,
}

/// Kafka state as the running daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaState {
    /// librdkafka reports every broker down.
    pub down: bool,
    /// The publisher is waiting out a backoff.
    pub circuit_open: bool,
    /// When Kafka last confirmed a delivery (ms since the epoch), if ever.
    pub last_delivery_ms: Option<u64>,
}

/// `queue stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Depth, bytes, oldest record, DLQ size.
    pub queue: QueueStats,
    /// Records waiting per route (`""`: no route, i.e. unrouted dead letters).
    pub routes: BTreeMap<String, u64>,
    /// Only known when a daemon answered.
    pub kafka: Option<KafkaState>,
    /// Dead letters evicted by retention since the daemon started (daemon only).
    pub dlq_evicted: Option<u64>,
    /// Each downlink's state and counters, by name (daemon only).
    #[serde(default)]
    pub downlinks: BTreeMap<String, DownlinkSnapshot>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// `dlq list`, `dlq show`, `dlq export`.
    DeadLetters(Vec<DeadLetter>),
    /// `dlq replay`.
    Replayed(ReplayReport),
    /// `dlq purge`.
    Purged(PurgeReport),
    /// `queue stats`.
    Queue(QueueReport),
    /// The request failed.
    Error(String),
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The running daemon, over the socket.
    Daemon,
    /// This process, from the state directory.
    Direct,
}

/// Answers requests over an outbox and a classifier: inside the daemon (its own, so replay uses
/// the rules of the last reload) or in the CLI when no daemon runs. Replays go through a
/// committer, the outbox's only writer: the daemon's, or one this backend starts in direct mode.
#[derive(Debug)]
pub struct Backend {
    outbox: Arc<Outbox>,
    classifier: Result<Arc<Classifier>, String>,
    daemon_stats: Option<Arc<Stats>>,
    submit: std::sync::Mutex<Option<Submitter>>,
    policy: WhenFull,
    downlinks: Replayer,
}

/// Most dead letters replayed in one commit.
const REPLAY_CHUNK: usize = 1000;

impl Backend {
    /// The daemon's backend.
    pub fn daemon(
        outbox: Arc<Outbox>,
        classifier: Arc<Classifier>,
        stats: Arc<Stats>,
        submit: Submitter,
    ) -> Self {
        Self {
            policy: outbox.policy(),
            outbox,
            classifier: Ok(classifier),
            daemon_stats: Some(stats),
            submit: std::sync::Mutex::new(Some(submit)),
            downlinks: Replayer::default(),
        }
    }

    /// Replays of downlink dead letters go through `downlinks` (the daemon's running tasks).
    pub fn with_downlinks(mut self, downlinks: Replayer) -> Self {
        self.downlinks = downlinks;
        self
    }

    /// Opens the state directory directly, with a committer of its own for replays. Routes and
    /// schemas are compiled from the configuration; if they fail, everything but replay works.
    pub fn direct(config: &Config) -> Result<Self, AdminError> {
        let stats = Arc::new(Stats::default());
        let outbox = Arc::new(Outbox::open(
            &config.gateway.state_dir,
            &config.queue,
            &config.dlq,
            stats.clone(),
        )?);
        let classifier = Rules::build(config)
            .map(|rules| Arc::new(Classifier::new(config, rules, stats)))
            .map_err(|source| {
                AdminError::Rules {
                    path: config.path.clone(),
                    source,
                }
                .to_string()
            });
        // Nobody publishes in direct mode: the hand-off only bounds what the committer keeps.
        let handoff = Arc::new(Handoff::new(0));
        let (committer, submit) =
            Committer::new(outbox.clone(), &config.queue, AckSinks::default(), handoff);
        std::thread::Builder::new()
            .name("sg-committer".into())
            .spawn(move || committer.run())
            .map_err(AdminError::Output)?;
        Ok(Self {
            policy: config.queue.when_full,
            outbox,
            classifier,
            daemon_stats: None,
            submit: std::sync::Mutex::new(Some(submit)),
            downlinks: Replayer::direct(config.clone()),
        })
    }

    /// No more replays (the daemon is stopping): lets the committer finish.
    pub fn close(&self) {
        self.submit.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Answers one request; failures become [`Response::Error`].
    pub async fn handle(&self, request: Request) -> Response {
        match self.try_handle(request).await {
            Ok(response) => response,
            Err(e) => Response::Error(e.to_string()),
        }
    }

    async fn try_handle(&self, request: Request) -> Result<Response, AdminError> {
        Ok(match request {
            Request::DlqList { filter } => Response::DeadLetters(self.list(&filter)?),
            Request::DlqShow { id } => Response::DeadLetters(
                self.outbox
                    .dlq()
                    .get(id)?
                    .map(|r| DeadLetter::from_record(&r))
                    .into_iter()
                    .collect(),
            ),
            Request::DlqExport => Response::DeadLetters(self.list(&Filter::default())?),
            Request::DlqReplay { select } => Response::Replayed(self.replay(&select).await?),
            Request::DlqPurge { select } => Response::Purged(self.purge(&select)?),
            Request::QueueStats => Response::Queue(self.queue_stats()?),
        })
    }

    fn list(&self, filter: &Filter) -> Result<Vec<DeadLetter>, AdminError> {
        let mut out = Vec::new();
        self.each_dead_letter(filter, |d| {
            out.push(d);
            true
        })?;
        Ok(out)
    }

    /// Hands the dead letters `filter` selects to `visit`, oldest first, one at a time (`false`
    /// stops), so that a response can be streamed: nothing but the one entry is held. With a
    /// `limit`, the store is read newest first up to the limit, keeping only the ids, so that a
    /// full store is not read whole for a few entries.
    pub fn each_dead_letter(
        &self,
        filter: &Filter,
        mut visit: impl FnMut(DeadLetter) -> bool,
    ) -> Result<(), AdminError> {
        let dlq = self.outbox.dlq();
        let Some(limit) = filter.limit else {
            dlq.for_each(|r| !filter.matches(&r.meta) || visit(DeadLetter::from_record(&r)))?;
            return Ok(());
        };
        let mut ids = Vec::new();
        if limit > 0 {
            dlq.for_each_newest(|r| {
                if filter.matches(&r.meta) {
                    ids.push(r.meta.dead_letter.as_ref().map_or(0, |d| d.id));
                }
                ids.len() < limit
            })?;
        }
        for id in ids.into_iter().rev() {
            // An entry purged or replayed meanwhile is skipped.
            if let Some(r) = dlq.get(id)? {
                if !visit(DeadLetter::from_record(&r)) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The ids `select` names, oldest first for a filter, each once. Only ids are held, so a
    /// replay or purge of a whole store reads one dead letter at a time.
    fn selected_ids(&self, select: &Selection) -> Result<Vec<u64>, AdminError> {
        match select {
            Selection::All(filter) => {
                let mut ids = Vec::new();
                self.each_dead_letter(filter, |d| {
                    ids.push(d.id);
                    true
                })?;
                Ok(ids)
            }
            Selection::Ids(ids) => {
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                Ok(ids.iter().copied().filter(|id| seen.insert(*id)).collect())
            }
        }
    }

    /// The record a dead letter becomes when replayed, or why it still fails.
    fn fresh(&self, record: &Record) -> Result<Result<Record, StillFailing>, AdminError> {
        let id = record.meta.dead_letter.as_ref().map_or(0, |d| d.id);
        let needs_rules = record
            .meta
            .dead_letter
            .as_ref()
            .is_some_and(|d| !matches!(d.reason, Reason::PublishRejected | Reason::TooLarge));
        let classifier = match (&self.classifier, needs_rules) {
            (Err(e), true) => return Err(AdminError::Protocol(format!("cannot replay: {e}"))),
            (c, _) => c.as_ref().ok(),
        };
        let again = crate::dlq::replayed(record, |reading| match classifier {
            Some(c) => c.reclassify(reading, usize::MAX),
            None => record.clone(),
        });
        Ok(again.map_err(|(reason, errors)| StillFailing { id, reason, errors }))
    }

    /// Replays in chunks of at most [`REPLAY_CHUNK`] records and [`committer::BATCH_BYTES`],
    /// each durable in the outbox and gone from the store before the next is read.
    async fn replay(&self, select: &Selection) -> Result<ReplayReport, AdminError> {
        let mut report = ReplayReport::default();
        let mut chunk: Vec<(u64, Record)> = Vec::new();
        let mut bytes = 0;
        for id in self.selected_ids(select)? {
            // An entry purged or replayed meanwhile is missing.
            let Some(record) = self.outbox.dlq().get(id)? else {
                report.missing.push(id);
                continue;
            };
            if downlink_replay::is_command(&record) {
                self.replay_command(id, &record, &mut report).await?;
                continue;
            }
            match self.fresh(&record)? {
                Ok(again) => {
                    bytes += committer::weight(&again);
                    chunk.push((id, again));
                }
                Err(failing) => report.failed.push(failing),
            }
            if chunk.len() >= REPLAY_CHUNK || bytes >= committer::BATCH_BYTES {
                self.requeue(std::mem::take(&mut chunk), &mut report)
                    .await?;
                bytes = 0;
            }
        }
        self.requeue(chunk, &mut report).await?;
        Ok(report)
    }

    /// Sends a downlink's dead letter again through its downlink (checked again with its
    /// rules); removes it from the store once the MQTT broker acknowledged it.
    async fn replay_command(
        &self,
        id: u64,
        record: &Record,
        report: &mut ReplayReport,
    ) -> Result<(), AdminError> {
        match self.downlinks.replay(record).await {
            Ok(topic) => {
                self.outbox.dlq().remove(&[id])?;
                self.outbox.dlq().sync()?;
                report.moved.push(Moved {
                    id,
                    kafka_topic: String::new(),
                    mqtt_topic: Some(topic),
                });
            }
            Err((reason, errors)) => report.failed.push(StillFailing {
                id,
                reason: reason
                    .or(record.meta.dead_letter.as_ref().map(|d| d.reason))
                    .unwrap_or(Reason::Schema),
                errors,
            }),
        }
        Ok(())
    }

    /// Hands replayed records to the committer and waits until they are durable in the outbox
    /// and gone from the store.
    async fn requeue(
        &self,
        records: Vec<(u64, Record)>,
        report: &mut ReplayReport,
    ) -> Result<(), AdminError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.policy == WhenFull::Block && self.outbox.is_full() {
            for (id, record) in records {
                report.failed.push(StillFailing {
                    id,
                    reason: record
                        .meta
                        .dead_letter
                        .as_ref()
                        .map_or(Reason::PublishRejected, |d| d.reason),
                    errors: vec![Violation::whole(
                        "the outbox is full (policy block); try again when Kafka drained it",
                    )],
                });
            }
            return Ok(());
        }
        let submit = self
            .submit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| AdminError::Protocol("the gateway is stopping".into()))?;
        let moved: Vec<Moved> = records
            .iter()
            .map(|(id, r)| Moved {
                id: *id,
                kafka_topic: r.meta.kafka_topic.to_string(),
                mqtt_topic: None,
            })
            .collect();
        let (done, answer) = tokio::sync::oneshot::channel();
        submit
            .send(committer::Request::Replay(Replay { records, done }))
            .await
            .map_err(|_| AdminError::Protocol("the gateway is stopping".into()))?;
        match answer.await {
            Ok(Ok(())) => {
                report.moved.extend(moved);
                Ok(())
            }
            Ok(Err(e)) => Err(AdminError::Protocol(e)),
            Err(_) => Err(AdminError::Protocol(
                "the committer stopped before the replay was durable".into(),
            )),
        }
    }

    fn purge(&self, select: &Selection) -> Result<PurgeReport, AdminError> {
        let ids = self.selected_ids(select)?;
        let purged = self.outbox.dlq().remove(&ids)?;
        let gone: std::collections::HashSet<u64> = purged.iter().copied().collect();
        let missing = ids.into_iter().filter(|id| !gone.contains(id)).collect();
        self.outbox.dlq().sync()?;
        Ok(PurgeReport { purged, missing })
    }

    fn queue_stats(&self) -> Result<QueueReport, AdminError> {
        let snapshot = self.daemon_stats.as_ref().map(|s| s.snapshot());
        Ok(QueueReport {
            queue: self.outbox.stats(),
            routes: self.outbox.route_counts()?,
            kafka: snapshot.as_ref().map(|s| KafkaState {
                down: s.kafka_down,
                circuit_open: s.circuit_open,
                last_delivery_ms: (s.last_delivery_ms > 0).then_some(s.last_delivery_ms),
            }),
            dlq_evicted: snapshot.as_ref().map(|s| s.dlq_evicted),
            downlinks: snapshot.map(|s| s.downlinks).unwrap_or_default(),
        })
    }
}

/// Sends `request` to the running daemon, or, when none listens on the admin socket, answers it
/// from the state directory. A [`Response::Error`] becomes [`AdminError::Remote`].
pub async fn call(config: &Config, request: Request) -> Result<(Response, Mode), AdminError> {
    let (response, mode) = match daemon(config).await? {
        Some(stream) => (exchange(stream, &request).await?, Mode::Daemon),
        None => {
            let backend = Backend::direct(config)?;
            (backend.handle(request).await, Mode::Direct)
        }
    };
    match response {
        Response::Error(message) => Err(AdminError::Remote(message)),
        other => Ok((other, mode)),
    }
}

/// Hands each dead letter `filter` selects to `visit` as it arrives, oldest first, holding one at
/// a time (`dlq list`, `dlq export`): streamed from the running daemon, or read from the state
/// directory when none runs. An error from `visit` stops it and is returned.
pub async fn each_dead_letter(
    config: &Config,
    filter: Filter,
    mut visit: impl FnMut(DeadLetter) -> Result<(), AdminError>,
) -> Result<Mode, AdminError> {
    match daemon(config).await? {
        Some(stream) => {
            stream_from(stream, &Request::DlqList { filter }, &mut visit).await?;
            Ok(Mode::Daemon)
        }
        None => {
            let backend = Backend::direct(config)?;
            let mut failed = None;
            let read = backend.each_dead_letter(&filter, |d| match visit(d) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            });
            backend.close();
            read?;
            failed.map_or(Ok(Mode::Direct), Err)
        }
    }
}

/// A connection to the running daemon's admin socket, or `None` when no daemon listens on it
/// (no socket file, or a stale one: `ENOENT`/`ECONNREFUSED`).
async fn daemon(config: &Config) -> Result<Option<tokio::net::UnixStream>, AdminError> {
    let path = config.gateway.admin_socket_path();
    match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(AdminError::Socket { path, source }),
    }
}

/// Writes `request` as one line and shuts the writing side: the daemon answers once it has it.
async fn send_request(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    request: &Request,
) -> Result<(), AdminError> {
    let mut line =
        serde_json::to_vec(request).map_err(|e| AdminError::Protocol(format!("request: {e}")))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends `request` and reads its streamed answer ([`entries`]).
async fn stream_from(
    stream: tokio::net::UnixStream,
    request: &Request,
    visit: &mut impl FnMut(DeadLetter) -> Result<(), AdminError>,
) -> Result<(), AdminError> {
    let (mut read, mut write) = stream.into_split();
    send_request(&mut write, request).await?;
    let mut entries = entries::Entries::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        entries.feed(&buf[..n], |json| {
            let d = serde_json::from_slice::<DeadLetter>(json)
                .map_err(|e| AdminError::Protocol(format!("dead letter: {e}")))?;
            visit(d)
        })?;
    }
    match entries.finish()? {
        None => Ok(()),
        Some(other) => match serde_json::from_slice::<Response>(&other) {
            Ok(Response::Error(message)) => Err(AdminError::Remote(message)),
            Ok(_) => Err(AdminError::Protocol(
                "the daemon answered something else than dead letters".into(),
            )),
            Err(e) => Err(AdminError::Protocol(format!("response: {e}"))),
        },
    }
}

/// Sends `request` to the running daemon only (never opening the state directory, which would
/// keep a starting daemon out of it): for `sensorgate top`, which watches a live gateway.
pub async fn call_daemon(
    path: &std::path::Path,
    request: &Request,
) -> Result<Response, AdminError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| AdminError::Socket {
            path: path.to_owned(),
            source,
        })?;
    match exchange(stream, request).await? {
        Response::Error(message) => Err(AdminError::Remote(message)),
        other => Ok(other),
    }
}

async fn exchange(
    stream: tokio::net::UnixStream,
    request: &Request,
) -> Result<Response, AdminError> {
    let (read, mut write) = stream.into_split();
    send_request(&mut write, request).await?;
    let mut answer = Vec::new();
    BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE))
        .read_until(b'\n', &mut answer)
        .await?;
    serde_json::from_slice(&answer).map_err(|e| AdminError::Protocol(format!("response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeadLetterInfo, Origin};

    #[tokio::test]
    async fn publish_rejected_entries_are_resent_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.json"), br#"{"type":"object"}"#).unwrap();
        let text = r#"
            [gateway]
            id = "gw"
            state_dir = "state"
            schemas_dir = "."
            [kafka]
            brokers = "x:9092"
            [[mqtt]]
            name = "m"
            url = "mqtt://localhost"
            topics = ["s/#"]
            [[route]]
            source = "m"
            topic_filter = "s/+"
            schema = "r.json"
            kafka_topic = "readings"
        "#;
        let config = Config::parse(text, &dir.path().join("c.toml")).unwrap();
        let backend = Backend::direct(&config).unwrap();
        let record = Record {
            meta: Meta {
                gateway: "gw".into(),
                source: "m".into(),
                origin: Origin::Mqtt {
                    topic: "s/1".into(),
                },
                received_at_ms: crate::record::now_ms(),
                route: Some("r".into()),
                schema: Some("r.json".into()),
                kafka_topic: "readings".into(),
                key: Some("k".into()),
                dead_letter: None,
            },
            payload: Bytes::from_static(b"{\"big\":1}"),
        };
        let mut rejected = record.clone();
        rejected.meta.dead_letter = Some(Box::new(DeadLetterInfo {
            id: 7,
            reason: Reason::PublishRejected,
            errors: vec![Violation::whole("Broker: Message size too large")],
            original_len: None,
        }));
        backend.outbox.dlq().insert(&[(7, &rejected)]).unwrap();
        assert_eq!(backend.outbox.stats().depth, 0);
        let Response::Replayed(report) = backend
            .handle(Request::DlqReplay {
                select: Selection::Ids(vec![7, 999]),
            })
            .await
        else {
            panic!()
        };
        assert_eq!(
            report.moved,
            vec![Moved {
                id: 7,
                kafka_topic: "readings".into(),
                mqtt_topic: None,
            }]
        );
        assert_eq!(report.missing, vec![999]);
        assert_eq!(backend.outbox.stats().depth, 1);
        let mut reader = backend.outbox.reader(0);
        let frame = reader.next_frame().unwrap().unwrap();
        let frame = crate::outbox::codec::Frame::parse(&frame).unwrap();
        let (seq, queued) = frame.records().next().unwrap().unwrap();
        assert_eq!(
            queued.to_record(seq),
            record,
            "the same record, no longer a dead letter"
        );
        assert_eq!(backend.outbox.stats().dead_letters, 0);
    }

    #[test]
    fn dead_letters_round_trip_through_json_text_or_base64() {
        for payload in [&b"{\"t\":\"hot\"}"[..], &b"\xff\xfe\x00bin"[..]] {
            let record = Record {
                meta: Meta {
                    gateway: "gw".into(),
                    source: "m".into(),
                    origin: Origin::Mqtt { topic: "s".into() },
                    received_at_ms: 7,
                    route: Some("r".into()),
                    schema: None,
                    kafka_topic: "t.DLQ".into(),
                    key: None,
                    dead_letter: Some(Box::new(DeadLetterInfo {
                        id: 3,
                        reason: Reason::NotJson,
                        errors: vec![Violation::whole("x")],
                        original_len: None,
                    })),
                },
                payload: Bytes::copy_from_slice(payload),
            };
            let line = serde_json::to_string(&DeadLetter::from_record(&record)).unwrap();
            let back: DeadLetter = serde_json::from_str(&line).unwrap();
            assert_eq!(back.id, 3);
            assert_eq!(back.to_record().unwrap(), record);
        }
        let request: Request =
            serde_json::from_str(r#"{"cmd":"dlq-list","filter":{"reason":"schema"}}"#).unwrap();
        assert!(
            matches!(request, Request::DlqList { filter } if filter.reason == Some(Reason::Schema))
        );
    }
}
