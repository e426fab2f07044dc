//! librdkafka's mock cluster in process, and a reader of what reached it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// librdkafka's in-process mock cluster with the given topics (4 partitions each).
///
/// Its sockets are not close-on-exec: start long-lived child processes with
/// [`super::clean_command`], or a `broker_down` goes unnoticed by the gateway.
pub fn kafka(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    for topic in topics {
        cluster.create_topic(topic, 4, 1).expect("create topic");
    }
    cluster
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

fn received(m: &rdkafka::message::BorrowedMessage<'_>) -> Received {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Reads every partition of some topics from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Received>,
}

impl Reader {
    pub fn new(bootstrap: &str, topics: &[&str]) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sensorgate-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .unwrap();
                }
            }
        }
        consumer.assign(&list).expect("assign");
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    /// Polls until `done(records)` holds or `limit` passes (then panics with `what`). The
    /// condition is checked whenever the consumer is caught up, or every 1,000 records.
    pub fn read_until(&mut self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; have {} records",
                self.records.len()
            );
            for _ in 0..1000 {
                match self.consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => self.records.push(received(&m)),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        }
    }

    /// Polls for up to `limit` and says whether `done(records)` holds by then.
    pub fn try_read_until(&mut self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done(&self.records) && Instant::now() < deadline {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                self.records.push(received(&m));
            }
        }
        done(&self.records)
    }

    pub fn on(&self, topic: &str) -> Vec<&Received> {
        self.records.iter().filter(|r| r.topic == topic).collect()
    }
}
