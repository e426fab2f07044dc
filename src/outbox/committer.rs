//! Group commit: sources submit records with an acknowledgement callback; the committer appends
//! everything that arrives within `queue.commit_interval` (up to `queue.max_batch`), makes it
//! durable with one flush, and only then runs the callbacks, in arrival order.
//!
//! When the outbox is full under the `block` policy, or the disk refuses a write, the committer
//! holds the remaining submissions unacknowledged and retries; MQTT brokers keep redelivering
//! what was never acknowledged, so nothing is lost while it waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};

use super::{Appended, Outbox};
use crate::config::QueueConfig;
use crate::record::Record;

/// Runs once the submission is durable (e.g. sends the MQTT PUBACK).
pub type Ack = Box<dyn FnOnce() + Send>;

/// A record on its way into the outbox.
pub struct Submission {
    /// The record.
    pub record: Record,
    /// Called after the commit that made the record durable.
    pub ack: Option<Ack>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("record", &self.record)
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

/// Where sources send submissions.
pub type Submitter = mpsc::Sender<Submission>;

/// The group-commit task.
#[derive(Debug)]
pub struct Committer {
    outbox: Arc<Outbox>,
    rx: mpsc::Receiver<Submission>,
    interval: Duration,
    max_batch: usize,
}

impl Committer {
    /// A committer and the sender for sources. The channel holds one batch, so a stalled
    /// committer pushes back on sources instead of growing memory.
    pub fn new(outbox: Arc<Outbox>, config: &QueueConfig) -> (Self, Submitter) {
        let (tx, rx) = mpsc::channel(config.max_batch.max(1));
        let committer = Self {
            outbox,
            rx,
            interval: config.commit_interval,
            max_batch: config.max_batch.max(1),
        };
        (committer, tx)
    }

    /// Commits batches until every [`Submitter`] is dropped and the last batch is durable.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            if self.rx.recv_many(&mut batch, self.max_batch).await == 0 {
                return;
            }
            let deadline = Instant::now() + self.interval;
            let mut closed = false;
            while batch.len() < self.max_batch {
                let room = self.max_batch - batch.len();
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 { closed = true; break },
                    _ = sleep_until(deadline) => break,
                }
            }
            self.outbox.stats.heartbeats.committer_busy(true);
            self.store(std::mem::take(&mut batch)).await;
            self.outbox.stats.heartbeats.committer_busy(false);
            if closed {
                return;
            }
        }
    }

    async fn store(&self, batch: Vec<Submission>) {
        let mut pending: VecDeque<Submission> = batch.into();
        let mut appended: Vec<Option<Ack>> = Vec::with_capacity(pending.len());
        let mut failures = 0u32;
        let mut blocked_since: Option<Instant> = None;
        loop {
            let mut full = false;
            while let Some(mut sub) = pending.pop_front() {
                match self.outbox.append(&mut sub.record) {
                    Ok(Appended::Stored(_)) => appended.push(sub.ack),
                    Ok(Appended::Full) => {
                        pending.push_front(sub);
                        full = true;
                        break;
                    }
                    Err(e) => {
                        pending.push_front(sub);
                        failures += 1;
                        self.backoff(failures, &e).await;
                        break;
                    }
                }
            }
            if !appended.is_empty() {
                if let Err(e) = self.outbox.commit().await {
                    failures += 1;
                    self.backoff(failures, &e).await;
                    continue;
                }
                if failures > 0 {
                    tracing::info!(attempts = failures, "Outbox writes succeed again");
                    failures = 0;
                }
                self.outbox.stats.committed(appended.len() as u64);
                for ack in appended.drain(..).flatten() {
                    ack();
                }
            }
            if pending.is_empty() {
                if let Some(since) = blocked_since {
                    tracing::info!(
                        waited_ms = since.elapsed().as_millis() as u64,
                        "Outbox has room again: acknowledging readings"
                    );
                }
                return;
            }
            if full {
                if blocked_since.is_none() {
                    blocked_since = Some(Instant::now());
                    tracing::warn!(
                        waiting = pending.len(),
                        "Outbox full (policy block): holding acknowledgements until Kafka drains it"
                    );
                }
                // The notification can race with the check; the timeout makes that harmless.
                // Waiting for room is legitimate, not a stall: keep the watchdog fed.
                let _ = timeout(Duration::from_millis(500), self.outbox.wait_for_room()).await;
                self.outbox.stats.heartbeats.committer_busy(true);
            }
        }
    }

    async fn backoff(&self, failures: u32, error: &super::OutboxError) {
        let delay = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
        if failures == 1 || failures % 60 == 0 {
            tracing::error!(
                error = %error,
                attempts = failures,
                "Cannot write the outbox (disk full or failing?); readings stay unacknowledged and will be retried"
            );
        }
        // A failing disk that answers is not a stall: do not starve the watchdog while waiting.
        self.outbox.stats.heartbeats.committer_busy(false);
        tokio::time::sleep(delay).await;
        self.outbox.stats.heartbeats.committer_busy(true);
    }
}
