//! `sensorgate check-config`: parse the configuration, compile every schema a route names, and
//! report every problem with its file and key.

use std::io::Write;
use std::path::Path;

use super::Status;
use crate::config::Config;
use crate::pipeline::{Rules, RulesError};

/// Checks `path`, writing problems to `out`; 0 when clean, 1 otherwise.
pub fn run(path: &Path, out: &mut dyn Write) -> std::io::Result<Status> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            writeln!(out, "{e}")?;
            return Ok(Status::CheckFailed);
        }
    };
    let mut failed = false;
    for problem in config.problems() {
        writeln!(out, "{}: {problem}", path.display())?;
        failed = true;
    }
    match Rules::build(&config) {
        Ok(_) => {}
        Err(RulesError::Schemas(errors)) => {
            for error in errors {
                writeln!(out, "{}: route schema: {error}", path.display())?;
            }
            failed = true;
        }
        // Filter errors are already among the problems above.
        Err(RulesError::Filter(_)) => failed = true,
    }
    if failed {
        Ok(Status::CheckFailed)
    } else {
        writeln!(
            out,
            "{}: OK ({} MQTT source(s), {} serial source(s), {} route(s))",
            path.display(),
            config.mqtt.len(),
            config.serial.len(),
            config.routes.len()
        )?;
        Ok(Status::Ok)
    }
}
