//! `[dlq]`: retention of the local dead-letter store.

use std::time::Duration;

use serde::Deserialize;

use super::units::{self, ByteSize};
use super::Problem;

/// `[dlq]`: retention of the local dead-letter store. When a bound is exceeded the oldest dead
/// letters are evicted (counted as `sensorgate_dlq_evicted_total`); checked on every append of a
/// dead letter and at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Most dead letters kept.
    #[serde(default = "default_dlq_max_entries")]
    pub max_entries: u64,
    /// Most bytes (keys + stored records) kept.
    #[serde(default = "default_dlq_max_bytes")]
    pub max_bytes: ByteSize,
    /// Dead letters received longer ago than this are evicted.
    #[serde(default = "default_dlq_max_age", with = "units::duration")]
    pub max_age: Duration,
}

impl DlqConfig {
    /// Every problem in this section, keyed relative to it: none yet, since every value of the
    /// types above is accepted. A new constraint on these keys goes here.
    pub fn check(&self) -> Vec<Problem> {
        Vec::new()
    }
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_entries: default_dlq_max_entries(),
            max_bytes: default_dlq_max_bytes(),
            max_age: default_dlq_max_age(),
        }
    }
}

const fn default_dlq_max_entries() -> u64 {
    100_000
}
const fn default_dlq_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
const fn default_dlq_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
