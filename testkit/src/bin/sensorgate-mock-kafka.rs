//! `sensorgate-mock-kafka`: hosts librdkafka's mock Kafka cluster in its own process.
//!
//! Prints `bootstrap <host:port,...>` on stdout, then obeys one command per line on stdin
//! (`topic NAME PARTITIONS`, `down`, `up`, `rtt MS`, `quit`) and answers each with `ok` or
//! `error <reason>`; exits on `quit` or end of file. The protocol is described, and driven from
//! a test, in `sensorgate_testkit::mock_kafka`.

use std::io::{BufRead, Write};

use anyhow::Context;
use clap::Parser;
use rdkafka::mocking::MockCluster;
use sensorgate_testkit::mock_kafka::Command;

/// librdkafka's mock Kafka cluster as a process, controlled over stdin.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    brokers: i32,
    /// A topic to create at start, as NAME or NAME:PARTITIONS (default 4 partitions); repeatable.
    #[arg(long = "topic")]
    topics: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = MockCluster::new(args.brokers).context("creating the mock cluster")?;
    for topic in &args.topics {
        let (name, partitions) = match topic.split_once(':') {
            Some((name, p)) => (name, p.parse().context("partitions in --topic")?),
            None => (topic.as_str(), 4),
        };
        cluster
            .create_topic(name, partitions, 1)
            .with_context(|| format!("creating topic {name}"))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "bootstrap {}", cluster.bootstrap_servers())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let result = match Command::parse(&line) {
            Err(e) => Err(e),
            Ok(Command::Quit) => {
                writeln!(out, "ok")?;
                out.flush()?;
                break;
            }
            Ok(Command::Topic { name, partitions }) => cluster
                .create_topic(&name, partitions, 1)
                .map_err(|e| e.to_string()),
            Ok(Command::Down) => cluster.broker_down(-1).map_err(|e| e.to_string()),
            Ok(Command::Up) => cluster.broker_up(-1).map_err(|e| e.to_string()),
            Ok(Command::RoundTripTime(delay)) => cluster
                .broker_round_trip_time(-1, delay)
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => writeln!(out, "ok")?,
            Err(reason) => writeln!(out, "error {}", reason.replace('\n', " "))?,
        }
        out.flush()?;
    }
    Ok(())
}
