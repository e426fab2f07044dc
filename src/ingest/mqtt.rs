//! MQTT source (rumqttc): QoS 1 subscriptions on a persistent session (clean session off, fixed
//! client id) with manual acknowledgements.
//!
//! A PUBACK is sent only after the committer made the reading durable, so a reading the gateway
//! had not stored when it died is redelivered by the broker. The committer returns one list of
//! [`AckToken`]s per commit; the task queues them into rumqttc without awaiting (a full request
//! channel must not block the task that polls the event loop), keeping the rest for after the
//! next poll.
//!
//! A PUBACK is only a packet id, so it is tied to its connection: every connection gets a fresh
//! rumqttc client and event loop (nothing queued for the old one can leak onto the new one) and
//! a number, and tokens of an older connection are dropped — the broker redelivers those
//! readings, and with a lost session the same id would acknowledge a different, unstored one.
//!
//! Every CONNACK is followed by a SUBSCRIBE, whatever `session_present` says: a link that broke
//! between a first CONNACK and its SUBSCRIBE leaves the broker a persistent session without a
//! subscription, which would never deliver. The source counts as up once the SUBACK granted
//! every filter, or as soon as a reading arrives on the connection before it (a session that
//! delivers has its subscription; its SUBACK may wait behind a whole backlog). A refused
//! subscription makes it down and is retried with backoff.
//!
//! Reconnects wait a [`Backoff`] that doubles from [`RETRY_FIRST`] to `reconnect_max`, and starts
//! over at every CONNACK: a link that keeps breaking after good connections reconnects quickly
//! each time instead of waiting ever longer.
//!
//! What one publish may cost is bounded: rumqttc allocates a whole frame as soon as it has read
//! its fixed header, so the incoming packet limit is `max_payload` plus room for the longest
//! topic ([`MqttConfig::packet_limit`]). A payload over `max_payload` that fits is received,
//! dead-lettered as `too-large` and acknowledged. A larger packet makes rumqttc drop the
//! connection before reading it: the source counts it (`sensorgate_mqtt_oversize_packets_total`),
//! logs an error and reconnects. A QoS 0 one is gone; a QoS 1 one the broker redelivers on
//! every reconnect, so the broker must refuse such publishes first (`max_packet_size`, set in
//! `packaging/mosquitto.conf`).

use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use rumqttc::tokio_native_tls::native_tls;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode, Transport,
};
use thiserror::Error;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{BrokerAddress, MqttConfig, SecretFileError, UrlError};
use crate::outbox::committer::{AckReceiver, AckToken, Request, Submission, Submitter};
use crate::pipeline::Classifier;
use crate::record::{now_ms, Origin, Reading};
use crate::telemetry::events::{
    Event as _, MqttLinkLost, MqttPacketTooLarge, MqttSubscriptionRefused,
};
use crate::telemetry::Stats;

/// The first delay before a reconnect or a new SUBSCRIBE.
pub const RETRY_FIRST: Duration = Duration::from_millis(200);

/// Errors of an MQTT source.
#[derive(Debug, Error)]
pub enum MqttError {
    /// The `url` key is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A certificate or CA file could not be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password or private key file cannot be used (unreadable, or others may read it).
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// The TLS context could not be set up (a CA file without a certificate, OpenSSL failed).
    #[error("TLS: {0}")]
    Tls(String),
}

/// One `[[mqtt]]` source.
#[derive(Debug)]
pub struct MqttSource {
    config: MqttConfig,
    client_id: String,
    classifier: Arc<Classifier>,
    submit: Submitter,
    sink: u16,
    acks: AckReceiver,
    stats: Arc<Stats>,
}

impl MqttSource {
    /// A source that classifies with `classifier`, submits to `submit` and receives the
    /// acknowledgements of its ack sink `(sink, acks)` ([`crate::outbox::committer::AckSinks`]).
    pub fn new(
        config: MqttConfig,
        gateway_id: &str,
        classifier: Arc<Classifier>,
        submit: Submitter,
        (sink, acks): (u16, AckReceiver),
        stats: Arc<Stats>,
    ) -> Self {
        let client_id = config.client_id(gateway_id);
        Self {
            config,
            client_id,
            classifier,
            submit,
            sink,
            acks,
            stats,
        }
    }

    fn options(&self) -> Result<MqttOptions, MqttError> {
        let mut options = broker_options(&self.config, &self.client_id)?;
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(self.config.packet_limit(), 64 << 10)
            .set_request_channel_capacity(1024);
        Ok(options)
    }

    /// Receives until `stop` is cancelled, then lets pending acknowledgements reach the broker
    /// and disconnects (the session, and anything unacknowledged, stays with the broker).
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), MqttError> {
        let name: Arc<str> = Arc::from(self.config.name.as_str());
        tracing::info!(source = %name, url = %self.config.url, client_id = %self.client_id, "Connecting to MQTT broker");
        self.stats.source_up(&name, false);
        let mut conn = 0u32;
        let mut reconnect = Backoff::doubling(RETRY_FIRST, self.config.reconnect_max);
        loop {
            conn = conn.wrapping_add(1);
            let (client, eventloop) = AsyncClient::new(self.options()?, 1024);
            let mut link = Link {
                eventloop,
                control: Control {
                    client,
                    conn,
                    unsent: VecDeque::new(),
                    resubscribe_at: None,
                    resubscribe: Backoff::doubling(RETRY_FIRST, self.config.reconnect_max),
                    up: false,
                },
            };
            let end = self
                .connection(&name, &mut link, &mut reconnect, &stop)
                .await;
            self.stats.source_up(&name, false);
            match end {
                End::Stopped => {
                    let stats = self.stats.clone();
                    self.wind_down(&name, link).await;
                    stats.source_up(&name, false);
                    tracing::info!(source = %name, "MQTT source stopped");
                    return Ok(());
                }
                End::PipelineClosed => break,
                End::Lost(e) => {
                    let delay = reconnect.next_delay();
                    if let Some(bytes) = oversize(&e) {
                        MqttPacketTooLarge {
                            source: &name,
                            bytes,
                            limit: self.config.packet_limit(),
                        }
                        .emit(&self.stats);
                    }
                    // TLS 1.3: a broker that wants a client certificate refuses after the
                    // handshake, which the client sees as an alert or as a reset.
                    let hint = self.needs_client_cert_hint(&e).then_some(
                        "the broker may require a client certificate: set cert_file and key_file",
                    );
                    MqttLinkLost {
                        source: &name,
                        error: &e,
                        retry: delay,
                        hint,
                    }
                    .emit(&self.stats);
                    // Acknowledgements of this connection still on their way are worthless now.
                    drop(link);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = sleep(delay) => {}
                    }
                }
            }
        }
        self.stats.source_up(&name, false);
        tracing::info!(source = %name, "MQTT source stopped");
        Ok(())
    }

    /// Whether `error` may be a broker refusing a TLS client without a certificate.
    fn needs_client_cert_hint(&self, error: &rumqttc::ConnectionError) -> bool {
        let tls = BrokerAddress::parse(&self.config.url).is_ok_and(|a| a.tls);
        let text = error.to_string();
        let reset = text.contains("reset by peer")
            || text.contains("certificate required")
            || matches!(error, rumqttc::ConnectionError::Io(_));
        tls && self.config.cert_file.is_none() && reset
    }

    /// Serves one connection until it fails, the pipeline closes or `stop`.
    ///
    /// `EventLoop::poll` is not cancellation safe: dropped while it writes, it loses the request
    /// it took from the channel (a PUBACK, the SUBSCRIBE) after rumqttc's state counted it, and
    /// a PINGREQ lost that way fails the link one keep-alive later ("Last pingreq isn't
    /// acked"). So one poll future lives until it completes, and acknowledgements and
    /// resubscriptions are handled beside it, never instead of it.
    async fn connection(
        &mut self,
        name: &Arc<str>,
        link: &mut Link,
        reconnect: &mut Backoff,
        stop: &CancellationToken,
    ) -> End {
        let max_payload = self.config.max_payload.bytes() as usize;
        let Link { eventloop, control } = link;
        loop {
            let event = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    control.push_acks();
                    let resubscribe = control.resubscribe_at;
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return End::Stopped,
                        tokens = self.acks.recv() => match tokens {
                            Some(tokens) => control.queue_acks(&tokens),
                            None => return End::PipelineClosed,
                        },
                        _ = sleep_until(resubscribe.unwrap_or_else(Instant::now)), if resubscribe.is_some() => {
                            control.resubscribe_at = None;
                            control.subscribe(name, &self.config.topics);
                        }
                        event = &mut poll => break event,
                    }
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if reconnect.attempts() > 0 {
                        tracing::info!(source = %name, attempts = reconnect.attempts(), "Reconnected to MQTT broker");
                    }
                    reconnect.reset();
                    tracing::info!(source = %name, session_present = ack.session_present, topics = ?self.config.topics, "Connected to MQTT broker; subscribing");
                    control.subscribe(name, &self.config.topics);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        control.up = false;
                        let delay = control.resubscribe.next_delay();
                        MqttSubscriptionRefused {
                            source: name,
                            codes: &ack.return_codes,
                            retry: delay,
                        }
                        .emit(&self.stats);
                        control.resubscribe_at = Some(Instant::now() + delay);
                    } else {
                        control.up = true;
                        self.stats.source_up(name, true);
                        control.resubscribe.reset();
                        tracing::info!(source = %name, "Subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !control.up && control.resubscribe.attempts() == 0 {
                        // Before any SUBACK of this connection: the session's subscription
                        // delivers (a refused SUBSCRIBE instead keeps the source down).
                        control.up = true;
                        self.stats.source_up(name, true);
                        tracing::info!(source = %name, "Receiving readings from the session's subscription");
                    }
                    let ack = (publish.qos != QoS::AtMostOnce).then_some(AckToken {
                        sink: self.sink,
                        conn: control.conn,
                        id: publish.pkid,
                    });
                    tracing::trace!(source = %name, topic = %publish.topic, pkid = publish.pkid, "Reading received");
                    let reading = Reading {
                        source: name.clone(),
                        origin: Origin::Mqtt {
                            topic: publish.topic,
                        },
                        payload: publish.payload,
                        received_at_ms: now_ms(),
                    };
                    let record = self.classifier.classify(reading, max_payload);
                    let request = Request::Record(Submission { record, ack });
                    if self.submit.send(request).await.is_err() {
                        return End::PipelineClosed;
                    }
                }
                Ok(_) => {}
                Err(e) => return End::Lost(e),
            }
        }
    }

    /// Stop: no new readings; let the committer acknowledge what it stored, then disconnect.
    async fn wind_down(self, name: &str, link: Link) {
        let Self {
            submit, mut acks, ..
        } = self;
        drop(submit);
        let Link {
            mut eventloop,
            mut control,
        } = link;
        let drain = async {
            // As in `connection`, a poll is never dropped half-way. Once the committer is done,
            // a DISCONNECT is queued behind the last acknowledgement; it going out ends the
            // session's connection cleanly.
            let mut open = true;
            let mut disconnecting = false;
            loop {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                let event = loop {
                    control.push_acks();
                    if !open && !disconnecting && control.unsent.is_empty() {
                        disconnecting = control.client.try_disconnect().is_ok();
                    }
                    tokio::select! {
                        tokens = acks.recv(), if open => match tokens {
                            Some(tokens) => control.queue_acks(&tokens),
                            None => open = false,
                        },
                        event = &mut poll => break event,
                    }
                };
                match event {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!(source = %name, "Timed out flushing MQTT acknowledgements; the broker will redeliver");
        }
    }
}

/// Options for a connection to `config`'s broker under `client_id`: address, transport (TLS
/// with `ca_file` or the system's roots for `mqtts://`), credentials (the password read from
/// `password_file`) and keep-alive. Shared by the source and the downlinks that publish through
/// its broker; each sets its own session and flow options.
pub fn broker_options(config: &MqttConfig, client_id: &str) -> Result<MqttOptions, MqttError> {
    let address = BrokerAddress::parse(&config.url)?;
    let mut options = MqttOptions::new(client_id, &address.host, address.port);
    options.set_keep_alive(config.keep_alive.max(Duration::from_secs(5)));
    if let (Some(user), Some(path)) = (&config.username, &config.password_file) {
        options.set_credentials(user, crate::config::read_secret_file(path)?);
    }
    if address.tls {
        options.set_transport(Transport::tls_with_config(tls_connector(config)?.into()));
    }
    Ok(options)
}

/// The TLS connector (the system's OpenSSL): trusts the CAs of `ca_file` only when set, else
/// the system's CA store (OpenSSL's default paths, `/etc/ssl/certs` on Debian; a file there
/// that cannot be read is skipped by OpenSSL, never a panic); checks the broker's host name;
/// presents `cert_file` and `key_file` when set (mutual TLS).
fn tls_connector(config: &MqttConfig) -> Result<native_tls::TlsConnector, MqttError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        let cert_pem = std::fs::read(cert).map_err(|source| MqttError::File {
            path: cert.clone(),
            source,
        })?;
        let key_pem = crate::config::read_secret_bytes(key)?;
        let identity = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem).map_err(|e| {
            MqttError::Tls(format!(
                "{} and {}: not a PEM certificate and its PKCS#8 private key (BEGIN PRIVATE KEY; convert with `openssl pkcs8 -topk8 -nocrypt`): {e}",
                cert.display(),
                key.display()
            ))
        })?;
        builder.identity(identity);
    }
    if let Some(path) = &config.ca_file {
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

/// The size of the packet, when `e` is rumqttc refusing one over the packet limit.
fn oversize(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(bytes),
        )) => Some(*bytes),
        _ => None,
    }
}

/// Why a connection ended.
enum End {
    Stopped,
    PipelineClosed,
    Lost(rumqttc::ConnectionError),
}

/// One connection: its event loop, and beside it what the source does on that connection.
struct Link {
    eventloop: EventLoop,
    control: Control,
}

/// The client of one connection, its number, the acknowledgements waiting for room in
/// rumqttc's request channel, and the subscription's retry state.
struct Control {
    client: AsyncClient,
    conn: u32,
    unsent: VecDeque<u16>,
    resubscribe_at: Option<Instant>,
    resubscribe: Backoff,
    /// Whether the source counts as up on this connection.
    up: bool,
}

impl Control {
    /// Queues a SUBSCRIBE to `topics`; if the request channel is full, retries after a delay.
    fn subscribe(&mut self, name: &str, topics: &[String]) {
        let filters = topics
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::warn!(source = %name, error = %e, "Cannot queue the subscription; retrying");
            self.resubscribe_at = Some(Instant::now() + self.resubscribe.next_delay());
        }
    }

    /// Keeps the tokens of this connection; older ones are dropped (see the module doc).
    fn queue_acks(&mut self, tokens: &[AckToken]) {
        let stale = tokens.iter().filter(|t| t.conn != self.conn).count();
        if stale > 0 {
            tracing::debug!(
                stale,
                "Dropped acknowledgements of an earlier connection; the broker redelivers those readings"
            );
        }
        self.unsent
            .extend(tokens.iter().filter(|t| t.conn == self.conn).map(|t| t.id));
    }

    /// Queues as many acknowledgements as rumqttc's request channel takes.
    fn push_acks(&mut self) {
        while let Some(&id) = self.unsent.front() {
            let mut ack = Publish::new("", QoS::AtLeastOnce, Vec::new());
            ack.pkid = id;
            match self.client.try_ack(&ack) {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                Err(ClientError::TryRequest(_)) | Err(ClientError::Request(_)) => break,
            }
        }
    }
}
