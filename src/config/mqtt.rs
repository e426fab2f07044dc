//! `[[mqtt]]`: one broker connection per entry, and the broker URL ([`BrokerAddress`]) that
//! both `check-config` and the MQTT source parse with the same code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::secret;
use super::topic_filter::TopicFilter;
use super::units::{self, ByteSize};
use super::Problem;

/// The largest packet MQTT 3.1.1 allows (remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// Room for a PUBLISH's variable header on top of its payload: the topic's length prefix and the
/// longest topic MQTT allows, and the packet id.
pub const PUBLISH_HEADER_ROOM: usize = 2 + 65_535 + 2;

/// `[[mqtt]]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Source name that routes refer to.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Fixed client id, so the broker keeps our session; defaults to `sensorgate-<gateway id>-<name>`.
    /// Must not be empty, and no two sources may share one (they would take over each other's
    /// session).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to at QoS 1.
    pub topics: Vec<String>,
    /// User name, if the broker wants one (then `password_file` too).
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password (never inline in this file); others must have
    /// no access to it.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://` (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS, `mqtts://` only), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM PKCS#8 private key of `cert_file` (`BEGIN PRIVATE KEY`); others must have no
    /// access to it.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "units::duration")]
    pub keep_alive: Duration,
    /// Payloads larger than this become `too-large` dead letters (stored truncated to this size);
    /// packets larger than [`MqttConfig::packet_limit`] are refused (see the README).
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max", with = "units::duration")]
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The largest packet the source takes from the broker: `max_payload` plus
    /// [`PUBLISH_HEADER_ROOM`]. rumqttc allocates a whole frame before the payload is seen, so
    /// this bounds what one publish costs; a larger packet drops the connection.
    pub fn packet_limit(&self) -> usize {
        usize::try_from(self.max_payload.bytes())
            .unwrap_or(MQTT_MAX_PACKET)
            .saturating_add(PUBLISH_HEADER_ROOM)
            .min(MQTT_MAX_PACKET)
    }

    /// The client id used for the persistent session.
    pub fn client_id(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sensorgate-{gateway_id}-{}", self.name))
    }

    /// Every problem of this source on its own, keyed relative to it (`url`, `topics[1]`, …).
    /// Problems between sources are found by `check_client_ids` and by
    /// [`super::Config::problems`] (names).
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        match BrokerAddress::parse(&self.url) {
            Err(e) => problems.push(Problem::new("url", e.to_string())),
            Ok(address) if !address.tls => {
                for (key, file) in [
                    ("ca_file", &self.ca_file),
                    ("cert_file", &self.cert_file),
                    ("key_file", &self.key_file),
                ] {
                    if file.is_some() {
                        problems.push(Problem::new(
                            key,
                            format!(
                                "is a TLS setting but `{}` is plaintext; use mqtts:// (or leave {key} out)",
                                self.url
                            ),
                        ));
                    }
                }
            }
            Ok(_) => {}
        }
        if self.client_id.as_deref() == Some("") {
            problems.push(Problem::new(
                "client_id",
                "must not be empty (leave it out for the default, sensorgate-<gateway id>-<name>)",
            ));
        }
        if self.topics.is_empty() {
            problems.push(Problem::new(
                "topics",
                "must list at least one topic filter",
            ));
        }
        for (j, topic) in self.topics.iter().enumerate() {
            if let Err(e) = TopicFilter::parse(topic) {
                problems.push(Problem::new(format!("topics[{j}]"), e.to_string()));
            }
        }
        match (&self.username, &self.password_file) {
            (Some(_), None) => problems.push(Problem::new(
                "username",
                "needs password_file (a file whose first line is the password)",
            )),
            (None, Some(_)) => problems.push(Problem::new(
                "password_file",
                "needs username (the broker's user for this password)",
            )),
            _ => {}
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => problems.push(Problem::new(
                "cert_file",
                "needs key_file (the certificate's private key)",
            )),
            (None, Some(_)) => problems.push(Problem::new(
                "key_file",
                "needs cert_file (the client certificate of this key)",
            )),
            _ => {}
        }
        for (key, file) in [
            ("password_file", &self.password_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(Err(e)) = file.as_deref().map(secret::check_file) {
                problems.push(Problem::new(key, e.to_string()));
            }
        }
        for (key, file) in [("ca_file", &self.ca_file), ("cert_file", &self.cert_file)] {
            if let Some(file) = file {
                if let Err(e) = std::fs::metadata(file) {
                    problems.push(Problem::new(key, format!("{}: {e}", file.display())));
                }
            }
        }
        if self.max_payload.bytes() == 0 || self.max_payload.bytes() > MQTT_MAX_PACKET as u64 {
            problems.push(Problem::new("max_payload", "must be between 1B and 256MiB"));
        }
        problems
    }
}

/// Two `[[mqtt]]` sources with one client id (set, or derived from `gateway_id` and the name)
/// would take over each other's persistent session, so every source after the first one with a
/// given id is a problem, keyed in full (`mqtt[1].client_id`). Empty ids are [`MqttConfig::check`]'s.
pub(super) fn check_client_ids(sources: &[MqttConfig], gateway_id: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut first = HashMap::new();
    for (i, source) in sources.iter().enumerate() {
        let id = source.client_id(gateway_id);
        if id.is_empty() {
            continue;
        }
        let origin = if source.client_id.is_some() {
            ""
        } else {
            " (the default, from gateway.id and name)"
        };
        if let Some(other) = first.get(&id) {
            problems.push(Problem::new(
                format!("mqtt[{i}].client_id"),
                format!(
                    "client id `{id}`{origin} is also the client id of mqtt[{other}]; two sources with one client id take over each other's broker session, so give each its own"
                ),
            ));
        } else {
            first.insert(id, i);
        }
    }
    problems
}

const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_payload() -> ByteSize {
    ByteSize(256 << 10)
}
const fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// A malformed `url`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{url}` is not a broker URL: {why} (expected mqtt://host:port or mqtts://host:port)")]
pub struct UrlError {
    /// The URL.
    pub url: String,
    /// What is wrong.
    pub why: &'static str,
}

/// Host, port and transport from an `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or address.
    pub host: String,
    /// Port (1883 or 8883 by default).
    pub port: u16,
    /// Whether to use TLS.
    pub tls: bool,
}

impl BrokerAddress {
    /// Parses `mqtt://host[:port]`, `tcp://…`, `mqtts://…` or `ssl://…`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |why| UrlError {
            url: url.to_owned(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| err("missing scheme"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(err("unknown scheme")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((_, host)) = authority.rsplit_once('@') {
            // The password is not repeated in the message.
            return Err(UrlError {
                url: format!("{scheme}://{}@{host}", super::secret::REDACTED),
                why: "credentials do not belong in the URL; use username and password_file",
            });
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| err("bad port"))?)
            }
            _ => (authority, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("missing host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, client_id: Option<&str>) -> MqttConfig {
        let client_id = client_id.map_or(String::new(), |id| format!("client_id = \"{id}\"\n"));
        toml::from_str(&format!(
            "name = \"{name}\"\nurl = \"mqtt://127.0.0.1\"\ntopics = [\"a/#\"]\n{client_id}"
        ))
        .unwrap()
    }

    #[test]
    fn broker_urls_parse() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = BrokerAddress::parse("mqtts://broker.example").unwrap();
        assert_eq!((a.port, a.tls), (8883, true));
        let a = BrokerAddress::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(a.host, "::1");
        assert!(BrokerAddress::parse("http://x").is_err());
        let err = BrokerAddress::parse("mqtt://u:hunter2@host").unwrap_err();
        assert!(
            !err.to_string().contains("hunter2") && err.to_string().contains("mqtt://***@host"),
            "{err}"
        );
        assert!(BrokerAddress::parse("mqtt://host:notaport").is_err());
    }

    #[test]
    fn an_empty_client_id_is_a_problem_and_an_absent_one_is_not() {
        let problems = source("a", Some("")).check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "client_id");
        assert!(
            problems[0].message.contains("must not be empty"),
            "{}",
            problems[0]
        );
        assert!(source("a", None).check().is_empty());
        assert!(source("a", Some("x")).check().is_empty());
    }

    #[test]
    fn sources_sharing_a_client_id_are_problems_whether_set_or_derived() {
        let unique = [source("a", None), source("b", None), source("c", Some("c"))];
        assert!(check_client_ids(&unique, "gw").is_empty());

        let explicit = [source("a", Some("same")), source("b", Some("same"))];
        let problems = check_client_ids(&explicit, "gw");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "mqtt[1].client_id");
        assert!(
            problems[0].message.contains("`same`") && problems[0].message.contains("mqtt[0]"),
            "{}",
            problems[0]
        );

        // The second source's default id is the first one's explicit id.
        let derived = [source("a", Some("sensorgate-gw-b")), source("b", None)];
        let problems = check_client_ids(&derived, "gw");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "mqtt[1].client_id");
        assert!(
            problems[0].message.contains("the default"),
            "{}",
            problems[0]
        );

        // Every later duplicate names the first source; empty ids are left to `check`.
        let three = [
            source("a", Some("x")),
            source("b", Some("x")),
            source("c", Some("x")),
            source("d", Some("")),
            source("e", Some("")),
        ];
        let keys: Vec<String> = check_client_ids(&three, "gw")
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["mqtt[1].client_id", "mqtt[2].client_id"]);
    }
}
