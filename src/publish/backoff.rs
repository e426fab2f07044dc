//! Exponential backoff with jitter, and the circuit breaker built on it.
//!
//! Closed: records flow at full window. A transient failure opens the circuit: nothing is sent
//! for the backoff delay. Then half-open: a single record probes Kafka; success closes the circuit
//! (and resets the delay), failure opens it again with a longer delay.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

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

/// The publisher's circuit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Normal operation.
    Closed,
    /// Waiting out a backoff delay; nothing is sent.
    Open,
    /// One probe record in flight.
    HalfOpen,
}

impl Circuit {
    /// How many records may be in flight in this state.
    pub fn window(self, max_in_flight: usize) -> usize {
        match self {
            Self::Closed => max_in_flight,
            Self::Open => 0,
            Self::HalfOpen => 1,
        }
    }

    /// Name for logs and status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
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
    fn the_circuit_limits_what_is_in_flight() {
        assert_eq!(Circuit::Closed.window(100), 100);
        assert_eq!(Circuit::HalfOpen.window(100), 1);
        assert_eq!(Circuit::Open.window(100), 0);
    }
}
