//! The gateway as a separate process: spawn, signal, kill, read its log, scrape its metrics,
//! and read what the kernel counts for it (CPU time, resident memory, bytes written).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary under test: `SENSORGATE_BIN` when set (to compare builds), else the one cargo
/// built for this test or benchmark.
pub fn gateway_binary() -> PathBuf {
    std::env::var_os("SENSORGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sensorgate")))
}

/// `sensorgate run --config …` as a child process, its stderr appended to a log file; killed on
/// drop (and its log printed when the test is failing).
pub struct GatewayProcess {
    child: Child,
    log: PathBuf,
}

impl GatewayProcess {
    /// Starts the gateway with `envs` added to its environment.
    pub fn spawn(config: &Path, log: &Path, envs: &[(&str, &str)]) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(gateway_binary())
            .args(["run", "--config"])
            .arg(config)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How often `needle` appears in its log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Whether it has exited (with its status).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// SIGKILL; panics if the process had already died by itself (so every restart is known to
    /// have been running when it was killed).
    pub fn kill9(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the gateway had exited by itself: {status:?}");
        }
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.signal() == Some(9) || status.code().is_some(),
            "{status:?}"
        );
    }

    /// What the kernel counts for it now.
    pub fn usage(&self) -> ProcUsage {
        ProcUsage::of(self.pid())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command that runs `program` without the file descriptors the test process would pass on.
///
/// Rust opens every descriptor close-on-exec, but librdkafka's mock cluster does not: a child
/// spawned while the in-process mock runs inherits its broker sockets, and one that outlives a
/// `broker_down` keeps the gateway's connections open, so the gateway never sees the outage.
/// Long-lived helpers (load generators, Prometheus, tmux) start through this: bash closes every
/// descriptor above 2, then execs the program (same pid).
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(
            r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec "$@""#,
        )
        .arg("sensorgate-test")
        .arg(program);
    command
}

/// Whether `program` is on the PATH. When it is not, prints that `test` is SKIPPED and why;
/// under `CI=true` (`scripts/test.sh` installs every tool the tests use) it fails instead, so
/// that a build machine cannot pass without running the test.
pub fn have_tool(program: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        let message =
            format!("SKIPPED: {test}: `{program}` is not installed (scripts/test.sh installs it)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        // Straight to stderr: the test harness hides `eprintln!` of a passing test.
        let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
    }
    found
}

/// A child process killed (and reaped) on drop: load generators, `top` on a pipe.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sensorgate simulate` against `mqtt_url` at `rate` readings/s over `devices` devices, a
/// share `invalid_ratio` of them invalid, until dropped: steady load for a gateway under test.
pub fn simulate(mqtt_url: &str, rate: u32, devices: u32, invalid_ratio: f64) -> ChildGuard {
    let child = clean_command(gateway_binary())
        .args(["simulate", "--mqtt", mqtt_url, "--seed", "7"])
        .args([
            "--rate",
            &rate.to_string(),
            "--devices",
            &devices.to_string(),
        ])
        .args(["--invalid-ratio", &invalid_ratio.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// CPU time, memory and writes of a process, from `/proc/<pid>/{stat,status,io}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
    /// Bytes the process caused to be written to storage.
    pub write_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Of the resident set: anonymous memory (heap, stacks), KiB.
    pub rss_anon_kib: u64,
    /// Of the resident set: file pages (the binary and libraries), KiB.
    pub rss_file_kib: u64,
}

impl ProcUsage {
    /// Reads the counters of process `pid`.
    pub fn of(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name: utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let hz = clock_ticks();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Self {
            // Fields 14 and 15 of stat are at indexes 11 and 12 after the name.
            cpu_seconds: (ticks(11) + ticks(12)) as f64 / hz,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            write_bytes,
            threads: kib("Threads:"),
            rss_anon_kib: kib("RssAnon:"),
            rss_file_kib: kib("RssFile:"),
        }
    }
}

/// `getconf CLK_TCK` (100 on every Linux this runs on).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A plain HTTP GET on 127.0.0.1: status code and body. HTTP/1.0, so that any server (the
/// gateway's, Prometheus's) answers with the whole body, not chunks, and then closes.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (code, body)
}

/// The gateway's `/metrics`, parsed.
pub fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition")
}

/// The value of metric `name` (with `label` if given; summed over every label set when no
/// label is given). Panics when no such sample exists, so a renamed metric fails the test.
pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} {label:?}: {other:?}"),
        })
        .collect();
    assert!(!values.is_empty(), "no sample of {name} {label:?}");
    values.iter().sum()
}

/// The sum of every sample of counter `name`, 0 before the first one appears (per-label
/// counters have no sample until their first event).
pub fn metric_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}
