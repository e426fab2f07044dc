//! `[gateway]`: the gateway's identity, its directories, its log filter and its admin socket.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Identifies this gateway in headers and dead letters; defaults to the host name.
    #[serde(default = "default_gateway_id")]
    pub id: String,
    /// Holds the outbox and the local dead-letter store.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Holds the JSON Schema files that routes name.
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// Log filter when `RUST_LOG` is not set, e.g. "info" or "sensorgate=debug,info".
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The admin API's Unix socket (`sensorgate dlq`, `sensorgate queue` talk to a running
    /// daemon through it); default `<state_dir>/admin.sock`. Created with mode 0660, owned by the
    /// user and group the daemon runs as.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
}

impl GatewayConfig {
    /// The admin socket's path: `admin_socket`, or `<state_dir>/admin.sock`.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"))
    }

    /// Every problem in this section, keyed relative to it (`id`, `log_level`).
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.id.trim().is_empty() {
            problems.push(Problem::new("id", "must not be empty"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            problems.push(Problem::new(
                "log_level",
                format!(
                    "`{}` is not a log filter (e.g. \"info\", \"sensorgate=debug,warn\")",
                    self.log_level
                ),
            ));
        }
        problems
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: default_gateway_id(),
            state_dir: default_state_dir(),
            schemas_dir: default_schemas_dir(),
            log_level: default_log_level(),
            admin_socket: None,
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sensorgate".to_owned())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sensorgate")
}

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("/etc/sensorgate/schemas")
}
