//! `dlq replay` of a downlink's dead letters: a command is checked again with the downlink's
//! rules and, if it passes, published through the downlink (never to the outbox). In the daemon
//! the running downlink task publishes it on its own connection, in turn with the commands it
//! consumes; with no daemon running, [`Replayer`] opens a connection of its own to the same
//! broker. Either way the answer comes only once the broker acknowledged the publish, so the
//! caller removes the dead letter from the store only then (a crash in between gives a
//! duplicate, never a loss).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::rules::{self, Rules};
use crate::config::Config;
use crate::record::{now_ms, Origin, Reason, Record, Violation};

/// How long a replay may wait for the downlink to be able to publish (its breaker closed).
pub const REPLAY_WAIT: Duration = Duration::from_secs(15);

/// Why a replayed command was not delivered: the check it fails now (`None` when it passes but
/// could not be delivered: the broker is unreachable, the downlink is gone…) and what is wrong.
pub type Refusal = (Option<Reason>, Vec<Violation>);

/// A dead letter to send again, with where to answer: the MQTT topic once acknowledged.
#[derive(Debug)]
pub struct ReplayRequest {
    /// The dead letter as stored.
    pub record: Record,
    /// The answer.
    pub done: oneshot::Sender<Result<String, Refusal>>,
}

/// Sends replayed downlink dead letters through their downlink.
#[derive(Debug, Clone, Default)]
pub struct Replayer {
    /// The running downlink tasks, by name (daemon).
    tasks: HashMap<String, mpsc::Sender<ReplayRequest>>,
    /// The configuration, to publish on a connection of our own (no daemon running).
    direct: Option<Arc<Config>>,
}

/// Whether `record` is a dead letter of a downlink (a command consumed from Kafka).
pub fn is_command(record: &Record) -> bool {
    matches!(record.meta.origin, Origin::Kafka { .. })
}

fn refusal(message: impl Into<String>) -> Refusal {
    (None, vec![Violation::whole(message)])
}

impl Replayer {
    /// The daemon's: replays go to the running tasks.
    pub fn daemon(tasks: impl IntoIterator<Item = (String, mpsc::Sender<ReplayRequest>)>) -> Self {
        Self {
            tasks: tasks.into_iter().collect(),
            direct: None,
        }
    }

    /// With no daemon: each replay opens a connection of its own.
    pub fn direct(config: Config) -> Self {
        Self {
            tasks: HashMap::new(),
            direct: Some(Arc::new(config)),
        }
    }

    /// Sends the command of downlink dead letter `record` again; the MQTT topic once the broker
    /// acknowledged it, or why not (it still fails a check, the downlink is gone from the
    /// configuration, the broker could not be reached).
    pub async fn replay(&self, record: &Record) -> Result<String, Refusal> {
        let name = record.meta.source.to_string();
        if let Some(task) = self.tasks.get(&name) {
            let (done, answer) = oneshot::channel();
            task.send(ReplayRequest {
                record: record.clone(),
                done,
            })
            .await
            .map_err(|_| refusal("the downlink is stopping"))?;
            return answer.await.unwrap_or_else(|_| {
                Err(refusal(
                    "the downlink stopped before the broker acknowledged",
                ))
            });
        }
        match &self.direct {
            Some(config) => publish_direct(config, &name, &record.payload).await,
            None => Err(refusal(format!(
                "no downlink `{name}` in the configuration"
            ))),
        }
    }
}

/// Checks `payload` with downlink `name`'s rules and publishes it on a connection of our own,
/// waiting for the PUBACK.
async fn publish_direct(config: &Config, name: &str, payload: &Bytes) -> Result<String, Refusal> {
    let downlink = config
        .downlinks
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| refusal(format!("no downlink `{name}` in the configuration")))?;
    let rules =
        Rules::build(config, downlink).map_err(|e| refusal(format!("downlink `{name}`: {e}")))?;
    let target = rules
        .check(payload)
        .map_err(|(reason, errors)| (Some(reason), errors))?;
    if let Some(v) = rules::expired(target.expires_at_ms, now_ms()) {
        return Err((Some(Reason::Expired), vec![v]));
    }
    let source = config
        .mqtt
        .iter()
        .find(|m| m.name == downlink.mqtt)
        .ok_or_else(|| refusal(format!("no [[mqtt]] source `{}`", downlink.mqtt)))?;
    let client_id = format!(
        "{}-replay",
        downlink.client_id(&source.client_id(&config.gateway.id))
    );
    let options = crate::ingest::mqtt::broker_options(source, &client_id)
        .map_err(|e| refusal(e.to_string()))?;
    let mut link = super::link::Link::open(options, 1);
    let limit = downlink.ack_timeout + REPLAY_WAIT;
    let outcome = tokio::time::timeout(limit, async {
        use super::link::LinkEvent;
        loop {
            match link.next().await {
                Some(LinkEvent::Connected) => link
                    .publish(&target.topic, payload.clone())
                    .await
                    .map_err(refusal)?,
                Some(LinkEvent::PubAck(_)) => return Ok(()),
                Some(LinkEvent::Outgoing(_)) => {}
                Some(LinkEvent::Lost(e)) => return Err(refusal(format!("MQTT broker: {e}"))),
                None => return Err(refusal("MQTT connection closed")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(refusal(format!(
            "the MQTT broker did not acknowledge within {} s",
            limit.as_secs()
        )))
    });
    link.disconnect(Duration::from_secs(1)).await;
    outcome.map(|()| target.topic)
}
