//! Secrets: which names hold one, reading them from files that only the service may read, and
//! redacting their values from every message we print (`***`).
//!
//! A secret file is refused when users other than its owner and group have any access to it
//! (mode `o+r`, `o+w` or `o+x`): the package installs the configuration `0640 root:sensorgate`,
//! and systemd's `LoadCredential=` makes credentials `0400` for the service user, so both pass.
//! Relative names of `[kafka.property_files]` are looked up in `$CREDENTIALS_DIRECTORY` when
//! systemd set it, else next to the configuration file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a secret's value is replaced with.
pub const REDACTED: &str = "***";

/// The environment variable systemd sets for a unit with `LoadCredential=`.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Whether a property or key named `name` holds a secret: one of its words (split at `.`, `_`,
/// `-`) is password, passwd, secret, token, key, jaas or credentials — except a name ending in
/// a word for where the secret is (`ssl.key.location`, `key_file`) and a route's `key`.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
    let words: Vec<&str> = name.split(['.', '_', '-']).collect();
    let Some(last) = words.last() else {
        return false;
    };
    if name == "key" || matches!(*last, "location" | "file" | "dir" | "path") {
        return false;
    }
    // May carry a client secret (unsecured JWS settings).
    if name == "sasl.oauthbearer.config" {
        return true;
    }
    words.iter().any(|w| {
        matches!(
            *w,
            "password" | "passwd" | "secret" | "token" | "key" | "jaas" | "credentials"
        )
    })
}

/// Replaces every occurrence of each of `secrets` (empty ones skipped) in `text` with `***`.
pub fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
    }
    text
}

/// A secret file that cannot be used.
#[derive(Debug, Error)]
pub enum SecretFileError {
    /// It cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Other users may read it.
    #[error(
        "{}: mode {mode:04o} lets other users read this secret; make it readable by the service's user and group only (chmod o-rwx, e.g. 0640 root:sensorgate or 0600)",
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds nothing.
    #[error("{}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Checks that `path` exists and others cannot access it (a symlink is judged by its target).
pub(super) fn check_file(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret: the file's first line (without its line ending), after [`check_file`].
pub fn read_file(path: &Path) -> Result<String, SecretFileError> {
    check_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value = text.lines().next().unwrap_or("").to_owned();
    if value.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(value)
}

/// Reads a whole secret file (a private key) after [`check_file`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    check_file(path)?;
    std::fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Where a relative secret file name is looked up: `$CREDENTIALS_DIRECTORY` when set (systemd
/// `LoadCredential=`), else `config_dir`.
pub(super) fn credentials_base(config_dir: &Path) -> PathBuf {
    match std::env::var_os(CREDENTIALS_DIRECTORY) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => config_dir.to_owned(),
    }
}

/// A TOML parse error as `line L, column C: message`, without toml's quote of the offending
/// line, and with the value redacted from the message when the line's key holds a secret.
pub(super) fn toml_error(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = &text[line_start..line_end];
    // The key (or table header) of the line is named; its value never quoted.
    let (key, message) = match line.split_once('=') {
        Some((key, value)) if is_secret_name(key) => {
            let value = value.trim();
            let unquoted = value.trim_matches(['"', '\'']);
            (Some(key.trim()), redact(message, [value, unquoted]))
        }
        Some((key, _)) => (Some(key.trim()), message.to_owned()),
        None if line.trim_start().starts_with('[') => (Some(line.trim()), message.to_owned()),
        None => (None, message.to_owned()),
    };
    match key {
        Some(key) => format!("line {line_no}, column {column}, at `{key}`: {message}"),
        None => format!("line {line_no}, column {column}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised_and_places_are_not() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.token.endpoint.url",
            "sasl.jaas.config",
            "sasl.oauthbearer.config",
            "api_token",
            "\"sasl.password\"",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "sasl.username",
            "ssl.key.location",
            "key_file",
            "password_file",
            "key",
            "bootstrap.servers",
            "sasl.mechanism",
            "keep_alive",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn redaction_replaces_every_occurrence_longest_first() {
        assert_eq!(
            redact("a hunter2 b hunter2x", ["hunter2", "hunter2x", ""]),
            "a *** b ***"
        );
    }

    #[test]
    fn exposed_and_empty_secret_files_are_refused_naming_file_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_file(&file).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("mode 0644"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_file(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            read_file(&file),
            Err(SecretFileError::Empty { .. })
        ));
    }

    #[test]
    fn toml_errors_drop_the_line_and_redact_secret_values() {
        let text = "[kafka.properties]\n\"sasl.password\" = 12345678\n";
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            kafka: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
        }
        let err = toml::from_str::<T>(text).unwrap_err();
        assert!(err.to_string().contains("12345678"), "toml quotes the line");
        let ours = toml_error(&err, text);
        assert!(
            !ours.contains("12345678") && ours.starts_with("line 2,"),
            "{ours}"
        );
    }
}
