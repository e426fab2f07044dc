//! The client's side of a streamed `dlq list`/`dlq export` answer: the daemon writes the line
//! `{"dead-letters":[e1,e2,…]}` entry by entry ([`super::server`]); [`Entries`] cuts it into
//! its entries as the bytes arrive, so the CLI holds one dead letter at a time, not the store.
//! Any other answer (an error) is collected whole, up to [`MAX_OTHER`], for the caller to parse.

use super::AdminError;

/// How a streamed answer starts.
pub const HEAD: &[u8] = b"{\"dead-letters\":[";

/// Longest answer that is not a stream (an error message).
pub const MAX_OTHER: usize = 1 << 20;

/// Longest single entry (a dead letter's payload is at most the source's `max_payload`, 256 MiB
/// at most, base64 or escaped).
pub const MAX_ENTRY: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the first bytes: a stream or another answer?
    Head,
    /// Not a stream: collecting the whole line.
    Other,
    /// Between entries (after `[` or `,`).
    Between,
    /// Inside an entry.
    Entry,
    /// After the closing `]`.
    Done,
}

/// Cuts a streamed answer into entries (see the module doc).
#[derive(Debug)]
pub struct Entries {
    state: State,
    buf: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    count: u64,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            count: 0,
        }
    }
}

impl Entries {
    /// Takes the next bytes of the answer; hands each complete entry's JSON to `emit`.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut emit: impl FnMut(&[u8]) -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        for &b in bytes {
            match self.state {
                State::Head => {
                    self.buf.push(b);
                    if !HEAD.starts_with(&self.buf) {
                        self.state = State::Other;
                    } else if self.buf.len() == HEAD.len() {
                        self.buf.clear();
                        self.state = State::Between;
                    }
                }
                State::Other => {
                    if self.buf.len() >= MAX_OTHER {
                        return Err(AdminError::Protocol(format!(
                            "the daemon's answer is not a list and longer than {MAX_OTHER} bytes"
                        )));
                    }
                    self.buf.push(b);
                }
                State::Between => match b {
                    b'{' => {
                        self.buf.push(b);
                        self.depth = 1;
                        self.state = State::Entry;
                    }
                    b']' => self.state = State::Done,
                    b',' | b' ' | b'\n' | b'\r' | b'\t' => {}
                    other => return Err(self.broken(other)),
                },
                State::Entry => {
                    if self.buf.len() >= MAX_ENTRY {
                        return Err(AdminError::Protocol(format!(
                            "dead letter {} of the daemon's answer is longer than {MAX_ENTRY} bytes",
                            self.count + 1
                        )));
                    }
                    self.buf.push(b);
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                        }
                        continue;
                    }
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                self.count += 1;
                                let done = emit(&self.buf);
                                self.buf.clear();
                                done?;
                                self.state = State::Between;
                            }
                        }
                        _ => {}
                    }
                }
                State::Done => {}
            }
        }
        Ok(())
    }

    /// The answer ended. `Ok(None)` for a complete stream; `Ok(Some(line))` for another answer,
    /// to be parsed as a response; an error for a stream that broke off.
    pub fn finish(self) -> Result<Option<Vec<u8>>, AdminError> {
        match self.state {
            State::Done => Ok(None),
            State::Head | State::Other => Ok(Some(self.buf)),
            State::Between | State::Entry => Err(AdminError::Protocol(format!(
                "the daemon's answer broke off after {} dead letter(s) (see its log)",
                self.count
            ))),
        }
    }

    fn broken(&self, byte: u8) -> AdminError {
        AdminError::Protocol(format!(
            "the daemon's answer is malformed after {} dead letter(s) (byte {:?})",
            self.count,
            char::from(byte)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(answer: &[u8], chunk: usize) -> (Vec<String>, Result<Option<Vec<u8>>, String>) {
        let mut entries = Entries::default();
        let mut out = Vec::new();
        for part in answer.chunks(chunk.max(1)) {
            if let Err(e) = entries.feed(part, |e| {
                out.push(String::from_utf8(e.to_vec()).unwrap());
                Ok(())
            }) {
                return (out, Err(e.to_string()));
            }
        }
        (out, entries.finish().map_err(|e| e.to_string()))
    }

    #[test]
    fn entries_are_cut_out_whatever_the_chunks_and_the_strings_hold() {
        let answer =
            br#"{"dead-letters":[{"id":1,"payload":"a}\"{]"},{"id":2,"meta":{"e":[{"x":"]"}]}}]}"#;
        for chunk in 1..answer.len() {
            let (out, end) = cut(answer, chunk);
            assert_eq!(
                out,
                [
                    r#"{"id":1,"payload":"a}\"{]"}"#,
                    r#"{"id":2,"meta":{"e":[{"x":"]"}]}}"#
                ],
                "chunk {chunk}"
            );
            assert_eq!(end, Ok(None));
        }
        let (out, end) = cut(b"{\"dead-letters\":[]}\n", 3);
        assert!(out.is_empty());
        assert_eq!(end, Ok(None));
    }

    #[test]
    fn another_answer_is_returned_whole_and_a_cut_stream_is_an_error() {
        let (out, end) = cut(br#"{"error":"no such dead letter"}"#, 4);
        assert!(out.is_empty());
        assert_eq!(
            end,
            Ok(Some(br#"{"error":"no such dead letter"}"#.to_vec()))
        );

        let (out, end) = cut(br#"{"dead-letters":[{"id":1},{"id":2,"pay"#, 5);
        assert_eq!(out, [r#"{"id":1}"#]);
        assert!(end.unwrap_err().contains("broke off after 1"));

        let (_, end) = cut(br#"{"dead-letters":[{"id":1}x"#, 5);
        assert!(end.unwrap_err().contains("malformed after 1"));
    }
}
