//! sensorgate's test kit: real parts for tests, benchmarks and test beds, run as child processes
//! and controlled from the test.
//!
//! - [`mock_kafka`]: librdkafka's mock Kafka cluster hosted in its own process (the
//!   `sensorgate-mock-kafka` binary of this crate), with its bootstrap string, its brokers taken
//!   down and up, topics created, and a round-trip delay, over a line protocol on the child's
//!   stdin and stdout. In its own process, its CPU time is measured apart from the gateway's, and
//!   a gateway in another process (or a virtual machine) can reach it.
//! - [`kafka_reader`]: reads records back from every partition of some topics, from the start,
//!   and notices records the broker dropped before they were read.
//!
//! Binaries:
//! - `sensorgate-mock-kafka`: the mock cluster process ([`mock_kafka`] describes its protocol).
//! - `sensorgate-powercut`: the power-cut test bed that `scripts/powercut.sh` runs (the gateway in
//!   a qemu virtual machine, killed without warning over and over; see README.md, "Power-cut
//!   test").
//!
//! Nothing here imitates a broker: the Kafka side is librdkafka's own mock cluster, and the
//! MQTT side of the test bed is mosquitto.

pub mod kafka_reader;
pub mod mock_kafka;
