//! Reading the gateway's `/metrics`: one HTTP/1.0 GET (the endpoint answers one request per
//! connection and closes it) and a parser of the text exposition it serves
//! (`telemetry::prometheus`), enough for our own output: `name{label="value",…} number` lines,
//! comments skipped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::TopError;

/// Largest `/metrics` body read (ours is a few KiB).
const MAX_BODY: u64 = 4 << 20;

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` for histogram parts).
    pub name: String,
    /// Label pairs, in the order given.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed `/metrics` response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Every sample, in the order served.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses exposition text; a malformed sample line is an error naming it.
    pub fn parse(text: &str) -> Result<Self, TopError> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).ok_or_else(|| TopError::Exposition(l.to_owned())))
            .collect::<Result<_, _>>()?;
        Ok(Self { samples })
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Whether any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.named(name).next().is_some()
    }

    /// Whether any sample's name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.samples.iter().any(|s| s.name.starts_with(prefix))
    }

    /// The sum of every sample named `name`, `None` when there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.named(name).map(|s| s.value).reduce(|a, b| a + b)
    }

    /// The samples named `name` summed per value of `label` (over any other labels).
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.named(name) {
            if let Some(v) = s.label(label) {
                *out.entry(v.to_owned()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// The sum of the samples named `name` whose labels include every pair of `labels`.
    pub fn with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.named(name)
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    }

    /// The value of label `key` on the first sample named `name`.
    pub fn label_of(&self, name: &str, key: &str) -> Option<String> {
        self.named(name)
            .find_map(|s| s.label(key))
            .map(str::to_owned)
    }
}

/// `name{a="x",b="y"} 1.5` (a timestamp after the value is ignored).
fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' if key.trim().is_empty() => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' if key.trim().is_empty() => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key).trim().to_owned(), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The address to reach a listener bound to `listen`: an unspecified address (`0.0.0.0`, `::`)
/// becomes the loopback address of its family.
pub fn reachable(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.to_owned(),
    }
}

/// `GET /metrics` from `addr` (`host:port`), within `timeout` for each step.
pub fn fetch(addr: &str, timeout: Duration) -> Result<Exposition, TopError> {
    let http = |source: std::io::Error| TopError::Http {
        addr: addr.to_owned(),
        source,
    };
    let target = addr
        .to_socket_addrs()
        .map_err(http)?
        .next()
        .ok_or_else(|| http(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(http)?;
    stream.set_read_timeout(Some(timeout)).map_err(http)?;
    stream.set_write_timeout(Some(timeout)).map_err(http)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(http)?;
    let mut response = Vec::new();
    stream
        .take(MAX_BODY)
        .read_to_end(&mut response)
        .map_err(http)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| http(std::io::Error::other("incomplete HTTP response")))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(TopError::Status {
            addr: addr.to_owned(),
            status: head.lines().next().unwrap_or("").to_owned(),
        });
    }
    Exposition::parse(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let e = Exposition::parse(
            "# HELP x y\n# TYPE x counter\n\
             plain 3\n\
             with{a=\"1\",b=\"q\\\"uote\\\\ and\\nnewline\"} 2.5\n\
             bucket{le=\"+Inf\"} 7 1700000000000\n\
             neg{a=\"x\",} -1e3\n\
             inf +Inf\n",
        )
        .unwrap();
        assert_eq!(e.sum("plain"), Some(3.0));
        let s = &e.samples[1];
        assert_eq!(s.label("a"), Some("1"));
        assert_eq!(s.label("b"), Some("q\"uote\\ and\nnewline"));
        assert_eq!(e.with("bucket", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(e.with("neg", &[("a", "x")]), Some(-1000.0));
        assert_eq!(e.sum("inf"), Some(f64::INFINITY));
        assert_eq!(e.sum("missing"), None);
        assert!(matches!(
            Exposition::parse("broken{a=\"1\" 2"),
            Err(TopError::Exposition(l)) if l == "broken{a=\"1\" 2"
        ));
        assert!(Exposition::parse("no_value").is_err());
    }

    #[test]
    fn sums_per_label() {
        let e = Exposition::parse(
            "m{d=\"a\",p=\"0\"} 1\nm{d=\"a\",p=\"1\"} 2\nm{d=\"b\",p=\"0\"} 5\nother 9\n",
        )
        .unwrap();
        let by = e.by("m", "d");
        assert_eq!(by.get("a"), Some(&3.0));
        assert_eq!(by.get("b"), Some(&5.0));
        assert_eq!(e.sum("m"), Some(8.0));
        assert!(e.has_prefix("oth"));
    }

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        assert_eq!(reachable("0.0.0.0:9898"), "127.0.0.1:9898");
        assert_eq!(reachable("[::]:9898"), "[::1]:9898");
        assert_eq!(reachable("10.0.0.7:9898"), "10.0.0.7:9898");
    }
}
