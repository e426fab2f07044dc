//! The `sensorgate` binary: argument parsing, logging set-up and exit codes; everything else
//! lives in the library.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Parser, Subcommand};
use sensorgate::admin::{AdminError, Filter, Selection};
use sensorgate::app::AppError;
use sensorgate::cli::demo::{DemoError, DemoOptions};
use sensorgate::cli::simulate::{SimulateOptions, Target, Until};
use sensorgate::cli::tail::{TailOptions, DEFAULT_GROUP};
use sensorgate::cli::{self, Status};
use sensorgate::config::units::parse_duration;
use sensorgate::config::{Config, DEFAULT_PATH};
use sensorgate::downlink::DownlinkError;
use sensorgate::record::{now_ms, Reason};
use sensorgate::telemetry::logging;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sensorgate",
    version,
    about = "Edge gateway: sensor readings from MQTT to Kafka, validated and durably buffered"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on this machine, nothing to install: an in-process MQTT broker and Kafka mock
    /// cluster, simulated sensors (some invalid), a Kafka outage mid-run, and a summary that
    /// checks every count against what a consumer reads back (exit 0 when consistent).
    Demo {
        /// How long the simulated sensors send (e.g. "16s", at least 3s).
        #[arg(long, value_name = "D", default_value = "16s", value_parser = parse_duration)]
        duration: Duration,
        /// Number of simulated devices.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        devices: u32,
    },
    /// Run the daemon in the foreground.
    Run {
        /// Configuration file.
        #[arg(long, env = "SENSORGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Parse the configuration, compile schemas, report every problem (exit 0 or 1).
    CheckConfig {
        /// Configuration file.
        #[arg(long, env = "SENSORGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate JSON documents against a schema, print violations (exit 0 or 1).
    Validate {
        /// The JSON Schema file.
        #[arg(long)]
        schema: PathBuf,
        /// Documents to validate; `-` or none reads standard input.
        files: Vec<String>,
    },
    /// Simulated sensors: publish readings to an MQTT broker (QoS 1) or write them to a
    /// serial device; doubles as a load generator.
    #[command(group(ArgGroup::new("target").required(true).args(["mqtt", "serial"])))]
    Simulate {
        /// Broker URL, e.g. mqtt://127.0.0.1:1883.
        #[arg(long, value_name = "URL")]
        mqtt: Option<String>,
        /// Serial device or pty to write JSON lines to (it must exist).
        #[arg(long, value_name = "PATH")]
        serial: Option<PathBuf>,
        /// Number of devices (dev-0001, dev-0002, ...).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        devices: u32,
        /// Readings per second over all devices; 0 = as fast as possible.
        #[arg(long, value_name = "R", value_parser = parse_rate)]
        rate: f64,
        /// Share of invalid readings, 0 to 1 (temperature as a string, no device_id, not JSON).
        #[arg(long, value_name = "X", default_value_t = 0.0, value_parser = parse_ratio)]
        invalid_ratio: f64,
        /// Stop after this long (e.g. "30s"); without --duration or --count, run until Ctrl-C.
        #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "count")]
        duration: Option<Duration>,
        /// Stop after this many readings in total.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Topics are <prefix>/<device_id>/reading.
        #[arg(long, default_value = "sensors")]
        topic_prefix: String,
        /// MQTT client id (default: sensorgate-simulate-<pid>).
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
        /// Random seed, for a reproducible run.
        #[arg(long)]
        seed: Option<u64>,
        /// Each device also subscribes to its command topic (QoS 1) and counts the commands it
        /// receives (MQTT only).
        #[arg(long, requires = "mqtt")]
        commands: bool,
        /// The command topic, `{device_id}` standing for each device's id.
        #[arg(
            long,
            value_name = "T",
            default_value = "devices/{device_id}/commands",
            requires = "commands"
        )]
        command_topic: String,
    },
    /// The local dead-letter store (through the running daemon's admin socket, or the state
    /// directory when no daemon runs).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The outbox.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// A live view of a running gateway: sources, validation, outbox, Kafka, downlinks, dead
    /// letters (q quits, d shows the latest dead letters). Plain lines when stdout is not a
    /// terminal.
    Top {
        /// Print one snapshot (two scrapes one interval apart) as plain text and exit.
        #[arg(long)]
        once: bool,
        /// Time between scrapes.
        #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// The metrics endpoint to read (host:port); default: `[metrics] listen` of the
        /// configuration.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Consume Kafka topics and print each record, or aggregate per device with --stats.
    Tail {
        /// Kafka bootstrap servers, e.g. localhost:9092.
        #[arg(long, value_name = "B")]
        brokers: String,
        /// Topic to consume (repeat for several).
        #[arg(long, value_name = "T", required = true)]
        topic: Vec<String>,
        /// Consumer group; its committed offsets say where to resume.
        #[arg(long, value_name = "G", default_value = DEFAULT_GROUP)]
        group: String,
        /// Start at the earliest offset when the group has no committed offset yet.
        #[arg(long)]
        from_beginning: bool,
        /// Aggregate per device (count, rate, numeric fields, seq gaps) and per dead-letter
        /// reason; print the table every 5 s and at exit.
        #[arg(long)]
        stats: bool,
        /// Exit after this many records.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Exit after this long without a record (e.g. "10s").
        #[arg(long, value_name = "D", value_parser = parse_duration)]
        idle_exit: Option<Duration>,
        /// A librdkafka consumer property, e.g. -X security.protocol=SSL (repeatable).
        #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
        properties: Vec<(String, String)>,
    },
}

/// `--config`, for the admin commands.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file (names the state directory and the admin socket).
    #[arg(long, env = "SENSORGATE_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (the most recent ones with --limit), oldest first.
    List {
        /// Only this reason (no-route, not-json, schema, too-large, publish-rejected).
        #[arg(long, value_parser = parse_reason)]
        reason: Option<Reason>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Only those received since: an RFC 3339 time or a duration ago ("2h").
        #[arg(long, value_name = "T", value_parser = parse_since)]
        since: Option<u64>,
        /// At most N, the most recent.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show one dead letter: metadata, every violation, the payload.
    Show {
        /// Its id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-validate with the current schemas and move what passes to the outbox;
    /// publish-rejected entries are re-sent as they are. Exit 1 if some still fail.
    #[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
    Replay {
        /// Ids to replay.
        ids: Vec<u64>,
        /// Every dead letter (narrow with --reason).
        #[arg(long)]
        all: bool,
        /// With --all: only this reason.
        #[arg(long, value_parser = parse_reason, requires = "all")]
        reason: Option<Reason>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete dead letters.
    #[command(group(ArgGroup::new("which").required(true).args(["ids", "all", "older_than"])))]
    Purge {
        /// Ids to delete.
        ids: Vec<u64>,
        /// Every dead letter (narrow with --older-than).
        #[arg(long)]
        all: bool,
        /// Only those received longer ago than this ("7d").
        #[arg(long, value_name = "D", value_parser = parse_duration, conflicts_with = "ids")]
        older_than: Option<Duration>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print every dead letter, one JSON object per line (payload as text, or base64 with
    /// "encoding":"base64").
    Export {
        /// Output format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Outbox depth, bytes, oldest record age, per-route counts, DLQ size, Kafka state.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn parse_reason(text: &str) -> Result<Reason, String> {
    Reason::ALL
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| {
            let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            format!("`{text}` is not a reason; one of {}", all.join(", "))
        })
}

fn parse_since(text: &str) -> Result<u64, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| e.to_string());
    }
    let ago = parse_duration(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration"))?;
    Ok(now_ms().saturating_sub(ago.as_millis() as u64))
}

/// Loads the configuration and runs an admin command; errors print and exit 1 (2 for a bad
/// configuration).
fn admin_tool<F>(path: &std::path::Path, task: impl FnOnce(Config) -> F) -> Status
where
    F: Future<Output = Result<Status, AdminError>>,
{
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sensorgate: {e}");
            return Status::Usage;
        }
    };
    logging::init("warn");
    match run_tool(|_stop| task(config)) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("sensorgate: {e:#}");
            Status::CheckFailed
        }
    }
}

/// How often `tail --stats` prints the table while running.
const STATS_EVERY: Duration = Duration::from_secs(5);

fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("at least 100ms".to_owned()),
        Err(e) => Err(e),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate (readings per second, 0 = as fast as possible)"
        )),
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{text}` is not a ratio between 0 and 1")),
    }
}

/// Loads the configuration, sets up logging and compiles the rules, before the runtime starts
/// its threads ([`sensorgate::app::prepare`] says why).
fn prepare(config: PathBuf) -> anyhow::Result<sensorgate::app::Prepared> {
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(e) => {
            logging::init("info");
            return Err(e.into());
        }
    };
    logging::init(&config.gateway.log_level);
    Ok(sensorgate::app::prepare(config)?)
}

async fn run(prepared: sensorgate::app::Prepared) -> anyhow::Result<()> {
    // Installed before the start, so a SIGTERM or SIGHUP that arrives while the gateway starts
    // waits for it instead of killing the process.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let handle = Arc::new(sensorgate::app::start_prepared(prepared)?);
    let signals = {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                    _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received"); break }
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading routes and schemas");
                        // A failed reload is logged and counted; the old rules stay.
                        let _ = handle.reload();
                    }
                }
            }
            handle.stop();
        })
    };
    // Returns after a signal, or earlier when a pipeline task fails.
    let result = handle.finished().await;
    signals.abort();
    result?;
    Ok(())
}

/// Worker threads of the daemon's runtime, at most. Committing (sled, fsync), publishing
/// (librdkafka) and sled's I/O have threads of their own; tokio's tasks receive, parse, validate
/// and route, which two workers do for far more readings than a board's sensors send, and which
/// leaves a 4-core Pi's other cores to those threads.
const WORKER_THREADS: usize = 2;
/// Threads for blocking calls (opening a serial port, resolving a broker's name): each source
/// makes one at a time.
const MAX_BLOCKING_THREADS: usize = 8;
/// How long an idle blocking thread is kept.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The daemon's runtime, sized for a small board rather than for the machine's core count.
fn daemon_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS.min(cores))
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
}

/// Runs an operator tool on a fresh runtime. The first SIGINT or SIGTERM cancels the token the
/// tool watches (it then prints its summary); a second one exits at once.
fn run_tool<T, E, F>(task: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<T>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Installed before the tool starts, so an early Ctrl-C is not lost.
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            stopper.cancel();
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            std::process::exit(130);
        });
        Ok(task(stop).await?)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match cli.command {
        Command::Demo { duration, devices } => {
            // Only warnings, so the demo's own lines stay readable. rumqttd logs ordinary
            // client disconnects as errors: silenced. During the outage the publisher and the
            // downlink's consumer relay librdkafka's connection failures as warnings, a dozen
            // lines the demo's own "Kafka goes down" line says better: only their errors are
            // shown.
            logging::init(
                "warn,rumqttd=off,sensorgate::publish::kafka=error,\
                 sensorgate::downlink::consumer=error",
            );
            let options = DemoOptions {
                duration,
                devices,
                ..DemoOptions::default()
            };
            // Ctrl-C ends the demo at once: everything it started lives in this process.
            match run_tool(|stop| async move {
                let mut stdout = std::io::stdout();
                tokio::select! {
                    result = cli::demo::run(&options, &mut stdout) => result.map(Some),
                    _ = stop.cancelled() => Ok(None),
                }
            }) {
                Ok(Some(summary)) if summary.consistent() => Status::Ok,
                Ok(Some(_)) => Status::CheckFailed,
                Ok(None) => {
                    eprintln!("sensorgate demo: interrupted");
                    return ExitCode::from(130);
                }
                Err(e) => {
                    eprintln!("sensorgate demo: {e}");
                    match e.downcast_ref::<DemoError>() {
                        Some(DemoError::Options(_)) => Status::Usage,
                        _ => Status::CheckFailed,
                    }
                }
            }
        }
        Command::Run { config } => {
            let started = prepare(config).and_then(|prepared| {
                let runtime = daemon_runtime()
                    .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
                runtime.block_on(run(prepared))
            });
            match started {
                Ok(()) => Status::Ok,
                Err(e) => {
                    // Our errors carry their causes in their own message already.
                    tracing::error!("{e}");
                    let config_error = matches!(
                        e.downcast_ref::<AppError>(),
                        Some(
                            AppError::Config(_)
                                | AppError::Rules { .. }
                                | AppError::Downlink(DownlinkError::Rules { .. })
                        )
                    ) || e
                        .downcast_ref::<sensorgate::config::ConfigError>()
                        .is_some();
                    if config_error {
                        Status::Usage
                    } else {
                        Status::CheckFailed
                    }
                }
            }
        }
        Command::CheckConfig { config } => {
            cli::check_config::run(&config, &mut std::io::stdout()).unwrap_or(Status::Usage)
        }
        Command::Validate { schema, files } => {
            cli::validate::run(&schema, &files, &mut std::io::stdout()).unwrap_or(Status::Usage)
        }
        Command::Simulate {
            mqtt,
            serial,
            devices,
            rate,
            invalid_ratio,
            duration,
            count,
            topic_prefix,
            client_id,
            seed,
            commands,
            command_topic,
        } => {
            logging::init("warn");
            let target = match (mqtt, serial) {
                (Some(url), _) => Target::Mqtt {
                    url,
                    client_id: client_id
                        .unwrap_or_else(|| format!("sensorgate-simulate-{}", std::process::id())),
                    topic_prefix,
                },
                (None, Some(path)) => Target::Serial { path },
                // clap requires one of the two.
                (None, None) => return ExitCode::from(Status::Usage as u8),
            };
            let until = match (count, duration) {
                (Some(n), _) => Until::Count(n),
                (None, Some(d)) => Until::Duration(d),
                (None, None) => Until::Cancelled,
            };
            let options = SimulateOptions {
                target,
                devices,
                rate,
                invalid_ratio,
                until,
                seed,
                commands: commands.then_some(command_topic),
                expect_commands: None,
            };
            match run_tool(|stop| async move {
                cli::simulate::run(&options, &mut std::io::stdout(), stop).await
            }) {
                Ok(summary) if summary.acknowledged == summary.sent => Status::Ok,
                Ok(_) => Status::CheckFailed,
                Err(e) => {
                    eprintln!("sensorgate simulate: {e}");
                    Status::CheckFailed
                }
            }
        }
        Command::Dlq { command } => dlq(command),
        Command::Queue {
            command: QueueCommand::Stats { json, config },
        } => admin_tool(&config.config, |config| async move {
            cli::queue::stats(&config, json, &mut std::io::stdout()).await
        }),
        Command::Top {
            once,
            interval,
            metrics,
            config,
        } => cli::top::main(
            &config.config,
            metrics,
            interval,
            once,
            &mut std::io::stdout(),
        ),
        Command::Tail {
            brokers,
            topic,
            group,
            from_beginning,
            stats,
            count,
            idle_exit,
            properties,
        } => {
            logging::init("warn");
            let options = TailOptions {
                brokers,
                topics: topic,
                group,
                from_beginning,
                stats,
                count,
                idle_exit,
                stats_every: STATS_EVERY,
                properties,
            };
            match run_tool(|stop| async move {
                cli::tail::run(&options, &mut std::io::stdout(), stop).await
            }) {
                Ok(_) => Status::Ok,
                Err(e) => {
                    eprintln!("sensorgate tail: {e}");
                    Status::CheckFailed
                }
            }
        }
    };
    ExitCode::from(status as u8)
}

fn dlq(command: DlqCommand) -> Status {
    let mut out = std::io::stdout();
    match command {
        DlqCommand::List {
            reason,
            source,
            since,
            limit,
            json,
            config,
        } => {
            let filter = Filter {
                reason,
                source,
                since_ms: since,
                before_ms: None,
                limit,
            };
            admin_tool(&config.config, |config| async move {
                cli::dlq::list(&config, filter, json, &mut out).await
            })
        }
        DlqCommand::Show { id, json, config } => admin_tool(&config.config, |config| async move {
            cli::dlq::show(&config, id, json, &mut out).await
        }),
        DlqCommand::Replay {
            ids,
            all,
            reason,
            json,
            config,
        } => {
            let select = if all {
                Selection::All(Filter {
                    reason,
                    ..Filter::default()
                })
            } else {
                Selection::Ids(ids)
            };
            admin_tool(&config.config, |config| async move {
                cli::dlq::replay(&config, select, json, &mut out).await
            })
        }
        DlqCommand::Purge {
            ids,
            all,
            older_than,
            config,
        } => {
            let select = if all || older_than.is_some() {
                Selection::All(Filter {
                    before_ms: older_than.map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
                    ..Filter::default()
                })
            } else {
                Selection::Ids(ids)
            };
            admin_tool(&config.config, |config| async move {
                cli::dlq::purge(&config, select, &mut out).await
            })
        }
        DlqCommand::Export { format: _, config } => {
            admin_tool(&config.config, |config| async move {
                cli::dlq::export(&config, &mut out).await
            })
        }
    }
}
