//! The circuit breaker of a Kafka partition (and of a downlink's MQTT link), built on
//! [`crate::backoff::Backoff`].
//!
//! Closed: records flow at full window. A transient failure opens the circuit: nothing is sent
//! for the backoff delay. Then half-open: a single record probes Kafka; success closes the circuit
//! (and resets the delay), failure opens it again with a longer delay.

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

    #[test]
    fn the_circuit_limits_what_is_in_flight() {
        assert_eq!(Circuit::Closed.window(100), 100);
        assert_eq!(Circuit::HalfOpen.window(100), 1);
        assert_eq!(Circuit::Open.window(100), 0);
    }
}
