//! The downlink's bookkeeping, without I/O: the commands it holds (slots), which partition and
//! offset each came from, where each stands (waiting to be published, handed to the MQTT client,
//! published under a packet id, a dead letter waiting for its commit, done), and how far each
//! partition's offset may be committed.
//!
//! Invariants:
//! - a partition's commit position is one past the last offset of a contiguous run of done
//!   commands from the first one taken since it was assigned: it never passes a command that is
//!   not done (a PUBACK, or a dead letter durable in the outbox and the local DLQ);
//! - commands are published in the order they were taken from Kafka (so one device's commands,
//!   which share a partition, reach MQTT in Kafka order), and after a lost connection everything
//!   not acknowledged is published again in that same order;
//! - the MQTT client numbers publishes in the order it receives them, so the n-th `Outgoing`
//!   packet id belongs to the n-th command handed to it;
//! - a command of a revoked partition is forgotten once nothing refers to it any more (its PUBACK
//!   or its dead letter's acknowledgement arrives, or the connection is lost).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

/// A slot number: what the committer's acknowledgement of a dead letter names.
pub type SlotId = u16;

/// A command held by the downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Its partition, or `None` for a dead letter replayed by `dlq replay`.
    pub partition: Option<i32>,
    /// Its offset (meaningless for a replay).
    pub offset: i64,
    /// The MQTT topic (empty for a dead letter).
    pub topic: String,
    /// The bytes exactly as produced.
    pub payload: Bytes,
    /// `expires_at`, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// When the gateway took it from Kafka, ms since the epoch.
    pub received_at_ms: u64,
}

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting to be published.
    Ready,
    /// Handed to the MQTT client, which has not numbered it yet.
    Handed(Instant),
    /// Published under this packet id; waiting for its PUBACK.
    Sent(u16, Instant),
    /// A dead letter on its way into the outbox.
    Dead,
    /// Acknowledged by the broker, or a durable dead letter.
    Done,
}

#[derive(Debug)]
struct Slot {
    command: Command,
    stage: Stage,
    ticket: u32,
    order: u64,
    orphan: bool,
}

#[derive(Debug, Default)]
struct Partition {
    /// `(offset, slot)` in offset order, from the first command not yet committable.
    entries: VecDeque<(i64, SlotId)>,
    last_taken: Option<i64>,
    /// One past the last command of the contiguous done run.
    position: Option<i64>,
    /// The position last handed to Kafka.
    committed: Option<i64>,
}

/// What a PUBACK settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The slot.
    pub slot: SlotId,
    /// Its ticket (replays are answered by ticket).
    pub ticket: u32,
    /// Whether it was a replay.
    pub replay: bool,
}

/// Every command the downlink holds.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    slots: Vec<Option<Slot>>,
    free: Vec<SlotId>,
    held: usize,
    partitions: BTreeMap<i32, Partition>,
    ready: VecDeque<SlotId>,
    handed: VecDeque<SlotId>,
    sent: HashMap<u16, SlotId>,
    next_order: u64,
    next_ticket: u32,
}

impl Window {
    /// A window that counts as full at `capacity` commands.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            held: 0,
            partitions: BTreeMap::new(),
            ready: VecDeque::new(),
            handed: VecDeque::new(),
            sent: HashMap::new(),
            next_order: 0,
            next_ticket: 0,
        }
    }

    /// Commands held (taken and not yet committable, or replays not yet answered).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Whether the window holds `capacity` commands or more.
    pub fn is_full(&self) -> bool {
        self.held >= self.capacity
    }

    /// Commands handed to the MQTT client and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.handed.len() + self.sent.len()
    }

    /// Whether a command is in flight: handed, published and not acknowledged, or a dead letter
    /// not yet stored.
    pub fn settling(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| matches!(s.stage, Stage::Handed(_) | Stage::Sent(..) | Stage::Dead))
    }

    /// Whether a command waits to be published.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The command in `slot`.
    pub fn command(&self, slot: SlotId) -> Option<&Command> {
        self.slot(slot).map(|s| &s.command)
    }

    /// The ticket of `slot`.
    pub fn ticket(&self, slot: SlotId) -> Option<u32> {
        self.slot(slot).map(|s| s.ticket)
    }

    fn slot(&self, slot: SlotId) -> Option<&Slot> {
        self.slots.get(usize::from(slot)).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, slot: SlotId) -> Option<&mut Slot> {
        self.slots
            .get_mut(usize::from(slot))
            .and_then(Option::as_mut)
    }

    /// Takes a command at `stage` (`Ready`, or `Dead` when it failed its checks). `None` when
    /// the command is one the window already took (an offset not above the partition's last,
    /// which only a re-fetch can bring) or no slot number is left.
    pub fn take(&mut self, command: Command, stage: Stage) -> Option<(SlotId, u32)> {
        if let Some(p) = command.partition {
            let last = self.partitions.get(&p).and_then(|q| q.last_taken);
            if last.is_some_and(|last| command.offset <= last) {
                return None;
            }
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = SlotId::try_from(self.slots.len()).ok()?;
                self.slots.push(None);
                id
            }
        };
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        if let Some(p) = command.partition {
            let q = self.partitions.entry(p).or_default();
            q.entries.push_back((command.offset, id));
            q.last_taken = Some(command.offset);
        }
        if stage == Stage::Ready {
            self.ready.push_back(id);
        }
        self.slots[usize::from(id)] = Some(Slot {
            command,
            stage,
            ticket,
            order: self.next_order,
            orphan: false,
        });
        self.next_order += 1;
        self.held += 1;
        Some((id, ticket))
    }

    /// The offset that should come next from `partition`: one past the last one taken.
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.last_taken.map(|o| o + 1)
    }

    /// The next command to publish, taken off the ready queue.
    pub fn next_ready(&mut self) -> Option<SlotId> {
        self.ready.pop_front()
    }

    /// `slot` (just taken off the ready queue) became a dead letter (it expired).
    pub fn dead(&mut self, slot: SlotId) {
        if let Some(s) = self.slot_mut(slot) {
            s.stage = Stage::Dead;
        }
    }

    /// `slot` was handed to the MQTT client at `now`.
    pub fn handed(&mut self, slot: SlotId, now: Instant) {
        if let Some(s) = self.slot_mut(slot) {
            s.stage = Stage::Handed(now);
            self.handed.push_back(slot);
        }
    }

    /// The MQTT client sent the oldest handed command under `pkid`.
    pub fn outgoing(&mut self, pkid: u16) {
        let Some(slot) = self.handed.pop_front() else {
            return;
        };
        if let Some(s) = self.slot_mut(slot) {
            let at = match s.stage {
                Stage::Handed(at) => at,
                _ => Instant::now(),
            };
            s.stage = Stage::Sent(pkid, at);
            self.sent.insert(pkid, slot);
        }
    }

    /// The broker acknowledged `pkid`.
    pub fn puback(&mut self, pkid: u16) -> Option<Acked> {
        let slot = self.sent.remove(&pkid)?;
        self.settle(slot)
    }

    /// The committer made the dead letter in `slot` durable; `ticket` guards against an
    /// acknowledgement meant for an earlier use of the slot.
    pub fn dead_letter_stored(&mut self, slot: SlotId, ticket: u32) -> bool {
        let matches = self
            .slot(slot)
            .is_some_and(|s| s.ticket == ticket && s.stage == Stage::Dead);
        if matches {
            self.settle(slot);
        }
        matches
    }

    fn settle(&mut self, slot: SlotId) -> Option<Acked> {
        let s = self.slot_mut(slot)?;
        s.stage = Stage::Done;
        let acked = Acked {
            slot,
            ticket: s.ticket,
            replay: s.command.partition.is_none(),
        };
        if acked.replay || s.orphan {
            self.release(slot);
        }
        Some(acked)
    }

    fn release(&mut self, slot: SlotId) {
        if let Some(entry) = self.slots.get_mut(usize::from(slot)) {
            if entry.take().is_some() {
                self.free.push(slot);
                self.held -= 1;
            }
        }
    }

    /// The connection was lost: every command handed or sent and not acknowledged is published
    /// again, in its original order. Returns the tickets of replays that were in flight (they
    /// are given up: their caller is told, and the dead letter stays in the store).
    pub fn connection_lost(&mut self) -> Vec<u32> {
        let mut again: Vec<SlotId> = self.handed.drain(..).collect();
        again.extend(self.sent.drain().map(|(_, slot)| slot));
        let mut given_up = Vec::new();
        let mut requeue = Vec::new();
        for slot in again {
            let Some(s) = self.slot_mut(slot) else {
                continue;
            };
            let (replay, orphan, ticket, order) =
                (s.command.partition.is_none(), s.orphan, s.ticket, s.order);
            if replay || orphan {
                if replay {
                    given_up.push(ticket);
                }
                self.release(slot);
            } else {
                s.stage = Stage::Ready;
                requeue.push((order, slot));
            }
        }
        requeue.extend(self.ready.drain(..).filter_map(|slot| {
            self.slots[usize::from(slot)]
                .as_ref()
                .map(|s| (s.order, slot))
        }));
        requeue.sort_unstable();
        self.ready = requeue.into_iter().map(|(_, slot)| slot).collect();
        given_up
    }

    /// When the oldest command not yet acknowledged was handed to the client.
    pub fn oldest_unacked(&self) -> Option<Instant> {
        let handed = self
            .handed
            .front()
            .and_then(|slot| match self.slot(*slot)?.stage {
                Stage::Handed(at) => Some(at),
                _ => None,
            });
        let sent = self
            .sent
            .values()
            .filter_map(|slot| match self.slot(*slot)?.stage {
                Stage::Sent(_, at) => Some(at),
                _ => None,
            });
        handed.into_iter().chain(sent).min()
    }

    /// Replays still waiting to be published, with their tickets, for giving up on them.
    pub fn ready_replays(&self) -> Vec<(SlotId, u32)> {
        self.ready
            .iter()
            .filter_map(|slot| {
                let s = self.slot(*slot)?;
                s.command.partition.is_none().then_some((*slot, s.ticket))
            })
            .collect()
    }

    /// Drops a replay that waits to be published.
    pub fn drop_ready(&mut self, slot: SlotId) {
        self.ready.retain(|s| *s != slot);
        self.release(slot);
    }

    /// Moves each partition's commit position over its done commands and frees their slots.
    pub fn advance(&mut self) {
        let slots = &mut self.slots;
        let mut freed = Vec::new();
        for q in self.partitions.values_mut() {
            while let Some(&(offset, slot)) = q.entries.front() {
                let done = slots
                    .get(usize::from(slot))
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.stage == Stage::Done);
                if !done {
                    break;
                }
                q.entries.pop_front();
                q.position = Some(offset + 1);
                freed.push(slot);
            }
        }
        for slot in freed {
            self.release(slot);
        }
    }

    /// Every partition's commit position (for a commit on revocation or at the end).
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, q)| Some((*p, q.position?)))
            .collect()
    }

    /// Positions that moved since they were last handed to Kafka.
    pub fn to_commit(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, q)| {
                q.position
                    .filter(|pos| q.committed != Some(*pos))
                    .map(|pos| (*p, pos))
            })
            .collect()
    }

    /// `position` of `partition` was handed to Kafka.
    pub fn committed(&mut self, partition: i32, position: i64) {
        if let Some(q) = self.partitions.get_mut(&partition) {
            q.committed = Some(position);
        }
    }

    /// A commit of `partition` failed: commit its position again.
    pub fn commit_failed(&mut self, partition: i32) {
        if let Some(q) = self.partitions.get_mut(&partition) {
            q.committed = None;
        }
    }

    /// `partitions` were revoked: their commands are forgotten (the next owner consumes them
    /// again from the committed offset); commands in flight are released when they settle.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            let Some(q) = self.partitions.remove(p) else {
                continue;
            };
            for (_, slot) in q.entries {
                let Some(s) = self.slot_mut(slot) else {
                    continue;
                };
                match s.stage {
                    Stage::Handed(_) | Stage::Sent(..) | Stage::Dead => s.orphan = true,
                    Stage::Ready => {
                        self.ready.retain(|r| *r != slot);
                        self.release(slot);
                    }
                    Stage::Done => self.release(slot),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(partition: i32, offset: i64) -> Command {
        Command {
            partition: Some(partition),
            offset,
            topic: format!("devices/d{partition}/commands"),
            payload: Bytes::from(format!("{partition}@{offset}")),
            expires_at_ms: None,
            received_at_ms: 0,
        }
    }

    fn publish_all(w: &mut Window, first_pkid: u16) -> Vec<SlotId> {
        let mut out = Vec::new();
        let now = Instant::now();
        while let Some(slot) = w.next_ready() {
            w.handed(slot, now);
            out.push(slot);
        }
        for i in 0..out.len() {
            w.outgoing(first_pkid + i as u16);
        }
        out
    }

    #[test]
    fn commits_stop_at_the_first_command_not_acknowledged() {
        let mut w = Window::new(10);
        for offset in 10..14 {
            w.take(cmd(0, offset), Stage::Ready).unwrap();
        }
        publish_all(&mut w, 1);
        // Acknowledged out of order: 11 and 13, then 10.
        w.puback(2).unwrap();
        w.puback(4).unwrap();
        w.advance();
        assert_eq!(w.to_commit(), vec![], "10 is not acknowledged");
        w.puback(1).unwrap();
        w.advance();
        assert_eq!(w.to_commit(), vec![(0, 12)], "10 and 11 done, 12 is not");
        w.committed(0, 12);
        assert!(w.to_commit().is_empty());
        assert_eq!(w.held(), 2);
        w.puback(3).unwrap();
        w.advance();
        assert_eq!(w.to_commit(), vec![(0, 14)]);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn dead_letters_count_as_done_only_once_stored() {
        let mut w = Window::new(10);
        let (dead, ticket) = w.take(cmd(1, 0), Stage::Dead).unwrap();
        w.take(cmd(1, 1), Stage::Ready).unwrap();
        publish_all(&mut w, 1);
        w.puback(1).unwrap();
        w.advance();
        assert!(w.to_commit().is_empty());
        assert!(!w.dead_letter_stored(dead, ticket + 1), "a stale ticket");
        assert!(w.dead_letter_stored(dead, ticket));
        w.advance();
        assert_eq!(w.to_commit(), vec![(1, 2)]);
    }

    #[test]
    fn a_lost_connection_republishes_in_the_original_order() {
        let mut w = Window::new(10);
        for offset in 0..3 {
            w.take(cmd(0, offset), Stage::Ready).unwrap();
        }
        w.take(cmd(1, 0), Stage::Ready).unwrap();
        let now = Instant::now();
        // Two published (one acknowledged), one handed but not numbered, one still ready.
        for _ in 0..3 {
            let slot = w.next_ready().unwrap();
            w.handed(slot, now);
        }
        w.outgoing(7);
        w.outgoing(8);
        w.puback(7).unwrap();
        assert_eq!(w.unacked(), 2);
        assert!(w.oldest_unacked().is_some());
        assert!(w.connection_lost().is_empty());
        assert_eq!(w.unacked(), 0);
        let mut order = Vec::new();
        while let Some(s) = w.next_ready() {
            let c = w.command(s).unwrap();
            order.push((c.partition, c.offset));
        }
        assert_eq!(order, [(Some(0), 1), (Some(0), 2), (Some(1), 0)]);
        assert_eq!(
            w.puback(8),
            None,
            "a packet id of the old connection means nothing"
        );
    }

    #[test]
    fn offsets_already_taken_are_refused() {
        let mut w = Window::new(10);
        w.take(cmd(0, 5), Stage::Ready).unwrap();
        assert!(w.take(cmd(0, 5), Stage::Ready).is_none());
        assert!(w.take(cmd(0, 4), Stage::Ready).is_none());
        assert!(w.take(cmd(0, 6), Stage::Ready).is_some());
        assert_eq!(w.next_offset(0), Some(7));
        assert_eq!(w.next_offset(1), None);
        assert!(w.take(cmd(1, 0), Stage::Ready).is_some());
    }

    #[test]
    fn revoked_partitions_are_forgotten_and_their_flights_released_later() {
        let mut w = Window::new(2);
        w.take(cmd(0, 0), Stage::Ready).unwrap();
        w.take(cmd(0, 1), Stage::Ready).unwrap();
        assert!(w.is_full());
        let slot = w.next_ready().unwrap();
        w.handed(slot, Instant::now());
        w.outgoing(1);
        w.revoke(&[0]);
        assert!(!w.has_ready());
        assert_eq!(w.held(), 1, "the one in flight stays until it settles");
        assert!(w.positions().is_empty());
        w.puback(1).unwrap();
        assert_eq!(w.held(), 0);
        // Assigned again: the same offsets are taken afresh.
        assert!(w.take(cmd(0, 0), Stage::Ready).is_some());
    }

    #[test]
    fn replays_hold_no_offset_and_are_given_up_on_a_lost_connection() {
        let mut w = Window::new(4);
        let replay = Command {
            partition: None,
            ..cmd(0, -1)
        };
        let (slot, ticket) = w.take(replay.clone(), Stage::Ready).unwrap();
        assert_eq!(w.ready_replays(), vec![(slot, ticket)]);
        publish_all(&mut w, 1);
        assert_eq!(w.connection_lost(), vec![ticket]);
        assert_eq!(w.held(), 0);
        let (_, ticket) = w.take(replay, Stage::Ready).unwrap();
        publish_all(&mut w, 1);
        let acked = w.puback(1).unwrap();
        assert!(acked.replay && acked.ticket == ticket);
        assert_eq!(w.held(), 0);
        assert!(w.to_commit().is_empty());
    }
}
