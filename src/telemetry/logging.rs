//! Logging set-up: to the journal with structured fields (SOURCE, TOPIC, REASON, …: every
//! tracing field, upper-cased) when systemd connected our stderr to it, otherwise human-readable
//! to stderr, with colours only when stderr is a terminal. The level comes from `RUST_LOG` when
//! set, else from `gateway.log_level`.
//!
//! We use `tracing-journald` rather than a `log`-crate journal logger because our events carry
//! their values as tracing fields, which it sends as journal fields instead of flattening them
//! into the message.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Whether stderr is the journal stream systemd gave us (`JOURNAL_STREAM=<dev>:<inode>`).
pub fn connected_to_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// Installs the global subscriber. `level` is the configured default (e.g. "info").
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if connected_to_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let journald = journald
                    .with_field_prefix(None)
                    .with_syslog_identifier("sensorgate".to_owned());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("sensorgate: cannot reach the journal ({e}); logging to stderr"),
        }
    }
    // Escape sequences belong on a terminal, not in a file or a pipe.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
