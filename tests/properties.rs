//! Property tests (proptest) of the parsers that take untrusted bytes: serial framing, CSV
//! columns, MQTT topic filters, the outbox's record codec and the admin protocol. Each property
//! holds for any input: no panic, and the parser agrees with a plain model of its contract.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;

use sensorgate::admin::{DeadLetter, Filter, Request, Selection};
use sensorgate::config::{Column, ColumnType, TopicFilter};
use sensorgate::ingest::frame::{Decoder, Line, LineSplitter};
use sensorgate::outbox::codec::{Frame, FrameEncoder};
use sensorgate::record::{DeadLetterInfo, Meta, Origin, Reason, Record, Violation};

// --- Serial framing --------------------------------------------------------------------------

/// Bytes rich in line ends, carriage returns and blanks.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            3 => Just(b'\n'),
            2 => Just(b'\r'),
            2 => Just(b' '),
            8 => any::<u8>(),
        ],
        0..300,
    )
}

/// The framing contract, written plainly: split at `\n`, drop one `\r` before it, skip blank
/// lines, keep the first `max` bytes of a longer line with its length; the unterminated rest is
/// a line too.
fn model_lines(stream: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    for segment in stream.split(|&b| b == b'\n') {
        let content = segment.strip_suffix(b"\r").unwrap_or(segment);
        if content.len() > max {
            out.push(Line::TooLong {
                head: Bytes::copy_from_slice(&content[..max]),
                len: content.len() as u64,
            });
        } else if !content.iter().all(u8::is_ascii_whitespace) {
            out.push(Line::Complete(Bytes::copy_from_slice(content)));
        }
    }
    out
}

proptest! {
    #[test]
    fn serial_lines_follow_the_contract_however_reads_cut_the_stream(
        data in stream(),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
        max in 1usize..48,
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut splitter = LineSplitter::new(max);
        let mut lines = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain([data.len()]) {
            splitter.push(&data[at..p], |l| lines.push(l));
            at = p;
        }
        lines.extend(splitter.finish());
        prop_assert_eq!(lines, model_lines(&data, max));
    }
}

// --- CSV columns -----------------------------------------------------------------------------

fn columns(kinds: &[ColumnType]) -> Vec<Column> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| Column {
            name: format!("c{i}"),
            kind: *kind,
        })
        .collect()
}

fn kind() -> impl Strategy<Value = ColumnType> {
    prop_oneof![
        Just(ColumnType::String),
        Just(ColumnType::Integer),
        Just(ColumnType::Number),
        Just(ColumnType::Bool),
    ]
}

/// `field` as a CSV value: quoted, with quotes doubled.
fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

proptest! {
    #[test]
    fn any_line_is_decoded_or_rejected_with_bounded_errors(
        line in vec(any::<u8>(), 0..200),
        kinds in vec(kind(), 1..6),
    ) {
        match Decoder::Csv(columns(&kinds)).decode(&line) {
            Ok(Value::Object(object)) => prop_assert_eq!(object.len(), kinds.len()),
            Ok(other) => prop_assert!(false, "not an object: {other}"),
            Err(rejected) => {
                prop_assert!(!rejected.errors.is_empty());
                prop_assert!(rejected.errors.len() <= 21);
                prop_assert!(rejected.errors.iter().all(|e| e.message.len() <= 256));
            }
        }
    }

    #[test]
    fn quoted_text_values_come_back_exactly(fields in vec(".{0,20}", 1..6)) {
        let line = fields.iter().map(|f| quoted(f)).collect::<Vec<_>>().join(",");
        let kinds = vec![ColumnType::String; fields.len()];
        let doc = Decoder::Csv(columns(&kinds)).decode(line.as_bytes()).unwrap();
        for (i, field) in fields.iter().enumerate() {
            prop_assert_eq!(&doc[format!("c{i}")], &Value::String(field.clone()));
        }
    }

    #[test]
    fn numbers_and_flags_convert_to_their_json_values(
        n in any::<i64>(),
        x in -1e12f64..1e12,
        b in any::<bool>(),
        spaces in " {0,2}",
    ) {
        let line = format!("{spaces}{n}{spaces},{x:?},{b}");
        let kinds = [ColumnType::Integer, ColumnType::Number, ColumnType::Bool];
        let doc = Decoder::Csv(columns(&kinds)).decode(line.as_bytes()).unwrap();
        prop_assert_eq!(doc["c0"].as_i64(), Some(n));
        let got = doc["c1"].as_f64().unwrap();
        prop_assert!((got - x).abs() <= x.abs() * 1e-15, "{} vs {}", got, x);
        prop_assert_eq!(doc["c2"].as_bool(), Some(b));
    }
}

// --- Topic filters ---------------------------------------------------------------------------

/// Filters and topics over a small alphabet, so that they meet often.
fn levels(wild: bool) -> impl Strategy<Value = String> {
    let level = if wild {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just(""),
            Just("+"),
            Just("#"),
            Just("a+"),
            Just("b#"),
            Just("$s")
        ]
        .boxed()
    } else {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$s")].boxed()
    };
    vec(level, 1..5).prop_map(|l| l.join("/"))
}

/// Whether `filter` is valid: `#` only as the whole last level, `+` only as a whole level.
fn model_valid(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "#" => i == levels.len() - 1,
            "+" => true,
            l => !l.contains('#') && !l.contains('+'),
        })
}

/// MQTT matching, level by level; wildcards at the first level skip `$` topics.
fn model_matches(filter: &str, topic: &str) -> bool {
    fn walk(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => walk(&f[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && walk(&f[1..], &t[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && matches!(f[0], "+" | "#") {
        return false;
    }
    walk(&f, &t)
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused_and_valid_filters_print_as_written(text in ".{0,40}") {
        match TopicFilter::parse(&text) {
            Ok(filter) => prop_assert_eq!(filter.to_string(), text),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn filters_parse_and_match_like_the_mqtt_rules(filter in levels(true), topic in levels(false)) {
        let parsed = TopicFilter::parse(&filter);
        prop_assert_eq!(parsed.is_ok(), model_valid(&filter), "{}", filter);
        if let Ok(parsed) = parsed {
            prop_assert_eq!(
                parsed.matches(&topic),
                model_matches(&filter, &topic),
                "{} against {}",
                filter,
                topic
            );
        }
    }
}

// --- Outbox record codec ---------------------------------------------------------------------

fn reason() -> impl Strategy<Value = Reason> {
    prop::sample::select(Reason::ALL.to_vec())
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        ".{0,30}".prop_map(|topic| Origin::Mqtt { topic }),
        "/dev/tty[A-Z]{1,4}[0-9]".prop_map(|port| Origin::Serial { port }),
        ("[a-z.]{1,20}", 0i32..1000, 0i64..1 << 40).prop_map(|(topic, partition, offset)| {
            Origin::Kafka {
                topic,
                partition,
                offset,
            }
        }),
    ]
}

fn dead_letter() -> impl Strategy<Value = Option<DeadLetterInfo>> {
    prop::option::of(
        (
            reason(),
            vec((".{0,20}", ".{0,40}"), 0..4),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(reason, errors, original_len)| DeadLetterInfo {
                id: 0,
                reason,
                errors: errors
                    .into_iter()
                    .map(|(path, message)| Violation::new(path, "", message))
                    .collect(),
                original_len,
            }),
    )
}

prop_compose! {
    fn record()(
        gateway in "[a-z0-9-]{1,12}",
        source in ".{0,12}",
        origin in origin(),
        received_at_ms in any::<u64>(),
        route in prop::option::of(".{0,12}"),
        schema in prop::option::of("[a-z.0-9]{1,16}"),
        kafka_topic in "[a-z.]{1,20}",
        key in prop::option::of(".{0,40}"),
        dead in dead_letter(),
        payload in vec(any::<u8>(), 0..200),
    ) -> Record {
        Record {
            meta: Meta {
                gateway: gateway.into(),
                source: source.into(),
                origin,
                received_at_ms,
                route: route.map(Into::into),
                schema: schema.map(Into::into),
                kafka_topic: kafka_topic.into(),
                key,
                dead_letter: dead.map(Box::new),
            },
            payload: Bytes::from(payload),
        }
    }
}

fn encode(first_seq: u64, records: &[Record]) -> Vec<u8> {
    let mut enc = FrameEncoder::default();
    enc.begin(first_seq);
    for r in records {
        enc.push(r);
    }
    let mut out = Vec::new();
    enc.finish_into(&mut out);
    out
}

proptest! {
    #[test]
    fn records_come_back_from_a_frame_as_they_went_in(
        first_seq in 0u64..1 << 50,
        records in vec(record(), 1..12),
    ) {
        let bytes = encode(first_seq, &records);
        let frame = Frame::parse(&bytes).unwrap();
        prop_assert_eq!(frame.first_seq, first_seq);
        prop_assert_eq!(frame.count as usize, records.len());
        let back: Vec<(u64, Record)> = frame
            .records()
            .map(|r| r.map(|(seq, r)| (seq, r.to_record(seq))))
            .collect::<Result<_, _>>()
            .unwrap();
        for (i, ((seq, got), want)) in back.iter().zip(&records).enumerate() {
            prop_assert_eq!(*seq, first_seq + i as u64);
            let mut want = want.clone();
            if let Some(d) = &mut want.meta.dead_letter {
                d.id = *seq;
            }
            prop_assert_eq!(got, &want);
        }
    }

    #[test]
    fn any_damaged_byte_of_a_frame_is_caught(
        records in vec(record(), 1..4),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = encode(7, &records);
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Frame::parse(&bytes).is_err(), "byte {} of {} changed unnoticed", i, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_make_a_record(bytes in vec(any::<u8>(), 0..400)) {
        // Anything but a frame with a valid checksum is refused; nothing panics.
        if let Ok(frame) = Frame::parse(&bytes) {
            for r in frame.records() {
                let _ = r.map(|(seq, r)| r.to_record(seq));
            }
        }
    }
}

// --- Admin protocol --------------------------------------------------------------------------

fn filter() -> impl Strategy<Value = Filter> {
    (
        prop::option::of(reason()),
        prop::option::of(".{0,12}"),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::option::of(0usize..1 << 20),
    )
        .prop_map(|(reason, source, since_ms, before_ms, limit)| Filter {
            reason,
            source,
            since_ms,
            before_ms,
            limit,
        })
}

fn selection() -> impl Strategy<Value = Selection> {
    prop_oneof![
        vec(any::<u64>(), 0..8).prop_map(Selection::Ids),
        filter().prop_map(Selection::All),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        filter().prop_map(|filter| Request::DlqList { filter }),
        any::<u64>().prop_map(|id| Request::DlqShow { id }),
        selection().prop_map(|select| Request::DlqReplay { select }),
        selection().prop_map(|select| Request::DlqPurge { select }),
        Just(Request::DlqExport),
        Just(Request::QueueStats),
    ]
}

proptest! {
    #[test]
    fn requests_survive_their_json_line(request in request()) {
        let line = serde_json::to_string(&request).unwrap();
        prop_assert!(!line.contains('\n'), "one request, one line");
        let back: Request = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }

    #[test]
    fn any_request_line_is_parsed_or_refused(line in vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<Request>(&line);
    }

    #[test]
    fn any_request_like_text_is_parsed_or_refused(
        cmd in prop::sample::select(vec![
            "dlq-list", "dlq-show", "dlq-replay", "dlq-purge", "dlq-export", "queue-stats", "x",
        ]),
        body in r#"[{}\[\]":,0-9a-z_ -]{0,60}"#,
    ) {
        let line = format!(r#"{{"cmd":"{cmd}",{body}"#);
        let _ = serde_json::from_str::<Request>(&line);
    }

    #[test]
    fn dead_letters_carry_any_payload_bytes_through_the_api(record in record()) {
        let line = serde_json::to_string(&DeadLetter::from_record(&record)).unwrap();
        let back: DeadLetter = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(back.payload_bytes().unwrap(), record.payload.to_vec());
        prop_assert_eq!(back.to_record().unwrap(), record);
    }
}
