//! `sensorgate simulate`: a fleet of simulated sensors that publish readings to an MQTT broker
//! (QoS 1) or write them as JSON lines to a serial device; also our load generator.
//!
//! Each device (`dev-0001`, `dev-0002`, …) keeps its own state: a `seq` that starts at 0 and
//! grows by one per *valid* reading, so gaps in a device's `seq` downstream mean lost readings;
//! and a temperature, humidity and battery voltage that drift as a bounded random walk. Readings
//! go round-robin over the devices. With `--invalid-ratio`, that share of readings is broken
//! instead, in one of three ways ([`Invalid`]); a broken reading does not advance `seq`.
//!
//! With `--commands`, each device also subscribes (QoS 1) to its command topic
//! (`devices/<device_id>/commands` by default, the topic a `[[downlink]]` publishes to) before
//! the first reading, and the simulator counts the commands each device receives.
//!
//! Speed: one task generates and hands publishes to rumqttc's request channel (bounded, large),
//! another polls the event loop with a window of [`INFLIGHT`] unacknowledged publishes and counts
//! PUBACKs, and the calling task reports progress. `--rate 0` means as fast as the broker
//! acknowledges.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerAddress, UrlError};

/// Unacknowledged QoS 1 publishes allowed at once.
pub const INFLIGHT: u16 = 1000;
/// Capacity of the channel between the generator and the MQTT event loop.
const REQUEST_CHANNEL: usize = 20_000;
/// How long to wait for outstanding acknowledgements once generation stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// At full speed, serial lines are flushed (and counted as written) in batches this large.
const SERIAL_FLUSH_LINES: u64 = 1024;
/// Progress line interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Errors of `simulate`.
#[derive(Debug, Error)]
pub enum SimulateError {
    /// The broker URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// TLS brokers are not supported by the simulator.
    #[error("`{0}`: the simulator speaks plain MQTT only (mqtt://)")]
    Tls(String),
    /// The MQTT connection failed.
    #[error("MQTT connection to {url}: {source}")]
    Mqtt {
        /// The broker.
        url: String,
        /// What failed.
        source: rumqttc::ConnectionError,
    },
    /// The serial device could not be opened or written.
    #[error("{path}: {source}")]
    Serial {
        /// The device path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Progress or summary output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Invalid option value.
    #[error("{0}")]
    Options(String),
    /// The generator task panicked.
    #[error("the generator task failed: {0}")]
    Task(String),
}

/// Where readings go.
#[derive(Debug, Clone)]
pub enum Target {
    /// An MQTT broker: readings are published to `<topic_prefix>/<device_id>/reading`.
    Mqtt {
        /// `mqtt://host[:port]`.
        url: String,
        /// MQTT client id.
        client_id: String,
        /// First topic level.
        topic_prefix: String,
    },
    /// A serial device (or pty, or existing file): one JSON document per line.
    Serial {
        /// The device path; it must exist.
        path: PathBuf,
    },
}

/// When to stop generating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Until {
    /// After this many readings in total.
    Count(u64),
    /// After this long.
    Duration(Duration),
    /// When cancelled (Ctrl-C).
    Cancelled,
}

/// Options of `simulate`.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Where readings go.
    pub target: Target,
    /// Number of devices (at least 1).
    pub devices: u32,
    /// Readings per second over all devices; 0 means as fast as possible.
    pub rate: f64,
    /// Share of readings that are invalid, 0.0 to 1.0.
    pub invalid_ratio: f64,
    /// When to stop.
    pub until: Until,
    /// Random seed, for a reproducible run.
    pub seed: Option<u64>,
    /// Subscribe each device to this command topic (`{device_id}` is replaced by its id) and
    /// count the commands it receives (MQTT only).
    pub commands: Option<String>,
    /// With `commands`: once the readings are acknowledged, keep listening until this many
    /// commands arrived (at most the drain grace of 30 s), so none in flight is missed.
    pub expect_commands: Option<u64>,
}

/// The topic a command for device `id` arrives on, from a `--command-topic` template.
pub fn command_topic(template: &str, id: &str) -> String {
    template.replace("{device_id}", id)
}

/// The ways a simulated reading can be broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `temperature_c` is a string: breaks the schema.
    TemperatureString,
    /// No `device_id`: breaks the schema.
    MissingDeviceId,
    /// Not JSON at all.
    NotJson,
}

impl Invalid {
    /// Every kind, in the order of [`Summary::invalid`].
    pub const ALL: [Invalid; 3] = [
        Self::TemperatureString,
        Self::MissingDeviceId,
        Self::NotJson,
    ];

    /// A short name for output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TemperatureString => "temperature-as-string",
            Self::MissingDeviceId => "missing-device-id",
            Self::NotJson => "not-json",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::TemperatureString => 0,
            Self::MissingDeviceId => 1,
            Self::NotJson => 2,
        }
    }
}

/// One simulated sensor: identity, sequence number and drifting measurements.
#[derive(Debug, Clone)]
pub struct Device {
    /// `dev-0001`, …
    pub id: String,
    /// The `seq` of the next valid reading (= valid readings so far).
    pub seq: u64,
    /// Degrees Celsius.
    pub temperature_c: f64,
    /// Relative humidity, percent.
    pub humidity_pct: f64,
    /// Battery voltage.
    pub battery_v: f64,
    /// Where the temperature tends to (each device has its own climate).
    baseline_c: f64,
    baseline_pct: f64,
}

impl Device {
    /// Device number `index` (0-based; its id is 1-based) with random starting values.
    pub fn new(index: u32, rng: &mut impl Rng) -> Self {
        let baseline_c = rng.gen_range(15.0..25.0);
        let baseline_pct = rng.gen_range(35.0..65.0);
        Self {
            id: format!("dev-{:04}", u64::from(index) + 1),
            seq: 0,
            temperature_c: baseline_c + rng.gen_range(-1.0..1.0),
            humidity_pct: baseline_pct + rng.gen_range(-3.0..3.0),
            battery_v: rng.gen_range(3.6..4.2),
            baseline_c,
            baseline_pct,
        }
    }

    /// Moves the measurements one step: small random steps pulled back towards the device's
    /// baseline, kept within physical bounds; the battery slowly drains and is "replaced" when
    /// flat.
    pub fn step(&mut self, rng: &mut impl Rng) {
        self.temperature_c +=
            0.02 * (self.baseline_c - self.temperature_c) + rng.gen_range(-0.1..0.1);
        self.temperature_c = self.temperature_c.clamp(-40.0, 85.0);
        self.humidity_pct +=
            0.02 * (self.baseline_pct - self.humidity_pct) + rng.gen_range(-0.3..0.3);
        self.humidity_pct = self.humidity_pct.clamp(0.0, 100.0);
        self.battery_v -= rng.gen_range(0.0..0.0002);
        if self.battery_v < 3.3 {
            self.battery_v = 4.2;
        }
    }

    /// Appends a reading to `buf`: valid when `invalid` is `None` (and then `seq` advances),
    /// otherwise broken that way. `ts_ms` is milliseconds since the Unix epoch.
    pub fn write_reading(&mut self, buf: &mut Vec<u8>, ts_ms: u64, invalid: Option<Invalid>) {
        let ts = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms));
        // Writing to a Vec cannot fail.
        let _ = match invalid {
            None => write!(
                buf,
                r#"{{"device_id":"{}","seq":{},"ts":"{ts}","temperature_c":{:.2},"humidity_pct":{:.1},"battery_v":{:.3}}}"#,
                self.id, self.seq, self.temperature_c, self.humidity_pct, self.battery_v
            ),
            Some(Invalid::TemperatureString) => write!(
                buf,
                r#"{{"device_id":"{}","seq":{},"ts":"{ts}","temperature_c":"{:.2}","humidity_pct":{:.1},"battery_v":{:.3}}}"#,
                self.id, self.seq, self.temperature_c, self.humidity_pct, self.battery_v
            ),
            Some(Invalid::MissingDeviceId) => write!(
                buf,
                r#"{{"seq":{},"ts":"{ts}","temperature_c":{:.2},"humidity_pct":{:.1},"battery_v":{:.3}}}"#,
                self.seq, self.temperature_c, self.humidity_pct, self.battery_v
            ),
            Some(Invalid::NotJson) => write!(
                buf,
                "{} t={:.2} h={:.1} (garbled",
                self.id, self.temperature_c, self.humidity_pct
            ),
        };
        if invalid.is_none() {
            self.seq += 1;
        }
    }
}

/// The fleet: devices in round-robin order and the random source.
#[derive(Debug)]
pub struct Fleet {
    devices: Vec<Device>,
    rng: StdRng,
    invalid_ratio: f64,
    next: usize,
    invalid: [u64; 3],
}

impl Fleet {
    /// `devices` devices (at least one), `invalid_ratio` of readings broken.
    pub fn new(devices: u32, invalid_ratio: f64, mut rng: StdRng) -> Self {
        let devices = (0..devices.max(1))
            .map(|i| Device::new(i, &mut rng))
            .collect();
        Self {
            devices,
            rng,
            invalid_ratio: invalid_ratio.clamp(0.0, 1.0),
            next: 0,
            invalid: [0; 3],
        }
    }

    /// Writes the next reading into `buf` (appending) and returns the index of its device.
    pub fn next_reading(&mut self, buf: &mut Vec<u8>, ts_ms: u64) -> usize {
        let index = self.next;
        self.next = (self.next + 1) % self.devices.len();
        let invalid = (self.invalid_ratio > 0.0 && self.rng.gen_bool(self.invalid_ratio))
            .then(|| Invalid::ALL[self.rng.gen_range(0..Invalid::ALL.len())]);
        if let Some(kind) = invalid {
            self.invalid[kind.index()] += 1;
        }
        let device = &mut self.devices[index];
        device.step(&mut self.rng);
        device.write_reading(buf, ts_ms, invalid);
        index
    }

    /// The devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Invalid readings so far, by kind (in [`Invalid::ALL`] order).
    pub fn invalid(&self) -> [u64; 3] {
        self.invalid
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Readings generated and handed to the broker connection or written to the device.
    pub sent: u64,
    /// Readings the broker acknowledged (PUBACK); for serial, readings written and flushed.
    pub acknowledged: u64,
    /// Valid readings per device id (= the device's next `seq`), in device order.
    pub valid: Vec<(String, u64)>,
    /// Invalid readings by kind, in [`Invalid::ALL`] order.
    pub invalid: [u64; 3],
    /// From the first reading to the last acknowledgement.
    pub elapsed: Duration,
    /// With `--commands`: commands received per device id, in device order.
    pub commands: Vec<(String, u64)>,
}

impl Summary {
    /// Invalid readings of all kinds.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }

    /// Acknowledged readings per second.
    pub fn rate(&self) -> f64 {
        per_second(self.acknowledged, self.elapsed)
    }
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Counters shared between the generator and the reporting loop.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
}

/// Where the generator puts readings.
enum Sink {
    Mqtt {
        client: AsyncClient,
        topics: Vec<String>,
    },
    Serial {
        path: PathBuf,
        writer: tokio::io::BufWriter<tokio::fs::File>,
        written: Arc<AtomicU64>,
        pending: u64,
    },
}

impl Sink {
    /// Hands one reading over; `false` when the connection is gone.
    async fn send(&mut self, device: usize, payload: Vec<u8>) -> Result<bool, SimulateError> {
        match self {
            Self::Mqtt { client, topics } => Ok(client
                .publish_bytes(
                    topics[device].clone(),
                    QoS::AtLeastOnce,
                    false,
                    Bytes::from(payload),
                )
                .await
                .is_ok()),
            Self::Serial {
                path,
                writer,
                pending,
                ..
            } => {
                let mut line = payload;
                line.push(b'\n');
                writer
                    .write_all(&line)
                    .await
                    .map_err(|source| SimulateError::Serial {
                        path: path.clone(),
                        source,
                    })?;
                *pending += 1;
                if *pending >= SERIAL_FLUSH_LINES {
                    self.flush().await?;
                }
                Ok(true)
            }
        }
    }

    /// Pushes buffered lines out (serial), before the generator waits.
    async fn flush(&mut self) -> Result<(), SimulateError> {
        if let Self::Serial {
            path,
            writer,
            written,
            pending,
        } = self
        {
            writer
                .flush()
                .await
                .map_err(|source| SimulateError::Serial {
                    path: path.clone(),
                    source,
                })?;
            written.fetch_add(std::mem::take(pending), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Generates readings into `sink` until `until` or `stop`, at `rate` per second (0: no limit).
async fn generate(
    mut fleet: Fleet,
    mut sink: Sink,
    rate: f64,
    until: Until,
    stop: CancellationToken,
    progress: Arc<Progress>,
) -> Result<(Fleet, Sink), SimulateError> {
    let start = Instant::now();
    let mut sent: u64 = 0;
    // Typical reading size, so the payload buffer is allocated once per reading.
    let mut capacity = 160;
    loop {
        if stop.is_cancelled() {
            break;
        }
        match until {
            Until::Count(n) if sent >= n => break,
            Until::Duration(d) if start.elapsed() >= d => break,
            _ => {}
        }
        if rate > 0.0 {
            let after = Duration::from_secs_f64(sent as f64 / rate);
            if matches!(until, Until::Duration(d) if after >= d) {
                break;
            }
            let due = start + after;
            if due > Instant::now() {
                sink.flush().await?;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
        }
        let mut payload = Vec::with_capacity(capacity);
        let device = fleet.next_reading(&mut payload, crate::record::now_ms());
        capacity = capacity.max(payload.len() + 1);
        if !sink.send(device, payload).await? {
            break;
        }
        sent += 1;
        progress.sent.store(sent, Ordering::Relaxed);
    }
    sink.flush().await?;
    Ok((fleet, sink))
}

fn summary_of(fleet: &Fleet, sent: u64, acknowledged: u64, elapsed: Duration) -> Summary {
    Summary {
        commands: Vec::new(),
        sent,
        acknowledged,
        valid: fleet
            .devices()
            .iter()
            .map(|d| (d.id.clone(), d.seq))
            .collect(),
        invalid: fleet.invalid(),
        elapsed,
    }
}

fn write_progress(
    out: &mut (dyn Write + Send),
    start: Instant,
    sent: u64,
    acked: u64,
    last: &mut (Instant, u64),
    acked_word: &str,
) -> std::io::Result<()> {
    let now = Instant::now();
    let recent = per_second(acked - last.1, now - last.0);
    *last = (now, acked);
    writeln!(
        out,
        "{:>6.1}s  sent {sent:>10}  {acked_word} {acked:>10}  {recent:>9.0} readings/s",
        (now - start).as_secs_f64()
    )?;
    out.flush()
}

fn write_summary(
    out: &mut (dyn Write + Send),
    summary: &Summary,
    acked_word: &str,
) -> std::io::Result<()> {
    let invalid = Invalid::ALL
        .iter()
        .map(|k| format!("{} {}", summary.invalid[k.index()], k.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "Sent {} readings from {} devices ({} invalid: {invalid}).",
        summary.sent,
        summary.valid.len(),
        summary.invalid_total()
    )?;
    writeln!(
        out,
        "{acked_word} {} of {} in {:.2} s: {:.0} readings/s.",
        summary.acknowledged,
        summary.sent,
        summary.elapsed.as_secs_f64(),
        summary.rate()
    )?;
    if !summary.commands.is_empty() {
        let counts = summary.commands.iter().map(|(_, n)| *n);
        let total: u64 = counts.clone().sum();
        writeln!(
            out,
            "Received {total} commands (per device: min {}, max {}).",
            counts.clone().min().unwrap_or(0),
            counts.max().unwrap_or(0)
        )?;
    }
    out.flush()
}

/// Runs the simulator until `options.until` or `stop`, printing progress every second and a
/// summary at the end to `out`. Returns what was sent and acknowledged.
pub async fn run(
    options: &SimulateOptions,
    out: &mut (dyn Write + Send),
    stop: CancellationToken,
) -> Result<Summary, SimulateError> {
    if !(0.0..=1.0).contains(&options.invalid_ratio) {
        return Err(SimulateError::Options(format!(
            "--invalid-ratio {} is not between 0 and 1",
            options.invalid_ratio
        )));
    }
    if !options.rate.is_finite() || options.rate < 0.0 {
        return Err(SimulateError::Options(format!(
            "--rate {} is not a number of readings per second (0 = as fast as possible)",
            options.rate
        )));
    }
    if options.devices == 0 {
        return Err(SimulateError::Options(
            "--devices must be at least 1".into(),
        ));
    }
    let rng = match options.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let fleet = Fleet::new(options.devices, options.invalid_ratio, rng);
    match &options.target {
        Target::Mqtt {
            url,
            client_id,
            topic_prefix,
        } => run_mqtt(options, fleet, url, client_id, topic_prefix, out, stop).await,
        Target::Serial { path } => run_serial(options, fleet, path, out, stop).await,
    }
}

/// PUBACKs counted by the event-loop task.
#[derive(Debug, Default)]
struct Acks {
    count: AtomicU64,
    /// Nanoseconds from the start to the latest PUBACK.
    last_ns: AtomicU64,
    /// Wakes the reporting loop while it waits for the last acknowledgements.
    notify: Notify,
}

/// Commands received by the devices (`--commands`).
#[derive(Debug, Default)]
struct Commands {
    /// Device index by command topic.
    topics: std::collections::HashMap<String, usize>,
    /// Commands received, by device index.
    received: Vec<AtomicU64>,
}

impl Commands {
    fn new(template: &str, fleet: &Fleet) -> Self {
        let topics = fleet
            .devices()
            .iter()
            .enumerate()
            .map(|(i, d)| (command_topic(template, &d.id), i))
            .collect();
        let received = fleet.devices().iter().map(|_| AtomicU64::new(0)).collect();
        Self { topics, received }
    }

    fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    fn per_device(&self, fleet: &Fleet) -> Vec<(String, u64)> {
        fleet
            .devices()
            .iter()
            .zip(&self.received)
            .map(|(d, n)| (d.id.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Polls the event loop until the connection ends, counting PUBACKs (and commands received).
/// Runs as a task of its own: `poll()` must not be cancelled mid-write (a publish taken from the
/// channel would be lost).
async fn poll_events(
    mut eventloop: EventLoop,
    acks: Arc<Acks>,
    commands: Arc<Commands>,
    start: Instant,
) -> ConnectionError {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(i) = commands.topics.get(&publish.topic) {
                    commands.received[*i].fetch_add(1, Ordering::Relaxed);
                    acks.notify.notify_one();
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acks.count.fetch_add(1, Ordering::Relaxed);
                let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                acks.last_ns.store(ns, Ordering::Relaxed);
                acks.notify.notify_one();
            }
            Ok(_) => {}
            // Dropping the event loop closes the request channel, so a generator blocked on a
            // full channel returns.
            Err(e) => return e,
        }
    }
}

async fn run_mqtt(
    options: &SimulateOptions,
    fleet: Fleet,
    url: &str,
    client_id: &str,
    prefix: &str,
    out: &mut (dyn Write + Send),
    stop: CancellationToken,
) -> Result<Summary, SimulateError> {
    let address = BrokerAddress::parse(url)?;
    if address.tls {
        return Err(SimulateError::Tls(url.to_owned()));
    }
    let mqtt_error = |source| SimulateError::Mqtt {
        url: url.to_owned(),
        source,
    };
    let mut mqtt = MqttOptions::new(client_id, address.host, address.port);
    mqtt.set_inflight(INFLIGHT)
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_CHANNEL);

    // Connect (and subscribe to the command topics) before generating, so a wrong address
    // fails at once and no command is missed. Nothing is in flight yet, so cancelling this poll
    // loses nothing.
    let commands = Arc::new(match &options.commands {
        Some(template) => Commands::new(template, &fleet),
        None => Commands::default(),
    });
    let listen = !commands.topics.is_empty();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(summary_of(&fleet, 0, 0, Duration::ZERO)),
            event = eventloop.poll() => match event.map_err(mqtt_error)? {
                Event::Incoming(Packet::ConnAck(_)) if !listen => break,
                Event::Incoming(Packet::ConnAck(_)) => {
                    let filters = commands
                        .topics
                        .keys()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    client.try_subscribe_many(filters).map_err(|e| {
                        SimulateError::Options(format!("cannot subscribe to the command topics: {e}"))
                    })?;
                }
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            },
        }
    }

    let topics = fleet
        .devices()
        .iter()
        .map(|d| format!("{prefix}/{}/reading", d.id))
        .collect();
    let start = Instant::now();
    let acks = Arc::new(Acks::default());
    let mut poller = tokio::spawn(poll_events(
        eventloop,
        acks.clone(),
        commands.clone(),
        start,
    ));
    let progress = Arc::new(Progress::default());
    let generator_stop = stop.child_token();
    let mut generator = tokio::spawn(generate(
        fleet,
        Sink::Mqtt {
            client: client.clone(),
            topics,
        },
        options.rate,
        options.until,
        generator_stop.clone(),
        progress.clone(),
    ));

    let mut last = (start, 0);
    let mut ticker = tokio::time::interval_at((start + PROGRESS_EVERY).into(), PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finished: Option<Fleet> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut failure: Option<SimulateError> = None;

    let expected = options.expect_commands.filter(|_| listen).unwrap_or(0);
    loop {
        let sent = progress.sent.load(Ordering::Relaxed);
        let acked = acks.count.load(Ordering::Relaxed);
        if finished.is_some() && acked >= sent && commands.total() >= expected {
            break;
        }
        let deadline = drain_deadline.unwrap_or_else(|| Instant::now() + DRAIN_GRACE);
        tokio::select! {
            // A PUBACK or a command arrived while draining: check again.
            _ = acks.notify.notified(), if finished.is_some() => {}
            joined = &mut generator, if finished.is_none() => {
                finished = Some(joined.map_err(|e| SimulateError::Task(e.to_string()))??.0);
                drain_deadline = Some(Instant::now() + DRAIN_GRACE);
            }
            ended = &mut poller => {
                generator_stop.cancel();
                failure = Some(match ended {
                    Ok(e) => mqtt_error(e),
                    Err(e) => SimulateError::Task(e.to_string()),
                });
                break;
            }
            _ = ticker.tick() => {
                let sent = progress.sent.load(Ordering::Relaxed);
                let acked = acks.count.load(Ordering::Relaxed);
                write_progress(out, start, sent, acked, &mut last, "acked")?;
                if options.commands.is_some() {
                    writeln!(out, "         commands received {:>10}", commands.total())?;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if drain_deadline.is_some() => {
                tracing::warn!(acked, sent, commands = commands.total(), expected, "Gave up waiting for the broker to acknowledge every reading and for the expected commands");
                break;
            }
        }
    }
    let fleet = match finished {
        Some(fleet) => fleet,
        // The connection failed; the generator returns once it sees the channel closed.
        None => {
            generator
                .await
                .map_err(|e| SimulateError::Task(e.to_string()))??
                .0
        }
    };
    let acked = acks.count.load(Ordering::Relaxed);
    let last_ack = Duration::from_nanos(acks.last_ns.load(Ordering::Relaxed));
    let mut summary = summary_of(
        &fleet,
        progress.sent.load(Ordering::Relaxed),
        acked,
        last_ack,
    );
    if options.commands.is_some() {
        summary.commands = commands.per_device(&fleet);
    }
    if failure.is_none() {
        // Say goodbye properly; the event loop ends when the broker closes the connection.
        let _ = client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(1), &mut poller)
            .await
            .is_err()
        {
            poller.abort();
        }
    }
    write_summary(out, &summary, "Acknowledged")?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

async fn run_serial(
    options: &SimulateOptions,
    fleet: Fleet,
    path: &std::path::Path,
    out: &mut (dyn Write + Send),
    stop: CancellationToken,
) -> Result<Summary, SimulateError> {
    // Never create: a missing /dev/ttyUSB0 must be an error, not a new regular file.
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .await
        .map_err(|source| SimulateError::Serial {
            path: path.to_owned(),
            source,
        })?;
    let written = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let mut generator = tokio::spawn(generate(
        fleet,
        Sink::Serial {
            path: path.to_owned(),
            writer: tokio::io::BufWriter::with_capacity(64 << 10, file),
            written: written.clone(),
            pending: 0,
        },
        options.rate,
        options.until,
        stop,
        progress.clone(),
    ));
    let start = Instant::now();
    let mut last = (start, 0);
    let mut ticker = tokio::time::interval_at((start + PROGRESS_EVERY).into(), PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fleet = loop {
        tokio::select! {
            joined = &mut generator => match joined {
                Ok(Ok((fleet, _sink))) => break fleet,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(SimulateError::Task(e.to_string())),
            },
            _ = ticker.tick() => {
                let sent = progress.sent.load(Ordering::Relaxed);
                write_progress(out, start, sent, written.load(Ordering::Relaxed), &mut last, "written")?;
            }
        }
    };
    let summary = summary_of(
        &fleet,
        progress.sent.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed),
        start.elapsed(),
    );
    write_summary(out, &summary, "Wrote")?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn a_valid_reading_has_every_field_and_advances_seq() {
        let mut rng = rng();
        let mut device = Device::new(0, &mut rng);
        assert_eq!(device.id, "dev-0001");
        for expected in 0..3u64 {
            let mut buf = Vec::new();
            device.step(&mut rng);
            device.write_reading(&mut buf, 1_700_000_000_123, None);
            let v = json(&buf);
            assert_eq!(v["device_id"], "dev-0001");
            assert_eq!(v["seq"], expected);
            assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
            assert!(v["temperature_c"].is_f64());
            assert!(v["humidity_pct"].is_f64());
            assert!(v["battery_v"].is_f64());
        }
        assert_eq!(device.seq, 3);
    }

    #[test]
    fn valid_readings_pass_the_example_schema() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let validator = crate::validate::compile_file(&dir, &dir.join("reading.v1.json"))
            .expect("example schema");
        let mut fleet = Fleet::new(3, 0.0, rng());
        for _ in 0..1000 {
            let mut buf = Vec::new();
            fleet.next_reading(&mut buf, crate::record::now_ms());
            let errors = crate::validate::violations(&validator, &json(&buf));
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn each_kind_of_invalid_reading_is_broken_as_named_and_keeps_seq() {
        let mut rng = rng();
        let mut device = Device::new(41, &mut rng);
        assert_eq!(device.id, "dev-0042");

        let mut buf = Vec::new();
        device.write_reading(&mut buf, 0, Some(Invalid::TemperatureString));
        assert!(json(&buf)["temperature_c"].is_string());

        buf.clear();
        device.write_reading(&mut buf, 0, Some(Invalid::MissingDeviceId));
        let v = json(&buf);
        assert!(v.get("device_id").is_none() && v["seq"] == 0);

        buf.clear();
        device.write_reading(&mut buf, 0, Some(Invalid::NotJson));
        assert!(serde_json::from_slice::<serde_json::Value>(&buf).is_err());
        assert!(!buf.contains(&b'\n'), "one line on a serial port");

        assert_eq!(device.seq, 0);
        buf.clear();
        device.write_reading(&mut buf, 0, None);
        assert_eq!(json(&buf)["seq"], 0);
    }

    #[test]
    fn measurements_drift_but_stay_plausible() {
        let mut rng = rng();
        let mut device = Device::new(0, &mut rng);
        let (t0, h0) = (device.temperature_c, device.humidity_pct);
        let mut moved = false;
        for _ in 0..100_000 {
            let before = device.temperature_c;
            device.step(&mut rng);
            assert!(
                (device.temperature_c - before).abs() < 1.0,
                "a step, not a jump"
            );
            assert!((5.0..35.0).contains(&device.temperature_c));
            assert!((15.0..85.0).contains(&device.humidity_pct));
            assert!((3.3..=4.2).contains(&device.battery_v));
            moved |= device.temperature_c != t0 && device.humidity_pct != h0;
        }
        assert!(moved);
    }

    #[test]
    fn the_fleet_goes_round_robin_and_breaks_about_the_requested_share() {
        let mut fleet = Fleet::new(4, 0.1, rng());
        let mut buf = Vec::new();
        let order: Vec<usize> = (0..8)
            .map(|_| {
                buf.clear();
                fleet.next_reading(&mut buf, 0)
            })
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 0, 1, 2, 3]);
        for _ in 0..19_992 {
            buf.clear();
            fleet.next_reading(&mut buf, 0);
        }
        let invalid = fleet.invalid();
        let total: u64 = invalid.iter().sum();
        // Seeded, so this is exact for this seed; the bounds only document the intent.
        assert!((1_700..2_300).contains(&total), "{total}");
        assert!(invalid.iter().all(|&n| n > 400), "{invalid:?}");
        let valid: u64 = fleet.devices().iter().map(|d| d.seq).sum();
        assert_eq!(valid + total, 20_000);
    }

    #[test]
    fn no_invalid_readings_at_ratio_zero_and_only_invalid_at_one() {
        let mut buf = Vec::new();
        let mut fleet = Fleet::new(2, 0.0, rng());
        for _ in 0..1000 {
            fleet.next_reading(&mut buf, 0);
        }
        assert_eq!(fleet.invalid(), [0, 0, 0]);
        let mut fleet = Fleet::new(2, 1.0, rng());
        for _ in 0..1000 {
            fleet.next_reading(&mut buf, 0);
        }
        assert_eq!(fleet.invalid().iter().sum::<u64>(), 1000);
        assert!(fleet.devices().iter().all(|d| d.seq == 0));
    }
}
