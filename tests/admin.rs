//! The operator's DLQ and queue tools end to end: real mosquitto → gateway → librdkafka mock
//! cluster, with `sensorgate dlq …` and `sensorgate queue stats` run as processes, first against
//! a running daemon (over its admin socket), then against the stopped daemon's state directory.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use sensorgate::admin::DeadLetter;
use sensorgate::config::Config;
use sensorgate::record::Reason;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn sensorgate(config: &Path, args: &[&str]) -> Output {
    blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_sensorgate"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("SENSORGATE_CONFIG")
            .output()
            .unwrap()
    })
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn write_schema(dir: &Path, max_temperature: u32, allow_strings: bool) {
    let kind = if allow_strings {
        r#"["number", "string"]"#
    } else {
        r#""number""#
    };
    let schema = format!(
        r#"{{
  "type": "object",
  "required": ["device_id", "seq", "temperature_c"],
  "properties": {{
    "device_id": {{"type": "string", "minLength": 1}},
    "seq": {{"type": "integer", "minimum": 0}},
    "temperature_c": {{"type": {kind}, "minimum": -60, "maximum": {max_temperature}}}
  }}
}}"#
    );
    std::fs::write(dir.join("schemas/reading.v1.json"), schema).unwrap();
}

fn ids_with(list: &Value, pred: impl Fn(&Value) -> bool) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|d| pred(d))
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

/// A non-root user tries the socket: it must be refused by the file mode.
fn unprivileged_is_refused(dir: &Path, config: &Path) {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        println!("note: not root; skipping the unprivileged-connect check");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("note: setpriv missing; skipping the unprivileged-connect check");
        return;
    }
    // Open the way to the socket and the config, so that only the socket's own mode decides.
    for p in [dir, &dir.join("state")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["dlq", "list", "--config"])
        .arg(config)
        .env_remove("SENSORGATE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(126) || out.status.code() == Some(127) {
        println!("note: nobody cannot execute the test binary ({err}); skipping");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin socket") && err.contains("ermission denied"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_tools_work_against_a_running_and_a_stopped_daemon() {
    init_logging();
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let socket = dir.path().join("state/admin.sock");
    let gateway = start_gateway(Config::load(&config).unwrap()).await;

    // The socket: mode 0660, owned by whoever runs the daemon (this process).
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let mine = std::fs::metadata(&config).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (mine.uid(), mine.gid()));

    let hot = |seq: u32| format!(r#"{{"device_id":"d1","seq":{seq},"temperature_c":"hot"}}"#);
    let warm = |seq: u32| format!(r#"{{"device_id":"d1","seq":{seq},"temperature_c":200}}"#);
    let topic = "sensors/d1/reading".to_owned();
    publish_all(
        mqtt.port,
        "sensor-admin",
        vec![
            (topic.clone(), warm(1).into_bytes()),
            (topic.clone(), hot(2).into_bytes()),
            (topic.clone(), b"\xff\xfe{oops".to_vec()),
            (topic.clone(), warm(3).into_bytes()),
            (topic.clone(), reading("d1", 4)),
        ],
    )
    .await;
    wait_for(LONG, "4 dead letters", || {
        gateway.outbox().stats().dead_letters == 4
    })
    .await;

    // list, as JSON and as a table; filters.
    let list = json(&sensorgate(&config, &["dlq", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 4);
    let warm_ids = ids_with(&list, |d| d["payload"].as_str().unwrap().contains("200"));
    let hot_ids = ids_with(&list, |d| d["payload"].as_str().unwrap().contains("hot"));
    let binary_ids = ids_with(&list, |d| d["encoding"] == "base64");
    assert_eq!((warm_ids.len(), hot_ids.len(), binary_ids.len()), (2, 1, 1));
    let table = ok(&sensorgate(&config, &["dlq", "list", "--since", "1h"]));
    assert!(
        table.contains("schema") && table.contains("not-json"),
        "{table}"
    );
    assert!(table.contains("mqtt:sensors/d1/reading"), "{table}");
    assert!(table.contains("4 dead letter(s)"), "{table}");
    let only = json(&sensorgate(
        &config,
        &[
            "dlq", "list", "--json", "--reason", "not-json", "--limit", "5",
        ],
    ));
    assert_eq!(ids_with(&only, |_| true), binary_ids);

    // show: metadata, violations, payload as hex when not UTF-8.
    let shown = ok(&sensorgate(
        &config,
        &["dlq", "show", &binary_ids[0].to_string()],
    ));
    assert!(
        shown.contains("not-json") && shown.contains("fffe7b6f6f7073"),
        "{shown}"
    );
    let shown = ok(&sensorgate(
        &config,
        &["dlq", "show", &warm_ids[0].to_string()],
    ));
    assert!(shown.contains("/temperature_c") && shown.contains("\"temperature_c\":200"));
    assert_eq!(
        sensorgate(&config, &["dlq", "show", "987654321987"])
            .status
            .code(),
        Some(1)
    );

    // export round-trips metadata and payload bytes exactly.
    let export = ok(&sensorgate(
        &config,
        &["dlq", "export", "--format", "jsonl"],
    ));
    let exported: Vec<_> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<DeadLetter>(l)
                .unwrap()
                .to_record()
                .unwrap()
        })
        .collect();
    assert_eq!(exported, gateway.outbox().dlq().all().unwrap());

    // queue stats knows Kafka's state from the daemon.
    let stats = json(&sensorgate(&config, &["queue", "stats", "--json"]));
    assert_eq!(stats["daemon_running"], true, "{stats}");
    assert!(stats["stats"]["kafka"].is_object(), "{stats}");
    assert_eq!(stats["stats"]["queue"]["dead_letters"], 4);

    // Fix the schema (allow up to 250 °C), reload, replay everything: exactly the two warm
    // readings move; the others stay, with their current errors; exit 1.
    write_schema(dir.path(), 250, false);
    gateway.reload().unwrap();
    let out = sensorgate(&config, &["dlq", "replay", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report = json(&out);
    let mut moved = ids_with(&report["moved"], |_| true);
    moved.sort();
    assert_eq!(moved, warm_ids);
    assert_eq!(report["moved"][0]["kafka_topic"], "sensors.readings");
    let mut failed = ids_with(&report["failed"], |_| true);
    failed.sort();
    let mut rest = [hot_ids.clone(), binary_ids.clone()].concat();
    rest.sort();
    assert_eq!(failed, rest);
    assert!(report["failed"].to_string().contains("/temperature_c"));
    let mut reader = blocking(|| Reader::new(&kafka.bootstrap_servers(), &["sensors.readings"]));
    blocking(|| {
        reader.read_until(LONG, "the replayed readings", |r| {
            r.iter()
                .filter(|r| r.json()["temperature_c"] == 200)
                .count()
                == 2
        })
    });

    // purge by id.
    let out = ok(&sensorgate(
        &config,
        &["dlq", "purge", &binary_ids[0].to_string()],
    ));
    assert!(out.contains("purged 1"), "{out}");
    assert_eq!(gateway.outbox().stats().dead_letters, 1);

    unprivileged_is_refused(dir.path(), &config);

    // Stop: the socket goes away; the same commands now open the state directory. A stale
    // socket file (nobody listening) must not confuse them.
    gateway.shutdown().await.unwrap();
    assert!(!socket.exists(), "the admin socket is removed at shutdown");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let stats = ok(&sensorgate(&config, &["queue", "stats"]));
    assert!(stats.contains("unknown (daemon not running)"), "{stats}");
    assert!(stats.contains("dead letters:        1"), "{stats}");
    let list = json(&sensorgate(&config, &["dlq", "list", "--json"]));
    assert_eq!(ids_with(&list, |_| true), hot_ids);
    let export = ok(&sensorgate(&config, &["dlq", "export"]));
    let back: DeadLetter = serde_json::from_str(export.trim()).unwrap();
    assert_eq!(back.reason(), Some(Reason::Schema));
    assert!(back.payload.contains("hot"));

    // Still failing with the config's schemas; after fixing the file, it moves.
    let out = sensorgate(&config, &["dlq", "replay", &hot_ids[0].to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("daemon not running"));
    write_schema(dir.path(), 250, true);
    let out = ok(&sensorgate(
        &config,
        &["dlq", "replay", &hot_ids[0].to_string()],
    ));
    assert!(out.contains("1 moved"), "{out}");
    let stats = json(&sensorgate(&config, &["queue", "stats", "--json"]));
    assert_eq!(stats["daemon_running"], false);
    assert_eq!(stats["stats"]["queue"]["dead_letters"], 0);
    assert!(stats["stats"]["queue"]["depth"].as_u64().unwrap() >= 1);
    assert!(stats["stats"]["kafka"].is_null());

    // purge --all with nothing left, then a new daemon (replacing the stale socket) delivers
    // what the direct replay queued.
    assert!(ok(&sensorgate(&config, &["dlq", "purge", "--all"])).contains("purged 0"));
    let gateway = start_gateway(Config::load(&config).unwrap()).await;
    assert!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777 == 0o660);
    blocking(|| {
        reader.read_until(LONG, "the reading replayed while stopped", |r| {
            r.iter().any(|r| r.json()["temperature_c"] == "hot")
        })
    });
    gateway.shutdown().await.unwrap();
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_process_serves_the_tools_and_sighup_makes_replay_use_the_fixed_schema() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings", "sensors.readings.DLQ"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let socket = dir.path().join("state/admin.sock");
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("SENSORGATE_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(LONG, "the admin socket", || socket.exists()).await;
    // Publish only once the MQTT subscription is up (the broker drops what nobody subscribed).
    let log_path = dir.path().join("gateway.log");
    wait_for(LONG, "the MQTT subscription", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("Subscribed"))
    })
    .await;
    let warm = r#"{"device_id":"d1","seq":1,"temperature_c":200}"#;
    let hot = r#"{"device_id":"d1","seq":2,"temperature_c":"hot"}"#;
    let topic = "sensors/d1/reading".to_owned();
    publish_all(
        mqtt.port,
        "sensor-admin-process",
        vec![
            (topic.clone(), warm.as_bytes().to_vec()),
            (topic, hot.as_bytes().to_vec()),
        ],
    )
    .await;
    wait_for(LONG, "2 dead letters, listed through the socket", || {
        let list = json(&sensorgate(&config, &["dlq", "list", "--json"]));
        list.as_array().unwrap().len() == 2
    })
    .await;
    let list = json(&sensorgate(&config, &["dlq", "list", "--json"]));
    let warm_ids = ids_with(&list, |d| d["payload"].as_str().unwrap().contains("200"));
    assert_eq!(warm_ids.len(), 1);

    // Before the fix nothing moves.
    let report = json(&sensorgate(&config, &["dlq", "replay", "--all", "--json"]));
    assert_eq!(report["moved"].as_array().unwrap().len(), 0, "{report}");

    // Fix the schema, SIGHUP; the daemon's replay then moves exactly the warm readings.
    write_schema(dir.path(), 250, false);
    signal(&daemon, "HUP");
    let mut moved = Vec::new();
    wait_for(LONG, "a replay with the reloaded schema", || {
        let report = json(&sensorgate(&config, &["dlq", "replay", "--all", "--json"]));
        moved.extend(ids_with(&report["moved"], |_| true));
        !moved.is_empty()
    })
    .await;
    moved.sort();
    assert_eq!(moved, warm_ids);
    let left = json(&sensorgate(&config, &["dlq", "list", "--json"]));
    assert!(ids_with(&left, |d| d["payload"].as_str().unwrap().contains("200")).is_empty());
    assert!(!ids_with(&left, |_| true).is_empty(), "the hot ones stay");

    let stats = json(&sensorgate(&config, &["queue", "stats", "--json"]));
    assert_eq!(stats["daemon_running"], true, "{stats}");

    signal(&daemon, "TERM");
    let status = blocking(|| daemon.wait().unwrap());
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the admin socket is removed at shutdown");
}
