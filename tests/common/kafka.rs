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

/// The distinct `seq` fields of `records` (the readings of [`crate::common::reading`]).
pub fn seqs_of(records: &[Received]) -> std::collections::BTreeSet<u64> {
    records
        .iter()
        .filter_map(|r| r.json()["seq"].as_u64())
        .collect()
}

/// Reads every partition of some topics from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Received>,
}

impl Reader {
    pub fn new(bootstrap: &str, topics: &[&str]) -> Self {
        Self::with_properties(bootstrap, topics, &[])
    }

    /// Like [`Reader::new`], with more librdkafka properties (TLS).
    pub fn with_properties(bootstrap: &str, topics: &[&str], properties: &[(&str, &str)]) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sensorgate-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (key, value) in properties {
            config.set(*key, *value);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
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
                if !self.poll_one() {
                    break;
                }
            }
        }
    }

    /// Polls once; says whether a record came.
    fn poll_one(&mut self) -> bool {
        match self.consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                self.records.push(received(&m));
                true
            }
            Some(Err(e)) => {
                eprintln!("Kafka test consumer error: {e}");
                false
            }
            None => false,
        }
    }

    /// Polls for up to `limit` and says whether `done(records)` holds by then. Like
    /// [`Reader::read_until`], the condition is checked when caught up or every 1,000 records
    /// (checking it per record makes reading quadratic).
    pub fn try_read_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while !done(&self.records) && Instant::now() < deadline {
            for _ in 0..1000 {
                if !self.poll_one() {
                    break;
                }
            }
        }
        done(&self.records)
    }

    /// Reads until every reading `0..total` (by its `seq` field) has arrived, or `limit` passes;
    /// returns the ones still missing, in order (empty when all arrived).
    pub fn read_every_seq(&mut self, limit: Duration, total: u64) -> Vec<u64> {
        self.try_read_until(limit, |records| seqs_of(records).len() as u64 == total);
        let seen = seqs_of(&self.records);
        (0..total).filter(|s| !seen.contains(s)).collect()
    }

    pub fn on(&self, topic: &str) -> Vec<&Received> {
        self.records.iter().filter(|r| r.topic == topic).collect()
    }
}

/// An idempotent producer, kept for many sends.
pub struct Producer {
    inner: rdkafka::producer::FutureProducer,
}

impl Producer {
    pub fn new(bootstrap: &str) -> Self {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        Self { inner }
    }

    /// Produces `(key, payload)` records to `topic` in order and returns each one's
    /// `(partition, offset)` once Kafka confirmed them all. The key picks the partition, so
    /// records with one key keep their order.
    pub async fn send(&self, topic: &str, records: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
        use rdkafka::producer::FutureRecord;
        let sends: Vec<_> = records
            .iter()
            .map(|(key, payload)| {
                self.inner
                    .send_result(FutureRecord::to(topic).key(key).payload(payload))
                    .expect("queued")
            })
            .collect();
        let mut out = Vec::with_capacity(sends.len());
        for send in sends {
            let delivery = send.await.expect("not cancelled").expect("delivered");
            out.push((delivery.partition, delivery.offset));
        }
        out
    }
}

/// [`Producer::send`] with a producer of its own.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    Producer::new(bootstrap).send(topic, records).await
}

/// The offsets consumer group `group` has committed for `topic`, by partition (partitions
/// without a commit are left out). Asks the group coordinator without joining the group.
pub fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> std::collections::BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The high watermark of every partition of `topic` that holds records.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut out = std::collections::BTreeMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            if high > 0 {
                out.insert(p.id(), high);
            }
        }
    }
    out
}
