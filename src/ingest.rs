//! Ingest: the sources that receive readings and submit them, classified, to the committer.
//! Each source runs as its own task and acknowledges a reading to its sender only after the
//! committer made it durable.

pub mod mqtt;
