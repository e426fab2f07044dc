//! `[queue]`: the durable outbox's byte bound, its policy when full, and group commit.

use std::time::Duration;

use serde::Deserialize;

use super::units::{self, ByteSize};
use super::Problem;

/// What the outbox does when it holds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Evict the oldest records (counted) to make room.
    DropOldest,
    /// Stop acknowledging MQTT until the publisher frees space; the broker holds the backlog.
    Block,
}

impl WhenFull {
    /// The name used in the configuration (and as the `policy` label of metrics).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DropOldest => "drop-oldest",
            Self::Block => "block",
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Upper bound of the outbox's record bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Policy when the bound is reached.
    #[serde(default = "default_when_full")]
    pub when_full: WhenFull,
    /// Group-commit window: readings arriving within it share one flush.
    #[serde(default = "default_commit_interval", with = "units::duration")]
    pub commit_interval: Duration,
    /// Most readings in one group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Sync every commit before acknowledging it (`fdatasync` of the log, `fsync` of sled's
    /// data file). `false` survives a crashed process but not a power cut.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Memory for sled's page cache (the dead-letter store and metadata).
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: ByteSize,
    /// Under `drop-oldest`, the share of `max_bytes` that dead letters waiting for their DLQ
    /// topic may take; past it new dead letters are dropped (counted) instead of evicting
    /// readings. 1 turns the bound off.
    #[serde(default = "default_dead_letter_share")]
    pub dead_letter_share: f64,
}

impl QueueConfig {
    /// The most bytes of dead letters the outbox holds under `drop-oldest` (`u64::MAX` under
    /// `block`, which drops nothing).
    pub fn dead_letter_bytes(&self) -> u64 {
        match self.when_full {
            WhenFull::Block => u64::MAX,
            WhenFull::DropOldest if self.dead_letter_share >= 1.0 => u64::MAX,
            WhenFull::DropOldest => (self.max_bytes.bytes() as f64 * self.dead_letter_share) as u64,
        }
    }

    /// Every problem in this section, keyed relative to it (`max_bytes`, `max_batch`).
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.max_bytes.bytes() < 64 << 10 {
            problems.push(Problem::new(
                "max_bytes",
                format!("{} is too small (at least 64KiB)", self.max_bytes),
            ));
        }
        if self.max_batch == 0 {
            problems.push(Problem::new("max_batch", "must be at least 1"));
        }
        if !(self.dead_letter_share > 0.0 && self.dead_letter_share <= 1.0) {
            problems.push(Problem::new(
                "dead_letter_share",
                format!(
                    "{} is not a share of max_bytes (more than 0, at most 1)",
                    self.dead_letter_share
                ),
            ));
        }
        problems
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            when_full: default_when_full(),
            commit_interval: default_commit_interval(),
            max_batch: default_max_batch(),
            fsync: true,
            cache_capacity: default_cache_capacity(),
            dead_letter_share: default_dead_letter_share(),
        }
    }
}

const fn default_max_bytes() -> ByteSize {
    ByteSize(512 << 20)
}
const fn default_when_full() -> WhenFull {
    WhenFull::DropOldest
}
const fn default_commit_interval() -> Duration {
    Duration::from_millis(20)
}
const fn default_max_batch() -> usize {
    4096
}
const fn default_cache_capacity() -> ByteSize {
    ByteSize(1 << 20)
}
const fn default_dead_letter_share() -> f64 {
    0.1
}
const fn default_true() -> bool {
    true
}
