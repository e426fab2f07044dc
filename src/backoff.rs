//! The one backoff type, shared by every loop that retries: MQTT reconnects and refused
//! subscriptions ([`crate::ingest::mqtt`]), serial ports that went away
//! ([`crate::ingest::serial`]), a disk that refuses writes ([`crate::outbox::committer`]), and the
//! circuit breakers of the publisher and the downlink.
//!
//! Each delay grows by a factor from a first to a longest delay and is varied by a jitter, so
//! that a fleet of gateways that lost one broker does not come back in step. A loop resets it
//! when what it retried works again (a CONNACK, a port that opened, a commit, a confirmed
//! probe): the next outage starts again from the first delay.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// The jitter of [`Backoff::doubling`].
pub const JITTER: f64 = 0.2;

/// Delays that grow by `multiplier` from `initial` to `max`, each varied by ±`jitter`.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: RetryConfig,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first delay.
    pub fn new(config: RetryConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Doubling from `initial` to `max` (at least `initial`), varied by ±[`JITTER`].
    pub fn doubling(initial: Duration, max: Duration) -> Self {
        Self::new(RetryConfig {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            jitter: JITTER,
        })
    }

    /// The delay before the next attempt; each call grows it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.config.initial.as_secs_f64()
            * self.config.multiplier.powi(self.attempt.min(64) as i32);
        let base = base.min(self.config.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.001))
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: f64) -> RetryConfig {
        RetryConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new(config(0.0));
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays[..8],
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000]
        );
        assert_eq!(delays[9], 60000);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut b = Backoff::new(config(0.2));
        for _ in 0..100 {
            b.reset();
            let d = b.next_delay().as_millis();
            assert!((400..=600).contains(&d), "{d}");
        }
    }

    #[test]
    fn doubling_stays_within_its_jitter_of_each_step_and_starts_over_after_a_reset() {
        let mut b = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(30));
        for step in 0..12 {
            let nominal = (0.2 * 2f64.powi(step)).min(30.0);
            let d = b.next_delay().as_secs_f64();
            let (low, high) = (nominal * (1.0 - JITTER), nominal * (1.0 + JITTER));
            assert!((low..=high).contains(&d), "step {step}: {d} s");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(240));
        // A longest delay below the first one means the first one.
        let mut short = Backoff::doubling(Duration::from_secs(1), Duration::ZERO);
        assert!(short.next_delay() >= Duration::from_millis(800));
    }
}
