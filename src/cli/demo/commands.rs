//! The demo's round trip the other way: commands produced into the mock cluster's
//! [`COMMANDS_TOPIC`], consumed by the gateway's `[[downlink]]` and published through the demo
//! broker to each simulated device's `devices/<device_id>/commands`, where the simulator counts
//! them. One command breaks the command schema and one has already expired: both become dead
//! letters, in the local store and in [`COMMANDS_DLQ_TOPIC`].

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The topic the commands are produced into (`devices.commands.{gateway}` for the demo's
/// gateway id).
pub const COMMANDS_TOPIC: &str = "devices.commands.demo-gateway";
/// Dead letters of the downlink.
pub const COMMANDS_DLQ_TOPIC: &str = "devices.commands.demo-gateway.DLQ";
/// The downlink's name (its dead letters' source).
pub const DOWNLINK: &str = "demo-commands";
/// Where the simulated devices listen (the simulator's `{device_id}` template).
pub const DEVICE_TOPIC: &str = "devices/{device_id}/commands";
/// Valid commands per simulated device.
pub const PER_DEVICE: u64 = 2;
/// The schema commands are checked against: the repository's own.
pub const COMMAND_SCHEMA: &str = include_str!("../../../schemas/command.v1.json");
/// How long Kafka may take to confirm the produced commands (they may be produced during the
/// outage).
const PRODUCE_LIMIT: Duration = Duration::from_secs(30);

/// The `[[downlink]]` section of the demo's configuration, publishing through `source`.
pub fn config_section(source: &str) -> String {
    format!(
        r#"
[[downlink]]
name = "{DOWNLINK}"
kafka_topic = "devices.commands.{{gateway}}"
mqtt = "{source}"
topic_template = "devices/{{/device_id}}/commands"
schema = "command.v1.json"
expires_at = "/expires_at"
"#
    )
}

/// The commands to produce, as `(key, payload)` in order: [`PER_DEVICE`] valid ones for each of
/// the simulator's `devices` (`dev-0001`, …), keyed by device so each device's commands keep
/// their order, then one with an unknown action (`schema`) and one that expired in 2020
/// (`expired`). Returns them with the number of valid ones.
pub fn commands(devices: u32) -> (Vec<(String, String)>, u64) {
    let mut out = Vec::new();
    for n in 0..PER_DEVICE {
        for d in 1..=devices {
            let id = format!("dev-{d:04}");
            let setpoint = 18.0 + f64::from(d % 8) + n as f64 / 2.0;
            out.push((
                id.clone(),
                format!(
                    r#"{{"device_id":"{id}","action":"set","seq":{n},"setpoint_c":{setpoint:.1}}}"#
                ),
            ));
        }
    }
    let valid = out.len() as u64;
    let last = format!("dev-{:04}", devices.max(1));
    out.push((
        "dev-0001".into(),
        r#"{"device_id":"dev-0001","action":"self-destruct"}"#.into(),
    ));
    out.push((
        last.clone(),
        format!(
            r#"{{"device_id":"{last}","action":"reboot","expires_at":"2020-01-01T00:00:00Z"}}"#
        ),
    ));
    (out, valid)
}

/// Produces `records` into [`COMMANDS_TOPIC`] and waits until Kafka confirmed every one.
pub async fn produce(bootstrap: String, records: Vec<(String, String)>) -> Result<(), KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", PRODUCE_LIMIT.as_millis().to_string())
        .set("reconnect.backoff.max.ms", "500")
        .create()?;
    let mut sends = Vec::with_capacity(records.len());
    for (key, payload) in &records {
        let record = FutureRecord::to(COMMANDS_TOPIC).key(key).payload(payload);
        sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for send in sends {
        match send.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_commands_pass_the_schema_the_broken_one_does_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let validator = crate::validate::compile_file(&dir, &dir.join("command.v1.json"))
            .expect("example command schema");
        let (records, valid) = commands(3);
        assert_eq!(valid, 3 * PER_DEVICE);
        assert_eq!(records.len() as u64, valid + 2);
        for (i, (key, payload)) in records.iter().enumerate() {
            let json: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(json["device_id"], key.as_str(), "keyed by device");
            let errors = crate::validate::violations(&validator, &json);
            let expired = json.get("expires_at").is_some();
            assert_eq!(
                errors.is_empty(),
                (i as u64) < valid || expired,
                "{payload}: {errors:?}"
            );
        }
    }
}
