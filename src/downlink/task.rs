//! The downlink's loop: one task that takes commands from the consumer, the MQTT connection's
//! events, the committer's acknowledgements of dead letters and `dlq replay` requests, and after
//! each of them publishes what the window and the breaker allow, pauses or resumes the
//! partitions, and commits offsets (see the module doc of [`super`] for the guarantees).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::consumer::{self, Rebalanced};
use super::link::{Link, LinkEvent};
use super::replay::{Refusal, ReplayRequest, REPLAY_WAIT};
use super::rules;
use super::window::{Command, SlotId, Stage, Window};
use super::{Downlink, DownlinkError};
use crate::backoff::Backoff;
use crate::outbox::committer::{AckToken, Request, Submission};
use crate::publish::circuit::Circuit;
use crate::record::{now_ms, DeadLetterInfo, Meta, Origin, Reason, Record, Violation};
use crate::telemetry::downlink::CommandResult;
use crate::telemetry::events::{DownlinkLinkLost, Event as _};

/// How often moved offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often the consumer lag is fetched.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// How often timers (acknowledgement timeout, replay deadlines) are looked at while something
/// waits on them.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopping downlink waits for PUBACKs and dead letters in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A replay waiting for its PUBACK.
struct Reply {
    done: oneshot::Sender<Result<String, Refusal>>,
    topic: String,
    deadline: Instant,
}

/// The loop's state.
struct Run {
    window: Window,
    link: Option<Link>,
    connected: bool,
    circuit: Circuit,
    backoff: Backoff,
    connect_at: Option<Instant>,
    failures: u32,
    assigned: BTreeSet<i32>,
    paused: bool,
    last_commit: Instant,
    next_lag: Instant,
    next_check: Instant,
    lag_task: Option<JoinHandle<BTreeMap<i32, i64>>>,
    replies: HashMap<u32, Reply>,
    closed: bool,
}

async fn next_link_event(link: &mut Option<Link>) -> LinkEvent {
    match link {
        Some(link) => link
            .next()
            .await
            .unwrap_or_else(|| LinkEvent::Lost("connection task ended".into())),
        None => std::future::pending().await,
    }
}

async fn lag_done(task: &mut Option<JoinHandle<BTreeMap<i32, i64>>>) -> BTreeMap<i32, i64> {
    match task {
        Some(task) => task.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

impl Downlink {
    /// Consumes and delivers until `stop` is cancelled, then waits up to [`STOP_GRACE`] for
    /// what is in flight, commits, and disconnects.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), DownlinkError> {
        let consumer = self.consumer.clone();
        consumer
            .subscribe(&[&self.topic])
            .map_err(|source| DownlinkError::Kafka {
                name: self.name.to_string(),
                source,
            })?;
        tracing::info!(
            downlink = %self.name, topic = %self.topic, group = %self.config.group_id(&self.gateway),
            mqtt = %self.mqtt.url, client_id = %self.client_id, "Consuming commands"
        );
        let now = Instant::now();
        let mut run = Run {
            window: Window::new(self.config.max_in_flight),
            link: None,
            connected: false,
            circuit: Circuit::Closed,
            backoff: Backoff::new(self.retry.clone()),
            connect_at: Some(now),
            failures: 0,
            assigned: BTreeSet::new(),
            paused: false,
            last_commit: now,
            next_lag: now + LAG_EVERY,
            next_check: now,
            lag_task: None,
            replies: HashMap::new(),
            closed: false,
        };
        let mut messages = consumer.stream();
        self.stats.set_up(false);
        while !run.closed {
            self.pump(&mut run).await?;
            let wake = self.next_wake(&run);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                event = next_link_event(&mut run.link) => self.on_link(&mut run, event),
                Some(tokens) = self.acks.recv() => {
                    for t in tokens {
                        run.window.dead_letter_stored(t.id, t.conn);
                    }
                }
                // A full window stops taking (librdkafka's prefetch is bounded); while paused
                // the stream is still polled, which serves the group (rebalances, liveness).
                message = messages.next(), if run.paused || !run.window.is_full() => {
                    self.rebalanced(&mut run);
                    match message {
                        Some(Ok(message)) => self.on_message(&mut run, &message).await,
                        Some(Err(e)) => tracing::debug!(downlink = %self.name, error = %e, "Kafka consumer error"),
                        None => {}
                    }
                }
                Some(request) = self.replays.recv() => self.on_replay(&mut run, request),
                lag = lag_done(&mut run.lag_task) => {
                    run.lag_task = None;
                    if !lag.is_empty() {
                        self.stats.set_lag(lag);
                    }
                }
                _ = sleep_until(wake) => {}
            }
        }
        drop(messages);
        drop(consumer);
        self.wind_down(run).await;
        Ok(())
    }

    fn next_wake(&self, run: &Run) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        if let Some(at) = run.connect_at {
            wake = wake.min(at);
        }
        if run.window.unacked() > 0 || !run.replies.is_empty() {
            wake = wake.min(run.next_check.max(now + Duration::from_millis(10)));
        }
        wake.min(run.last_commit + COMMIT_EVERY)
            .min(run.next_lag)
            .max(now)
    }

    /// Everything that follows an event: connect when due, time out acknowledgements, publish,
    /// pause or resume, commit, fetch the lag, update the gauges.
    async fn pump(&mut self, run: &mut Run) -> Result<(), DownlinkError> {
        // An assignment without messages (an empty topic) must still be seen: the lag of the
        // new partitions is fetched, and they are paused if the breaker is open.
        self.rebalanced(run);
        let now = Instant::now();
        if run.link.is_none() && run.connect_at.is_some_and(|at| at <= now) {
            if run.circuit == Circuit::Open {
                self.stats.retry();
            }
            let options = crate::ingest::mqtt::broker_options(&self.mqtt, &self.client_id)
                .map_err(|source| DownlinkError::Mqtt {
                    name: self.name.to_string(),
                    source,
                })?;
            let in_flight = u16::try_from(self.config.max_in_flight).unwrap_or(u16::MAX);
            run.link = Some(Link::open(options, in_flight));
            run.connect_at = None;
        }
        if now >= run.next_check {
            run.next_check = now + TICK;
            self.check_timers(run, now);
        }
        if run.connected {
            self.publish(run, now).await;
        }
        self.flow(run);
        run.window.advance();
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            for p in std::mem::take(&mut shared.commit_failed) {
                run.window.commit_failed(p);
            }
            shared.positions = run.window.positions().into_iter().collect();
        }
        if now >= run.last_commit + COMMIT_EVERY {
            run.last_commit = now;
            self.commit(run, CommitMode::Async);
        }
        if run.lag_task.is_none() && now >= run.next_lag && !run.assigned.is_empty() {
            run.next_lag = now + LAG_EVERY;
            let consumer = self.consumer.clone();
            let topic = self.topic.clone();
            let partitions: Vec<i32> = run.assigned.iter().copied().collect();
            run.lag_task = Some(tokio::task::spawn_blocking(move || {
                consumer::lag(&consumer, &topic, &partitions)
            }));
        }
        self.stats.set_held(run.window.held());
        self.stats.set_paused(run.paused);
        self.stats.set_circuit_open(run.circuit != Circuit::Closed);
        Ok(())
    }

    /// A publish unacknowledged for `ack_timeout` fails the connection; replays that could not
    /// be published within [`REPLAY_WAIT`] are given up.
    fn check_timers(&mut self, run: &mut Run, now: Instant) {
        if run.link.is_some() {
            if let Some(oldest) = run.window.oldest_unacked() {
                if now.duration_since(oldest.into()) > self.config.ack_timeout {
                    let why = format!(
                        "no PUBACK within ack_timeout ({} ms)",
                        self.config.ack_timeout.as_millis()
                    );
                    self.lost(run, why);
                }
            }
        }
        for (slot, ticket) in run.window.ready_replays() {
            let expired = run.replies.get(&ticket).is_none_or(|r| r.deadline <= now);
            if expired {
                run.window.drop_ready(slot);
                answer(
                    run,
                    ticket,
                    Err(refusal(format!(
                        "the downlink could not publish within {} s (is its MQTT broker down?)",
                        REPLAY_WAIT.as_secs()
                    ))),
                );
            }
        }
    }

    /// Hands ready commands to the MQTT client while the breaker's window has room; a command
    /// past its `expires_at` becomes a dead letter instead.
    async fn publish(&mut self, run: &mut Run, now: Instant) {
        let limit = run.circuit.window(self.config.max_in_flight);
        while run.window.unacked() < limit {
            let Some(slot) = run.window.next_ready() else {
                break;
            };
            let Some(command) = run.window.command(slot) else {
                continue;
            };
            let (replay, topic, payload) = (
                command.partition.is_none(),
                command.topic.clone(),
                command.payload.clone(),
            );
            if let Some(v) = rules::expired(command.expires_at_ms, now_ms()) {
                if replay {
                    let ticket = run.window.ticket(slot).unwrap_or_default();
                    run.window.drop_ready(slot);
                    answer(run, ticket, Err((Some(Reason::Expired), vec![v])));
                } else {
                    run.window.dead(slot);
                    self.dead_letter(run, slot, Reason::Expired, vec![v]).await;
                }
                continue;
            }
            run.window.handed(slot, now.into());
            let Some(link) = &run.link else { break };
            if let Err(e) = link.publish(&topic, payload).await {
                // The connection task ended: its Lost event follows and requeues the command.
                tracing::debug!(downlink = %self.name, error = %e, "Cannot hand a command to the MQTT client");
                break;
            }
        }
    }

    /// Pauses every assigned partition while the breaker is open (an outage: nothing is
    /// fetched, librdkafka drops what it prefetched), resumes once it lets commands through.
    /// A full window only stops taking messages from the stream: that lasts until PUBACKs come
    /// back (at most `ack_timeout`), and keeps librdkafka's prefetch instead of fetching it again.
    fn flow(&mut self, run: &mut Run) {
        let paused = run.circuit == Circuit::Open;
        if paused == run.paused {
            return;
        }
        let partitions: Vec<i32> = run.assigned.iter().copied().collect();
        match consumer::pause(&self.consumer, &self.topic, &partitions, paused) {
            Ok(()) => {
                run.paused = paused;
                tracing::info!(downlink = %self.name, paused, held = run.window.held(), "Kafka consumption paused or resumed");
            }
            Err(e) => {
                tracing::warn!(downlink = %self.name, error = %e, "Cannot pause or resume the Kafka partitions")
            }
        }
    }

    fn commit(&mut self, run: &mut Run, mode: CommitMode) {
        let positions = run.window.to_commit();
        if positions.is_empty() {
            return;
        }
        match consumer::commit(&self.consumer, &self.topic, &positions, mode) {
            Ok(()) => {
                tracing::debug!(downlink = %self.name, ?positions, "Committing offsets");
                for (p, position) in positions {
                    run.window.committed(p, position);
                }
            }
            Err(e) => {
                tracing::debug!(downlink = %self.name, error = %e, "Offset commit failed; it is retried")
            }
        }
    }

    /// Applies the rebalances the consumer's callbacks saw (before the message that follows
    /// them is looked at).
    fn rebalanced(&mut self, run: &mut Run) {
        let events =
            std::mem::take(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()).events);
        for event in events {
            match event {
                Rebalanced::Assigned(partitions) => {
                    run.assigned.extend(partitions.iter().copied());
                    if run.paused {
                        if let Err(e) =
                            consumer::pause(&self.consumer, &self.topic, &partitions, true)
                        {
                            tracing::warn!(downlink = %self.name, error = %e, "Cannot pause newly assigned partitions");
                        }
                    }
                }
                Rebalanced::Revoked(partitions) => {
                    run.window.revoke(&partitions);
                    for p in &partitions {
                        run.assigned.remove(p);
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, run: &mut Run, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        // Offsets the consumer jumped over were never seen: a transaction marker (one offset),
        // or commands that Kafka's retention deleted before they were consumed (librdkafka
        // then restarts at the earliest offset left).
        if let Some(expected) = run.window.next_offset(partition) {
            if offset > expected + 1 {
                tracing::warn!(
                    downlink = %self.name, partition, from = expected, to = offset - 1,
                    skipped = offset - expected,
                    "Kafka offsets skipped: commands deleted by the topic's retention before the gateway consumed them, or aborted transactions"
                );
            } else if offset > expected {
                tracing::debug!(downlink = %self.name, partition, offset = expected, "Kafka offset skipped (a transaction marker)");
            }
        }
        let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
        let (topic, expires_at_ms, verdict) = match self.rules.check(&payload) {
            Ok(target) => (target.topic, target.expires_at_ms, None),
            Err(dead) => (String::new(), None, Some(dead)),
        };
        let command = Command {
            partition: Some(partition),
            offset,
            topic,
            payload,
            expires_at_ms,
            received_at_ms: now_ms(),
        };
        let stage = if verdict.is_some() {
            Stage::Dead
        } else {
            Stage::Ready
        };
        let Some((slot, _)) = run.window.take(command, stage) else {
            tracing::debug!(downlink = %self.name, partition, offset, "Command already taken; ignored");
            return;
        };
        if let Some((reason, errors)) = verdict {
            self.dead_letter(run, slot, reason, errors).await;
        }
    }

    /// Submits the command in `slot` as a dead letter; its slot is done once the committer
    /// acknowledges it.
    async fn dead_letter(
        &mut self,
        run: &mut Run,
        slot: SlotId,
        reason: Reason,
        errors: Vec<Violation>,
    ) {
        let (Some(command), Some(ticket)) = (run.window.command(slot), run.window.ticket(slot))
        else {
            return;
        };
        self.stats.command(CommandResult::dead(reason));
        let partition = command.partition.unwrap_or(-1);
        tracing::info!(
            downlink = %self.name, partition, offset = command.offset, %reason,
            error = errors.first().map_or("", |v| v.message.as_str()),
            "Command is a dead letter"
        );
        let record = Record {
            meta: Meta {
                gateway: self.gateway.clone(),
                source: self.name.clone(),
                origin: Origin::Kafka {
                    topic: self.topic.clone(),
                    partition,
                    offset: command.offset,
                },
                received_at_ms: command.received_at_ms,
                route: None,
                schema: self.rules.schema_name().cloned(),
                kafka_topic: self.dlq_topic.clone(),
                key: None,
                dead_letter: Some(Box::new(DeadLetterInfo {
                    id: 0,
                    reason,
                    errors,
                    original_len: None,
                })),
            },
            payload: command.payload.clone(),
        };
        let ack = AckToken {
            sink: self.sink,
            conn: ticket,
            id: slot,
        };
        let request = Request::Record(Submission {
            record,
            ack: Some(ack),
        });
        if self.submit.send(request).await.is_err() {
            run.closed = true;
        }
    }

    fn on_link(&mut self, run: &mut Run, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {
                run.connected = true;
                self.stats.set_up(true);
                if run.circuit == Circuit::Open {
                    run.circuit = Circuit::HalfOpen;
                    tracing::info!(downlink = %self.name, attempts = run.failures, "Reconnected to the MQTT broker; one command probes it");
                } else {
                    tracing::info!(downlink = %self.name, "Connected to the MQTT broker");
                }
            }
            LinkEvent::Outgoing(pkid) => run.window.outgoing(pkid),
            LinkEvent::PubAck(pkid) => {
                let Some(acked) = run.window.puback(pkid) else {
                    return;
                };
                if acked.replay {
                    self.stats.replayed();
                    if let Some(reply) = run.replies.remove(&acked.ticket) {
                        let _ = reply.done.send(Ok(reply.topic));
                    }
                } else {
                    self.stats.command(CommandResult::Delivered);
                }
                if run.circuit == Circuit::HalfOpen {
                    run.circuit = Circuit::Closed;
                    run.backoff.reset();
                    run.failures = 0;
                    tracing::info!(downlink = %self.name, "The MQTT broker acknowledges again; consuming at full speed");
                }
            }
            LinkEvent::Lost(why) => self.lost(run, why),
        }
    }

    /// The connection failed (or was given up): requeue what was not acknowledged, open the
    /// breaker, reconnect after a backoff.
    fn lost(&mut self, run: &mut Run, why: String) {
        run.link = None;
        run.connected = false;
        self.stats.set_up(false);
        for ticket in run.window.connection_lost() {
            answer(
                run,
                ticket,
                Err(refusal(format!(
                    "the MQTT connection was lost before the broker acknowledged ({why}); it may still have been delivered"
                ))),
            );
        }
        run.failures += 1;
        run.circuit = Circuit::Open;
        let delay = run.backoff.next_delay();
        run.connect_at = Some(Instant::now() + delay);
        DownlinkLinkLost {
            downlink: &self.name,
            error: &why,
            attempts: run.failures,
            retry: delay,
            held: run.window.held(),
        }
        .emit(&self.events);
    }

    fn on_replay(&mut self, run: &mut Run, request: ReplayRequest) {
        let ReplayRequest { record, done } = request;
        let target = match self.rules.check(&record.payload) {
            Ok(target) => target,
            Err((reason, errors)) => {
                let _ = done.send(Err((Some(reason), errors)));
                return;
            }
        };
        if let Some(v) = rules::expired(target.expires_at_ms, now_ms()) {
            let _ = done.send(Err((Some(Reason::Expired), vec![v])));
            return;
        }
        let command = Command {
            partition: None,
            offset: -1,
            topic: target.topic.clone(),
            payload: record.payload.clone(),
            expires_at_ms: target.expires_at_ms,
            received_at_ms: record.meta.received_at_ms,
        };
        match run.window.take(command, Stage::Ready) {
            Some((_, ticket)) => {
                run.replies.insert(
                    ticket,
                    Reply {
                        done,
                        topic: target.topic,
                        deadline: Instant::now() + REPLAY_WAIT,
                    },
                );
            }
            None => {
                let _ = done.send(Err(refusal("the downlink has no room for it now")));
            }
        }
    }

    /// Stop: nothing new is published; PUBACKs and dead letters in flight get [`STOP_GRACE`];
    /// then the offsets are committed, the connection closed and the consumer closed (which
    /// leaves the group).
    async fn wind_down(mut self, mut run: Run) {
        for (slot, ticket) in run.window.ready_replays() {
            run.window.drop_ready(slot);
            answer(&mut run, ticket, Err(refusal("the gateway is stopping")));
        }
        let deadline = Instant::now() + STOP_GRACE;
        while run.window.settling() && !run.closed {
            tokio::select! {
                event = next_link_event(&mut run.link) => match event {
                    LinkEvent::Lost(_) => {
                        run.link = None;
                        run.window.connection_lost();
                    }
                    other => self.on_link(&mut run, other),
                },
                tokens = self.acks.recv() => match tokens {
                    Some(tokens) => for t in tokens {
                        run.window.dead_letter_stored(t.id, t.conn);
                    },
                    None => break,
                },
                _ = sleep_until(deadline) => {
                    tracing::warn!(downlink = %self.name, "Stopped before every command in flight was acknowledged; they are consumed again at the next start");
                    break;
                }
            }
        }
        run.window.advance();
        self.commit(&mut run, CommitMode::Sync);
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.positions = run.window.positions().into_iter().collect();
        }
        if let Some(link) = run.link.take() {
            link.disconnect(Duration::from_secs(1)).await;
        }
        self.stats.set_up(false);
        if let Some(task) = run.lag_task.take() {
            let _ = task.await;
        }
        // Closing the consumer leaves the group (and commits once more on revocation); it
        // blocks on Kafka, so not on this runtime's threads.
        let Self { consumer, name, .. } = self;
        let close = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(Duration::from_secs(3), close)
            .await
            .is_err()
        {
            tracing::debug!(downlink = %name, "Kafka consumer still closing");
        }
        tracing::info!(downlink = %name, "Downlink stopped");
    }
}

fn refusal(message: impl Into<String>) -> Refusal {
    (None, vec![Violation::whole(message)])
}

fn answer(run: &mut Run, ticket: u32, outcome: Result<String, Refusal>) {
    if let Some(reply) = run.replies.remove(&ticket) {
        let _ = reply.done.send(outcome);
    }
}
