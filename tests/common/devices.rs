//! Devices that receive commands: one MQTT client on a persistent session (clean session off,
//! fixed client id) subscribed at QoS 1 to `devices/+/commands`, recording every command each
//! device receives in order, and reconnecting (its session, and what the broker queued for it,
//! survive a broker restart with persistence).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::wait_for;

/// Commands received, by device id (the topic's second level), in arrival order.
pub type ReceivedCommands = BTreeMap<String, Vec<serde_json::Value>>;

/// The command receivers; their task ends on drop.
pub struct Devices {
    received: Arc<Mutex<ReceivedCommands>>,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Devices {
    /// Connects as `client_id` to the broker on `port`, subscribes, and returns once the broker
    /// granted the subscription (commands published before would not be kept for us).
    pub async fn start(port: u16, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let received = Arc::new(Mutex::new(ReceivedCommands::new()));
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let received = received.clone();
            let subscribed = subscribed.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client
                                .subscribe("devices/+/commands", QoS::AtLeastOnce)
                                .await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let device = p.topic.split('/').nth(1).unwrap_or("").to_owned();
                            let command = serde_json::from_slice(&p.payload)
                                .unwrap_or(serde_json::Value::Null);
                            received
                                .lock()
                                .unwrap()
                                .entry(device)
                                .or_default()
                                .push(command);
                        }
                        Ok(_) => {}
                        // The broker is down: rumqttc reconnects on the next poll.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        wait_for(Duration::from_secs(30), "the devices to subscribe", || {
            subscribed.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await;
        Self {
            received,
            subscribed,
            task,
        }
    }

    /// A copy of everything received so far.
    pub fn received(&self) -> ReceivedCommands {
        self.received.lock().unwrap().clone()
    }

    /// Commands received so far, duplicates included.
    pub fn total(&self) -> usize {
        self.received.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Distinct commands received so far: distinct values of `field` per device, summed.
    pub fn distinct(&self, field: &str) -> usize {
        let received = self.received.lock().unwrap();
        received
            .values()
            .map(|commands| {
                let seen: std::collections::HashSet<String> =
                    commands.iter().map(|c| c[field].to_string()).collect();
                seen.len()
            })
            .sum()
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per device: the values of `field` in arrival order with repeats of an earlier value dropped
/// (the first delivery of each command), and the number of repeats.
pub fn first_deliveries(
    received: &ReceivedCommands,
    field: &str,
) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut firsts = BTreeMap::new();
    let mut duplicates = 0;
    for (device, commands) in received {
        let mut seen = std::collections::HashSet::new();
        let mut order = Vec::new();
        for c in commands {
            let value = c[field].as_u64().unwrap_or(u64::MAX);
            if seen.insert(value) {
                order.push(value);
            } else {
                duplicates += 1;
            }
        }
        firsts.insert(device.clone(), order);
    }
    (firsts, duplicates)
}
