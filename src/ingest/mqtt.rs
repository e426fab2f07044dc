//! MQTT source (rumqttc): QoS 1 subscriptions on a persistent session (clean session off, fixed
//! client id) with manual acknowledgements.
//!
//! A PUBACK is sent only after the committer made the reading durable, so a reading the gateway
//! had not stored when it died is redelivered by the broker. The acks go through a separate
//! task: awaiting `AsyncClient::ack` inside the task that polls the event loop can deadlock on a
//! full request channel. The incoming packet limit is the MQTT maximum, so an oversize payload is
//! received, dead-lettered as `too-large` and acknowledged, never a reconnect loop. rumqttc does
//! not restore subscriptions when the broker lost the session, so we subscribe on every ConnAck
//! without `session_present`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_native_tls::native_tls;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode, Transport,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::outbox::committer::{Submission, Submitter};
use crate::pipeline::Classifier;
use crate::record::{now_ms, Origin, Reading};
use crate::telemetry::Stats;

/// The largest packet MQTT 3.1.1 allows (remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// Errors of an MQTT source.
#[derive(Debug, Error)]
pub enum MqttError {
    /// The `url` key is malformed.
    #[error("`{url}` is not a broker URL: {why} (expected mqtt://host:port or mqtts://host:port)")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A credential or CA file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS context could not be set up (a CA file without a certificate, OpenSSL failed).
    #[error("TLS: {0}")]
    Tls(String),
}

/// Host, port and transport from an `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// Port (1883 or 8883 by default).
    pub port: u16,
    /// Whether to use TLS.
    pub tls: bool,
}

impl BrokerAddress {
    /// Parses `mqtt://host[:port]`, `tcp://…`, `mqtts://…` or `ssl://…`.
    pub fn parse(url: &str) -> Result<Self, MqttError> {
        let err = |why| MqttError::Url {
            url: url.to_owned(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("missing scheme"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(err("unknown scheme")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(err(
                "credentials do not belong in the URL; use username and password_file",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| err("bad port"))?)
            }
            _ => (authority, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("missing host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// One `[[mqtt]]` source.
#[derive(Debug)]
pub struct MqttSource {
    config: MqttConfig,
    client_id: String,
    classifier: Arc<Classifier>,
    submit: Submitter,
    stats: Arc<Stats>,
}

impl MqttSource {
    /// A source that classifies with `classifier` and submits to `submit`.
    pub fn new(
        config: MqttConfig,
        gateway_id: &str,
        classifier: Arc<Classifier>,
        submit: Submitter,
        stats: Arc<Stats>,
    ) -> Self {
        let client_id = config.client_id(gateway_id);
        Self {
            config,
            client_id,
            classifier,
            submit,
            stats,
        }
    }

    fn options(&self) -> Result<MqttOptions, MqttError> {
        let address = BrokerAddress::parse(&self.config.url)?;
        let mut options = MqttOptions::new(&self.client_id, &address.host, address.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.config.keep_alive.max(Duration::from_secs(5)))
            .set_max_packet_size(MQTT_MAX_PACKET, 64 << 10)
            .set_request_channel_capacity(1024);
        if let Some(user) = &self.config.username {
            let password = match &self.config.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|source| MqttError::File {
                        path: path.clone(),
                        source,
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        if address.tls {
            options.set_transport(Transport::tls_with_config(self.tls()?.into()));
        }
        Ok(options)
    }

    /// The TLS connector (the system's OpenSSL): trusts the CAs of `ca_file` only when set, else
    /// the system's CA store (`/etc/ssl/certs`); checks the broker's host name.
    fn tls(&self) -> Result<native_tls::TlsConnector, MqttError> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(path) = &self.config.ca_file {
            let pem = std::fs::read(path).map_err(|source| MqttError::File {
                path: path.clone(),
                source,
            })?;
            let certs = native_tls::Certificate::stack_from_pem(&pem)
                .map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(MqttError::Tls(format!(
                    "{}: no PEM certificate in the file",
                    path.display()
                )));
            }
            builder.disable_built_in_roots(true);
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| MqttError::Tls(format!("cannot set up TLS: {e}")))
    }

    /// Receives until `stop` is cancelled, then lets pending acknowledgements reach the broker
    /// and disconnects (the session, and anything unacknowledged, stays with the broker).
    pub async fn run(self, stop: CancellationToken) -> Result<(), MqttError> {
        let options = self.options()?;
        let name: Arc<str> = Arc::from(self.config.name.as_str());
        let max_payload = self.config.max_payload.bytes() as usize;
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Publish>();
        let acker = {
            let client = client.clone();
            tokio::spawn(async move {
                while let Some(publish) = ack_rx.recv().await {
                    if client.ack(&publish).await.is_err() {
                        break;
                    }
                }
            })
        };
        tracing::info!(source = %name, url = %self.config.url, client_id = %self.client_id, "Connecting to MQTT broker");

        self.stats.source_up(&name, false);
        let mut failures = 0u32;
        let mut delay = Duration::from_millis(200);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if failures > 0 {
                        tracing::info!(source = %name, attempts = failures, "Reconnected to MQTT broker");
                    }
                    failures = 0;
                    delay = Duration::from_millis(200);
                    if ack.session_present {
                        self.stats.source_up(&name, true);
                        tracing::info!(source = %name, "MQTT session resumed");
                    } else {
                        let filters =
                            self.config.topics.iter().map(|t| {
                                rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)
                            });
                        if let Err(e) = client.try_subscribe_many(filters) {
                            tracing::error!(source = %name, error = %e, "Cannot subscribe");
                        }
                        tracing::info!(source = %name, topics = ?self.config.topics, "Connected to MQTT broker without a session; subscribing");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        self.stats.source_up(&name, false);
                        tracing::error!(source = %name, codes = ?ack.return_codes, "MQTT broker refused a subscription");
                    } else {
                        self.stats.source_up(&name, true);
                        tracing::info!(source = %name, "Subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let reading = Reading {
                        source: name.clone(),
                        origin: Origin::Mqtt {
                            topic: publish.topic.clone(),
                        },
                        payload: publish.payload.clone(),
                        received_at_ms: now_ms(),
                    };
                    tracing::trace!(source = %name, topic = %publish.topic, pkid = publish.pkid, "Reading received");
                    let record = self.classifier.classify(reading, max_payload);
                    let tx = ack_tx.clone();
                    let submission = Submission {
                        record,
                        ack: Some(Box::new(move || {
                            let _ = tx.send(publish);
                        })),
                    };
                    if self.submit.send(submission).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    self.stats.mqtt_reconnect(&name);
                    if failures == 1 {
                        tracing::warn!(source = %name, error = %e, "MQTT connection failed; reconnecting with backoff");
                    } else {
                        tracing::debug!(source = %name, error = %e, attempts = failures, "MQTT reconnect failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.config.reconnect_max);
                }
            }
        }

        // Stop taking readings, let the committer acknowledge what it stored, then disconnect.
        drop(self.submit);
        drop(ack_tx);
        let drain = async {
            let mut acker = acker;
            loop {
                tokio::select! {
                    _ = &mut acker => break,
                    event = eventloop.poll() => if event.is_err() { return },
                }
            }
            let _ = client.try_disconnect();
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!(source = %name, "Timed out flushing MQTT acknowledgements; the broker will redeliver");
        }
        self.stats.source_up(&name, false);
        tracing::info!(source = %name, "MQTT source stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = BrokerAddress::parse("mqtts://broker.example").unwrap();
        assert_eq!((a.port, a.tls), (8883, true));
        let a = BrokerAddress::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(a.host, "::1");
        assert!(BrokerAddress::parse("http://x").is_err());
        assert!(BrokerAddress::parse("mqtt://u:p@host").is_err());
        assert!(BrokerAddress::parse("mqtt://host:notaport").is_err());
    }
}
