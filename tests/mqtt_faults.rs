//! MQTT link faults between the gateway and a real mosquitto, injected by the test kit's proxy.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use sensorgate::config::Config;

const LONG: Duration = Duration::from_secs(120);

/// The link drops right after the first CONNACK, before the broker saw the SUBSCRIBE: the
/// broker keeps a persistent session without a subscription and says `session_present` from
/// then on. The gateway must subscribe again anyway, or every later reading is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_lost_with_the_first_connection_is_made_again() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let proxy = Proxy::start(mqtt.port).await;
    proxy.cut_after_connack(1);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &proxy.url(), &kafka.bootstrap_servers(), "");
    let gateway = start_gateway(Config::load(&path).unwrap()).await;
    assert_eq!(
        proxy.cut(),
        1,
        "the first connection was cut after its CONNACK"
    );

    const TOTAL: u64 = 1_000;
    let messages = (0..TOTAL)
        .map(|seq| {
            let device = format!("dev-{}", seq % 4);
            (format!("sensors/{device}/reading"), reading(&device, seq))
        })
        .collect();
    publish_all(mqtt.port, "sensor-lost-subscribe", messages).await;
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    let seqs = |records: &[Received]| -> BTreeSet<u64> {
        records
            .iter()
            .filter_map(|r| r.json()["seq"].as_u64())
            .collect()
    };
    let complete = tokio::task::block_in_place(|| {
        reader.try_read_until(LONG, |r| seqs(r).len() as u64 == TOTAL)
    });
    assert!(
        complete,
        "only {} of {TOTAL} readings published after the lost SUBSCRIBE reached Kafka",
        seqs(&reader.records).len()
    );
    gateway.shutdown().await.unwrap();
}
