//! The schema registry: JSON Schema files (drafts 7, 2019-09 and 2020-12, detected from
//! `$schema`, 2020-12 when absent) loaded from `schemas_dir` and compiled once, at start and on
//! reload. A `$ref` to another file ("common.json#/$defs/id") is resolved inside `schemas_dir`
//! only; nothing is fetched from the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;
use thiserror::Error;

use crate::record::Violation;

/// Base URI given to schemas without an `$id`, so relative references resolve to files.
const BASE: &str = "json-schema:///";

/// Why a schema could not be used.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("{path}: cannot read schema: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: schema is not valid JSON: {message}")]
    NotJson {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// The schema does not compile (bad keyword value, unresolvable `$ref`, …).
    #[error("{path}: schema does not compile: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// Compiler message.
        message: String,
    },
}

/// Compiled schemas by file name.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    dir: PathBuf,
    validators: BTreeMap<String, Arc<Validator>>,
}

impl SchemaRegistry {
    /// Compiles every named schema from `dir`, reporting every failure.
    pub fn load<'a>(
        dir: &Path,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, Vec<SchemaError>> {
        let mut validators = BTreeMap::new();
        let mut errors = Vec::new();
        for name in names {
            if validators.contains_key(name) {
                continue;
            }
            match compile_file(dir, &dir.join(name)) {
                Ok(v) => {
                    validators.insert(name.to_owned(), Arc::new(v));
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                dir: dir.to_owned(),
                validators,
            })
        } else {
            Err(errors)
        }
    }

    /// The compiled schema for a file name.
    pub fn get(&self, name: &str) -> Option<&Arc<Validator>> {
        self.validators.get(name)
    }

    /// The directory the schemas came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads and compiles one schema file; `$ref`s to other files resolve inside `dir`.
pub fn compile_file(dir: &Path, path: &Path) -> Result<Validator, SchemaError> {
    let text = std::fs::read(path).map_err(|source| SchemaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut schema: Value = serde_json::from_slice(&text).map_err(|e| SchemaError::NotJson {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // Give the root a file URI so that relative references resolve to sibling files.
    if let (Value::Object(map), Ok(relative)) = (&mut schema, path.strip_prefix(dir)) {
        if !map.contains_key("$id") {
            let id = format!("{BASE}{}", relative.to_string_lossy());
            map.insert("$id".to_owned(), Value::String(id));
        }
    }
    jsonschema::options()
        .with_retriever(LocalFiles {
            dir: dir.to_owned(),
        })
        .build(&schema)
        .map_err(|e| SchemaError::Compile {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// The violations of `instance` against `validator`, in the validator's order, bounded by
/// [`Violation::bounded`]: the first ones with their texts cut, then the total count.
pub fn violations(validator: &Validator, instance: &Value) -> Vec<Violation> {
    // The fast check first: collecting errors walks the whole schema and allocates.
    if validator.is_valid(instance) {
        return Vec::new();
    }
    Violation::bounded(validator.iter_errors(instance).map(|e| {
        move || {
            Violation::new(
                e.instance_path.to_string(),
                e.schema_path.to_string(),
                e.to_string(),
            )
        }
    }))
}

/// Resolves `json-schema:///name.json` and `file:` URIs to files inside the schemas directory.
#[derive(Debug)]
struct LocalFiles {
    dir: PathBuf,
}

impl Retrieve for LocalFiles {
    fn retrieve(&self, uri: &Uri<&str>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let scheme = uri.scheme().as_str();
        let path = uri.path().as_str();
        let file = match scheme {
            "json-schema" => self.dir.join(path.trim_start_matches('/')),
            "file" => PathBuf::from(path),
            _ => {
                return Err(format!(
                "cannot resolve `{uri}`: only files inside the schemas directory can be referenced"
            )
                .into())
            }
        };
        if file
            .components()
            .any(|c| c == std::path::Component::ParentDir)
            || !file.starts_with(&self.dir)
        {
            return Err(format!("`{uri}` is outside the schemas directory").into());
        }
        let text = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", file.display()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, value: &Value) {
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }

    #[test]
    fn refs_between_files_resolve_and_violations_carry_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "common.json",
            &json!({"$defs": {"id": {"type": "string", "minLength": 3}}}),
        );
        write(
            dir.path(),
            "reading.json",
            &json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "required": ["device_id", "t"],
                "properties": {"device_id": {"$ref": "common.json#/$defs/id"}, "t": {"type": "number"}}
            }),
        );
        let registry = SchemaRegistry::load(dir.path(), ["reading.json"]).unwrap();
        let v = registry.get("reading.json").unwrap();
        assert!(violations(v, &json!({"device_id": "abc", "t": 1.5})).is_empty());
        let errors = violations(v, &json!({"device_id": "a", "t": "hot"}));
        let paths: Vec<&str> = errors.iter().map(|e| e.instance_path.as_str()).collect();
        assert!(
            paths.contains(&"/device_id") && paths.contains(&"/t"),
            "{errors:?}"
        );
        assert!(errors
            .iter()
            .all(|e| !e.schema_path.is_empty() && !e.message.is_empty()));
    }

    #[test]
    fn a_small_hostile_document_makes_bounded_violations() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ints.json",
            &json!({"type": "array", "items": {"type": "integer"}}),
        );
        let registry = SchemaRegistry::load(dir.path(), ["ints.json"]).unwrap();
        let v = registry.get("ints.json").unwrap();
        // 1,000 wrong items, each quoted whole in its message by the validator.
        let long = "x".repeat(10_000);
        let doc = Value::Array(vec![Value::String(long); 1000]);
        let errors = violations(v, &doc);
        assert_eq!(errors.len(), 21, "the first 20 and the count");
        assert_eq!(errors[0].instance_path, "/0");
        assert!(errors[20].message.starts_with("1000 violations in all"));
        for e in &errors {
            assert!(e.message.len() <= 256, "{} bytes", e.message.len());
            assert!(e.instance_path.len() <= 256 && e.schema_path.len() <= 256);
        }
        assert!(errors[0].message.ends_with('…'));
        let json = serde_json::to_string(&errors).unwrap();
        assert!(json.len() < 16 << 10, "{} bytes of metadata", json.len());
    }

    #[test]
    fn every_bad_schema_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.json"), b"{ not json").unwrap();
        write(dir.path(), "badtype.json", &json!({"type": "thing"}));
        write(dir.path(), "badref.json", &json!({"$ref": "missing.json"}));
        // Only the meta-schema says these are wrong (a title must be a string), in two drafts.
        write(dir.path(), "badtitle.json", &json!({"title": 5}));
        write(
            dir.path(),
            "badtitle7.json",
            &json!({"$schema": "http://json-schema.org/draft-07/schema#", "title": 5}),
        );
        write(
            dir.path(),
            "good7.json",
            &json!({"$schema": "http://json-schema.org/draft-07/schema#", "title": "t"}),
        );
        let errors = SchemaRegistry::load(
            dir.path(),
            [
                "broken.json",
                "badtype.json",
                "badref.json",
                "absent.json",
                "badtitle.json",
                "badtitle7.json",
                "good7.json",
            ],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        for (i, file) in [(4, "badtitle.json"), (5, "badtitle7.json")] {
            assert!(
                matches!(&errors[i], SchemaError::Compile { path, .. } if path.ends_with(file)),
                "{errors:?}"
            );
        }
        assert!(
            matches!(&errors[0], SchemaError::NotJson { path, .. } if path.ends_with("broken.json"))
        );
        assert!(matches!(&errors[1], SchemaError::Compile { .. }));
        assert!(matches!(&errors[2], SchemaError::Compile { .. }));
        assert!(matches!(&errors[3], SchemaError::Read { .. }));
    }
}
