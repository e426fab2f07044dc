//! `[[downlink]]`: commands that a back-end produces into a Kafka topic, consumed by the gateway
//! and published at QoS 1 to each device's MQTT topic; and the [`TopicTemplate`] that names that
//! topic from the command itself (`devices/{/device_id}/commands`), parsed here so that
//! `check-config` and the downlink use the same code.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use super::kafka::check_topic_name;
use super::mqtt::MqttConfig;
use super::units;
use super::Problem;

/// The placeholder for the gateway id in `kafka_topic` and `group`.
pub const GATEWAY_PLACEHOLDER: &str = "{gateway}";
/// Most commands one downlink holds at once.
pub const MAX_IN_FLIGHT_LIMIT: usize = 10_000;

/// `[[downlink]]`: one Kafka topic of commands, delivered through one `[[mqtt]]` source's broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkConfig {
    /// Name in logs, metrics and dead letters (their `source`); unique among downlinks and
    /// sources.
    pub name: String,
    /// The topic of commands; `{gateway}` expands to the gateway id (one topic per gateway).
    pub kafka_topic: String,
    /// Consumer group; `{gateway}` expands to the gateway id.
    #[serde(default = "default_group")]
    pub group: String,
    /// The `[[mqtt]]` source whose broker (URL, credentials, TLS) the commands are published to.
    pub mqtt: String,
    /// The MQTT topic of a command: text with `{JSON Pointer}` parts taken from the command,
    /// e.g. `devices/{/device_id}/commands`.
    pub topic_template: String,
    /// Schema file in `gateway.schemas_dir` that every command must pass; none by default.
    #[serde(default)]
    pub schema: Option<String>,
    /// JSON Pointer to an RFC 3339 time after which the command is not sent (an `expired` dead
    /// letter instead); none by default.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Most commands taken from Kafka and not yet done (published and acknowledged, or dead
    /// letters stored); beyond that consumption pauses.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// MQTT client id of the downlink's own connection; defaults to
    /// `<the source's client id>-downlink-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// A publish not acknowledged within this counts as a failure of the broker connection.
    #[serde(default = "default_ack_timeout", with = "units::duration")]
    pub ack_timeout: Duration,
    /// Kafka's `session.timeout.ms`: how long the group waits for a gateway that died before
    /// it gives its partitions to the next member (a restarted gateway).
    #[serde(default = "default_session_timeout", with = "units::duration")]
    pub session_timeout: Duration,
}

fn default_group() -> String {
    "sensorgate-{gateway}".to_owned()
}
const fn default_max_in_flight() -> usize {
    100
}
const fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `text` with `{gateway}` replaced by `gateway`.
fn expand(text: &str, gateway: &str) -> String {
    text.replace(GATEWAY_PLACEHOLDER, gateway)
}

impl DownlinkConfig {
    /// The Kafka topic, with the gateway id filled in.
    pub fn topic(&self, gateway: &str) -> String {
        expand(&self.kafka_topic, gateway)
    }

    /// The consumer group, with the gateway id filled in.
    pub fn group_id(&self, gateway: &str) -> String {
        expand(&self.group, gateway)
    }

    /// The MQTT client id, given the client id of the source it publishes through.
    pub fn client_id(&self, source_client_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{source_client_id}-downlink-{}", self.name))
    }

    /// Every problem of this downlink on its own, keyed relative to it. Whether `mqtt` names a
    /// source, and client ids, are checked by [`check_all`].
    pub fn check(&self, gateway: &str, dlq_suffix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut p = |key: &str, message: String| problems.push(Problem::new(key, message));
        if self.name.is_empty() {
            p("name", "must not be empty".into());
        }
        for (key, text) in [("kafka_topic", &self.kafka_topic), ("group", &self.group)] {
            let rest = text.replace(GATEWAY_PLACEHOLDER, "");
            if rest.contains(['{', '}']) {
                p(
                    key,
                    format!("`{text}`: the only placeholder is {GATEWAY_PLACEHOLDER}"),
                );
            }
        }
        let topic = self.topic(gateway);
        if let Err(e) = check_topic_name(&topic) {
            p("kafka_topic", format!("`{topic}`: {e}"));
        } else if let Err(e) = check_topic_name(&format!("{topic}{dlq_suffix}")) {
            p("kafka_topic", format!("its dead-letter topic: {e}"));
        }
        if self.group_id(gateway).is_empty() {
            p("group", "must not be empty".into());
        }
        if let Err(e) = TopicTemplate::parse(&self.topic_template) {
            p("topic_template", e.to_string());
        }
        if let Some(schema) = &self.schema {
            if schema.is_empty()
                || schema.contains("..")
                || std::path::Path::new(schema).is_absolute()
            {
                p(
                    "schema",
                    "must be a file name inside gateway.schemas_dir".into(),
                );
            }
        }
        if let Some(pointer) = &self.expires_at {
            if !pointer.starts_with('/') {
                p(
                    "expires_at",
                    format!("`{pointer}` is not a JSON Pointer (it must start with `/`, e.g. \"/expires_at\")"),
                );
            }
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            p(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
            );
        }
        if self.client_id.as_deref() == Some("") {
            p(
                "client_id",
                "must not be empty (leave it out for the default, <source client id>-downlink-<name>)"
                    .into(),
            );
        }
        if self.ack_timeout < Duration::from_millis(100) {
            p("ack_timeout", "must be at least 100ms".into());
        }
        if self.session_timeout < Duration::from_secs(1) {
            p("session_timeout", "must be at least 1s".into());
        }
        problems
    }
}

/// Checks between downlinks and sources, keyed in full (`downlink[1].mqtt`): names unique among
/// downlinks and `sources` (names already taken by `[[mqtt]]` and `[[serial]]`), `mqtt` naming
/// an `[[mqtt]]` source, and client ids unique among every MQTT connection.
pub(super) fn check_all(
    downlinks: &[DownlinkConfig],
    mqtt: &[MqttConfig],
    sources: &HashSet<&str>,
    gateway: &str,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut ids: HashMap<String, String> = mqtt
        .iter()
        .enumerate()
        .map(|(i, m)| (m.client_id(gateway), format!("mqtt[{i}]")))
        .collect();
    for (i, downlink) in downlinks.iter().enumerate() {
        let section = format!("downlink[{i}]");
        if sources.contains(downlink.name.as_str()) || !names.insert(downlink.name.as_str()) {
            problems.push(Problem::new(
                format!("{section}.name"),
                format!(
                    "name `{}` is used twice (downlinks and sources share names: dead letters are listed by them)",
                    downlink.name
                ),
            ));
        }
        let Some(source) = mqtt.iter().find(|m| m.name == downlink.mqtt) else {
            problems.push(Problem::new(
                format!("{section}.mqtt"),
                format!("`{}` is not the name of any [[mqtt]] source", downlink.mqtt),
            ));
            continue;
        };
        let id = downlink.client_id(&source.client_id(gateway));
        if id.is_empty() {
            continue;
        }
        if let Some(other) = ids.get(&id) {
            problems.push(Problem::new(
                format!("{section}.client_id"),
                format!(
                    "client id `{id}` is also the client id of {other}; two connections with one client id take over each other's session, so give each its own"
                ),
            ));
        } else {
            ids.insert(id, section);
        }
    }
    problems
}

/// A malformed `topic_template`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("`{template}` is not a topic template: {why} (expected text with {{JSON Pointer}} parts, e.g. \"devices/{{/device_id}}/commands\")")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Pointer(String),
}

/// An MQTT topic built from a command: literal text and `{JSON Pointer}` parts. Each pointer must
/// name a non-empty string without `/`, `+`, `#` or NUL, so that a command can neither address
/// another level of the topic tree nor make the broker refuse the publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses a template such as `devices/{/device_id}/commands`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |why| TemplateError {
            template: template.to_owned(),
            why,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(at) if rest.as_bytes()[at] == b'}' => return Err(err("a `}` without `{`")),
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Text(rest[..at].to_owned()));
                    }
                    let inner = &rest[at + 1..];
                    let end = inner.find('}').ok_or_else(|| err("a `{` without `}`"))?;
                    let pointer = &inner[..end];
                    if pointer.contains('{') {
                        return Err(err("nested `{`"));
                    }
                    if !pointer.starts_with('/') {
                        return Err(err("a {…} part must be a JSON Pointer starting with `/`"));
                    }
                    parts.push(Part::Pointer(pointer.to_owned()));
                    rest = &inner[end + 1..];
                }
            }
        }
        let text = |p: &Part| match p {
            Part::Text(t) => Some(t.clone()),
            Part::Pointer(_) => None,
        };
        let literal: String = parts.iter().filter_map(text).collect();
        if literal.contains(['+', '#', '\0']) {
            return Err(err("MQTT wildcards (`+`, `#`) cannot be published to"));
        }
        if !parts.iter().any(|p| matches!(p, Part::Pointer(_))) {
            return Err(err(
                "it has no {JSON Pointer} part, so every command would go to one topic",
            ));
        }
        Ok(Self { parts })
    }

    /// The topic for `command`, or what is wrong with the command (a pointer that is missing,
    /// not a string, empty, or holds `/`, `+`, `#` or NUL).
    pub fn render(&self, command: &Value) -> Result<String, String> {
        let mut topic = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => topic.push_str(text),
                Part::Pointer(pointer) => match command.pointer(pointer) {
                    None => return Err(format!("`{pointer}` is missing")),
                    Some(Value::String(s)) if s.is_empty() => {
                        return Err(format!("`{pointer}` is an empty string"))
                    }
                    Some(Value::String(s)) if s.contains(['/', '+', '#', '\0']) => {
                        return Err(format!(
                            "`{pointer}` is {s:?}, which holds `/`, `+`, `#` or NUL and cannot be one topic level"
                        ))
                    }
                    Some(Value::String(s)) => topic.push_str(s),
                    Some(other) => {
                        return Err(format!(
                            "`{pointer}` is not a string but {}",
                            json_kind(other)
                        ))
                    }
                },
            }
        }
        if topic.len() > usize::from(u16::MAX) {
            return Err("the topic would be longer than MQTT allows (65535 bytes)".into());
        }
        Ok(topic)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_from_the_command() {
        let t = TopicTemplate::parse("devices/{/device_id}/commands").unwrap();
        assert_eq!(
            t.render(&json!({"device_id": "dev-7"})).unwrap(),
            "devices/dev-7/commands"
        );
        let t = TopicTemplate::parse("{/site}/{/target/id}").unwrap();
        assert_eq!(
            t.render(&json!({"site": "gh", "target": {"id": "heater"}}))
                .unwrap(),
            "gh/heater"
        );
    }

    #[test]
    fn commands_that_name_no_single_topic_level_are_refused() {
        let t = TopicTemplate::parse("devices/{/device_id}/commands").unwrap();
        for (command, why) in [
            (json!({}), "missing"),
            (json!({"device_id": 7}), "a number"),
            (json!({"device_id": null}), "null"),
            (json!({"device_id": ""}), "empty"),
            (json!({"device_id": "a/b"}), "`/`"),
            (json!({"device_id": "+"}), "`+`"),
            (json!({"device_id": "#"}), "`#`"),
        ] {
            let e = t.render(&command).unwrap_err();
            assert!(e.contains(why), "{command}: {e}");
        }
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (template, why) in [
            ("devices/{device_id}/commands", "JSON Pointer"),
            ("devices/{/device_id/commands", "without `}`"),
            ("devices/}/x", "without `{`"),
            ("devices/+/{/id}", "wildcards"),
            ("devices/all", "no {JSON Pointer}"),
            ("a/{/{x}}", "nested"),
        ] {
            let e = TopicTemplate::parse(template).unwrap_err();
            assert!(e.to_string().contains(why), "{template}: {e}");
        }
    }

    fn downlink(text: &str) -> DownlinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn placeholders_expand_and_defaults_apply() {
        let d = downlink(
            "name = \"commands\"\nkafka_topic = \"devices.commands.{gateway}\"\nmqtt = \"local\"\ntopic_template = \"devices/{/device_id}/commands\"\n",
        );
        assert_eq!(d.topic("pi-07"), "devices.commands.pi-07");
        assert_eq!(d.group_id("pi-07"), "sensorgate-pi-07");
        assert_eq!(
            d.client_id("sg-pi-07-local"),
            "sg-pi-07-local-downlink-commands"
        );
        assert_eq!(d.max_in_flight, 100);
        assert_eq!(d.ack_timeout, Duration::from_secs(10));
        assert!(d.check("pi-07", ".DLQ").is_empty());
    }

    #[test]
    fn problems_are_keyed() {
        let d = downlink(
            "name = \"\"\nkafka_topic = \"cmds.{host}\"\ngroup = \"\"\nmqtt = \"x\"\ntopic_template = \"a/b\"\nschema = \"../x.json\"\nexpires_at = \"expires_at\"\nmax_in_flight = 0\nclient_id = \"\"\nack_timeout = \"1ms\"\n",
        );
        let keys: Vec<String> = d.check("gw", ".DLQ").into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "name",
                "kafka_topic",
                "kafka_topic",
                "group",
                "topic_template",
                "schema",
                "expires_at",
                "max_in_flight",
                "client_id",
                "ack_timeout"
            ]
        );
    }
}
