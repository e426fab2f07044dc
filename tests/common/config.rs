//! Gateway configurations for tests: the reading schema, the common sections, MQTT and serial
//! sources; and readings that pass it.

use std::path::{Path, PathBuf};

/// The schema used by the tests: device_id, seq and a temperature in range.
pub const READING_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["device_id", "seq", "temperature_c"],
  "properties": {
    "device_id": {"type": "string", "minLength": 1},
    "seq": {"type": "integer", "minimum": 0},
    "temperature_c": {"type": "number", "minimum": -60, "maximum": 125}
  }
}"#;

/// Writes a gateway config (and its schema) into `dir` and returns the config path.
/// `extra_queue` lands in `[queue]`.
pub fn write_config(dir: &Path, mqtt_url: &str, brokers: &str, extra_queue: &str) -> PathBuf {
    let client_id = unique_client_id();
    let sources = format!(
        r#"
[[mqtt]]
name = "local"
url = "{mqtt_url}"
client_id = "{client_id}"
topics = ["sensors/#"]
max_payload = "1KiB"

[[route]]
source = "local"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "sensors.readings"
key = "/device_id"
"#
    );
    write_gateway_config(dir, brokers, extra_queue, &sources)
}

/// An MQTT client id no other gateway of this test binary uses.
fn unique_client_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("sensorgate-test-{}-{n}", std::process::id())
}

/// Writes the schema and a configuration whose common sections (gateway, queue, Kafka, retry,
/// no metrics listener) are followed by `sources` (sources and routes); returns its path.
/// `extra_queue` lands in `[queue]`.
fn write_gateway_config(dir: &Path, brokers: &str, extra_queue: &str, sources: &str) -> PathBuf {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(schemas.join("reading.v1.json"), READING_SCHEMA).unwrap();
    let path = dir.join("sensorgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
id = "test-gw"
state_dir = "state"
schemas_dir = "schemas"

[queue]
max_bytes = "64MiB"
{extra_queue}

[kafka]
brokers = "{brokers}"
message_timeout = "120s"

[metrics]
listen = ""

[retry]
initial = "100ms"
max = "2s"
{sources}
"#
        ),
    )
    .unwrap();
    path
}

/// Reading `seq` of device `dev-{seq % devices}` as the sensor publishes it: its topic
/// (`sensors/<device>/reading`) and a valid payload ([`reading`]).
pub fn device_reading(seq: u64, devices: u64) -> (String, Vec<u8>) {
    let device = format!("dev-{}", seq % devices);
    (format!("sensors/{device}/reading"), reading(&device, seq))
}

/// A valid reading.
pub fn reading(device: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"{device}","seq":{seq},"temperature_c":{}}}"#,
        20.0 + (seq % 10) as f64
    )
    .into_bytes()
}

/// Writes a gateway config for serial tests into `dir` and returns its path: the reading
/// schema, an optional MQTT source `local` with its route to `sensors.readings`, and `sources`
/// (TOML text with `[[serial]]` and `[[route]]` tables) appended as they are. `extra_queue`
/// lands in `[queue]`.
pub fn write_serial_config(
    dir: &Path,
    brokers: &str,
    mqtt_url: Option<&str>,
    extra_queue: &str,
    sources: &str,
) -> PathBuf {
    let mqtt = match mqtt_url {
        Some(url) => format!(
            r#"
[[mqtt]]
name = "local"
url = "{url}"
client_id = "{}"
topics = ["sensors/#"]

[[route]]
source = "local"
topic_filter = "sensors/+/reading"
schema = "reading.v1.json"
kafka_topic = "sensors.readings"
key = "/device_id"
"#,
            unique_client_id()
        ),
        None => String::new(),
    };
    write_gateway_config(dir, brokers, extra_queue, &format!("{mqtt}\n{sources}"))
}

/// The command schema of the downlink tests: an action from a fixed set, a device id that is a
/// string when present (so a command without one reaches the topic template: `no-target`).
pub const COMMAND_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["action", "seq"],
  "properties": {
    "device_id": {"type": "string"},
    "seq": {"type": "integer", "minimum": 0},
    "action": {"enum": ["set", "reboot", "calibrate"]}
  }
}"#;

/// The downlink's Kafka topic for the test gateway (`test-gw`).
pub const COMMANDS_TOPIC: &str = "devices.commands.test-gw";
/// Its consumer group.
pub const COMMANDS_GROUP: &str = "sensorgate-test-gw";

/// Writes a gateway config with the MQTT source `local` (and its route) and a downlink
/// `commands` from [`COMMANDS_TOPIC`] to `devices/{/device_id}/commands` through `local`'s
/// broker, with [`COMMAND_SCHEMA`] and `expires_at = "/expires_at"`; `downlink_extra` lands in
/// `[[downlink]]`, `extra_queue` in `[queue]`. Returns the config path.
pub fn write_downlink_config(
    dir: &Path,
    mqtt_url: &str,
    brokers: &str,
    extra_queue: &str,
    downlink_extra: &str,
) -> PathBuf {
    let path = write_config(dir, mqtt_url, brokers, extra_queue);
    std::fs::write(dir.join("schemas").join("command.v1.json"), COMMAND_SCHEMA).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        r#"
[[downlink]]
name = "commands"
kafka_topic = "devices.commands.{{gateway}}"
mqtt = "local"
topic_template = "devices/{{/device_id}}/commands"
schema = "command.v1.json"
expires_at = "/expires_at"
session_timeout = "3s"
{downlink_extra}
"#
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// A command for `device` with its per-device `seq`.
pub fn command(device: &str, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"device_id":"{device}","seq":{seq},"action":"set","value":{}}}"#,
        seq % 7
    )
    .into_bytes()
}

/// Turns on the metrics endpoint of a configuration written by [`write_config`] or
/// [`write_serial_config`], on 127.0.0.1:`port`.
pub fn with_metrics(path: &Path, port: u16) {
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(path, text).unwrap();
}
