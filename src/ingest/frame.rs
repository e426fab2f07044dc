//! Framing of a serial byte stream, with no I/O: [`LineSplitter`] cuts the stream into lines
//! and [`Decoder`] turns one line into a JSON document (`json-lines`) or builds one from
//! comma-separated values and declared column types (`csv`).
//!
//! Lines end with `\n`; a `\r` before it is dropped, so `\r\n` (Arduino's `Serial.println`)
//! works too. Empty and whitespace-only lines are skipped. A line longer than the limit is never
//! held in memory whole: its first `max` bytes are kept, the rest is only counted up to the next
//! `\n`, where framing resumes (resync). Whatever is buffered when the device goes away is
//! returned by [`LineSplitter::finish`], so no byte that entered disappears unaccounted.

use bytes::Bytes;
use serde_json::{Map, Number, Value};

use crate::config::{Column, ColumnType, SerialConfig, SerialFormat};
use crate::record::{Reason, Violation};

/// One framed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line within the limit, without its `\r\n` or `\n`.
    Complete(Bytes),
    /// A line over the limit: its first `max` bytes and its whole length (without terminator).
    TooLong {
        /// The line's first `max` bytes.
        head: Bytes,
        /// The line's length in bytes.
        len: u64,
    },
}

/// Cuts a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    /// At most `max + 1` bytes of the current line (room for a `\r` before the `\n`).
    buf: Vec<u8>,
    /// Bytes of the current line seen so far, including those not kept.
    len: u64,
    /// Whether the last byte seen was `\r`.
    last_cr: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            buf: Vec::with_capacity(max.min(64 << 10) + 1),
            len: 0,
            last_cr: false,
        }
    }

    /// Feeds `data`, calling `emit` for every line it completes, in order.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Line)) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            self.take(&data[..end]);
            if let Some(line) = self.end_line() {
                emit(line);
            }
            data = &data[end + 1..];
        }
        self.take(data);
    }

    /// The unterminated rest of the stream (the device went away mid-line), if any; the
    /// splitter starts afresh.
    pub fn finish(&mut self) -> Option<Line> {
        self.end_line()
    }

    /// Whether part of a line is buffered.
    pub fn is_mid_line(&self) -> bool {
        self.len > 0
    }

    fn take(&mut self, part: &[u8]) {
        let Some(&last) = part.last() else { return };
        let room = (self.max + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&part[..part.len().min(room)]);
        self.len += part.len() as u64;
        self.last_cr = last == b'\r';
    }

    fn end_line(&mut self) -> Option<Line> {
        let content = self.len - u64::from(self.last_cr);
        let line = if content > self.max as u64 {
            Some(Line::TooLong {
                head: Bytes::copy_from_slice(&self.buf[..self.max]),
                len: content,
            })
        } else {
            // content <= max, so the buffer holds the whole line.
            let text = &self.buf[..content as usize];
            if text.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(Line::Complete(Bytes::copy_from_slice(text)))
            }
        };
        self.buf.clear();
        self.len = 0;
        self.last_cr = false;
        line
    }
}

/// Why a line could not be made into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `not-json` or `bad-csv`.
    pub reason: Reason,
    /// What is wrong; for CSV, one entry per bad column (`instance_path` = `/<column>`).
    pub errors: Vec<Violation>,
}

impl Rejected {
    fn whole(reason: Reason, message: String) -> Self {
        Self {
            reason,
            errors: vec![Violation::whole(message)],
        }
    }
}

/// Turns a line into a JSON document.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// The line is one JSON document.
    JsonLines,
    /// The line is comma-separated values in these columns; the document is an object.
    Csv(Vec<Column>),
}

impl Decoder {
    /// The decoder a serial source declares, or what is wrong with its columns.
    pub fn for_source(config: &SerialConfig) -> Result<Self, String> {
        match config.format {
            SerialFormat::JsonLines => Ok(Self::JsonLines),
            SerialFormat::Csv => config.csv_columns().map(Self::Csv).map_err(|errors| {
                errors
                    .iter()
                    .map(|(i, e)| format!("[{i}] {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        }
    }

    /// Whether the document is built from the line rather than being the line itself.
    pub fn converts(&self) -> bool {
        matches!(self, Self::Csv(_))
    }

    /// The line's document. Lines that are not UTF-8 are `not-json` in either format.
    pub fn decode(&self, line: &[u8]) -> Result<Value, Rejected> {
        let text = std::str::from_utf8(line)
            .map_err(|e| Rejected::whole(Reason::NotJson, format!("line is not UTF-8: {e}")))?;
        match self {
            Self::JsonLines => serde_json::from_str(text)
                .map_err(|e| Rejected::whole(Reason::NotJson, format!("line is not JSON: {e}"))),
            Self::Csv(columns) => decode_csv(text, columns),
        }
    }
}

fn decode_csv(text: &str, columns: &[Column]) -> Result<Value, Rejected> {
    let fields = split_csv(text).map_err(|e| Rejected::whole(Reason::BadCsv, e))?;
    if fields.len() != columns.len() {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        return Err(Rejected::whole(
            Reason::BadCsv,
            format!(
                "expected {} values ({}), found {}",
                columns.len(),
                names.join(", "),
                fields.len()
            ),
        ));
    }
    let mut object = Map::with_capacity(columns.len());
    let mut errors = Vec::new();
    for (column, field) in columns.iter().zip(fields) {
        match convert(&field, column.kind) {
            Ok(value) => {
                object.insert(column.name.clone(), value);
            }
            Err(message) => errors.push(Violation::new(
                format!("/{}", column.name.replace('~', "~0").replace('/', "~1")),
                String::new(),
                message,
            )),
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(object))
    } else {
        Err(Rejected {
            reason: Reason::BadCsv,
            errors: Violation::bounded(errors.into_iter().map(|v| move || v)),
        })
    }
}

fn convert(field: &str, kind: ColumnType) -> Result<Value, String> {
    match kind {
        ColumnType::String => Ok(Value::String(field.to_owned())),
        ColumnType::Integer => integer(field).ok_or_else(|| format!("`{field}` is not an integer")),
        ColumnType::Number => integer(field)
            .or_else(|| {
                field
                    .parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
            })
            .ok_or_else(|| format!("`{field}` is not a finite number")),
        ColumnType::Bool => match field.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{field}` is not a bool (true, false, 1 or 0)")),
        },
    }
}

fn integer(field: &str) -> Option<Value> {
    field
        .parse::<i64>()
        .map(Value::from)
        .or_else(|_| field.parse::<u64>().map(Value::from))
        .ok()
}

/// Splits one CSV record: fields separated by `,`; spaces and tabs around a field are dropped;
/// a field may be wrapped in `"…"`, inside which `,` is literal and `""` is a quote.
fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(format!("unterminated quote in value {}", fields.len() + 1))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while matches!(chars.peek(), Some(' ' | '\t')) {
                chars.next();
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(format!(
                    "unexpected text after the closing quote of value {}",
                    fields.len() + 1
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
            field.truncate(field.trim_end_matches([' ', '\t']).len());
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Line>, Option<Line>) {
        let mut splitter = LineSplitter::new(max);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |l| lines.push(l));
        }
        (lines, splitter.finish())
    }

    fn complete(text: &[u8]) -> Line {
        Line::Complete(Bytes::copy_from_slice(text))
    }

    #[test]
    fn lines_end_with_lf_or_crlf_and_blank_lines_are_skipped() {
        let (lines, rest) = split(64, &[b"a\nb\r\n\r\n  \n\nc\n"]);
        assert_eq!(lines, [complete(b"a"), complete(b"b"), complete(b"c")]);
        assert_eq!(rest, None);
    }

    #[test]
    fn lines_are_reassembled_across_reads_byte_by_byte() {
        let stream = b"{\"a\":1}\r\n{\"b\":2}\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (lines, rest) = split(64, &chunks);
        assert_eq!(lines, [complete(b"{\"a\":1}"), complete(b"{\"b\":2}")]);
        assert_eq!(rest, None);
    }

    #[test]
    fn an_over_long_line_keeps_its_head_and_length_and_framing_resyncs() {
        let long = [b'x'; 20];
        for chunking in [1, 3, 7, 100] {
            let mut stream = b"ok\n".to_vec();
            stream.extend_from_slice(&long);
            stream.extend_from_slice(b"\r\nnext\n");
            let chunks: Vec<&[u8]> = stream.chunks(chunking).collect();
            let (lines, rest) = split(8, &chunks);
            assert_eq!(
                lines,
                [
                    complete(b"ok"),
                    Line::TooLong {
                        head: Bytes::from_static(b"xxxxxxxx"),
                        len: 20
                    },
                    complete(b"next"),
                ],
                "chunks of {chunking}"
            );
            assert_eq!(rest, None);
        }
    }

    #[test]
    fn the_limit_is_on_the_content_not_the_terminator() {
        let (lines, _) = split(4, &[b"abcd\r\nabcd\nabcde\n"]);
        assert_eq!(
            lines,
            [
                complete(b"abcd"),
                complete(b"abcd"),
                Line::TooLong {
                    head: Bytes::from_static(b"abcd"),
                    len: 5
                }
            ]
        );
        // A `\r` inside the line still counts.
        let (lines, _) = split(4, &[b"abc\rd\n"]);
        assert!(matches!(lines[0], Line::TooLong { len: 5, .. }));
    }

    #[test]
    fn the_unterminated_rest_is_returned_by_finish() {
        let mut splitter = LineSplitter::new(16);
        let mut lines = Vec::new();
        splitter.push(b"{\"a\":1}\n{\"b\"", |l| lines.push(l));
        assert!(splitter.is_mid_line());
        assert_eq!(splitter.finish(), Some(complete(b"{\"b\"")));
        assert!(!splitter.is_mid_line());
        assert_eq!(splitter.finish(), None);
        splitter.push(&[b'y'; 40], |l| lines.push(l));
        assert_eq!(
            splitter.finish(),
            Some(Line::TooLong {
                head: Bytes::from_static(&[b'y'; 16]),
                len: 40
            })
        );
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn json_lines_decode_or_are_not_json() {
        let d = Decoder::JsonLines;
        assert_eq!(d.decode(br#"{"t": 1}"#).unwrap(), json!({"t": 1}));
        let bad = d.decode(br#"{"t": "#).unwrap_err();
        assert_eq!(bad.reason, Reason::NotJson);
        assert!(bad.errors[0].message.contains("not JSON"), "{bad:?}");
        let bad = d.decode(b"\xff\xfe{}").unwrap_err();
        assert_eq!(bad.reason, Reason::NotJson);
        assert!(bad.errors[0].message.contains("not UTF-8"), "{bad:?}");
    }

    fn columns(specs: &[&str]) -> Vec<Column> {
        specs.iter().map(|s| Column::parse(s).unwrap()).collect()
    }

    #[test]
    fn csv_lines_become_typed_objects_in_column_order() {
        let d = Decoder::Csv(columns(&[
            "device_id:string",
            "temperature_c:number",
            "humidity_pct:integer",
            "door_open:bool",
        ]));
        let doc = d.decode(b"kitchen,21.5,40,1").unwrap();
        assert_eq!(
            doc,
            json!({"device_id": "kitchen", "temperature_c": 21.5, "humidity_pct": 40, "door_open": true})
        );
        assert_eq!(
            doc.to_string(),
            r#"{"device_id":"kitchen","temperature_c":21.5,"humidity_pct":40,"door_open":true}"#,
            "keys keep the column order"
        );
        let doc = d.decode(b" \"hall, upstairs\" , -3 , -7, FALSE").unwrap();
        assert_eq!(
            doc,
            json!({"device_id": "hall, upstairs", "temperature_c": -3, "humidity_pct": -7, "door_open": false})
        );
        let doc = d.decode(br#""say ""hi""",1e2,0,true"#).unwrap();
        assert_eq!(doc["device_id"], "say \"hi\"");
        assert_eq!(doc["temperature_c"], 100.0);
    }

    #[test]
    fn bad_csv_reports_every_bad_column_or_the_shape() {
        let d = Decoder::Csv(columns(&["id:string", "t:number", "n:integer", "b:bool"]));
        let bad = d.decode(b"k,warm,4.5,maybe").unwrap_err();
        assert_eq!(bad.reason, Reason::BadCsv);
        let paths: Vec<&str> = bad
            .errors
            .iter()
            .map(|e| e.instance_path.as_str())
            .collect();
        assert_eq!(paths, ["/t", "/n", "/b"]);
        assert!(bad.errors[0].message.contains("`warm`"));

        let bad = d.decode(b"k,1,2").unwrap_err();
        assert_eq!(bad.reason, Reason::BadCsv);
        assert!(
            bad.errors[0].message.contains("expected 4 values"),
            "{bad:?}"
        );
        assert_eq!(d.decode(b"k,nan,1,1").unwrap_err().reason, Reason::BadCsv);
        assert_eq!(d.decode(b"k,,1,1").unwrap_err().reason, Reason::BadCsv);
        assert_eq!(
            d.decode(b"\"k,1,2,1").unwrap_err().reason,
            Reason::BadCsv,
            "unterminated quote"
        );
        assert_eq!(
            d.decode(b"\"k\"x,1,2,1").unwrap_err().reason,
            Reason::BadCsv
        );
        assert_eq!(d.decode(b"k,1,2,\xff").unwrap_err().reason, Reason::NotJson);
    }
}
