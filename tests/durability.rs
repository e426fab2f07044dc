//! What a commit makes durable, seen from outside the gateway process: the system calls it
//! makes between receiving a reading and acknowledging it, and its memory while a large backlog
//! waits.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A traced write of an MQTT PUBACK (0x40 0x02, then the packet id) to a TCP socket.
fn is_puback(line: &str) -> bool {
    line.contains("TCP:") && line.contains("\"@\\2")
}

/// The first line at or after `from` that `pred` accepts.
fn find(lines: &[&str], from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    lines[from..].iter().position(|l| pred(l)).map(|i| from + i)
}

/// The file descriptor number of a traced call such as `write(9</x/y.seg>, …`.
fn fd_of(line: &str) -> Option<&str> {
    let open = line.find('(')?;
    let rest = &line[open + 1..];
    Some(&rest[..rest.find('<')?])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_over_sleds_blob_threshold_is_synced_in_its_segment_before_its_puback() {
    if !strace_available() {
        eprintln!(
            "SKIPPED: strace is not installed (scripts/test.sh installs it); this test needs it"
        );
        return;
    }
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_payload = \"1KiB\"", "max_payload = \"1MiB\"");
    std::fs::write(&config, text).unwrap();
    // Kafka is away: the reading can only be in the outbox when the gateway dies.
    kafka.broker_down(-1).unwrap();

    let trace = dir.path().join("trace");
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-yy", "-s", "8", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=write,writev,pwrite64,sendto,sendmsg,fsync,fdatasync,sync_file_range",
        ])
        .arg(gateway_binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_path = dir.path().join("gateway.log");
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("Subscribed")
        })
    });

    // 300 KiB: over sled's blob threshold (128 KiB), which sled writes to files it never syncs.
    let big = format!(
        r#"{{"device_id":"dev-big","seq":7,"temperature_c":21.5,"pad":"{}"}}"#,
        "x".repeat(300 << 10)
    );
    publish_all(
        mqtt.port,
        "sensor-big",
        vec![("sensors/dev-big/reading".into(), big.clone().into_bytes())],
    )
    .await;
    // Once the gateway has acknowledged the reading to the broker, kill it at once (its pid
    // is strace's child).
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway's PUBACK", || {
            std::fs::read_to_string(&trace)
                .unwrap_or_default()
                .lines()
                .any(is_puback)
        })
    });
    let pgrep = Command::new("pgrep")
        .args(["-P", &strace.id().to_string()])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pgrep.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "the gateway runs under strace");
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let _ = strace.wait();

    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The write that stored the reading: whatever file under the state directory took at
    // least the payload's size in one call.
    let state = dir.path().join("state");
    let state_text = state.display().to_string();
    let stored = find(&lines, 0, |l| {
        (l.contains("write(") || l.contains("pwrite64("))
            && l.contains(&format!("<{state_text}/"))
            && l.rsplit_once("= ")
                .and_then(|(_, n)| n.trim().parse::<usize>().ok())
                .is_some_and(|n| n >= 300 << 10)
    })
    .unwrap_or_else(|| panic!("no write of the reading under the state directory in:\n{text}"));
    let fd = fd_of(lines[stored]).unwrap().to_owned();
    let file = lines[stored]
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(p, _)| p.to_owned())
        .unwrap();
    let synced = find(&lines, stored, |l| {
        (l.contains("fdatasync(") || l.contains("fsync("))
            && fd_of(l) == Some(&fd)
            && l.contains(&format!("<{file}>"))
    })
    .unwrap_or_else(|| panic!("{file}, which holds the reading, was never synced:\n{text}"));
    // MQTT PUBACK: 0x40 0x02 and the packet id, written to the broker's socket.
    let puback = find(&lines, stored, is_puback)
        .unwrap_or_else(|| panic!("no PUBACK after the write:\n{text}"));
    assert!(
        synced < puback,
        "the PUBACK (line {puback}) went out before {file} was synced (line {synced})"
    );
    assert!(
        Path::new(&file).starts_with(state.join("queue")),
        "the reading lives in the outbox's log: {file}"
    );

    // Restarted with Kafka back: the reading arrives, intact.
    kafka.broker_up(-1).unwrap();
    let log = dir.path().join("gateway2.log");
    let _gateway = GatewayProcess::spawn(&config, &log, &[("RUST_LOG", "info")]);
    let mut reader = tokio::task::block_in_place(|| {
        Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"])
    });
    tokio::task::block_in_place(|| reader.read_until(LONG, "the large reading", |r| !r.is_empty()));
    assert_eq!(reader.records[0].payload, big.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_200_000_records_wait() {
    let mqtt = Mosquitto::start_with_inflight(0);
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let port = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_bytes = \"64MiB\"", "max_bytes = \"256MiB\"")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("gateway.log");
    // As the systemd unit runs it.
    let gateway = GatewayProcess::spawn(
        &config,
        &log,
        &[("RUST_LOG", "info"), ("MALLOC_ARENA_MAX", "2")],
    );
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to subscribe", || {
            gateway.log_count("Subscribed") >= 1
        })
    });
    kafka.broker_down(-1).unwrap();
    tokio::task::block_in_place(|| {
        wait_until(LONG, "the gateway to see Kafka down", || {
            gateway.log_count("All Kafka brokers are down") >= 1
        })
    });
    const TOTAL: u64 = 200_000;
    let messages = (0..TOTAL).map(|seq| device_reading(seq, 20)).collect();
    publish_all_fast(mqtt.port, "sensor-backlog", messages, 1000).await;
    let state = dir.path().join("state");
    tokio::task::block_in_place(|| {
        wait_until(
            Duration::from_secs(300),
            "200,000 records in the outbox",
            || metric(&scrape(port), "sensorgate_outbox_records", None) >= TOTAL as f64,
        )
    });
    let usage = gateway.usage();
    eprintln!(
        "200,000 records waiting: peak RSS {:.1} MiB ({:.1} MiB anonymous now), outbox {:.1} MiB",
        usage.hwm_kib as f64 / 1024.0,
        usage.rss_anon_kib as f64 / 1024.0,
        dir_size(&state.join("queue")) as f64 / 1048576.0
    );
    // A generous bound: the benchmark reports the real figure. Before the outbox was
    // redesigned, this took 194 MiB.
    assert!(
        usage.hwm_kib < 64 << 10,
        "peak RSS {} KiB while 200,000 records wait",
        usage.hwm_kib
    );
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
