//! Reads records back from Kafka: every partition of some topics, from the first offset, without
//! a consumer group's committed offsets.
//!
//! A broker that drops records before they are read (retention; librdkafka's mock keeps 100,000
//! records or 5 MB per partition) would make them look lost: [`Reader::skipped`] counts the
//! offsets the reader jumped over, so a test can tell "not delivered" from "dropped by the broker".
//! A consumer that fetches an offset again (after an offset reset, say) would make records look
//! duplicated: [`Reader::poll`] returns each offset once and [`Reader::rereads`] counts the rest.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use thiserror::Error;

/// Creating the reader failed.
#[derive(Debug, Error)]
pub enum ReaderError {
    /// librdkafka refused the consumer, the metadata or the assignment.
    #[error("Kafka reader ({what}): {source}")]
    Kafka {
        /// The step that failed.
        what: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A topic has no partitions in the metadata.
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Payload bytes (empty for a null payload).
    pub payload: Vec<u8>,
    /// Headers in order (a null header value is empty).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A consumer assigned to every partition of its topics from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    next: HashMap<(String, i32), i64>,
    skipped: u64,
    rereads: u64,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("partitions", &self.next.len())
            .field("skipped", &self.skipped)
            .field("rereads", &self.rereads)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Connects to `bootstrap` and assigns every partition of `topics` (a topic the broker does
    /// not know yet may be auto-created by the metadata request, as on the mock cluster).
    pub fn new(bootstrap: &str, topics: &[&str]) -> Result<Self, ReaderError> {
        let kafka = |what| move |source| ReaderError::Kafka { what, source };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sensorgate-testkit-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka("create consumer"))?;
        let mut list = TopicPartitionList::new();
        let mut next = HashMap::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(30))
                .map_err(kafka("metadata"))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(ReaderError::NoPartitions((*topic).to_owned()));
            }
            for p in partitions {
                list.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(kafka("assignment"))?;
                next.insert(((*topic).to_owned(), p), 0);
            }
        }
        consumer.assign(&list).map_err(kafka("assign"))?;
        Ok(Self {
            consumer,
            next,
            skipped: 0,
            rereads: 0,
        })
    }

    /// The next record, waiting up to `timeout`; each offset once. Errors while the brokers are
    /// unreachable are retried by librdkafka and show here as `None`, as does an offset that was
    /// already returned.
    pub fn poll(&mut self, timeout: Duration) -> Option<Record> {
        let message = match self.consumer.poll(timeout) {
            Some(Ok(m)) => m,
            Some(Err(_)) | None => return None,
        };
        let record = Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let next = self
            .next
            .entry((record.topic.clone(), record.partition))
            .or_insert(0);
        if record.offset < *next {
            self.rereads += 1;
            return None;
        }
        self.skipped += (record.offset - *next) as u64;
        *next = record.offset + 1;
        Some(record)
    }

    /// How many offsets were jumped over: records the broker no longer had when the reader got
    /// there (on the mock cluster: retention). Zero when every record was read.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// How many records came again at an offset already returned (and were not returned).
    pub fn rereads(&self) -> u64 {
        self.rereads
    }
}
