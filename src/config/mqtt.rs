//! `[[mqtt]]`: one broker connection per entry, and the broker URL ([`BrokerAddress`]) that
//! both `check-config` and the MQTT source parse with the same code.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::topic_filter::TopicFilter;
use super::units::{self, ByteSize};
use super::Problem;

/// The largest packet MQTT 3.1.1 allows (remaining length of 268,435,455 bytes).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// `[[mqtt]]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Source name that routes refer to.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Fixed client id, so the broker keeps our session; defaults to `sensorgate-<gateway id>-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to at QoS 1.
    pub topics: Vec<String>,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password (never inline in this file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://` (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "units::duration")]
    pub keep_alive: Duration,
    /// Payloads larger than this become `too-large` dead letters (stored truncated to this size).
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max", with = "units::duration")]
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The client id used for the persistent session.
    pub fn client_id(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sensorgate-{gateway_id}-{}", self.name))
    }

    /// Every problem of this source on its own, keyed relative to it (`url`, `topics[1]`, …);
    /// names shared with other sources are found by [`super::Config::problems`].
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = BrokerAddress::parse(&self.url) {
            problems.push(Problem::new("url", e.to_string()));
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
        if let Some(file) = &self.password_file {
            if let Err(e) = std::fs::metadata(file) {
                problems.push(Problem::new(
                    "password_file",
                    format!("{}: {e}", file.display()),
                ));
            }
        }
        if let Some(file) = &self.ca_file {
            if let Err(e) = std::fs::metadata(file) {
                problems.push(Problem::new("ca_file", format!("{}: {e}", file.display())));
            }
        }
        if self.max_payload.bytes() == 0 || self.max_payload.bytes() > MQTT_MAX_PACKET as u64 {
            problems.push(Problem::new("max_payload", "must be between 1B and 256MiB"));
        }
        problems
    }
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
        if authority.contains('@') {
            return Err(err(
                "credentials do not belong in the URL; use username and password_file",
            ));
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

    #[test]
    fn broker_urls_parse() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = BrokerAddress::parse("mqtts://broker.example").unwrap();
        assert_eq!((a.port, a.tls), (8883, true));
        let a = BrokerAddress::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(a.host, "::1");
        assert!(BrokerAddress::parse("http://x").is_err());
        assert!(BrokerAddress::parse("mqtt://u:p@host").is_err());
        assert!(BrokerAddress::parse("mqtt://host:notaport").is_err());
    }
}
