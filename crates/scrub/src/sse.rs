//! Framings for [`crate::events`]: server-sent events (`text/event-stream`, any line ending
//! the specification allows: CRLF, LF or CR alone), newline-delimited JSON
//! (`application/x-ndjson` and friends) and WebSocket messages.
//!
//! A framing cuts the byte stream into events as soon as each is complete (nothing waits for
//! more than the end of its own event), hands them to the shared stage, and writes out the
//! events the stage releases: unchanged ones as the bytes that arrived, changed ones
//! re-serialised (one `data:` line per line of data, the event's own line ending, its other
//! fields kept).

use crate::events::{Data, EventCore, EventTooLarge, Kind, Out, MAX_EVENT};
use crate::scrub::ScrubPatterns;

/// A line terminator as the event used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Lf,
    Cr,
    CrLf,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::Lf => b"\n",
            Eol::Cr => b"\r",
            Eol::CrLf => b"\r\n",
        }
    }
}

/// What an SSE event needs to be written again: its fields other than `data`, as they were.
#[derive(Debug, Clone)]
struct SseMeta {
    other: Vec<Vec<u8>>,
    eol: Eol,
}

/// Which kind of event stream a response is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Sse,
    Ndjson,
}

impl StreamFormat {
    /// `text/event-stream` is SSE; `application/x-ndjson`, `application/ndjson`,
    /// `application/jsonl`, `application/x-jsonlines`, `application/jsonlines` and
    /// `application/stream+json` are NDJSON. Anything else is not an event stream.
    pub fn for_content_type(value: &[u8]) -> Option<StreamFormat> {
        let v = std::str::from_utf8(value).ok()?;
        let essence = v.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => Some(StreamFormat::Sse),
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines"
            | "application/stream+json" => Some(StreamFormat::Ndjson),
            _ => None,
        }
    }
}

/// Scrubs an event stream across events; see [`crate::events`].
pub struct EventStreamScrubber {
    format: StreamFormat,
    core: EventCore<SseMeta>,
    buf: Vec<u8>,
    /// Where the current event starts in `buf` (what is before it is written out; dropped
    /// once per push, not once per event).
    base: usize,
    /// Where scanning for the next line terminator resumes.
    pos: usize,
    line_start: usize,
    /// The current SSE event's lines (start, end) in `buf`, without terminators.
    lines: Vec<(usize, usize)>,
    eol: Option<Eol>,
}

impl EventStreamScrubber {
    pub fn new(format: StreamFormat, patterns: ScrubPatterns) -> EventStreamScrubber {
        EventStreamScrubber {
            format,
            core: EventCore::new(patterns),
            buf: Vec::new(),
            base: 0,
            pos: 0,
            line_start: 0,
            lines: Vec::new(),
            eol: None,
        }
    }

    /// Replacements made so far.
    pub fn count(&self) -> usize {
        self.core.count()
    }

    /// Events released from a full hold queue so far.
    pub fn forced_releases(&self) -> usize {
        self.core.forced_releases()
    }

    /// Events currently held back.
    pub fn held_events(&self) -> usize {
        self.core.held()
    }

    /// Process what arrived; returns the bytes that can go out now. Fails when an event
    /// grows past [`MAX_EVENT`]: the stream must then be cut, not passed on.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EventTooLarge> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        self.scan(false, &mut out);
        self.compact();
        if self.buf.len() > MAX_EVENT {
            return Err(EventTooLarge { limit: MAX_EVENT });
        }
        Ok(out)
    }

    /// End of the stream: an unterminated last event, then everything still held.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.scan(true, &mut out);
        if self.buf.len() > self.line_start {
            self.lines.push((self.line_start, self.buf.len()));
        }
        if self.buf.len() > self.base {
            let end = self.buf.len();
            self.event(end, &mut out);
        }
        self.compact();
        let outs = self.core.finish();
        self.write(outs, &mut out);
        out
    }

    fn scan(&mut self, last: bool, out: &mut Vec<u8>) {
        loop {
            let Some(off) = memchr::memchr2(b'\n', b'\r', &self.buf[self.pos..]) else {
                self.pos = self.buf.len();
                return;
            };
            let i = self.pos + off;
            let (eol, next) = if self.buf[i] == b'\n' {
                (Eol::Lf, i + 1)
            } else if i + 1 < self.buf.len() {
                if self.buf[i + 1] == b'\n' {
                    (Eol::CrLf, i + 2)
                } else {
                    (Eol::Cr, i + 1)
                }
            } else if last {
                (Eol::Cr, i + 1)
            } else {
                // A CR at the end of what arrived: the LF of a CRLF may follow.
                self.pos = i;
                return;
            };
            let start = self.line_start;
            self.eol.get_or_insert(eol);
            self.pos = next;
            self.line_start = next;
            match self.format {
                StreamFormat::Ndjson => {
                    self.lines.push((start, i));
                    self.event(next, out);
                }
                StreamFormat::Sse => {
                    if start == i {
                        // An empty line ends the event.
                        self.event(next, out);
                    } else {
                        self.lines.push((start, i));
                    }
                }
            }
        }
    }

    /// Drop what was written out, keeping the current event.
    fn compact(&mut self) {
        if self.base == 0 {
            return;
        }
        let b = self.base;
        self.buf.drain(..b);
        self.pos -= b;
        self.line_start -= b;
        for (s, e) in &mut self.lines {
            *s -= b;
            *e -= b;
        }
        self.base = 0;
    }

    /// The event made of `buf[base..end]` and the collected lines.
    fn event(&mut self, end: usize, out: &mut Vec<u8>) {
        let raw: Vec<u8> = self.buf[self.base..end].to_vec();
        let eol = self.eol.take().unwrap_or(Eol::Lf);
        let lines = std::mem::take(&mut self.lines);
        let outs = match self.format {
            StreamFormat::Ndjson => {
                let line = lines
                    .first()
                    .map(|&(s, e)| &self.buf[s..e])
                    .unwrap_or_default();
                let meta = SseMeta {
                    other: Vec::new(),
                    eol,
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    self.core.push_opaque(meta, raw)
                } else {
                    let line = line.to_vec();
                    self.core
                        .push(meta, raw, &line, Kind::MaybeJson, "ndjson:text")
                }
            }
            StreamFormat::Sse => {
                let mut other = Vec::new();
                let mut data: Option<Vec<u8>> = None;
                for &(s, e) in &lines {
                    let line = &self.buf[s..e];
                    if line.starts_with(b":") {
                        other.push(line.to_vec());
                        continue;
                    }
                    let (name, value) = match line.iter().position(|&b| b == b':') {
                        Some(c) => {
                            let v = &line[c + 1..];
                            (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                        }
                        None => (line, &b""[..]),
                    };
                    if name == b"data" {
                        match data.as_mut() {
                            Some(d) => {
                                d.push(b'\n');
                                d.extend_from_slice(value);
                            }
                            None => data = Some(value.to_vec()),
                        }
                    } else {
                        other.push(line.to_vec());
                    }
                }
                let meta = SseMeta { other, eol };
                match data {
                    None => self.core.push_opaque(meta, raw),
                    Some(d) => self.core.push(meta, raw, &d, Kind::MaybeJson, "sse:text"),
                }
            }
        };
        self.base = end;
        self.line_start = end;
        self.pos = self.pos.max(end);
        self.write(outs, out);
    }

    fn write(&self, outs: Vec<Out<SseMeta>>, out: &mut Vec<u8>) {
        for o in outs {
            match o {
                Out::Raw(_, raw) => out.extend_from_slice(&raw),
                Out::Render(meta, data) => self.render(&meta, &data, out),
            }
        }
    }

    fn render(&self, meta: &SseMeta, data: &Data, out: &mut Vec<u8>) {
        let eol = meta.eol.bytes();
        let body = match data {
            Data::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
            Data::Bytes(b) => b.clone(),
        };
        match self.format {
            StreamFormat::Ndjson => {
                out.extend_from_slice(&body);
                out.extend_from_slice(eol);
            }
            StreamFormat::Sse => {
                for line in &meta.other {
                    out.extend_from_slice(line);
                    out.extend_from_slice(eol);
                }
                for line in body.split(|&b| b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line);
                    out.extend_from_slice(eol);
                }
                out.extend_from_slice(eol);
            }
        }
    }
}

/// A WebSocket message, as [`MessageScrubber`] takes and returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Scrubs the data messages of one direction of a WebSocket across messages (text messages
/// are events whose data may be JSON; binary messages are one byte channel).
pub struct MessageScrubber {
    core: EventCore<bool>,
}

impl MessageScrubber {
    pub fn new(patterns: ScrubPatterns) -> MessageScrubber {
        MessageScrubber {
            core: EventCore::new(patterns),
        }
    }

    /// Replacements made so far.
    pub fn count(&self) -> usize {
        self.core.count()
    }

    /// One message in; the messages that can go out now.
    pub fn push(&mut self, m: Message) -> Vec<Message> {
        let outs = match m {
            Message::Text(t) => {
                let raw = t.into_bytes();
                let data = raw.clone();
                self.core
                    .push(false, raw, &data, Kind::MaybeJson, "ws:text")
            }
            Message::Binary(b) => {
                let data = b.clone();
                self.core.push(true, b, &data, Kind::Binary, "ws:binary")
            }
        };
        Self::messages(outs)
    }

    /// The other side closed: everything still held.
    pub fn finish(&mut self) -> Vec<Message> {
        let outs = self.core.finish();
        Self::messages(outs)
    }

    fn messages(outs: Vec<Out<bool>>) -> Vec<Message> {
        outs.into_iter()
            .map(|o| {
                let (binary, bytes) = match o {
                    Out::Raw(binary, raw) => (binary, raw),
                    Out::Render(binary, Data::Json(v)) => {
                        (binary, serde_json::to_vec(&v).unwrap_or_default())
                    }
                    Out::Render(binary, Data::Bytes(b)) => (binary, b),
                };
                if binary {
                    Message::Binary(bytes)
                } else {
                    match String::from_utf8(bytes) {
                        Ok(s) => Message::Text(s),
                        Err(e) => Message::Text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    }
                }
            })
            .collect()
    }
}
