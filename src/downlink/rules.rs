//! What a downlink checks in a command before it publishes it: JSON, the schema, the target
//! topic from the template, and (at the moment it would be sent) `expires_at`. No I/O: the task
//! and `dlq replay` ask the same [`Rules`].

use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use crate::config::{Config, DownlinkConfig, TopicTemplate};
use crate::record::{format_ms, Reason, Violation};
use crate::validate::{self, SchemaError};

/// Why the rules of a downlink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// `topic_template` is malformed (check-config reports it too).
    #[error(transparent)]
    Template(#[from] crate::config::TemplateError),
    /// The schema does not load or compile.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// A command that passed the checks made on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MQTT topic it goes to.
    pub topic: String,
    /// Its `expires_at`, in ms since the epoch, if it has one.
    pub expires_at_ms: Option<u64>,
}

/// The checks of one downlink, compiled once.
#[derive(Debug, Clone)]
pub struct Rules {
    template: TopicTemplate,
    template_text: String,
    schema: Option<(Arc<str>, Arc<Validator>)>,
    expires_at: Option<String>,
}

impl Rules {
    /// Compiles `downlink`'s template and schema (from `config`'s schemas directory).
    pub fn build(config: &Config, downlink: &DownlinkConfig) -> Result<Self, RulesError> {
        let template = TopicTemplate::parse(&downlink.topic_template)?;
        let schema = match &downlink.schema {
            Some(name) => {
                let dir = &config.gateway.schemas_dir;
                let validator = validate::compile_file(dir, &dir.join(name))?;
                Some((Arc::from(name.as_str()), Arc::new(validator)))
            }
            None => None,
        };
        Ok(Self {
            template,
            template_text: downlink.topic_template.clone(),
            schema,
            expires_at: downlink.expires_at.clone(),
        })
    }

    /// The schema's file name, if the downlink has one.
    pub fn schema_name(&self) -> Option<&Arc<str>> {
        self.schema.as_ref().map(|(name, _)| name)
    }

    /// The checks made when a command arrives, in order: `not-json`, `schema` (also for an
    /// `expires_at` that is present but not an RFC 3339 time), `no-target`.
    pub fn check(&self, payload: &[u8]) -> Result<Target, (Reason, Vec<Violation>)> {
        let text = std::str::from_utf8(payload).map_err(|e| {
            (
                Reason::NotJson,
                vec![Violation::whole(format!("command is not UTF-8: {e}"))],
            )
        })?;
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            (
                Reason::NotJson,
                vec![Violation::whole(format!("command is not JSON: {e}"))],
            )
        })?;
        if let Some((_, validator)) = &self.schema {
            let errors = validate::violations(validator, &doc);
            if !errors.is_empty() {
                return Err((Reason::Schema, errors));
            }
        }
        let expires_at_ms = match &self.expires_at {
            None => None,
            Some(pointer) => expiry(&doc, pointer).map_err(|v| (Reason::Schema, vec![v]))?,
        };
        let topic = self.template.render(&doc).map_err(|why| {
            (
                Reason::NoTarget,
                vec![Violation::whole(format!(
                    "topic template `{}`: {why}",
                    self.template_text
                ))],
            )
        })?;
        Ok(Target {
            topic,
            expires_at_ms,
        })
    }
}

/// The violation of a command that is past `expires_at_ms` at `now_ms`, if it is.
pub fn expired(expires_at_ms: Option<u64>, now_ms: u64) -> Option<Violation> {
    let at = expires_at_ms?;
    (now_ms > at).then(|| {
        Violation::whole(format!(
            "expired at {} (it would have been sent at {})",
            format_ms(at),
            format_ms(now_ms)
        ))
    })
}

/// The time at `pointer`: `None` when absent or null, a violation when not an RFC 3339 time.
fn expiry(doc: &Value, pointer: &str) -> Result<Option<u64>, Violation> {
    let bad = |message: String| Violation::new(pointer, String::new(), message);
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => Ok(Some(u64::try_from(time.timestamp_millis()).unwrap_or(0))),
            Err(e) => Err(bad(format!(
                "expires_at {text:?} is not an RFC 3339 time: {e}"
            ))),
        },
        Some(other) => Err(bad(format!(
            "expires_at must be an RFC 3339 time string, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rules(dir: &Path, schema: bool) -> Rules {
        std::fs::write(
            dir.join("command.json"),
            br#"{"type":"object","required":["device_id","action"],"properties":{"action":{"enum":["set","reboot"]}}}"#,
        )
        .unwrap();
        let schema = if schema {
            "schema = \"command.json\"\n"
        } else {
            ""
        };
        let text = format!(
            "[gateway]\nid = \"gw\"\nschemas_dir = \"{}\"\n[kafka]\nbrokers = \"x:9092\"\n[[mqtt]]\nname = \"m\"\nurl = \"mqtt://localhost\"\ntopics = [\"s/#\"]\n[[downlink]]\nname = \"commands\"\nkafka_topic = \"c.{{gateway}}\"\nmqtt = \"m\"\ntopic_template = \"devices/{{/device_id}}/commands\"\nexpires_at = \"/expires_at\"\n{schema}",
            dir.display()
        );
        let config = Config::parse(&text, &dir.join("c.toml")).unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        Rules::build(&config, &config.downlinks[0]).unwrap()
    }

    #[test]
    fn each_check_gives_its_reason_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = rules(dir.path(), true);
        let ok = r
            .check(br#"{"device_id":"d1","action":"set","expires_at":"2030-01-01T00:00:00+01:00"}"#)
            .unwrap();
        assert_eq!(ok.topic, "devices/d1/commands");
        assert_eq!(ok.expires_at_ms, Some(1_893_452_400_000));

        let reason = |payload: &[u8]| r.check(payload).unwrap_err().0;
        assert_eq!(reason(b"\xff"), Reason::NotJson);
        assert_eq!(reason(b"{nope"), Reason::NotJson);
        assert_eq!(
            reason(br#"{"device_id":"d1","action":"fly"}"#),
            Reason::Schema
        );
        // Schema before target: a command without a device breaks the schema first.
        assert_eq!(reason(br#"{"action":"set"}"#), Reason::Schema);
        let (why, errors) = r
            .check(br#"{"device_id":"d1","action":"set","expires_at":"tomorrow"}"#)
            .unwrap_err();
        assert_eq!(
            (why, errors[0].instance_path.as_str()),
            (Reason::Schema, "/expires_at")
        );

        let r = rules(dir.path(), false);
        let (why, errors) = r.check(br#"{"device_id":42}"#).unwrap_err();
        assert_eq!(why, Reason::NoTarget);
        assert!(errors[0].message.contains("not a string"), "{errors:?}");
        assert_eq!(
            r.check(br#"{"device_id":"d"}"#).unwrap().expires_at_ms,
            None
        );
    }

    #[test]
    fn expiry_is_judged_when_sent() {
        assert!(expired(None, 5).is_none());
        assert!(expired(Some(5), 5).is_none());
        let v = expired(Some(5), 6).unwrap();
        assert!(
            v.message.contains("expired at 1970-01-01T00:00:00.005Z"),
            "{v:?}"
        );
    }
}
