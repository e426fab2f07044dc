//! Publishing: drains the outbox to Kafka in order and removes a record only after Kafka
//! confirmed it. `kafka.rs` owns the producer and the delivery loop; `backoff.rs` the retry
//! delays and circuit breaker that keep an outage from becoming a hot loop.

pub mod backoff;
pub mod kafka;

pub use kafka::{classify, Failure, PublishError, Publisher};
