//! One MQTT connection of a downlink: a fresh rumqttc client and event loop per connection (no
//! packet id or queued publish survives into the next one), polled by a task of its own, which
//! forwards what the downlink needs ([`LinkEvent`]) in order. `EventLoop::poll` is not
//! cancellation safe (a publish taken from the request channel could be lost mid-write), so it
//! never races other branches of the downlink's `select!`.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The largest packet taken from the broker. A downlink subscribes to nothing: it only ever
/// receives CONNACK, PUBACK and PINGRESP, a few bytes each, so anything larger (a broker that
/// misbehaves) fails the connection instead of costing up to MQTT's 256 MiB.
const MAX_INCOMING: usize = 4 << 10;

/// What the connection reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker accepted the connection.
    Connected,
    /// The client sent the oldest publish handed to it under this packet id.
    Outgoing(u16),
    /// The broker acknowledged this packet id.
    PubAck(u16),
    /// The connection failed or ended.
    Lost(String),
}

/// An open (or opening) connection.
#[derive(Debug)]
pub struct Link {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts connecting with `options`, allowing `in_flight` unacknowledged publishes.
    pub fn open(mut options: MqttOptions, in_flight: u16) -> Self {
        options
            .set_clean_session(true)
            .set_inflight(in_flight.max(1))
            .set_max_packet_size(MAX_INCOMING, 64 << 10);
        // Room for every publish the window allows, so handing one over never waits.
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(in_flight) + 16);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code == ConnectReturnCode::Success {
                            LinkEvent::Connected
                        } else {
                            LinkEvent::Lost(format!("connection refused: {:?}", ack.code))
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Outgoing(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::PubAck(ack.pkid),
                    Ok(_) => continue,
                    Err(e) => LinkEvent::Lost(e.to_string()),
                };
                let lost = matches!(event, LinkEvent::Lost(_));
                if tx.send(event).is_err() || lost {
                    return;
                }
            }
        });
        Self {
            client,
            events,
            task,
        }
    }

    /// The next event; `None` once the connection task ended and every event was read.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    /// Hands a QoS 1 publish to the client (it waits only if the request channel is full, which
    /// the window prevents).
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), String> {
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends DISCONNECT and gives the client `grace` to write it, then closes.
    pub async fn disconnect(mut self, grace: Duration) {
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(grace, async {
                while let Some(event) = self.events.recv().await {
                    if matches!(event, LinkEvent::Lost(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
