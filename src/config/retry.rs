//! `[retry]`: exponential backoff with jitter for transient publish failures.

use std::time::Duration;

use serde::Deserialize;

use super::units;
use super::Problem;

/// `[retry]`: exponential backoff with jitter for transient publish failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    #[serde(default = "default_retry_initial", with = "units::duration")]
    pub initial: Duration,
    /// Longest delay.
    #[serde(default = "default_retry_max", with = "units::duration")]
    pub max: Duration,
    /// Growth per consecutive failure.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Each delay is varied by up to this fraction, up or down.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

impl RetryConfig {
    /// Every problem in this section, keyed relative to it.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.initial.is_zero() {
            problems.push(Problem::new("initial", "must be greater than zero"));
        }
        if self.max < self.initial {
            problems.push(Problem::new(
                "max",
                "must not be shorter than retry.initial",
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            problems.push(Problem::new(
                "multiplier",
                "must be a number of at least 1.0",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(Problem::new("jitter", "must be between 0.0 and 1.0"));
        }
        problems
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: default_retry_initial(),
            max: default_retry_max(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

const fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
const fn default_multiplier() -> f64 {
    2.0
}
const fn default_jitter() -> f64 {
    0.2
}
