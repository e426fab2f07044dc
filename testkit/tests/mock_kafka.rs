//! The mock cluster's process, driven as the power-cut test bed and benchmarks drive it: records
//! produced from this process are read back; with the brokers down nothing is delivered, and once
//! they are up again it is.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sensorgate_testkit::kafka_reader::Reader;
use sensorgate_testkit::mock_kafka::{MockKafka, MockKafkaError};

fn mock() -> MockKafka {
    MockKafka::start(Path::new(env!("CARGO_BIN_EXE_sensorgate-mock-kafka")), 3).expect("starts")
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

fn send(producer: &BaseProducer, topic: &str, from: u32, to: u32) {
    for i in from..to {
        let payload = i.to_string();
        producer
            .send(BaseRecord::<(), _>::to(topic).payload(&payload))
            .expect("queued");
    }
}

/// Reads until `count` records arrived, or panics after `limit`.
fn read(reader: &mut Reader, count: usize, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records",
            seen.len()
        );
        if let Some(r) = reader.poll(Duration::from_millis(100)) {
            seen.push(String::from_utf8(r.payload).unwrap().parse().unwrap());
        }
    }
    seen.sort_unstable();
    seen
}

#[test]
fn records_go_through_and_wait_while_the_brokers_are_down() {
    let mut kafka = mock();
    assert_eq!(kafka.ports().len(), 3, "{}", kafka.bootstrap());
    kafka.create_topic("t", 8).unwrap();
    let producer = producer(kafka.bootstrap());
    let mut reader = Reader::new(kafka.bootstrap(), &["t"]).unwrap();

    send(&producer, "t", 0, 100);
    producer.flush(Duration::from_secs(30)).expect("delivered");
    assert_eq!(
        read(&mut reader, 100, Duration::from_secs(30)),
        (0..100).collect::<Vec<_>>()
    );

    kafka.set_brokers_up(false).unwrap();
    send(&producer, "t", 100, 200);
    assert!(
        producer.flush(Duration::from_secs(3)).is_err(),
        "nothing is delivered while every broker is down"
    );
    assert!(reader.poll(Duration::from_secs(1)).is_none());

    kafka.set_brokers_up(true).unwrap();
    producer
        .flush(Duration::from_secs(60))
        .expect("delivered once up");
    assert_eq!(
        read(&mut reader, 100, Duration::from_secs(60)),
        (100..200).collect::<Vec<_>>()
    );
    assert_eq!(reader.skipped(), 0);
    kafka.stop().unwrap();
}

#[test]
fn a_bad_command_is_refused_and_the_process_goes_on() {
    let mut kafka = mock();
    let err = kafka.create_topic("t", 0).unwrap_err();
    assert!(matches!(err, MockKafkaError::Refused { .. }), "{err}");
    kafka.set_round_trip_time(Duration::from_millis(5)).unwrap();
    kafka.create_topic("t", 2).unwrap();
}
