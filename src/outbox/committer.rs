//! Group commit: sources submit records; the committer encodes everything that arrives within
//! `queue.commit_interval` of the first (up to `queue.max_batch`) into one batch, makes it
//! durable with one sync ([`Outbox::commit`]), and only then acknowledges: one list of
//! [`AckToken`]s per source per commit, sent back to the source that must acknowledge them.
//! Committed frames go to the publisher in memory ([`Handoff`]); when the publisher lags behind
//! they are dropped there and it reads them from disk instead.
//!
//! The committer is the outbox's only writer: `dlq replay` hands its records here too
//! ([`Request::Replay`]), so they get sequence numbers in commit order and reach the publisher
//! like any other record.
//!
//! When the outbox is full under the `block` policy, or the disk refuses a write, the committer
//! holds the batch unacknowledged and retries; MQTT brokers keep redelivering what was never
//! acknowledged, so nothing is lost while it waits. An error that latches (sled's, see
//! [`OutboxError::latches`]) cannot be retried away: the committer waits until the disk takes
//! writes again, then stops with [`OutboxError::Latched`] and the service restarts. It runs on its own thread: its work is file
//! I/O, and a blocked sync must not hold up the async runtime.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant};

use super::{Batch, CommitError, Committed, Outbox, OutboxError};
use crate::backoff::Backoff;
use crate::config::QueueConfig;
use crate::record::Record;
use crate::telemetry::events::{
    DeadLettersDropped, DeadLettersFitAgain, Event as _, OutboxWritable, OutboxWriteFailed,
};

/// Acknowledges one received reading once it is durable: which source (`sink`), which of its
/// connections (`conn`), and the packet id (`id`). A source drops tokens of an older connection:
/// a packet id means nothing on another connection, and the broker redelivers anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    /// The source's ack sink ([`AckSinks::register`]).
    pub sink: u16,
    /// The connection the reading came on.
    pub conn: u32,
    /// The MQTT packet id.
    pub id: u16,
}

/// A record on its way into the outbox.
#[derive(Debug)]
pub struct Submission {
    /// The record.
    pub record: Record,
    /// Acknowledgement to send after the commit that made the record durable.
    pub ack: Option<AckToken>,
}

/// Dead letters to move back into the outbox (`dlq replay`).
#[derive(Debug)]
pub struct Replay {
    /// `(dead-letter id, record to queue)`.
    pub records: Vec<(u64, Record)>,
    /// Answered once the records are durable in the outbox and removed from the store.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What the committer takes.
#[derive(Debug)]
pub enum Request {
    /// A received reading.
    Record(Submission),
    /// A replay.
    Replay(Replay),
}

impl Request {
    /// The bytes it holds in memory, as the committer's budget counts them.
    fn weight(&self) -> usize {
        match self {
            Self::Record(sub) => weight(&sub.record),
            Self::Replay(replay) => replay.records.iter().map(|(_, r)| weight(r)).sum(),
        }
    }
}

/// Most bytes of records on their way to the committer, and in one commit. A burst of large
/// readings waits at its source (MQTT: unacknowledged, at the broker) instead of in memory; a
/// record larger than this passes alone.
pub const BATCH_BYTES: usize = 2 << 20;

/// What a record costs the budget beyond its payload: metadata and a dead letter's errors.
const RECORD_OVERHEAD: usize = 256;
/// How often a batch being gathered takes what was submitted meanwhile.
const GATHER_TICK: Duration = Duration::from_millis(2);
/// The first and the longest delay before a failed commit is written again.
const DISK_RETRY_FIRST: Duration = Duration::from_millis(100);
const DISK_RETRY_MAX: Duration = Duration::from_secs(5);

/// A record's cost against [`BATCH_BYTES`].
pub fn weight(record: &Record) -> usize {
    record.payload.len()
        + RECORD_OVERHEAD
        + record
            .meta
            .dead_letter
            .as_ref()
            .map_or(0, |d| d.errors.iter().map(|v| v.message.len()).sum())
}

/// The committer stopped: nothing more is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A request and its share of the byte budget, given back when the committer is done with it.
#[derive(Debug)]
struct Envelope {
    request: Request,
    weight: usize,
    _permit: OwnedSemaphorePermit,
}

/// Where sources send submissions: bounded in requests (`queue.max_batch`) and in bytes
/// ([`BATCH_BYTES`]); `send` waits while either is used up.
#[derive(Debug, Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Envelope>,
    budget: Arc<Semaphore>,
}

impl Submitter {
    /// Hands `request` to the committer, waiting for room.
    pub async fn send(&self, request: Request) -> Result<(), Closed> {
        let weight = request.weight();
        let permits = u32::try_from(weight.clamp(1, BATCH_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Envelope {
                request,
                weight,
                _permit: permit,
            })
            .await
            .map_err(|_| Closed)
    }
}

/// Where a source receives its acknowledgements: one vector per commit.
pub type AckReceiver = mpsc::UnboundedReceiver<Vec<AckToken>>;

/// The sources' ack channels, registered before the committer starts.
#[derive(Debug, Default)]
pub struct AckSinks {
    senders: Vec<mpsc::UnboundedSender<Vec<AckToken>>>,
}

impl AckSinks {
    /// A new sink: its number (for [`AckToken::sink`]) and the receiving end.
    pub fn register(&mut self) -> (u16, AckReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.push(tx);
        (
            u16::try_from(self.senders.len() - 1).unwrap_or(u16::MAX),
            rx,
        )
    }
}

/// Committed frames on their way to the publisher, bounded in bytes.
#[derive(Debug)]
pub struct Handoff {
    queue: Mutex<(VecDeque<Committed>, usize)>,
    ready: Condvar,
    max_bytes: usize,
}

impl Handoff {
    /// A hand-off holding at most `max_bytes` of frames.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new((VecDeque::new(), 0)),
            ready: Condvar::new(),
            max_bytes,
        }
    }

    /// Offers the frames of a commit (copied only if there is room; otherwise the publisher
    /// reads them from disk).
    pub fn offer(&self, first_seq: u64, end_seq: u64, frames: &[u8]) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.1 + frames.len() <= self.max_bytes {
            q.1 += frames.len();
            q.0.push_back(Committed {
                first_seq,
                end_seq,
                frames: bytes::Bytes::copy_from_slice(frames),
            });
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Takes the oldest commit offered.
    pub fn pop(&self) -> Option<Committed> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let c = q.0.pop_front()?;
        q.1 -= c.frames.len();
        Some(c)
    }

    /// Waits until something is offered or `timeout` passed.
    pub fn wait(&self, timeout: Duration) {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.0.is_empty() {
            let _ = self.ready.wait_timeout(q, timeout);
        }
    }

    /// Wakes a waiting publisher (shutdown).
    pub fn wake(&self) {
        self.ready.notify_all();
    }
}

/// The group-commit task.
#[derive(Debug)]
pub struct Committer {
    outbox: Arc<Outbox>,
    rx: mpsc::Receiver<Envelope>,
    sinks: AckSinks,
    handoff: Arc<Handoff>,
    interval: Duration,
    max_batch: usize,
}

impl Committer {
    /// A committer and the sender for sources. The channel holds one batch (in records and in
    /// bytes), so a stalled committer pushes back on sources instead of growing memory.
    pub fn new(
        outbox: Arc<Outbox>,
        config: &QueueConfig,
        sinks: AckSinks,
        handoff: Arc<Handoff>,
    ) -> (Self, Submitter) {
        let (tx, rx) = mpsc::channel(config.max_batch.max(1));
        let submit = Submitter {
            tx,
            budget: Arc::new(Semaphore::new(BATCH_BYTES)),
        };
        let committer = Self {
            outbox,
            rx,
            sinks,
            handoff,
            interval: config.commit_interval,
            max_batch: config.max_batch.max(1),
        };
        (committer, submit)
    }

    /// Commits batches until every [`Submitter`] is dropped and the last batch is durable.
    /// Blocks the calling thread (run it with `spawn_blocking`). Fails only with
    /// [`OutboxError::Latched`]: a write error that needs the database reopened, returned once
    /// the disk accepts writes again (the service restarts; what was held is redelivered).
    pub fn run(self) -> Result<(), OutboxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| OutboxError::Sync(format!("cannot start the committer: {e}")))?;
        runtime.block_on(self.commit_loop())
    }

    async fn commit_loop(mut self) -> Result<(), OutboxError> {
        let mut pending = Vec::with_capacity(self.max_batch);
        let mut batch = self.outbox.batch();
        let mut work = Work::default();
        loop {
            if self.rx.recv_many(&mut pending, self.max_batch).await == 0 {
                return Ok(());
            }
            let mut bytes: usize = pending.iter().map(|e| e.weight).sum();
            let deadline = Instant::now() + self.interval;
            let mut closed = false;
            // The rest of the batch is gathered every GATHER_TICK, not as it arrives: waiting
            // in `recv` would wake this thread for every submission (a futex wake-up and two
            // context switches per reading, a quarter of the gateway's CPU in a backlog drain).
            while pending.len() < self.max_batch && bytes < BATCH_BYTES {
                let start = pending.len();
                while pending.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok(envelope) => pending.push(envelope),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                bytes += pending[start..].iter().map(|e| e.weight).sum::<usize>();
                let now = Instant::now();
                if closed || now >= deadline || pending.len() >= self.max_batch {
                    break;
                }
                sleep_until(deadline.min(now + GATHER_TICK)).await;
            }
            self.outbox.stats.heartbeats.committer_busy(true);
            work.fill(&mut pending, &self.outbox, &mut batch);
            let stored = self.store(&mut batch, &mut work);
            self.outbox.stats.heartbeats.committer_busy(false);
            stored?;
            if closed {
                return Ok(());
            }
        }
    }

    /// Commits `batch` (retrying until it is durable), then acknowledges. A failed attempt is
    /// never acknowledged and its sync never retried: the batch is written again, whole, to a
    /// fresh segment. The first failure of an outage logs one error and raises
    /// `sensorgate_outbox_write_failing` (and `/readyz`, STATUS=) until a commit succeeds.
    fn store(&mut self, batch: &mut Batch, work: &mut Work) -> Result<(), OutboxError> {
        // Its attempts are the failed commits of this batch.
        let mut retry = Backoff::doubling(DISK_RETRY_FIRST, DISK_RETRY_MAX);
        let mut blocked = false;
        loop {
            let dead: Vec<&Record> = work.dead.iter().map(|i| &work.records[*i]).collect();
            match self.outbox.commit(batch, &dead) {
                Ok(committed) => {
                    if retry.attempts() > 0 {
                        OutboxWritable {
                            attempts: retry.attempts(),
                        }
                        .emit(&self.outbox.stats);
                    }
                    if blocked {
                        tracing::info!("Outbox has room again: acknowledging readings");
                    }
                    self.committed(committed, batch, work);
                    self.outbox.begin(batch);
                    return Ok(());
                }
                Err(CommitError::Full) => {
                    if !blocked {
                        blocked = true;
                        tracing::warn!(
                            waiting = batch.len(),
                            "Outbox full (policy block): holding acknowledgements until Kafka drains it"
                        );
                    }
                    // Waiting for room is legitimate, not a stall: keep the watchdog fed.
                    self.outbox.stats.heartbeats.committer_busy(false);
                    self.outbox.wait_for_room(Duration::from_millis(500));
                    self.outbox.stats.heartbeats.committer_busy(true);
                }
                Err(CommitError::Failed(e)) => {
                    OutboxWriteFailed {
                        error: &e,
                        waiting: batch.len() as usize,
                    }
                    .emit(&self.outbox.stats);
                    if e.latches() {
                        self.wait_until_writable(&mut retry, batch.len() as usize);
                        return Err(OutboxError::Latched(Box::new(e)));
                    }
                    self.pause(&mut retry);
                }
            }
        }
    }

    /// After a latching error: waits until the disk takes a probe write (so that a restart
    /// does not fail the same way and loop), keeping the watchdog fed meanwhile.
    fn wait_until_writable(&self, retry: &mut Backoff, waiting: usize) {
        while let Err(e) = self.outbox.probe_writable() {
            OutboxWriteFailed { error: &e, waiting }.emit(&self.outbox.stats);
            self.pause(retry);
        }
        tracing::warn!(
            "The disk takes writes again; the service restarts to reopen the dead-letter database"
        );
    }

    /// Sleeps `retry`'s next delay; a failing disk that answers is not a stall, so the watchdog
    /// stays fed.
    fn pause(&self, retry: &mut Backoff) {
        let delay = retry.next_delay();
        self.outbox.stats.heartbeats.committer_busy(false);
        std::thread::sleep(delay);
        self.outbox.stats.heartbeats.committer_busy(true);
    }

    fn committed(&mut self, committed: Committed, batch: &Batch, work: &mut Work) {
        let stored = committed.end_seq - committed.first_seq;
        self.outbox.stats.committed(stored);
        if !batch.frames().is_empty() {
            self.handoff
                .offer(committed.first_seq, committed.end_seq, batch.frames());
        }
        for (sink, tokens) in work.acks.iter_mut().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            if let Some(tx) = self.sinks.senders.get(sink) {
                let _ = tx.send(std::mem::take(tokens));
            } else {
                tokens.clear();
            }
        }
        if !work.replays.is_empty() {
            for replay in work.replays.drain(..) {
                let result = self
                    .outbox
                    .dlq()
                    .remove(&replay.ids)
                    .and_then(|_| self.outbox.dlq().sync())
                    .map(drop)
                    .map_err(|e| {
                        format!(
                            "the records are queued again but could not be removed from the \
                             dead-letter store ({e}); a later replay would send them twice"
                        )
                    });
                let _ = replay.done.send(result);
            }
        }
        work.clear();
    }
}

/// A replay waiting for its commit.
#[derive(Debug)]
struct PendingReplay {
    ids: Vec<u64>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The records of one batch and what to do once it is durable.
#[derive(Debug, Default)]
struct Work {
    records: Vec<Record>,
    dead: Vec<usize>,
    acks: Vec<Vec<AckToken>>,
    replays: Vec<PendingReplay>,
    /// Dead letters are being dropped ([`Outbox::dead_letter_room`] ran out).
    dropping: bool,
}

impl Work {
    fn fill(&mut self, pending: &mut Vec<Envelope>, outbox: &Outbox, batch: &mut Batch) {
        outbox.begin(batch);
        let dead_room = outbox.dead_letter_room();
        let mut dropped = 0u64;
        for envelope in pending.drain(..) {
            match envelope.request {
                Request::Record(sub) => {
                    let dead = sub.record.meta.dead_letter.is_some();
                    // Dead letters past their share of the outbox are dropped, not stored: a
                    // counted drop, acknowledged like a stored record.
                    let admitted = !dead || batch.dead_bytes() < dead_room;
                    if admitted {
                        batch.push(&sub.record);
                    } else {
                        dropped += 1;
                    }
                    if let Some(ack) = sub.ack {
                        let sink = usize::from(ack.sink);
                        if self.acks.len() <= sink {
                            self.acks.resize_with(sink + 1, Vec::new);
                        }
                        self.acks[sink].push(ack);
                    }
                    if dead && admitted {
                        self.dead.push(self.records.len());
                        self.records.push(sub.record);
                    }
                }
                Request::Replay(replay) => {
                    let mut ids = Vec::with_capacity(replay.records.len());
                    for (id, record) in replay.records {
                        batch.push(&record);
                        ids.push(id);
                        if record.meta.dead_letter.is_some() {
                            self.dead.push(self.records.len());
                            self.records.push(record);
                        }
                    }
                    self.replays.push(PendingReplay {
                        ids,
                        done: replay.done,
                    });
                }
            }
        }
        if dropped > 0 {
            DeadLettersDropped { dropped }.emit(&outbox.stats);
        } else if self.dropping && dead_room > 0 {
            DeadLettersFitAgain.emit(&outbox.stats);
        }
        self.dropping = dropped > 0 || (self.dropping && dead_room == 0);
    }

    fn clear(&mut self) {
        self.records.clear();
        self.dead.clear();
        for a in &mut self.acks {
            a.clear();
        }
    }
}
