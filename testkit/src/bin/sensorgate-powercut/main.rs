//! `sensorgate-powercut`: the power-cut test bed. `scripts/powercut.sh` builds the virtual
//! machine's image and runs this; README.md ("Power-cut test") explains the method and the
//! figures.
//!
//! It is a black-box test of the gateway binary: a sensor on the host publishes numbered readings
//! at QoS 1 to mosquitto and records which the broker acknowledged; the gateway runs in a qemu
//! virtual machine (its state directory on its own virtio disk, ext4 `defaults,noatime`) and
//! forwards them to librdkafka's mock cluster on the host; this harness reads Kafka all along.
//! Over and over, at a random moment, qemu is killed (SIGKILL: a power cut for the guest; what it
//! had not written to its disk is gone) and booted again; for some stretches every Kafka broker
//! is down, so cuts also hit a deep outbox. At the end everything is brought up, the backlog
//! drains, and every reading the sensor saw acknowledged must be in Kafka.
//!
//! Nothing here knows the outbox's format: what counts is what mosquitto acknowledged and what
//! Kafka holds, plus the gateway's log lines (ERROR lines containing "corrupt" are opens that
//! found the store corrupt) and its `/readyz` endpoint (when it is up, and, if the body says so,
//! how deep the outbox is).
//!
//! Exit codes: 0 the run met its expectation (no acknowledged reading lost and every start of
//! the gateway succeeded; with `--expect-loss`: readings were lost), 1 it did not, 2 the test bed
//! itself failed.

mod cpio;
mod image;
mod mosquitto;
mod report;
mod sensor;
mod tally;
mod vm;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use sensorgate_testkit::kafka_reader::Reader;
use sensorgate_testkit::mock_kafka::MockKafka;

use mosquitto::Mosquitto;
use report::{Cycle, Report};
use vm::{Machine, Vm};

/// The gateway's MQTT client id (its persistent session at mosquitto).
pub(crate) const CLIENT_ID: &str = "sensorgate-powercut";
/// The gateway's MQTT topic filter.
pub(crate) const FILTER: &str = "sensors/+/reading";
/// Partitions of the readings topic (more partitions: more room under the mock's retention).
const PARTITIONS: i32 = 8;
/// A boot in which the gateway exited this often without becoming ready ends the cuts: it
/// cannot start (its store is unusable, say), and every further cycle would show the same.
const GIVE_UP_AFTER_EXITS: usize = 3;

/// Pulls the plug on a gateway in a virtual machine, over and over, and counts what was lost.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Args {
    /// Power cuts before the final boot that drains everything.
    #[arg(long, default_value_t = 100)]
    cuts: usize,
    /// Run the gateway with `queue.fsync = false` (the control run: it should lose readings).
    #[arg(long)]
    no_fsync: bool,
    /// Succeed only if readings were lost (for the control run).
    #[arg(long)]
    expect_loss: bool,
    /// The image directory (the guest's root) that scripts/powercut.sh assembled.
    #[arg(long)]
    image: PathBuf,
    /// The kernel (Debian's vmlinuz).
    #[arg(long)]
    kernel: PathBuf,
    /// Working directory of this run: disk image, initramfs, console logs, report.
    #[arg(long)]
    work: PathBuf,
    /// Readings per second from the sensor.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Longest time the gateway runs after it is ready before the cut (seconds).
    #[arg(long, default_value_t = 12.0)]
    max_run: f64,
    /// Seed of the random schedule (default: from the clock; printed for a rerun).
    #[arg(long)]
    seed: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// qemu binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Run the gateway under strace in the guest (the image must contain strace); the trace of
    /// each boot goes to <work>/strace/boot-NNN.log through a second serial port.
    #[arg(long)]
    strace: bool,
    /// mosquitto logs every packet (to <work>/mosquitto/mosquitto.log).
    #[arg(long)]
    broker_debug: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let outcome = tokio::select! {
        outcome = run(&args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(report) => {
            let text = report.render(&args);
            print!("{text}");
            let path = args.work.join("report.txt");
            if let Err(e) = std::fs::write(&path, &text) {
                eprintln!("sensorgate-powercut: writing {}: {e}", path.display());
            }
            let met = if args.expect_loss {
                report.lost() > 0
            } else {
                report.passed()
            };
            std::process::exit(if met { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("sensorgate-powercut: the test bed failed: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = &args.work;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("console"))?;

    // Host side: mosquitto, the Kafka mock cluster, the reader.
    let mosquitto_dir = work.join("mosquitto");
    let mosquitto_bin = mosquitto::find_binary(
        "mosquitto",
        &[
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ],
    );
    let broker = Mosquitto::start(
        &mosquitto_bin,
        &mosquitto_dir,
        free_port()?,
        args.broker_debug,
    )?;
    let mut kafka = MockKafka::start(&MockKafka::default_binary(), 3)?;
    kafka.create_topic(tally::TOPIC, PARTITIONS)?;
    kafka.create_topic(tally::DLQ_TOPIC, 1)?;
    let counter = tally::Counter::start(
        Reader::new(kafka.bootstrap(), &[tally::TOPIC, tally::DLQ_TOPIC])?,
        std::fs::File::create(work.join("kafka-records.tsv"))?,
    );

    // The machine: a fresh ext4 state disk, and the initramfs with this run's configuration.
    let disk = work.join("state.img");
    image::make_state_disk(&disk)?;
    let initrd = work.join("initrd.cpio");
    image::write_initrd(args, &initrd, broker.port, &kafka.ports())?;
    let machine = Machine {
        qemu: args.qemu.clone(),
        kernel: args.kernel.clone(),
        initrd,
        disk,
        memory_mb: args.memory,
        metrics_port: free_port()?,
        trace_dir: args.strace.then(|| work.join("strace")),
    };

    println!(
        "power-cut test bed: {} cuts, queue.fsync = {}, {} readings/s, seed {seed}",
        args.cuts, !args.no_fsync, args.rate
    );
    println!(
        "  mosquitto 127.0.0.1:{}, Kafka mock {}, work directory {}",
        broker.port,
        kafka.bootstrap(),
        work.display()
    );
    sensor::create_session(broker.port, CLIENT_ID, FILTER).await?;
    let sensor = sensor::Sensor::start(broker.port, args.rate);
    let started = Instant::now();
    let mut report = Report::new(seed);
    let mut kafka_down_for = 0u32;
    // One line per cut: number, Kafka down, cut while starting, Unix time in ms of the cut.
    let mut cuts_file = std::fs::File::create(work.join("cuts.tsv"))?;

    for cut in 1..=args.cuts {
        // Kafka's schedule: stretches of 1 to 3 cycles with every broker down.
        if kafka_down_for == 0 && rng.gen_bool(0.25) {
            kafka_down_for = rng.gen_range(1..=3);
            kafka.set_brokers_up(false)?;
        }
        let kafka_down = kafka_down_for > 0;
        let during_start = rng.gen_bool(0.15);
        let run_for = Duration::from_secs_f64(rng.gen_range(1.0..args.max_run.max(1.5)));
        let start_delay = Duration::from_millis(rng.gen_range(0..2000));
        let cycle = one_cycle(&machine, cut, work, during_start, start_delay, run_for).await?;
        let cycle = Cycle {
            kafka_down,
            acked: sensor.acks.lock().expect("lock").acked(),
            in_kafka: counter.tally.lock().expect("lock").records(),
            ..cycle
        };
        println!("{}", cycle.line(cut, args.cuts));
        writeln!(
            cuts_file,
            "{cut}\t{}\t{}\t{}",
            cycle.kafka_down,
            cycle.during_start,
            tally::unix_ms()
        )?;
        let cannot_start = !cycle.ready && cycle.console.exits.len() >= GIVE_UP_AFTER_EXITS;
        let last_error = cycle.console.errors.last().cloned().unwrap_or_default();
        report.cycles.push(cycle);
        if cannot_start {
            let why = format!(
                "after cut {}, the gateway exited {GIVE_UP_AFTER_EXITS} times without becoming ready; its last ERROR line: {last_error}",
                cut - 1
            );
            println!("  stopping the cuts: {why}");
            report.stopped = Some(why);
            break;
        }
        if let Some(why) = &sensor.acks.lock().expect("lock").failed {
            bail!("the sensor lost its connection to mosquitto: {why}");
        }
        if kafka_down_for > 0 {
            kafka_down_for -= 1;
            if kafka_down_for == 0 {
                kafka.set_brokers_up(true)?;
            }
        }
    }

    // Drain: Kafka up, one more boot, the sensor stops, everything reaches Kafka.
    kafka.set_brokers_up(true)?;
    println!("final boot: Kafka up, draining");
    let boot = args.cuts + 1;
    let mut vm = Vm::boot(&machine, boot, &console_log(work, boot))?;
    let ready = wait_ready(&mut vm, &machine, Duration::from_secs(600)).await;
    let acks = sensor.finish(Duration::from_secs(60)).await;
    let (published, acked) = {
        let a = acks.lock().expect("lock");
        write_acks(&work.join("acks.tsv"), &a.acked_at)?;
        (
            a.published,
            a.acked_at.iter().map(Option::is_some).collect::<Vec<_>>(),
        )
    };
    let drain_started = Instant::now();
    // A gateway that never became ready delivers nothing more: wait only for stragglers.
    let stall = if ready.is_some() { 180 } else { 10 };
    let drained = wait_drained(
        &counter,
        &acked,
        Duration::from_secs(stall),
        Duration::from_secs(1200),
    )
    .await;
    report.drain_time = drain_started.elapsed();
    let final_console = vm.cut();
    report.finish(
        published,
        &acks.lock().expect("lock"),
        &counter.tally.lock().expect("lock"),
        final_console,
        ready,
        drained,
        started.elapsed(),
        Mosquitto::dropped_warnings(&mosquitto_dir),
    );
    drop(counter);
    kafka.stop()?;
    drop(broker);
    Ok(report)
}

/// One boot, then the cut. `during_start`: the cut comes `start_delay` after the guest started
/// the gateway (while it opens and recovers its store); otherwise `run_for` after it is ready.
async fn one_cycle(
    machine: &Machine,
    cut: usize,
    work: &Path,
    during_start: bool,
    start_delay: Duration,
    run_for: Duration,
) -> anyhow::Result<Cycle> {
    let mut vm = Vm::boot(machine, cut, &console_log(work, cut))?;
    let mut cycle = Cycle {
        during_start,
        ..Cycle::default()
    };
    if during_start {
        let deadline = Instant::now() + Duration::from_secs(300);
        while vm.console().gateway_starts.is_empty()
            && !vm.has_exited()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(start_delay).await;
    } else {
        let ready = wait_ready(&mut vm, machine, Duration::from_secs(300)).await;
        cycle.ready = ready.is_some();
        cycle.ready_at = ready;
        if ready.is_some() {
            let until = Instant::now() + run_for;
            while Instant::now() < until {
                if let Some(depth) = vm::ready(machine.metrics_port).and_then(|b| outbox_depth(&b))
                {
                    cycle.depth = Some(depth);
                }
                tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now())).await;
            }
        }
    }
    let starts = vm.console().gateway_starts.first().copied();
    cycle.boot_to_start = starts.map(|s| s - vm.booted_at);
    cycle.start_to_ready = match (starts, cycle.ready_at) {
        (Some(s), Some(r)) => Some(r.saturating_duration_since(s)),
        _ => None,
    };
    let booted_at = vm.booted_at;
    cycle.cut_at = Some(Instant::now());
    let console = vm.cut();
    cycle.cycle = booted_at.elapsed();
    cycle.console = console;
    Ok(cycle)
}

/// Waits until `/readyz` answers 200 (or the machine died, or `limit` passed); returns when.
async fn wait_ready(vm: &mut Vm, machine: &Machine, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if vm::ready(machine.metrics_port).is_some() {
            return Some(Instant::now());
        }
        // qemu died (a kernel panic), or the gateway keeps failing to start.
        if vm.has_exited() || vm.console().exits.len() >= GIVE_UP_AFTER_EXITS {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Waits until every acknowledged reading is in Kafka and nothing new arrived for 5 s; gives up
/// when nothing new arrived for `stall`, or after `limit`. Prints progress every 30 s. Returns
/// whether every acknowledged reading arrived.
async fn wait_drained(
    counter: &tally::Counter,
    acked: &[bool],
    stall: Duration,
    limit: Duration,
) -> bool {
    let started = Instant::now();
    let mut since = Instant::now();
    let mut last_count = 0;
    let mut last_print = Instant::now();
    let wanted = acked.iter().filter(|a| **a).count();
    loop {
        let (present, count, quiet) = {
            let t = counter.tally.lock().expect("lock");
            let present = acked
                .iter()
                .enumerate()
                .filter(|(seq, a)| **a && t.has(*seq as u64))
                .count();
            let quiet = t
                .last_record
                .is_none_or(|l| l.elapsed() > Duration::from_secs(5));
            (present, t.records(), quiet)
        };
        let complete = present == wanted;
        if complete && quiet {
            return true;
        }
        if count != last_count {
            last_count = count;
            since = Instant::now();
        }
        if since.elapsed() > stall {
            println!("  draining: nothing new from Kafka for {stall:?}; giving up");
            return complete;
        }
        if started.elapsed() > limit {
            println!("  draining: still incomplete after {limit:?}; giving up");
            return complete;
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            println!(
                "  draining for {:.0} s: {present} of {wanted} acknowledged readings in Kafka ({count} records)",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line per reading: `seq`, then the Unix time in ms mosquitto acknowledged it (or `-`).
fn write_acks(path: &Path, acked_at: &[Option<Instant>]) -> anyhow::Result<()> {
    let (now, now_ms) = (Instant::now(), tally::unix_ms());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (seq, at) in acked_at.iter().enumerate() {
        match at {
            Some(t) => writeln!(out, "{seq}\t{}", now_ms - (now - *t).as_millis())?,
            None => writeln!(out, "{seq}\t-")?,
        }
    }
    out.flush()?;
    Ok(())
}

/// The outbox depth in a `/readyz` body, if it reports one.
fn outbox_depth(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("outbox_records")?
        .as_u64()
}

fn console_log(work: &Path, boot: usize) -> PathBuf {
    work.join("console").join(format!("boot-{boot:03}.log"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
