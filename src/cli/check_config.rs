//! `sensorgate check-config`: parse the configuration, compile every schema a route names, and
//! report every problem with its file and key. Exit 0 when clean, 1 when a check failed, 2 when
//! the file cannot be read or parsed.

use std::io::Write;
use std::path::Path;

use super::Status;
use crate::config::Config;
use crate::validate::SchemaRegistry;

/// Checks `path`, writing problems to `out`.
pub fn run(path: &Path, out: &mut dyn Write) -> std::io::Result<Status> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            writeln!(out, "{e}")?;
            return Ok(Status::Usage);
        }
    };
    let mut failed = false;
    for problem in config.problems() {
        writeln!(out, "{}: {problem}", path.display())?;
        failed = true;
    }
    // Compile every schema a route names, even when other problems were found.
    let names = config.routes.iter().map(|r| r.schema.as_str());
    if let Err(errors) = SchemaRegistry::load(&config.gateway.schemas_dir, names) {
        for error in errors {
            writeln!(out, "{}: route schema: {error}", path.display())?;
        }
        failed = true;
    }
    // The downlinks' schemas too.
    let names = config.downlinks.iter().filter_map(|d| d.schema.as_deref());
    if let Err(errors) = SchemaRegistry::load(&config.gateway.schemas_dir, names) {
        for error in errors {
            writeln!(out, "{}: downlink schema: {error}", path.display())?;
        }
        failed = true;
    }
    // Settings that weaken TLS are allowed (a test bench may need them) but said loudly.
    for warning in config.kafka.security_warnings() {
        writeln!(out, "{}: WARNING: {warning}", path.display())?;
    }
    // librdkafka validates property names and values when a client is created (no connection).
    if let Err(e) = crate::publish::kafka::producer_config_check(&config) {
        writeln!(out, "{}: kafka: {e}", path.display())?;
        failed = true;
    }
    if failed {
        Ok(Status::CheckFailed)
    } else {
        writeln!(
            out,
            "{}: OK ({} MQTT source(s), {} serial source(s), {} route(s), {} downlink(s))",
            path.display(),
            config.mqtt.len(),
            config.serial.len(),
            config.routes.len(),
            config.downlinks.len()
        )?;
        Ok(Status::Ok)
    }
}
