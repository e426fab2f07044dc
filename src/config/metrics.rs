//! `[metrics]`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`.

use serde::Deserialize;

use super::Problem;

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz`, `/readyz`; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl MetricsConfig {
    /// Every problem in this section, keyed relative to it.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(Problem::new(
                "listen",
                format!(
                    "`{}` is not an address:port (e.g. \"127.0.0.1:9898\"; empty disables)",
                    self.listen
                ),
            ));
        }
        problems
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9898".to_owned()
}
