//! Publishing: drains the outbox to Kafka in order and settles a record only after Kafka
//! confirmed it (or refused it for good: then it goes to the local DLQ).
//!
//! - `publisher.rs` (+ `publisher/{scan,settle}.rs`): the loop, on its own thread: reading the
//!   log, the window, delivery reports, held partitions and rescans;
//! - `partition.rs`: partition choice and the state of each partition;
//! - `kafka.rs`: the producer's configuration, error classification, librdkafka callbacks;
//! - `window.rs`: the in-flight slab and the settled watermark;
//! - `circuit.rs`: the circuit breaker (on [`crate::backoff::Backoff`]) that keeps an outage from
//!   becoming a hot loop.

pub mod circuit;
pub mod kafka;
pub mod partition;
pub mod publisher;
pub mod window;

pub use kafka::{classify, Failure};
pub use publisher::{PublishError, Publisher};
