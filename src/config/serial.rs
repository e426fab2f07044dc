//! `[[serial]]`: one serial port per entry (line settings, framing, limits), and the CSV column
//! declarations ([`Column`]) that `check-config` and the serial source parse with the same code.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::units::{self, ByteSize};
use super::Problem;

/// Parity checking of a serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (default).
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control of a serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None (default).
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// How a serial source frames its byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SerialFormat {
    /// One JSON document per line (default).
    JsonLines,
    /// Comma-separated values in the declared `columns`, turned into a JSON object.
    Csv,
}

impl SerialFormat {
    /// The name used in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JsonLines => "json-lines",
            Self::Csv => "csv",
        }
    }
}

/// `[[serial]]`: one serial port, one reading per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Source name that routes refer to.
    pub name: String,
    /// Device path, e.g. `/dev/serial/by-id/…` (survives re-plugging) or `/dev/ttyUSB0`.
    pub device: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits, 5 to 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default = "default_flow_control")]
    pub flow_control: FlowControl,
    /// Framing of the byte stream: `json-lines` or `csv`.
    #[serde(default = "default_serial_format")]
    pub format: SerialFormat,
    /// For `csv`: the columns in order, each `"name:type"` with type `string`, `integer`,
    /// `number` or `bool`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Longer lines become `frame-too-long` dead letters (stored truncated to this size).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// Longest wait between attempts to reopen the device.
    #[serde(default = "default_serial_reconnect_max", with = "units::duration")]
    pub reconnect_max: Duration,
}

impl SerialConfig {
    /// The declared CSV columns, or every declaration that does not parse (with its index).
    pub fn csv_columns(&self) -> Result<Vec<Column>, Vec<(usize, ColumnError)>> {
        let mut columns = Vec::with_capacity(self.columns.len());
        let mut errors = Vec::new();
        for (i, spec) in self.columns.iter().enumerate() {
            match Column::parse(spec) {
                Ok(column) => columns.push(column),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(columns)
        } else {
            Err(errors)
        }
    }

    /// Every problem of this source on its own, keyed relative to it (`device`, `columns[2]`,
    /// …); names shared with other sources are found by [`super::Config::problems`].
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut p = |key: String, message: String| problems.push(Problem::new(key, message));
        match self.device.to_str() {
            None => p("device".into(), "must be valid UTF-8".into()),
            Some(device) if !device.starts_with('/') => p(
                "device".into(),
                format!("`{device}` is not an absolute path (e.g. \"/dev/ttyUSB0\")"),
            ),
            Some(_) => {}
        }
        if self.baud == 0 {
            p("baud".into(), "must be greater than zero".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            p(
                "data_bits".into(),
                format!("{} is not 5, 6, 7 or 8", self.data_bits),
            );
        }
        if !(1..=2).contains(&self.stop_bits) {
            p(
                "stop_bits".into(),
                format!("{} is not 1 or 2", self.stop_bits),
            );
        }
        match (self.format, self.csv_columns()) {
            (SerialFormat::JsonLines, _) if !self.columns.is_empty() => {
                p("columns".into(), "applies to format = \"csv\" only".into())
            }
            (SerialFormat::Csv, Ok(columns)) => {
                if columns.is_empty() {
                    p(
                        "columns".into(),
                        "format = \"csv\" needs the columns in order, e.g. [\"device_id:string\", \"temperature_c:number\"]".into(),
                    );
                }
                let mut seen = HashSet::new();
                for (j, column) in columns.iter().enumerate() {
                    if !seen.insert(column.name.as_str()) {
                        p(
                            format!("columns[{j}]"),
                            format!("column `{}` is declared twice", column.name),
                        );
                    }
                }
            }
            (SerialFormat::Csv, Err(errors)) => {
                for (j, e) in errors {
                    p(format!("columns[{j}]"), e.to_string());
                }
            }
            (SerialFormat::JsonLines, _) => {}
        }
        if self.max_line_bytes.bytes() == 0 || self.max_line_bytes.bytes() > SERIAL_MAX_LINE_LIMIT {
            p(
                "max_line_bytes".into(),
                "must be between 1B and 1MiB".into(),
            );
        }
        if self.reconnect_max < SERIAL_RECONNECT_MIN {
            p("reconnect_max".into(), "must be at least 100ms".into());
        }
        problems
    }
}

const fn default_baud() -> u32 {
    115_200
}
const fn default_data_bits() -> u8 {
    8
}
const fn default_parity() -> Parity {
    Parity::None
}
const fn default_stop_bits() -> u8 {
    1
}
const fn default_flow_control() -> FlowControl {
    FlowControl::None
}
const fn default_serial_format() -> SerialFormat {
    SerialFormat::JsonLines
}
const fn default_max_line_bytes() -> ByteSize {
    ByteSize(4096)
}
const fn default_serial_reconnect_max() -> Duration {
    Duration::from_secs(5)
}

/// The largest `max_line_bytes` accepted.
pub const SERIAL_MAX_LINE_LIMIT: u64 = 1 << 20;
/// The shortest `reconnect_max` accepted (and the first delay before reopening a device).
pub const SERIAL_RECONNECT_MIN: Duration = Duration::from_millis(100);

/// The type of a CSV column, which decides its JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Text as it is (surrounding spaces trimmed).
    String,
    /// A whole number (`-3`, `40`).
    Integer,
    /// Any finite number (`21.5`, `40`, `1e3`); whole numbers stay integers in JSON.
    Number,
    /// `true`/`false` (any case) or `1`/`0`.
    Bool,
}

impl ColumnType {
    /// Every type's name, for messages.
    pub const NAMES: &'static str = "string, integer, number, bool";

    fn parse(text: &str) -> Option<Self> {
        match text {
            "string" => Some(Self::String),
            "integer" => Some(Self::Integer),
            "number" => Some(Self::Number),
            "bool" => Some(Self::Bool),
            _ => None,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Bool => "bool",
        }
    }
}

/// One declared CSV column, written `"name:type"` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The key in the JSON object.
    pub name: String,
    /// How the value is converted.
    pub kind: ColumnType,
}

/// A malformed column declaration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ColumnError {
    /// No `:type` part.
    #[error("`{0}` has no type; write \"{0}:number\" (types: {types})", types = ColumnType::NAMES)]
    MissingType(String),
    /// The part after `:` is not a type.
    #[error("`{spec}`: unknown type `{kind}` (types: {types})", types = ColumnType::NAMES)]
    UnknownType {
        /// The declaration.
        spec: String,
        /// The unknown type.
        kind: String,
    },
    /// Nothing before `:`.
    #[error("`{0}`: the column name is empty")]
    EmptyName(String),
}

impl Column {
    /// Parses `"name:type"`, e.g. `"temperature_c:number"`.
    pub fn parse(spec: &str) -> Result<Self, ColumnError> {
        let (name, kind) = spec
            .rsplit_once(':')
            .ok_or_else(|| ColumnError::MissingType(spec.trim().to_owned()))?;
        let (name, kind) = (name.trim(), kind.trim());
        if name.is_empty() {
            return Err(ColumnError::EmptyName(spec.to_owned()));
        }
        let kind = ColumnType::parse(kind).ok_or_else(|| ColumnError::UnknownType {
            spec: spec.to_owned(),
            kind: kind.to_owned(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_declarations_parse_or_say_what_is_wrong() {
        assert_eq!(
            Column::parse("temperature_c:number").unwrap(),
            Column {
                name: "temperature_c".into(),
                kind: ColumnType::Number
            }
        );
        assert_eq!(Column::parse(" a : bool ").unwrap().to_string(), "a:bool");
        assert!(matches!(
            Column::parse("t"),
            Err(ColumnError::MissingType(_))
        ));
        let err = Column::parse("t:float").unwrap_err();
        assert!(err.to_string().contains("unknown type `float`"), "{err}");
        assert!(matches!(
            Column::parse(":string"),
            Err(ColumnError::EmptyName(_))
        ));
    }
}
