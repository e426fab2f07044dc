//! The `sensorgate` binary: argument parsing, logging set-up and exit codes; everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sensorgate::app::AppError;
use sensorgate::cli::{self, Status};
use sensorgate::config::{Config, DEFAULT_PATH};
use sensorgate::telemetry::logging;
use std::sync::Arc;

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
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(e) => {
            logging::init("info");
            return Err(e.into());
        }
    };
    logging::init(&config.gateway.log_level);
    let handle = Arc::new(sensorgate::app::start(config)?);
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match cli.command {
        Command::Run { config } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sensorgate: cannot start the async runtime: {e}");
                    return ExitCode::from(Status::Usage as u8);
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => Status::Ok,
                Err(e) => {
                    // Our errors carry their causes in their own message already.
                    tracing::error!("{e}");
                    let config_error = matches!(
                        e.downcast_ref::<AppError>(),
                        Some(AppError::Config(_) | AppError::Rules { .. })
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
    };
    ExitCode::from(status as u8)
}
