//! The publisher's bookkeeping: a slab of records in flight (their slot number travels to
//! librdkafka as the message's opaque, so a delivery report finds its record without a
//! lookup), and the settled watermark over sequence numbers, which tolerates confirmations out
//! of order.

use std::collections::VecDeque;

/// Fixed slots, reused; no allocation per record once grown.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value`; returns its slot.
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = Some(value);
                slot
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// Takes the value out of `slot`.
    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let value = self.entries.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value stored.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().flatten()
    }
}

/// Which sequence numbers are settled: all below [`Tracker::base`], and a bitmap above it.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Lowest unsettled sequence number.
    base: u64,
    /// Sequence number of bit 0 of `words[0]` (a multiple of 64, ≤ base).
    origin: u64,
    words: VecDeque<u64>,
    above: u64,
}

impl Tracker {
    /// Everything below `base` is settled.
    pub fn new(base: u64) -> Self {
        Self {
            base,
            origin: base & !63,
            words: VecDeque::new(),
            above: 0,
        }
    }

    /// Lowest unsettled sequence number.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Settled sequence numbers at or above the base.
    pub fn above(&self) -> u64 {
        self.above
    }

    /// Whether `seq` is settled.
    pub fn is_settled(&self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        let bit = seq - self.origin;
        let word = (bit / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    /// Marks `seq` settled (again is harmless); returns whether it was new.
    pub fn settle(&mut self, seq: u64) -> bool {
        if self.is_settled(seq) {
            return false;
        }
        let bit = seq - self.origin;
        let word = (bit / 64) as usize;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (bit % 64);
        self.above += 1;
        self.advance();
        true
    }

    /// Marks `[from, to)` settled (a gap in the log, an evicted range).
    pub fn settle_range(&mut self, from: u64, to: u64) {
        let from = from.max(self.base);
        if from >= to {
            return;
        }
        if from == self.base && self.words.iter().all(|w| *w == 0) {
            // The common case, a gap at the head: jump.
            self.base = to;
            self.origin = to & !63;
            self.words.clear();
            self.above = 0;
            return;
        }
        for seq in from..to {
            self.settle(seq);
        }
    }

    fn advance(&mut self) {
        while self.is_settled_bit(self.base) {
            self.above -= 1;
            self.base += 1;
            while self.base >= self.origin + 64 && !self.words.is_empty() {
                self.words.pop_front();
                self.origin += 64;
            }
        }
        if self.words.is_empty() {
            self.origin = self.base & !63;
        }
    }

    fn is_settled_bit(&self, seq: u64) -> bool {
        let bit = seq - self.origin;
        let word = (bit / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused() {
        let mut s = Slab::default();
        let a = s.insert('a');
        let b = s.insert('b');
        assert_eq!(s.remove(a), Some('a'));
        assert_eq!(s.remove(a), None);
        let c = s.insert('c');
        assert_eq!(c, a);
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(b), Some('b'));
    }

    #[test]
    fn the_watermark_waits_for_the_oldest() {
        let mut t = Tracker::new(100);
        for seq in [102, 101, 164, 200] {
            assert!(t.settle(seq));
        }
        assert_eq!((t.base(), t.above()), (100, 4));
        assert!(!t.settle(101));
        assert!(t.settle(100));
        assert_eq!((t.base(), t.above()), (103, 2));
        t.settle_range(103, 164);
        assert_eq!((t.base(), t.above()), (165, 1));
        assert!(t.is_settled(120) && !t.is_settled(170) && t.is_settled(200));
        t.settle_range(165, 200);
        assert_eq!((t.base(), t.above()), (201, 0));
        t.settle_range(150, 1000);
        assert_eq!(t.base(), 1000);
        assert!(t.settle(1000));
        assert_eq!(t.base(), 1001);
    }
}
