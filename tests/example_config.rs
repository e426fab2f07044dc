//! The example configuration shipped in `examples/sensorgate.toml` parses, has no problems,
//! compiles its schemas, and really shows the built-in defaults it claims to show.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sensorgate::config::{Compression, Config, SerialFormat, WhenFull};
use sensorgate::pipeline::Rules;
use serde_json::json;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sensorgate.toml")
}

fn example() -> Config {
    let path = example_path();
    Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A configuration with only the required keys, to read the built-in defaults from.
fn defaults() -> Config {
    let text = r#"
        [kafka]
        brokers = "localhost:9092"
        [[mqtt]]
        name = "local"
        url = "mqtt://127.0.0.1:1883"
        topics = ["sensors/+/reading"]
        [[serial]]
        name = "bench-arduino"
        device = "/dev/ttyUSB0"
    "#;
    Config::parse(text, Path::new("/etc/sensorgate/sensorgate.toml")).unwrap()
}

#[test]
fn example_config_has_no_problems_and_its_schemas_compile() {
    let config = example();
    let problems = config.problems();
    assert!(problems.is_empty(), "problems in the example: {problems:?}");
    let rules = Rules::build(&config).unwrap_or_else(|e| panic!("rules of the example: {e}"));
    assert!(rules.schemas.get("reading.v1.json").is_some());
}

#[test]
fn example_config_has_the_documented_sources_and_routes() {
    let config = example();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        config.gateway.schemas_dir,
        manifest.join("examples").join("../schemas"),
        "relative paths resolve against the config file's directory"
    );
    assert_eq!(config.gateway.state_dir, Path::new("/var/lib/sensorgate"));

    assert_eq!(config.mqtt.len(), 1);
    assert_eq!(config.mqtt[0].name, "local");
    assert_eq!(config.mqtt[0].topics, ["sensors/+/reading"]);
    assert!(config.mqtt[0].username.is_none() && config.mqtt[0].password_file.is_none());
    assert_eq!(config.serial.len(), 1);
    assert_eq!(config.serial[0].name, "bench-arduino");

    assert_eq!(config.routes.len(), 2);
    let route = &config.routes[0];
    assert_eq!(route.name(), "greenhouse-readings");
    assert_eq!(route.source, "local");
    assert_eq!(route.topic_filter.as_deref(), Some("sensors/+/reading"));
    assert_eq!(route.schema, "reading.v1.json");
    assert_eq!(route.kafka_topic, "sensors.readings");
    assert_eq!(route.key.as_deref(), Some("/device_id"));
    let serial = &config.routes[1];
    assert_eq!(serial.name(), "bench-arduino");
    assert_eq!(serial.source, "bench-arduino");
    assert!(serial.topic_filter.is_none());
    assert_eq!(serial.schema, "reading.v1.json");
    assert_eq!(serial.kafka_topic, "sensors.bench");

    assert_eq!(config.downlinks.len(), 1);
    let downlink = &config.downlinks[0];
    assert_eq!(downlink.name, "commands");
    assert_eq!(downlink.mqtt, "local");
    assert_eq!(downlink.topic("pi-07"), "devices.commands.pi-07");
    assert_eq!(downlink.schema.as_deref(), Some("command.v1.json"));
    assert_eq!(downlink.expires_at.as_deref(), Some("/expires_at"));
    sensorgate::downlink::rules::Rules::build(&config, downlink)
        .unwrap_or_else(|e| panic!("the example downlink: {e}"));

    assert_eq!(config.kafka.brokers, "localhost:9092");
    assert!(config.kafka.properties.is_empty());
    assert_eq!(config.metrics.listen, "127.0.0.1:9898");
}

#[test]
fn example_config_values_are_the_built_in_defaults() {
    let example = example();
    let defaults = defaults();

    assert_eq!(
        example.gateway.id, defaults.gateway.id,
        "gateway.id is left to default"
    );
    assert_eq!(example.gateway.state_dir, defaults.gateway.state_dir);

    let (q, d) = (&example.queue, &defaults.queue);
    assert_eq!(q.max_bytes, d.max_bytes);
    assert_eq!(q.when_full, d.when_full);
    assert_eq!(q.when_full, WhenFull::DropOldest);
    assert_eq!(q.commit_interval, d.commit_interval);
    assert_eq!(q.commit_interval, Duration::from_millis(20));
    assert_eq!(q.max_batch, d.max_batch);
    assert_eq!(q.fsync, d.fsync);

    let (k, d) = (&example.kafka, &defaults.kafka);
    assert_eq!(k.compression, d.compression);
    assert_eq!(k.compression, Compression::Lz4);
    assert_eq!(k.dlq_suffix, d.dlq_suffix);
    assert_eq!(k.unrouted_topic, d.unrouted_topic);
    assert_eq!(k.linger, d.linger);
    assert_eq!(k.message_timeout, d.message_timeout);
    assert_eq!(k.max_in_flight, d.max_in_flight);

    let (r, d) = (&example.retry, &defaults.retry);
    assert_eq!(r.initial, d.initial);
    assert_eq!(r.max, d.max);
    assert_eq!(r.multiplier, d.multiplier);
    assert_eq!(r.jitter, d.jitter);

    let (m, d) = (&example.mqtt[0], &defaults.mqtt[0]);
    assert_eq!(m.client_id, d.client_id, "client_id is left to default");
    assert_eq!(m.keep_alive, d.keep_alive);
    assert_eq!(m.max_payload, d.max_payload);
    assert_eq!(m.reconnect_max, d.reconnect_max);

    let (s, d) = (&example.serial[0], &defaults.serial[0]);
    assert_eq!(s.baud, d.baud);
    assert_eq!(s.data_bits, d.data_bits);
    assert_eq!(s.parity, d.parity);
    assert_eq!(s.stop_bits, d.stop_bits);
    assert_eq!(s.flow_control, d.flow_control);
    assert_eq!(s.format, d.format);
    assert_eq!(s.format, SerialFormat::JsonLines);
    assert_eq!(s.columns, d.columns, "columns are left to default (none)");
    assert_eq!(s.max_line_bytes, d.max_line_bytes);
    assert_eq!(s.reconnect_max, d.reconnect_max);

    assert_eq!(example.metrics.listen, defaults.metrics.listen);
    assert_eq!(example.gateway.log_level, defaults.gateway.log_level);

    // The downlink's optional keys show their defaults.
    let downlink = &example.downlinks[0];
    let minimal: sensorgate::config::DownlinkConfig = toml::from_str(
        "name = \"c\"\nkafka_topic = \"t\"\nmqtt = \"local\"\ntopic_template = \"d/{/id}\"\n",
    )
    .unwrap();
    assert_eq!(downlink.group, minimal.group);
    assert_eq!(downlink.max_in_flight, minimal.max_in_flight);
    assert_eq!(
        downlink.client_id, minimal.client_id,
        "client_id is left to default"
    );
    assert_eq!(downlink.ack_timeout, minimal.ack_timeout);
    assert_eq!(downlink.session_timeout, minimal.session_timeout);

    assert_eq!(example.dlq.max_entries, defaults.dlq.max_entries);
    assert_eq!(example.dlq.max_bytes, defaults.dlq.max_bytes);
    assert_eq!(example.dlq.max_age, defaults.dlq.max_age);
    assert_eq!(
        defaults.gateway.admin_socket_path(),
        defaults.gateway.state_dir.join("admin.sock")
    );
}

#[test]
fn commented_out_keys_in_the_example_are_accepted() {
    // The example shows optional keys as comments; uncommented, they must still parse.
    let text = std::fs::read_to_string(example_path()).unwrap();
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .map(|line| {
            let keys = [
                "id",
                "admin_socket",
                "client_id",
                "username",
                "password_file",
                "ca_file",
                "cert_file",
                "key_file",
                "columns",
                "\"",
            ];
            match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && keys.iter().any(|k| rest.starts_with(k)) => {
                    uncommented += 1;
                    format!("{rest}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    assert!(uncommented >= 10, "only {uncommented} commented keys found");
    let config = Config::parse(&text, &example_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.id, "pi-greenhouse-07");
    assert_eq!(
        config.gateway.admin_socket_path(),
        std::path::Path::new("/var/lib/sensorgate/admin.sock")
    );
    assert_eq!(
        config.mqtt[0].client_id("ignored"),
        "sensorgate-pi-greenhouse-07-local"
    );
    assert_eq!(config.mqtt[0].username.as_deref(), Some("sensorgate"));
    assert!(config.mqtt[0].password_file.is_some() && config.mqtt[0].ca_file.is_some());
    assert!(config.mqtt[0].cert_file.is_some() && config.mqtt[0].key_file.is_some());
    assert!(config.kafka.property_files.contains_key("sasl.password"));
    // The commented CSV columns parse (they need format = "csv" to pass check-config).
    let columns = config.serial[0].csv_columns().unwrap();
    assert_eq!(
        columns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "device_id:string",
            "temperature_c:number",
            "humidity_pct:integer"
        ]
    );
    assert_eq!(
        config
            .kafka
            .properties
            .get("batch.num.messages")
            .map(ToString::to_string),
        Some("10000".to_owned())
    );
}

#[test]
fn example_schema_accepts_a_reading_and_reports_every_violation() {
    let config = example();
    let rules = Rules::build(&config).unwrap();
    let schema = rules.schemas.get("reading.v1.json").unwrap();

    let good = json!({
        "device_id": "greenhouse-07-t1",
        "seq": 12,
        "ts": "2024-05-01T12:00:00Z",
        "temperature_c": 21.5,
        "humidity_pct": 48,
        "battery_v": 3.7,
        "firmware": "1.2.0"
    });
    let errors = sensorgate::validate::violations(schema, &good);
    assert!(errors.is_empty(), "{errors:?}");
    let minimal = json!({"device_id": "d", "seq": 0, "temperature_c": -60});
    assert!(sensorgate::validate::violations(schema, &minimal).is_empty());

    let bad = json!({
        "device_id": "",
        "seq": -1,
        "temperature_c": 126,
        "humidity_pct": 100.5,
        "battery_v": -0.1
    });
    let errors = sensorgate::validate::violations(schema, &bad);
    let mut paths: Vec<&str> = errors.iter().map(|e| e.instance_path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/battery_v",
            "/device_id",
            "/humidity_pct",
            "/seq",
            "/temperature_c"
        ],
        "{errors:?}"
    );

    let missing = json!({"device_id": "d", "seq": 1.5});
    let errors = sensorgate::validate::violations(schema, &missing);
    assert_eq!(
        errors.len(),
        2,
        "seq is not an integer and temperature_c is missing: {errors:?}"
    );
}
