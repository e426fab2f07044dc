//! `sensorgate validate --schema FILE [FILE…|-]`: validates JSON documents the way the gateway
//! does and prints every violation. Standard input (`-`, or no file) may hold one document or
//! one document per line.

use std::io::{Read, Write};
use std::path::Path;

use super::Status;
use crate::validate::{compile_file, violations};

/// Validates each input against `schema`; 0 when all are valid, 1 when any is not, 2 when the
/// schema itself is unusable.
pub fn run(schema: &Path, inputs: &[String], out: &mut dyn Write) -> std::io::Result<Status> {
    let dir = schema
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let schema_path = dir.join(schema.file_name().unwrap_or_default());
    let validator = match compile_file(&dir, &schema_path) {
        Ok(v) => v,
        Err(e) => {
            writeln!(out, "{e}")?;
            return Ok(Status::Usage);
        }
    };
    let stdin = ["-".to_owned()];
    let inputs = if inputs.is_empty() {
        &stdin[..]
    } else {
        inputs
    };
    let mut all_valid = true;
    for input in inputs {
        let (name, bytes) = if input == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            ("<stdin>".to_owned(), buf)
        } else {
            match std::fs::read(input) {
                Ok(b) => (input.clone(), b),
                Err(e) => {
                    writeln!(out, "{input}: cannot read: {e}")?;
                    all_valid = false;
                    continue;
                }
            }
        };
        let documents: Vec<(String, Result<serde_json::Value, String>)> =
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(doc) => vec![(name.clone(), Ok(doc))],
                // Not one document: try one per line (JSON Lines).
                Err(whole) => {
                    let lines: Vec<_> = bytes
                        .split(|b| *b == b'\n')
                        .enumerate()
                        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                        .map(|(i, l)| {
                            (
                                format!("{name}:{}", i + 1),
                                serde_json::from_slice(l).map_err(|e| e.to_string()),
                            )
                        })
                        .collect();
                    if lines.len() > 1 {
                        lines
                    } else {
                        vec![(name.clone(), Err(whole.to_string()))]
                    }
                }
            };
        for (label, doc) in documents {
            match doc {
                Err(e) => {
                    all_valid = false;
                    writeln!(out, "{label}: not JSON: {e}")?;
                }
                Ok(doc) => {
                    let errors = violations(&validator, &doc);
                    if errors.is_empty() {
                        writeln!(out, "{label}: valid")?;
                    } else {
                        all_valid = false;
                        for v in errors {
                            let at = if v.instance_path.is_empty() {
                                "/"
                            } else {
                                &v.instance_path
                            };
                            writeln!(
                                out,
                                "{label}: {at}: {} (schema {})",
                                v.message, v.schema_path
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(if all_valid {
        Status::Ok
    } else {
        Status::CheckFailed
    })
}
