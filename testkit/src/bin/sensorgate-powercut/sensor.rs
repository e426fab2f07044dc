//! The sensor: publishes numbered readings at QoS 1 to mosquitto at a steady rate and records
//! which of them the broker acknowledged (PUBACK), and when.
//!
//! A reading is `{"device_id":"pc-N","seq":S,"temperature_c":T}` on `sensors/pc-N/reading`, with
//! `S` counting from 0 over all readings of the run (eight devices take turns). The sensor's
//! connection must never break (the broker runs on the host throughout): if it does, the run
//! fails, since a clean-session client cannot tell which in-flight readings the broker kept.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// Devices the readings take turns over (so they spread over Kafka partitions by key).
const DEVICES: u64 = 8;

/// What the sensor saw.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    /// Readings handed to the MQTT client so far (`seq` 0 up to this).
    pub(crate) published: u64,
    /// When the broker acknowledged each reading, by `seq`.
    pub(crate) acked_at: Vec<Option<Instant>>,
    /// Why the connection failed, if it did.
    pub(crate) failed: Option<String>,
}

impl Acks {
    pub(crate) fn acked(&self) -> u64 {
        self.acked_at.iter().filter(|a| a.is_some()).count() as u64
    }
}

pub(crate) struct Sensor {
    pub(crate) acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
}

impl Sensor {
    /// Connects to `127.0.0.1:port` and publishes `rate` readings per second until stopped.
    pub(crate) fn start(port: u16, rate: f64) -> Self {
        let mut options = MqttOptions::new("powercut-sensor", "127.0.0.1", port);
        options
            .set_inflight(100)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let acks = Arc::new(Mutex::new(Acks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // Readings in the order they were handed to the client, waiting for their packet id.
        let waiting: Arc<Mutex<VecDeque<u64>>> = Arc::default();

        let publisher = {
            let (acks, stop, waiting) = (acks.clone(), stop.clone(), waiting.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let device = seq % DEVICES;
                    let payload = format!(
                        r#"{{"device_id":"pc-{device}","seq":{seq},"temperature_c":{}.5}}"#,
                        15 + seq % 20
                    );
                    waiting.lock().expect("lock").push_back(seq);
                    {
                        let mut a = acks.lock().expect("lock");
                        a.published = seq + 1;
                        a.acked_at.push(None);
                    }
                    let topic = format!("sensors/pc-{device}/reading");
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    seq += 1;
                }
            })
        };

        let events = {
            let acks = acks.clone();
            tokio::spawn(async move {
                let mut by_pkid: HashMap<u16, u64> = HashMap::new();
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            if let Some(seq) = waiting.lock().expect("lock").pop_front() {
                                by_pkid.insert(pkid, seq);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(seq) = by_pkid.remove(&ack.pkid) {
                                acks.lock().expect("lock").acked_at[seq as usize] =
                                    Some(Instant::now());
                            }
                        }
                        Ok(Event::Incoming(Packet::Disconnect)) => {
                            acks.lock().expect("lock").failed =
                                Some("the broker disconnected the sensor".into());
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            acks.lock().expect("lock").failed = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        };
        Self {
            acks,
            stop,
            publisher,
            events,
        }
    }

    /// Stops publishing and waits up to `limit` for the broker to acknowledge what was sent.
    pub(crate) async fn finish(self, limit: Duration) -> Arc<Mutex<Acks>> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.publisher.await;
        let deadline = Instant::now() + limit;
        loop {
            let done = {
                let a = self.acks.lock().expect("lock");
                a.failed.is_some() || a.acked() == a.published
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events.abort();
        self.acks
    }
}

/// Creates the gateway's persistent session at the broker before the gateway first runs (by
/// connecting with its client id, clean session off, and subscribing to its filter at QoS 1),
/// so the broker keeps every reading for it from the sensor's first one on.
pub(crate) async fn create_session(port: u16, client_id: &str, filter: &str) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "no SUBACK from the broker");
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => anyhow::bail!("creating the gateway's session: {e}"),
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}
