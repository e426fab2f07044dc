//! The command line as an operator uses it: `check-config`, `validate`, and `run`'s handling of
//! a bad state directory and of SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn sensorgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(args)
        .env_remove("SENSORGATE_CONFIG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn config_in(dir: &Path) -> std::path::PathBuf {
    write_config(dir, "mqtt://127.0.0.1:1883", "127.0.0.1:9092", "")
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("OK"));
}

#[test]
fn check_config_names_the_file_and_key_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    let body = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[retry]", "[retry]\ninitiall = \"1s\"");
    std::fs::write(&path, body).unwrap();
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("sensorgate.toml") && msg.contains("initiall"),
        "{msg}"
    );
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    let body = std::fs::read_to_string(&path).unwrap()
        + r#"
[[route]]
source = "nowhere"
schema = "missing.json"
kafka_topic = "bad topic"

[[route]]
source = "local"
topic_filter = "a/#/b"
schema = "broken.json"
kafka_topic = "x"
"#;
    std::fs::write(&path, body).unwrap();
    std::fs::write(dir.path().join("schemas/broken.json"), "{\"type\": 12}").unwrap();
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    for needle in [
        "route[1].source",
        "route[1].kafka_topic",
        "route[2].topic_filter",
        "missing.json",
        "broken.json",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from:\n{msg}");
    }
}

#[test]
fn check_config_rejects_empty_and_shared_mqtt_client_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    let body = std::fs::read_to_string(&path).unwrap();
    let client_id = body
        .lines()
        .find_map(|l| l.strip_prefix("client_id = "))
        .expect("the test config sets a client id")
        .to_owned();
    // An empty id panics inside rumqttc; a shared one lets two sources take each other's session.
    let body = body
        + &format!(
            r#"
[[mqtt]]
name = "second"
url = "mqtt://127.0.0.1:1883"
client_id = {client_id}
topics = ["other/#"]

[[mqtt]]
name = "third"
url = "mqtt://127.0.0.1:1883"
client_id = ""
topics = ["other/#"]
"#
        );
    std::fs::write(&path, body).unwrap();
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    let file = path.display();
    for needle in [
        format!(
            "{file}: mqtt[1].client_id: client id `{}` is also the client id of mqtt[0]",
            client_id.trim_matches('"')
        ),
        format!("{file}: mqtt[2].client_id: must not be empty"),
    ] {
        assert!(msg.contains(&needle), "`{needle}` missing from:\n{msg}");
    }
}

#[test]
fn check_config_checks_the_downlink_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_downlink_config(
        dir.path(),
        "mqtt://127.0.0.1:1883",
        "127.0.0.1:9092",
        "",
        "",
    );
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 downlink(s)"), "{}", text(&out));

    // An unknown MQTT source, a template without a JSON Pointer, a schema that is not there.
    let body = std::fs::read_to_string(&path).unwrap()
        + r#"
[[downlink]]
name = "firmware"
kafka_topic = "devices.firmware.{gateway}"
mqtt = "nowhere"
topic_template = "devices/{device_id}/firmware"
schema = "missing-command.json"
"#;
    std::fs::write(&path, body).unwrap();
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    let file = path.display();
    for needle in [
        format!("{file}: downlink[1].mqtt: `nowhere` is not the name of any [[mqtt]] source"),
        format!("{file}: downlink[1].topic_template: "),
        format!("{file}: downlink schema: "),
        "missing-command.json".to_owned(),
    ] {
        assert!(msg.contains(&needle), "`{needle}` missing from:\n{msg}");
    }
}

#[test]
fn check_config_reports_unknown_librdkafka_properties() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    let body = std::fs::read_to_string(&path).unwrap().replace(
        "message_timeout = \"120s\"",
        "message_timeout = \"120s\"\n[kafka.properties]\n\"no.such.property\" = \"1\"",
    );
    std::fs::write(&path, body).unwrap();
    let out = sensorgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no.such.property"), "{}", text(&out));
}

#[test]
fn validate_prints_each_violation_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    config_in(dir.path());
    let schema = dir.path().join("schemas/reading.v1.json");
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, reading("d1", 1)).unwrap();
    std::fs::write(&bad, r#"{"device_id":"","seq":-1,"temperature_c":900}"#).unwrap();

    let out = sensorgate(&[
        "validate",
        "--schema",
        schema.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = sensorgate(&[
        "validate",
        "--schema",
        schema.to_str().unwrap(),
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    for path in ["/device_id", "/seq", "/temperature_c"] {
        assert!(
            msg.contains(&format!("bad.json: {path}:")),
            "{path} missing from:\n{msg}"
        );
    }
    assert!(msg.contains("good.json: valid"));
}

#[test]
fn run_fails_clearly_when_the_state_directory_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    std::fs::write(
        dir.path().join("state"),
        "a file where the directory should be",
    )
    .unwrap();
    let out = sensorgate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("state directory") && msg.contains("state"),
        "{msg}"
    );
}

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    std::fs::write(dir.path().join("state"), "not a directory").unwrap();
    let log = dir.path().join("log");
    let status = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(
        !logged.contains('\u{1b}'),
        "escape sequences in a log file: {logged:?}"
    );
}

#[test]
fn run_with_a_missing_schema_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path());
    std::fs::remove_file(dir.path().join("schemas/reading.v1.json")).unwrap();
    let out = sensorgate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("reading.v1.json"));
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let mqtt = Mosquitto::start();
    let kafka = kafka(&["sensors.readings"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mqtt.url(), &kafka.bootstrap_servers(), "");
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sensorgate"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let logged = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(needle)
    };
    wait_until(Duration::from_secs(60), "the daemon to subscribe", || {
        logged("Subscribed")
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    wait_until(Duration::from_secs(30), "the daemon to exit", || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(0));
    assert!(logged("SIGTERM received") && logged("Stopped"));
}
