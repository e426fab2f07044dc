//! The `sensorgate` binary: argument parsing, logging set-up and exit codes; everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sensorgate::app::AppError;
use sensorgate::cli::{self, Status};
use sensorgate::config::{Config, DEFAULT_PATH};

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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let handle = sensorgate::app::start(config)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stopper = handle.stopper();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        stopper.cancel();
    });
    // Returns after a signal, or earlier when a pipeline task fails.
    handle.wait().await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match cli.command {
        Command::Run { config } => {
            init_logging();
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
