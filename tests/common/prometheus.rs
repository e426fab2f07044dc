//! A real Prometheus server (Debian's `prometheus` package, which `scripts/test.sh` installs) as
//! a child process on a free port, scraping the gateways under test every second and
//! evaluating rule files; its HTTP API; and `promtool`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{clean_command, free_port, http_get};

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` is not installed: apt-get install prometheus (scripts/test.sh does)");
}

/// `promtool` with `args`, run in `dir`: whether it succeeded, and its output.
pub fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A scrape target: `host:port` and the labels Prometheus attaches to it.
pub struct Target<'a> {
    pub address: String,
    pub labels: &'a [(&'a str, &'a str)],
}

/// A Prometheus server on a free port (scrape and evaluation interval 1 s, job `sensorgate`),
/// killed on drop (its log printed when the test is failing).
pub struct Prometheus {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `sensorgate`, with `rule_files` loaded.
    pub fn start(targets: &[Target<'_>], rule_files: &[PathBuf]) -> Self {
        for _ in 0..5 {
            if let Some(prometheus) = Self::try_start(targets, rule_files) {
                return prometheus;
            }
        }
        panic!("prometheus did not start on any of 5 ports");
    }

    fn try_start(targets: &[Target<'_>], rule_files: &[PathBuf]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str("rule_files:\n");
        for file in rule_files {
            config.push_str(&format!("  - {}\n", file.display()));
        }
        config.push_str("scrape_configs:\n  - job_name: sensorgate\n    static_configs:\n");
        for target in targets {
            config.push_str(&format!("      - targets: [\"{}\"]\n", target.address));
            config.push_str("        labels: {");
            let labels: Vec<String> = target
                .labels
                .iter()
                .map(|(k, v)| format!("{k}: \"{v}\""))
                .collect();
            config.push_str(&labels.join(", "));
            config.push_str("}\n");
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut child = clean_command(binary("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                // The port was taken, most likely; the log says.
                eprintln!(
                    "prometheus exited: {}",
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                );
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready").0 == 200
            {
                return Some(Self { port, child, dir });
            }
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `path` of the HTTP API; the JSON `data` of a successful answer.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.port, path);
        let value: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(
            (code, value["status"].as_str()),
            (200, Some("success")),
            "{path}: {body}"
        );
        value["data"].clone()
    }

    /// The result of an instant query: one entry per series.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
