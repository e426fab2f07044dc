//! `sensorgate demo`: the whole pipeline on one machine, with nothing installed.
//!
//! Everything runs in this process but the MQTT broker when the binary was built without the
//! `demo` feature ([`broker`]):
//! - an MQTT broker (rumqttd) on a free port of 127.0.0.1;
//! - librdkafka's mock Kafka cluster (three brokers) holding the demo's three topics;
//! - the real gateway ([`crate::app::start`]) on a generated configuration that uses the
//!   repository's `schemas/reading.v1.json`, with its outbox in a temporary directory;
//! - simulated sensors ([`crate::cli::simulate`]) publishing readings, some of them invalid, plus
//!   a few status messages on a topic no route matches (they become `no-route` dead letters);
//! - one device writing JSON lines to a pseudo-terminal, read by a `[[serial]]` source (every
//!   tenth line has an out-of-range temperature). Where a pseudo-terminal cannot be opened as a
//!   serial port (qemu-user lacks the `TCGETS2` ioctl), the demo goes on without it and says so;
//! - the other direction ([`commands`]): commands produced into Kafka, delivered by the gateway's
//!   `[[downlink]]` to the simulated devices over MQTT; one invalid and one expired command
//!   become dead letters.
//!
//! A third of the way in, every Kafka broker goes down for a few seconds: readings keep arriving
//! and wait in the outbox, then drain when Kafka is back. When the sensors stop and the outbox is
//! empty, a consumer reads every topic back from the beginning, and the summary checks that the
//! numbers agree ([`DemoSummary::consistent`]).

pub mod broker;
pub mod commands;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::app::{AppError, Handle};
use crate::cli::simulate::{self, SimulateError, SimulateOptions, Target, Until};
use crate::config::{Config, ConfigError};
use crate::telemetry::downlink::CommandResult;
use crate::telemetry::Snapshot;
pub use commands::{COMMANDS_DLQ_TOPIC, COMMANDS_TOPIC};

/// The topic valid readings go to.
pub const READINGS_TOPIC: &str = "sensors.readings";
/// Dead letters of the readings route.
pub const READINGS_DLQ_TOPIC: &str = "sensors.readings.DLQ";
/// Dead letters that matched no route.
pub const UNROUTED_DLQ_TOPIC: &str = "sensorgate.unrouted.DLQ";
/// Every topic the demo reads back (the gateway's output).
pub const TOPICS: [&str; 4] = [
    READINGS_TOPIC,
    READINGS_DLQ_TOPIC,
    UNROUTED_DLQ_TOPIC,
    COMMANDS_DLQ_TOPIC,
];
/// Status messages published on a topic no route matches.
pub const STATUS_MESSAGES: u64 = 3;

/// The schema the demo validates against: the repository's own.
const READING_SCHEMA: &str = include_str!("../../schemas/reading.v1.json");
/// Partitions per topic.
const PARTITIONS: i32 = 3;
/// How long the pipeline may take to deliver everything once the sensors stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long starting the broker, the gateway's subscription and opening its serial port may
/// each take.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How often counters are sampled (the peak outbox depth is a sampled maximum).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Name of the gateway's MQTT source.
const SOURCE: &str = "demo-mqtt";
/// The simulated serial sensor's source name.
const SERIAL_SOURCE: &str = "demo-serial";

/// Errors of `demo`.
#[derive(Debug, Error)]
pub enum DemoError {
    /// Invalid option value.
    #[error("{0}")]
    Options(String),
    /// The temporary directory or the generated files could not be written.
    #[error("temporary state directory: {0}")]
    State(std::io::Error),
    /// The in-process MQTT broker did not start.
    #[error("in-process MQTT broker: {0}")]
    Broker(String),
    /// The mock Kafka cluster or the read-back consumer failed.
    #[error("Kafka mock cluster: {0}")]
    Kafka(#[from] KafkaError),
    /// The generated configuration was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gateway failed.
    #[error("gateway: {0}")]
    App(Box<AppError>),
    /// The simulated sensors failed.
    #[error("simulated sensors: {0}")]
    Simulate(Box<SimulateError>),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Progress or summary output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

// Boxed: these are large, and every `Result` of this module carries the enum.
impl From<AppError> for DemoError {
    fn from(e: AppError) -> Self {
        Self::App(Box::new(e))
    }
}

impl From<SimulateError> for DemoError {
    fn from(e: SimulateError) -> Self {
        Self::Simulate(Box::new(e))
    }
}

/// Options of `demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the sensors send.
    pub duration: Duration,
    /// Number of simulated devices.
    pub devices: u32,
    /// Readings per second over all devices.
    pub rate: f64,
    /// Share of invalid readings.
    pub invalid_ratio: f64,
    /// Length of the Kafka outage; it starts a third of the way into `duration` and lasts at
    /// most a third of it.
    pub outage: Duration,
    /// Random seed of the sensors.
    pub seed: Option<u64>,
    /// Progress line interval.
    pub progress_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(16),
            devices: 20,
            rate: 250.0,
            invalid_ratio: 0.05,
            outage: Duration::from_secs(4),
            seed: None,
            progress_every: Duration::from_secs(1),
        }
    }
}

/// What a consumer read back from one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBack {
    /// Records.
    pub records: u64,
    /// Distinct `sensorgate.seq` headers among them (fewer than `records` means duplicates).
    pub distinct: u64,
}

/// What a demo run did; [`DemoSummary::consistent`] says whether the numbers agree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoSummary {
    /// Readings the simulated sensors sent.
    pub sent: u64,
    /// Of those, readings the MQTT broker acknowledged.
    pub acknowledged: u64,
    /// Status messages (unrouted) the broker acknowledged.
    pub status_messages: u64,
    /// Lines the simulated serial sensor wrote to its pseudo-terminal.
    pub serial_lines: u64,
    /// Why there was no serial sensor, when there was none.
    pub serial_skipped: Option<String>,
    /// Invalid readings the sensors sent on purpose.
    pub sent_invalid: u64,
    /// Messages the gateway received.
    pub received: u64,
    /// Of those, readings that passed validation.
    pub valid: u64,
    /// Dead letters by reason (reasons that occurred).
    pub dead_letters: BTreeMap<String, u64>,
    /// Records evicted from a full outbox (0 unless something is badly wrong).
    pub dropped: u64,
    /// How long Kafka was down.
    pub outage: Duration,
    /// Largest outbox depth sampled while Kafka was down.
    pub peak_outbox_during_outage: u64,
    /// Records Kafka confirmed (readings and dead letters, the downlink's too).
    pub delivered: u64,
    /// Outbox depth at the end.
    pub outbox_left: u64,
    /// What the consumer read back, by topic.
    pub read_back: BTreeMap<String, ReadBack>,
    /// Commands produced into [`COMMANDS_TOPIC`].
    pub commands_produced: u64,
    /// Of those, valid ones (the others are dead letters on purpose).
    pub commands_valid: u64,
    /// Commands the MQTT broker acknowledged to the downlink.
    pub commands_delivered: u64,
    /// Commands the simulated devices received.
    pub commands_received: u64,
    /// The downlink's dead letters by reason (reasons that occurred).
    pub command_dead_letters: BTreeMap<String, u64>,
    /// Wall time of the whole demo.
    pub elapsed: Duration,
}

impl DemoSummary {
    /// Dead letters of every reason.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// The downlink's dead letters of every reason.
    pub fn command_dead_letters_total(&self) -> u64 {
        self.command_dead_letters.values().sum()
    }

    /// Distinct records read back from `topic`: a record sent twice counts once (delivery is
    /// at-least-once, so a record whose confirmation was lost is sent again).
    pub fn read(&self, topic: &str) -> u64 {
        self.read_back.get(topic).map_or(0, |r| r.distinct)
    }

    /// Records read back more than once, over every topic.
    pub fn duplicates(&self) -> u64 {
        self.read_back
            .values()
            .map(|r| r.records.saturating_sub(r.distinct))
            .sum()
    }

    /// Every check of the demo, with whether it held.
    pub fn checks(&self) -> Vec<(String, bool)> {
        let dead = self.dead_letters_total();
        let no_route = self.dead_letters.get("no-route").copied().unwrap_or(0);
        let command_dead = self.command_dead_letters_total();
        vec![
            (
                format!(
                    "received {} == acknowledged by the broker {} + status {} + serial lines {}",
                    self.received, self.acknowledged, self.status_messages, self.serial_lines
                ),
                self.received == self.acknowledged + self.status_messages + self.serial_lines,
            ),
            (
                format!(
                    "received {} == valid {} + dead letters {dead}",
                    self.received, self.valid
                ),
                self.received == self.valid + dead,
            ),
            (
                format!(
                    "delivered {} == received {} + command dead letters {command_dead}, outbox \
                     empty ({} left), none dropped ({})",
                    self.delivered, self.received, self.outbox_left, self.dropped
                ),
                self.delivered == self.received + command_dead
                    && self.outbox_left == 0
                    && self.dropped == 0,
            ),
            (
                format!(
                    "{READINGS_TOPIC} {} distinct == valid {}",
                    self.read(READINGS_TOPIC),
                    self.valid
                ),
                self.read(READINGS_TOPIC) == self.valid,
            ),
            (
                format!(
                    "{READINGS_DLQ_TOPIC} {} + {UNROUTED_DLQ_TOPIC} {} distinct == dead letters \
                     {dead}",
                    self.read(READINGS_DLQ_TOPIC),
                    self.read(UNROUTED_DLQ_TOPIC)
                ),
                self.read(READINGS_DLQ_TOPIC) + self.read(UNROUTED_DLQ_TOPIC) == dead
                    && self.read(UNROUTED_DLQ_TOPIC) == no_route,
            ),
            (
                format!(
                    "commands: the devices received {} >= valid {} of {} produced (the broker \
                     acknowledged {})",
                    self.commands_received,
                    self.commands_valid,
                    self.commands_produced,
                    self.commands_delivered
                ),
                self.commands_received >= self.commands_valid
                    && self.commands_delivered >= self.commands_valid,
            ),
            (
                format!(
                    "command dead letters {command_dead} == produced {} - valid {} == \
                     {COMMANDS_DLQ_TOPIC} {}",
                    self.commands_produced,
                    self.commands_valid,
                    self.read(COMMANDS_DLQ_TOPIC)
                ),
                command_dead == self.commands_produced - self.commands_valid
                    && self.read(COMMANDS_DLQ_TOPIC) == command_dead,
            ),
        ]
    }

    /// Whether every check holds.
    pub fn consistent(&self) -> bool {
        self.checks().iter().all(|(_, ok)| *ok)
    }
}

/// Runs the demo, printing progress every `options.progress_every` and a summary to `out`.
pub async fn run(options: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    check(options)?;
    let started = Instant::now();
    let outage = options.outage.min(options.duration / 3);
    let outage_at = options.duration / 3;

    let dir = tempfile::Builder::new()
        .prefix("sensorgate-demo-")
        .tempdir()
        .map_err(DemoError::State)?;
    let kafka = MockCluster::new(3)?;
    for topic in TOPICS.into_iter().chain([COMMANDS_TOPIC]) {
        kafka.create_topic(topic, PARTITIONS, 1)?;
    }
    let bootstrap = kafka.bootstrap_servers();
    let broker = broker::start()?;
    let mqtt_port = broker.port();
    let serial = serial_port();
    let config_path = write_config(
        dir.path(),
        mqtt_port,
        &bootstrap,
        serial.as_ref().ok().map(|(_, pty)| pty.as_str()),
    )
    .map_err(DemoError::State)?;
    let gateway = crate::app::start(Config::load(&config_path)?)?;

    writeln!(
        out,
        "sensorgate demo: MQTT broker ({}) on 127.0.0.1:{mqtt_port}, Kafka mock cluster \
         (3 brokers) on {bootstrap}\n  gateway state in a temporary directory; {} sensors, \
         ~{:.0} readings/s for {} s, {:.0}% invalid; Kafka down from {:.1} s to {:.1} s.",
        broker.describe(),
        options.devices,
        options.rate,
        options.duration.as_secs_f64(),
        options.invalid_ratio * 100.0,
        outage_at.as_secs_f64(),
        (outage_at + outage).as_secs_f64(),
    )?;
    let serial = match serial {
        Ok((master, pty)) => {
            writeln!(out, "  a serial sensor writes to {pty}.")?;
            Ok(master)
        }
        Err(why) => {
            writeln!(out, "  no serial sensor: {why}.")?;
            Err(why)
        }
    };
    let result = drive(
        options,
        out,
        &gateway,
        &kafka,
        mqtt_port,
        serial,
        (outage_at, outage),
    )
    .await;
    // Whatever happened, Kafka is up again and the gateway stops cleanly.
    let _ = kafka.broker_up(-1);
    let stopped = gateway.shutdown().await;
    let mut summary = result?;
    stopped?;

    let bootstrap_for_reader = bootstrap.clone();
    summary.read_back = tokio::task::spawn_blocking(move || read_back(&bootstrap_for_reader))
        .await
        .map_err(|e| DemoError::Timeout(format!("the read-back task failed: {e}")))??;
    summary.elapsed = started.elapsed();
    write_summary(out, &summary)?;
    drop(kafka);
    drop(broker);
    Ok(summary)
}

/// The serial sensor's pseudo-terminal: the master end, which the sensor writes to, and the
/// path of the slave end, which the gateway opens (and locks) like a real device. The slave end
/// is opened here once the way the gateway opens a port, to learn whether this system allows it
/// (under qemu-user it fails: no `TCGETS2`); the error says why not.
fn serial_port() -> Result<(tokio_serial::SerialStream, String), String> {
    let (master, slave) = tokio_serial::SerialStream::pair()
        .map_err(|e| format!("cannot create a pseudo-terminal ({e})"))?;
    let pty = tokio_serial::SerialPort::name(&slave)
        .ok_or_else(|| "the pseudo-terminal has no name".to_owned())?;
    drop(slave);
    probe_serial(&pty)?;
    Ok((master, pty))
}

/// Opens `path` as a serial port as the gateway does, and closes it again.
fn probe_serial(path: &str) -> Result<(), String> {
    tokio_serial::new(path, 115_200)
        .open_native()
        .map(drop)
        .map_err(|e| {
            format!("{path} cannot be opened as a serial port here ({e}), so the demo goes on without it")
        })
}

fn check(options: &DemoOptions) -> Result<(), DemoError> {
    if options.devices == 0 {
        return Err(DemoError::Options("--devices must be at least 1".into()));
    }
    if options.duration < Duration::from_secs(3) {
        return Err(DemoError::Options(
            "--duration must be at least 3s (the Kafka outage needs room)".into(),
        ));
    }
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(DemoError::Options("the rate must be positive".into()));
    }
    if !(0.0..=1.0).contains(&options.invalid_ratio) {
        return Err(DemoError::Options(
            "the invalid ratio must be between 0 and 1".into(),
        ));
    }
    Ok(())
}

/// Sensors, outage and progress; returns the counters once everything was delivered.
async fn drive(
    options: &DemoOptions,
    out: &mut dyn Write,
    gateway: &Handle,
    kafka: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    mqtt_port: u16,
    pty_master: Result<tokio_serial::SerialStream, String>,
    (outage_at, outage): (Duration, Duration),
) -> Result<DemoSummary, DemoError> {
    let stats = gateway.stats().clone();
    // Up: the MQTT source, and the downlink with its partitions assigned (its lag is known),
    // so that the commands make their round trip before the Kafka outage.
    wait_for(
        out,
        START_LIMIT,
        &format!("the gateway's MQTT source and downlink to connect to 127.0.0.1:{mqtt_port}"),
        || {
            let snap = stats.snapshot();
            snap.sources_up.get(SOURCE) == Some(&true)
                && snap
                    .downlinks
                    .get(commands::DOWNLINK)
                    .is_some_and(|d| d.up && !d.lag.is_empty())
        },
    )
    .await?;
    let mut serial_skipped = pty_master.as_ref().err().cloned();
    let serial = match pty_master {
        Ok(master) => {
            let opened = wait_for(
                out,
                START_LIMIT,
                "the gateway's serial source to open the pseudo-terminal",
                || {
                    stats
                        .snapshot()
                        .serial
                        .get(SERIAL_SOURCE)
                        .is_some_and(|p| p.open)
                },
            )
            .await;
            match opened {
                Ok(()) => Some(tokio::spawn(serial_sensor(master, options.duration))),
                Err(DemoError::Timeout(what)) => {
                    let why = format!("timed out waiting for {what}");
                    writeln!(out, "  no serial sensor: {why}; going on without it.")?;
                    serial_skipped = Some(why);
                    None
                }
                Err(e) => return Err(e),
            }
        }
        Err(_) => None,
    };
    writeln!(out)?;
    let status_messages = publish_status(mqtt_port).await?;

    let url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let (command_records, commands_valid) = commands::commands(options.devices);
    let commands_produced = command_records.len() as u64;
    let mut command_records = Some(command_records);
    let mut producing: Option<tokio::task::JoinHandle<Result<(), KafkaError>>> = None;
    let mut produced = false;
    let sim_options = SimulateOptions {
        target: Target::Mqtt {
            url,
            client_id: "demo-sensors".into(),
            topic_prefix: "sensors".into(),
        },
        devices: options.devices,
        rate: options.rate,
        invalid_ratio: options.invalid_ratio,
        until: Until::Duration(options.duration),
        seed: options.seed,
        commands: Some(commands::DEVICE_TOPIC.into()),
        expect_commands: Some(commands_valid),
    };
    // The simulator's own progress lines are not shown; the demo prints its own.
    let mut quiet = std::io::sink();
    let sensors = simulate::run(&sim_options, &mut quiet, CancellationToken::new());
    tokio::pin!(sensors);

    writeln!(
        out,
        "{:>6}  {:>8}  {:>8}  {:>12}  {:>6}  {:>9}  kafka",
        "time", "received", "valid", "dead letters", "outbox", "delivered"
    )?;
    let start = Instant::now();
    let mut sampler = tokio::time::interval(SAMPLE_EVERY);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_progress = start + options.progress_every;
    let mut down = false;
    let mut outage_done = false;
    let mut peak = 0u64;
    let mut sent: Option<simulate::Summary> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut serial = serial;
    let mut serial_lines: Option<u64> = None;
    // Held open until the end, like a device that stays plugged in.
    let mut _serial_port: Option<tokio_serial::SerialStream> = None;
    loop {
        tokio::select! {
            finished = &mut sensors, if sent.is_none() => {
                sent = Some(finished?);
                drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
            }
            _ = sampler.tick() => {}
        }
        let elapsed = start.elapsed();
        if !down && !outage_done && elapsed >= outage_at {
            kafka.broker_down(-1)?;
            down = true;
            write_event(out, elapsed, "Kafka goes down (all 3 brokers)")?;
        } else if down && elapsed >= outage_at + outage {
            kafka.broker_up(-1)?;
            down = false;
            outage_done = true;
            write_event(out, elapsed, "Kafka is back")?;
        }
        let snap = stats.snapshot();
        let depth = gateway.outbox().stats().depth;
        // The simulated devices subscribe to their command topics before their first reading:
        // from then on commands reach them.
        if snap.received_total() > 0 {
            if let Some(records) = command_records.take() {
                let bootstrap = kafka.bootstrap_servers();
                producing = Some(tokio::spawn(commands::produce(bootstrap, records)));
                write_event(
                    out,
                    elapsed,
                    &format!("{commands_produced} commands produced into {COMMANDS_TOPIC}"),
                )?;
            }
        }
        if let Some(task) = producing.as_mut().filter(|t| t.is_finished()) {
            task.await
                .map_err(|e| DemoError::Timeout(format!("producing the commands failed: {e}")))??;
            producing = None;
            produced = true;
        }
        let downlink = snap.downlinks.get(commands::DOWNLINK);
        let commands_done =
            downlink.map_or(0, |d| d.count(CommandResult::Delivered) + d.dead_letters());
        if down {
            peak = peak.max(depth);
        }
        if Instant::now() >= next_progress {
            next_progress += options.progress_every;
            write_progress(out, elapsed, &snap, depth, down)?;
        }
        if sent.is_some() && serial_lines.is_none() {
            match &mut serial {
                None => serial_lines = Some(0),
                Some(task) if task.is_finished() => {
                    let (port, lines) = task
                        .await
                        .map_err(|e| DemoError::Timeout(format!("the serial sensor failed: {e}")))?
                        .map_err(DemoError::State)?;
                    _serial_port = Some(port);
                    serial_lines = Some(lines);
                }
                Some(_) => {}
            }
        }
        if let (Some(sim), Some(lines)) = (&sent, serial_lines) {
            let received = snap.received_total();
            if outage_done
                && produced
                && commands_done >= commands_produced
                && received >= sim.acknowledged + status_messages + lines
                && snap.delivered >= received
                && depth == 0
            {
                write_progress(out, elapsed, &snap, depth, down)?;
                let mut summary = summary_of(
                    sim,
                    status_messages,
                    lines,
                    &snap,
                    depth,
                    outage,
                    peak,
                    (commands_produced, commands_valid),
                );
                summary.serial_skipped = serial_skipped;
                return Ok(summary);
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                write_progress(out, elapsed, &snap, depth, down)?;
                writeln!(
                    out,
                    "Gave up waiting after {} s: not everything was delivered.",
                    DRAIN_LIMIT.as_secs()
                )?;
                let mut summary = summary_of(
                    sim,
                    status_messages,
                    lines,
                    &snap,
                    depth,
                    outage,
                    peak,
                    (commands_produced, commands_valid),
                );
                summary.serial_skipped = serial_skipped;
                return Ok(summary);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summary_of(
    sim: &simulate::Summary,
    status_messages: u64,
    serial_lines: u64,
    snap: &Snapshot,
    depth: u64,
    outage: Duration,
    peak: u64,
    (commands_produced, commands_valid): (u64, u64),
) -> DemoSummary {
    let downlink = snap
        .downlinks
        .get(commands::DOWNLINK)
        .cloned()
        .unwrap_or_default();
    let command_dead_letters = [
        CommandResult::NotJson,
        CommandResult::Schema,
        CommandResult::NoTarget,
        CommandResult::Expired,
    ]
    .into_iter()
    .map(|r| (r.as_str().to_owned(), downlink.count(r)))
    .filter(|(_, n)| *n > 0)
    .collect();
    DemoSummary {
        commands_produced,
        commands_valid,
        commands_delivered: downlink.count(CommandResult::Delivered),
        commands_received: sim.commands.iter().map(|(_, n)| n).sum(),
        command_dead_letters,
        sent: sim.sent,
        acknowledged: sim.acknowledged,
        status_messages,
        serial_lines,
        serial_skipped: None,
        sent_invalid: sim.invalid_total(),
        received: snap.received_total(),
        valid: snap.valid,
        dead_letters: snap
            .dead_letters
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
        dropped: snap.dropped,
        outage,
        peak_outbox_during_outage: peak,
        delivered: snap.delivered,
        outbox_left: depth,
        read_back: BTreeMap::new(),
        elapsed: Duration::ZERO,
    }
}

fn write_event(out: &mut dyn Write, elapsed: Duration, what: &str) -> std::io::Result<()> {
    writeln!(out, "{:>5.1}s  --- {what} ---", elapsed.as_secs_f64())?;
    out.flush()
}

fn write_progress(
    out: &mut dyn Write,
    elapsed: Duration,
    snap: &Snapshot,
    depth: u64,
    down: bool,
) -> std::io::Result<()> {
    let kafka = if down { "DOWN" } else { "up" };
    writeln!(
        out,
        "{:>5.1}s  {:>8}  {:>8}  {:>12}  {:>6}  {:>9}  {kafka}",
        elapsed.as_secs_f64(),
        snap.received_total(),
        snap.valid,
        snap.dead_letters_total(),
        depth,
        snap.delivered,
    )?;
    out.flush()
}

fn write_summary(out: &mut dyn Write, s: &DemoSummary) -> std::io::Result<()> {
    let reasons = s
        .dead_letters
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(out)?;
    writeln!(out, "Summary")?;
    let serial = match &s.serial_skipped {
        None => format!("{} lines on a serial port", s.serial_lines),
        Some(why) => format!("no serial sensor ({why})"),
    };
    writeln!(
        out,
        "  sensors sent            {} readings ({} invalid on purpose) + {} status messages \
         over MQTT; {serial}",
        s.sent, s.sent_invalid, s.status_messages
    )?;
    writeln!(out, "  received                {}", s.received)?;
    writeln!(out, "  valid                   {}", s.valid)?;
    writeln!(
        out,
        "  dead letters            {} ({reasons})",
        s.dead_letters_total()
    )?;
    writeln!(
        out,
        "  Kafka outage            {:.1} s; peak outbox depth meanwhile: {} records",
        s.outage.as_secs_f64(),
        s.peak_outbox_during_outage
    )?;
    writeln!(
        out,
        "  delivered to Kafka      {} (outbox left: {}, dropped: {})",
        s.delivered, s.outbox_left, s.dropped
    )?;
    let command_reasons = s
        .command_dead_letters
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "  commands (downlink)     {} produced into {COMMANDS_TOPIC}: {} acknowledged by the \
         broker, {} received by the devices; {} dead letters ({command_reasons})",
        s.commands_produced,
        s.commands_delivered,
        s.commands_received,
        s.command_dead_letters_total()
    )?;
    writeln!(out, "  a consumer read back:")?;
    for topic in TOPICS {
        let r = s.read_back.get(topic).copied().unwrap_or_default();
        writeln!(
            out,
            "    {topic:<34} {:>6} records ({} distinct)",
            r.records, r.distinct
        )?;
    }
    let duplicates = s.duplicates();
    if duplicates > 0 {
        writeln!(
            out,
            "  duplicates              {duplicates} records read back twice (allowed: delivery is \
             at-least-once; the checks count distinct records)"
        )?;
    }
    writeln!(out, "  checks:")?;
    for (what, ok) in s.checks() {
        writeln!(out, "    [{}] {what}", if ok { "ok" } else { "FAILED" })?;
    }
    writeln!(
        out,
        "  consistent: {}   (took {:.1} s)",
        if s.consistent() { "yes" } else { "NO" },
        s.elapsed.as_secs_f64()
    )?;
    out.flush()
}

/// Says what it waits for (when that is not there at once), then waits for it until `limit`.
async fn wait_for(
    out: &mut dyn Write,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + limit;
    if !cond() {
        writeln!(out, "  waiting for {what} …")?;
        out.flush()?;
    }
    while !cond() {
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(format!(
                "{what} (waited {} s)",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Writes the gateway's configuration and schema into `dir`; returns the configuration's path.
fn write_config(
    dir: &Path,
    mqtt_port: u16,
    bootstrap: &str,
    pty: Option<&str>,
) -> std::io::Result<PathBuf> {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas)?;
    std::fs::write(schemas.join("reading.v1.json"), READING_SCHEMA)?;
    std::fs::write(schemas.join("command.v1.json"), commands::COMMAND_SCHEMA)?;
    let path = dir.join("sensorgate.toml");
    let mut text = format!(
        r#"# Generated by `sensorgate demo`.
[gateway]
id = "demo-gateway"
state_dir = "state"
schemas_dir = "schemas"
log_level = "warn"

[queue]
max_bytes = "256MiB"
commit_interval = "10ms"

[kafka]
brokers = "{bootstrap}"
linger = "5ms"
message_timeout = "60s"

[kafka.properties]
# Reconnect quickly once the outage ends (librdkafka's default backoff grows to 10 s).
"reconnect.backoff.max.ms" = "500"

[retry]
initial = "100ms"
max = "1s"

[metrics]
listen = ""

[[mqtt]]
name = "{SOURCE}"
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "demo-gateway"
topics = ["sensors/#"]

[[route]]
source = "{SOURCE}"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "{READINGS_TOPIC}"
key = "/device_id"
{downlink}"#,
        downlink = commands::config_section(SOURCE),
    );
    if let Some(pty) = pty {
        text.push_str(&format!(
            r#"
[[serial]]
name = "{SERIAL_SOURCE}"
device = "{pty}"
baud = 115200
format = "json-lines"

[[route]]
source = "{SERIAL_SOURCE}"
schema = "reading.v1.json"
kafka_topic = "{READINGS_TOPIC}"
key = "/device_id"
"#
        ));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One device on a serial port: a JSON line every 100 ms for `duration`, every tenth with a
/// temperature out of range (a `schema` dead letter). Returns the port, still open (closing the
/// master end would discard what the gateway has not read yet), and how many lines it wrote.
async fn serial_sensor(
    mut port: tokio_serial::SerialStream,
    duration: Duration,
) -> std::io::Result<(tokio_serial::SerialStream, u64)> {
    use tokio::io::AsyncWriteExt;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let end = Instant::now() + duration;
    let mut seq = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let temperature = if seq % 10 == 9 {
            999.0
        } else {
            21.0 + (seq % 7) as f64 / 10.0
        };
        let line = format!(
            "{{\"device_id\":\"bench-serial-01\",\"seq\":{seq},\"temperature_c\":{temperature}}}\n"
        );
        AsyncWriteExt::write_all(&mut port, line.as_bytes()).await?;
        seq += 1;
    }
    AsyncWriteExt::flush(&mut port).await?;
    Ok((port, seq))
}

/// Publishes [`STATUS_MESSAGES`] status messages on `sensors/<device>/status`, which no route
/// matches, and returns how many the broker acknowledged.
async fn publish_status(mqtt_port: u16) -> Result<u64, DemoError> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("demo-status", "127.0.0.1", mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    for n in 1..=STATUS_MESSAGES {
        let payload = format!(r#"{{"device_id":"dev-{n:04}","status":"online"}}"#);
        client
            .publish(
                format!("sensors/dev-{n:04}/status"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| DemoError::Broker(e.to_string()))?;
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    while acked < STATUS_MESSAGES {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(DemoError::Broker(e.to_string())),
            Err(_) => {
                return Err(DemoError::Timeout(
                    "status messages to be acknowledged".into(),
                ))
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(acked)
}

/// Reads every partition of every demo topic from the beginning up to its high watermark.
fn read_back(bootstrap: &str) -> Result<BTreeMap<String, ReadBack>, DemoError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sensorgate-demo")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let limit = Duration::from_secs(10);
    let mut list = TopicPartitionList::new();
    // What each partition holds: its high watermark.
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for topic in TOPICS {
        for partition in 0..PARTITIONS {
            let (low, high) = consumer.fetch_watermarks(topic, partition, limit)?;
            if high > low {
                remaining.insert((topic.to_owned(), partition), high);
            }
            list.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&list)?;
    let mut records: BTreeMap<String, u64> = BTreeMap::new();
    let mut seqs: BTreeMap<String, HashSet<Vec<u8>>> = BTreeMap::new();
    let deadline = Instant::now() + DRAIN_LIMIT;
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(format!(
                "reading the topics back ({} partitions not read to the end)",
                remaining.len()
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let topic = message.topic().to_owned();
        *records.entry(topic.clone()).or_default() += 1;
        let seq = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "sensorgate.seq")
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            })
            .unwrap_or_default();
        seqs.entry(topic.clone()).or_default().insert(seq);
        let key = (topic, message.partition());
        if remaining
            .get(&key)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&key);
        }
    }
    Ok(TOPICS
        .iter()
        .map(|topic| {
            let read = ReadBack {
                records: records.get(*topic).copied().unwrap_or(0),
                distinct: seqs.get(*topic).map_or(0, |s| s.len() as u64),
            };
            ((*topic).to_owned(), read)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configuration_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        for pty in [Some("/dev/ttyUSB0"), None] {
            let path = write_config(dir.path(), 1883, "127.0.0.1:9092", pty).unwrap();
            let config = Config::load(&path).unwrap();
            assert!(config.problems().is_empty(), "{:?}", config.problems());
            assert_eq!(config.serial.len(), usize::from(pty.is_some()));
            crate::pipeline::Rules::build(&config).expect("routes and schema compile");
            assert_eq!(config.downlinks[0].name, commands::DOWNLINK);
            assert_eq!(
                config.downlinks[0].topic(&config.gateway.id),
                COMMANDS_TOPIC
            );
            crate::downlink::rules::Rules::build(&config, &config.downlinks[0])
                .expect("the downlink's template and schema compile");
        }
    }

    #[test]
    fn a_file_that_is_not_a_serial_port_fails_the_probe_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-tty");
        std::fs::write(&file, "").unwrap();
        let why = probe_serial(file.to_str().unwrap()).unwrap_err();
        assert!(
            why.contains("not-a-tty") && why.contains("goes on without it"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_pseudo_terminal_passes_the_probe() {
        let (_master, pty) = serial_port().expect("a usable pseudo-terminal on this machine");
        assert!(pty.starts_with("/dev/"), "{pty}");
    }

    #[test]
    fn checks_fail_when_a_count_disagrees() {
        let mut s = DemoSummary {
            acknowledged: 97,
            status_messages: 3,
            received: 100,
            valid: 90,
            dead_letters: BTreeMap::from([("schema".into(), 7), ("no-route".into(), 3)]),
            delivered: 100,
            read_back: BTreeMap::from([
                (
                    READINGS_TOPIC.into(),
                    ReadBack {
                        records: 90,
                        distinct: 90,
                    },
                ),
                (
                    READINGS_DLQ_TOPIC.into(),
                    ReadBack {
                        records: 7,
                        distinct: 7,
                    },
                ),
                (
                    UNROUTED_DLQ_TOPIC.into(),
                    ReadBack {
                        records: 3,
                        distinct: 3,
                    },
                ),
            ]),
            ..Default::default()
        };
        assert!(s.consistent(), "{:?}", s.checks());
        // The round trip: 8 valid commands received, 2 dead letters delivered to their topic.
        s.commands_produced = 10;
        s.commands_valid = 8;
        s.commands_delivered = 8;
        s.commands_received = 7;
        s.command_dead_letters = BTreeMap::from([("schema".into(), 1), ("expired".into(), 1)]);
        s.delivered = 102;
        s.read_back.insert(
            COMMANDS_DLQ_TOPIC.into(),
            ReadBack {
                records: 2,
                distinct: 2,
            },
        );
        assert!(!s.consistent(), "a device missed a command");
        s.commands_received = 8;
        assert!(s.consistent(), "{:?}", s.checks());
        // A reading sent twice is allowed (at-least-once), and counted; a missing one is not.
        s.read_back.insert(
            READINGS_TOPIC.into(),
            ReadBack {
                records: 91,
                distinct: 90,
            },
        );
        assert!(s.consistent(), "{:?}", s.checks());
        assert_eq!(s.duplicates(), 1);
        s.read_back.insert(
            READINGS_TOPIC.into(),
            ReadBack {
                records: 90,
                distinct: 89,
            },
        );
        assert!(!s.consistent(), "a reading is missing");
    }

    #[test]
    fn options_are_checked() {
        let short = DemoOptions {
            duration: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(matches!(check(&short), Err(DemoError::Options(_))));
        assert!(check(&DemoOptions::default()).is_ok());
    }
}
