//! Strict HTTP/1.1 request framing (RFC 9112), checked on the bytes the agent sends (A18).
//!
//! The proxy's HTTP/1 parser (hyper's, over httparse) is lenient where leniency lets two
//! parsers disagree about where a request ends: it accepts bare LF line ends, reads a request
//! with both `Content-Length` and `Transfer-Encoding: chunked` as chunked, and folds duplicate
//! `Content-Length` headers. A [`RequestFraming`] follows the agent's byte stream alongside it
//! and stops it at the first thing a strict reader would refuse:
//!
//! - line ends other than CRLF (bare LF, bare CR), control characters, obsolete line folding,
//!   whitespace before a header's colon, a malformed request line;
//! - `Content-Length` and `Transfer-Encoding` together, several `Content-Length` or
//!   `Transfer-Encoding` headers, a `Content-Length` that is not plain digits, any
//!   `Transfer-Encoding` other than exactly `chunked`, `Transfer-Encoding` in HTTP/1.0,
//!   several `Host` headers;
//! - chunk sizes that are not plain hex (`0x10`, `+5`, `1_0`, spaces), CR or LF inside a chunk
//!   extension, chunk data not followed by CRLF, malformed trailers.
//!
//! Where the request is accepted, both readers agree on its framing: it has either one plain
//! `Content-Length` or strict chunked coding. After a `CONNECT` or a request carrying
//! `Upgrade`, the bytes that follow are not HTTP and are not followed.
//!
//! Pure and incremental: any split of the same bytes into `feed` calls gives the same verdict
//! at the same absolute offset (fuzzed in `fuzz/fuzz_targets/request_head.rs`).

/// Why a request's framing was refused; a short phrase for the agent and the logs.
pub type Violation = &'static str;

/// A request head (poisoned or not) longer than the limit given to [`RequestFraming::new`].
/// Unlike the other violations it is answered 431, and the head is never handed to the
/// HTTP parser: see [`Feed::Stop`].
pub const HEAD_TOO_LARGE: Violation = "request head too large";

/// What the caller does with the bytes just fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Pass them all on.
    Pass,
    /// Pass on the first `deliver` bytes, then nothing more: the agent's framing is bad.
    /// When the violation is in a request head (`in_head`), `deliver` runs to the end of
    /// that head, so the HTTP parser can read it and the proxy answer it with a 400; in a
    /// body, `deliver` ends before the offending bytes and the body is cut there.
    /// For [`HEAD_TOO_LARGE`], `deliver` runs to the byte that passed the limit, and the last
    /// `max_head + 1` bytes up to there are the refused head: the caller, which holds a head
    /// back until it is complete, drops them instead of passing them on.
    Stop {
        deliver: usize,
        violation: Violation,
        in_head: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a request head into `buf`. `poisoned` holds a violation already found in it:
    /// the head is still read to its end (leniently) so that it can be answered.
    Head {
        poisoned: Option<Violation>,
    },
    Body {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// After chunk data: expecting CR (`false`) or LF (`true`).
    ChunkEnd {
        cr: bool,
    },
    Trailers,
    /// After CONNECT or Upgrade: the stream is no longer HTTP.
    Passthrough,
    /// A violation was reported; every later byte is refused.
    Stopped(Violation),
}

/// What follows the current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Head,
    Passthrough,
}

/// Follows one connection's request stream. See the module documentation.
#[derive(Debug, Clone)]
pub struct RequestFraming {
    state: State,
    buf: Vec<u8>,
    /// The last byte seen, for CRLF checks across calls.
    prev: Option<u8>,
    max_head: usize,
    next: Next,
}

const MAX_CHUNK_LINE: usize = 4096;

impl RequestFraming {
    /// `max_head`: the longest request head (and trailer section) accepted; a longer head
    /// stops with [`HEAD_TOO_LARGE`], a longer trailer section with its own violation.
    pub fn new(max_head: usize) -> RequestFraming {
        RequestFraming {
            state: State::Head { poisoned: None },
            buf: Vec::new(),
            prev: None,
            max_head,
            next: Next::Head,
        }
    }

    /// The longest request head accepted (as given to [`RequestFraming::new`]).
    pub fn max_head(&self) -> usize {
        self.max_head
    }

    /// How many bytes of a request head still being read have been fed: the bytes a caller
    /// holds back from the HTTP parser until the head is complete. Zero between heads, in a
    /// body and after a violation.
    pub fn head_buffered(&self) -> usize {
        match self.state {
            State::Head { .. } => self.buf.len(),
            _ => 0,
        }
    }

    /// The violation reported, if any.
    pub fn violation(&self) -> Option<Violation> {
        match self.state {
            State::Stopped(v) => Some(v),
            _ => None,
        }
    }

    /// Follow `bytes`, the next bytes the agent sent.
    pub fn feed(&mut self, bytes: &[u8]) -> Feed {
        let mut i = 0;
        while i < bytes.len() {
            match self.state.clone() {
                State::Stopped(violation) => {
                    return Feed::Stop {
                        deliver: 0,
                        violation,
                        in_head: false,
                    }
                }
                State::Passthrough => return Feed::Pass,
                State::Body { remaining } => {
                    let take = remaining.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.prev = bytes.get(i.wrapping_sub(1)).copied();
                    if take == remaining {
                        self.end_message();
                    } else {
                        self.state = State::Body {
                            remaining: remaining - take,
                        };
                    }
                }
                State::ChunkData { remaining } => {
                    let take = remaining.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.prev = bytes.get(i.wrapping_sub(1)).copied();
                    self.state = if take == remaining {
                        State::ChunkEnd { cr: false }
                    } else {
                        State::ChunkData {
                            remaining: remaining - take,
                        }
                    };
                }
                State::ChunkEnd { cr } => {
                    let b = bytes[i];
                    i += 1;
                    self.prev = Some(b);
                    match (cr, b) {
                        (false, b'\r') => self.state = State::ChunkEnd { cr: true },
                        (true, b'\n') => self.state = State::ChunkSize,
                        _ => return self.stop(i - 1, "chunk data not followed by CRLF"),
                    }
                }
                State::Head { poisoned } => {
                    let b = bytes[i];
                    i += 1;
                    let prev = self.prev.replace(b);
                    self.buf.push(b);
                    if let Some(v) = poisoned {
                        // Find the end of the head as a lenient parser would, then stop.
                        if self.buf.ends_with(b"\n\n") || self.buf.ends_with(b"\n\r\n") {
                            self.buf.clear();
                            return self.stop(i, v);
                        }
                        if self.buf.len() > self.max_head {
                            return self.stop(i, HEAD_TOO_LARGE);
                        }
                        continue;
                    }
                    if let Some(v) = line_byte(prev, b) {
                        self.state = State::Head { poisoned: Some(v) };
                        continue;
                    }
                    // An empty line before the request line is ignored (RFC 9112 §2.2).
                    if self.buf == b"\r\n" {
                        self.buf.clear();
                        continue;
                    }
                    if self.buf.len() > self.max_head {
                        return self.stop(i, HEAD_TOO_LARGE);
                    }
                    if self.buf.ends_with(b"\r\n\r\n") {
                        let head = std::mem::take(&mut self.buf);
                        match check_head(&head) {
                            Ok(framing) => self.begin_body(framing),
                            Err(v) => return self.stop(i, v),
                        }
                    }
                }
                State::ChunkSize => {
                    let b = bytes[i];
                    i += 1;
                    let prev = self.prev.replace(b);
                    if let Some(v) = line_byte(prev, b) {
                        return self.stop(i - 1, v);
                    }
                    // Refuse a bad size at its first bad byte, not at the end of its line.
                    let in_digits = self.buf.iter().all(u8::is_ascii_hexdigit);
                    if in_digits
                        && !(b.is_ascii_hexdigit()
                            || (!self.buf.is_empty() && matches!(b, b';' | b' ' | b'\t' | b'\r')))
                    {
                        return self.stop(i - 1, "chunk size is not hexadecimal");
                    }
                    self.buf.push(b);
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return self.stop(i - 1, "chunk size line too long");
                    }
                    if self.buf.ends_with(b"\r\n") {
                        let line = std::mem::take(&mut self.buf);
                        match chunk_size(&line[..line.len() - 2]) {
                            Ok(0) => self.state = State::Trailers,
                            Ok(n) => self.state = State::ChunkData { remaining: n },
                            Err(v) => return self.stop(i - 1, v),
                        }
                    }
                }
                State::Trailers => {
                    let b = bytes[i];
                    i += 1;
                    let prev = self.prev.replace(b);
                    if let Some(v) = line_byte(prev, b) {
                        return self.stop(i - 1, v);
                    }
                    self.buf.push(b);
                    if self.buf.len() > self.max_head {
                        return self.stop(i - 1, "trailer section too large");
                    }
                    if self.buf == b"\r\n" || self.buf.ends_with(b"\r\n\r\n") {
                        let section = std::mem::take(&mut self.buf);
                        let lines = &section[..section.len() - 2];
                        for line in split_crlf(lines) {
                            if let Err(v) = header_line(line) {
                                return self.stop(i - 1, v);
                            }
                        }
                        self.end_message();
                    }
                }
            }
        }
        Feed::Pass
    }

    fn stop(&mut self, deliver: usize, violation: Violation) -> Feed {
        let in_head = matches!(self.state, State::Head { .. });
        self.state = State::Stopped(violation);
        self.buf = Vec::new();
        Feed::Stop {
            deliver,
            violation,
            in_head,
        }
    }

    fn begin_body(&mut self, framing: HeadFraming) {
        self.next = if framing.upgrade {
            Next::Passthrough
        } else {
            Next::Head
        };
        match framing.body {
            BodyFraming::Chunked => self.state = State::ChunkSize,
            BodyFraming::Length(0) => self.end_message(),
            BodyFraming::Length(n) => self.state = State::Body { remaining: n },
        }
    }

    fn end_message(&mut self) {
        self.prev = None;
        self.state = match self.next {
            Next::Head => State::Head { poisoned: None },
            Next::Passthrough => State::Passthrough,
        };
    }
}

/// A byte of a line: refuse bare LF, bare CR and control characters other than HTAB.
fn line_byte(prev: Option<u8>, b: u8) -> Option<Violation> {
    if prev == Some(b'\r') && b != b'\n' {
        return Some("bare CR in a line");
    }
    match b {
        b'\n' if prev != Some(b'\r') => Some("bare LF line ending"),
        b'\r' | b'\n' | b'\t' => None,
        0..=0x1f | 0x7f => Some("control character in the request head"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadFraming {
    body: BodyFraming,
    /// CONNECT or Upgrade: what follows this message is not HTTP.
    upgrade: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn split_crlf(mut s: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if s.is_empty() {
            return None;
        }
        match s.windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                let line = &s[..p];
                s = &s[p + 2..];
                Some(line)
            }
            None => {
                let line = s;
                s = &[];
                Some(line)
            }
        }
    })
}

/// A header (or trailer) line: `name ":" OWS value OWS`, name a token, no whitespace before
/// the colon, no folding. Returns the name and the trimmed value.
fn header_line(line: &[u8]) -> Result<(&[u8], &[u8]), Violation> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("obsolete line folding");
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or("header line without a colon")?;
    let name = &line[..colon];
    if name.is_empty() {
        return Err("empty header name");
    }
    if name.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("whitespace before a header's colon");
    }
    if !name.iter().all(|b| is_tchar(*b)) {
        return Err("invalid character in a header name");
    }
    let value = line[colon + 1..].trim_ascii();
    Ok((name, value))
}

/// Check a complete head (ending in CRLF CRLF, line bytes already checked) and find how its
/// body is framed.
fn check_head(head: &[u8]) -> Result<HeadFraming, Violation> {
    let mut lines = split_crlf(&head[..head.len() - 4]);
    let request_line = lines.next().ok_or("empty request head")?;
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err("malformed request method");
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("malformed request target");
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    let mut content_length: Option<u64> = None;
    let mut te = false;
    let mut hosts = 0;
    let mut upgrade = method == b"CONNECT";
    for line in lines {
        let (name, value) = header_line(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err("several Content-Length headers");
            }
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err("Content-Length is not a plain number");
            }
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te {
                return Err("several Transfer-Encoding headers");
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err("Transfer-Encoding other than chunked");
            }
            te = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Err("several Host headers");
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if te && content_length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if te && http10 {
        return Err("Transfer-Encoding in HTTP/1.0");
    }
    let body = if te {
        BodyFraming::Chunked
    } else {
        BodyFraming::Length(content_length.unwrap_or(0))
    };
    Ok(HeadFraming { body, upgrade })
}

/// `chunk-size [ chunk-ext ]` (the line without its CRLF): strict hex, at most 16 digits;
/// an extension starts with `;` after optional whitespace and holds no control characters.
fn chunk_size(line: &[u8]) -> Result<u64, Violation> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not hexadecimal");
    }
    if digits > 16 {
        return Err("chunk size too large");
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !rest.is_empty() && !ext.starts_with(b";") {
        return Err("chunk size is not hexadecimal");
    }
    if ext.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) {
        return Err("control character in a chunk extension");
    }
    let n = line[..digits].iter().fold(0u64, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    Ok(n)
}

/// The fuzzing property (also a unit test): following `data` in pieces cut at `cuts` gives
/// the verdict of following it whole, at the same absolute offset. Never panics.
pub fn fuzz_split(data: &[u8], cuts: &[usize]) -> Result<(), String> {
    let whole = {
        let mut f = RequestFraming::new(1024);
        match f.feed(data) {
            Feed::Pass => None,
            Feed::Stop {
                deliver, violation, ..
            } => Some((deliver, violation)),
        }
    };
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    let mut f = RequestFraming::new(1024);
    let mut pieces = None;
    for w in points.windows(2) {
        match f.feed(&data[w[0]..w[1]]) {
            Feed::Pass => {}
            Feed::Stop {
                deliver, violation, ..
            } => {
                pieces = Some((w[0] + deliver, violation));
                break;
            }
        }
    }
    if whole == pieces {
        Ok(())
    } else {
        Err(format!("whole {whole:?} != pieces {pieces:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<(), (usize, Violation)> {
        let mut f = RequestFraming::new(64 * 1024);
        match f.feed(input) {
            Feed::Pass => Ok(()),
            Feed::Stop {
                deliver, violation, ..
            } => Err((deliver, violation)),
        }
    }

    fn refused(input: &str) -> Violation {
        match run(input.as_bytes()) {
            Err((_, v)) => v,
            Ok(()) => panic!("accepted: {input:?}"),
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        for ok in [
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\ntransfer-encoding:  CHUNKED \r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            "\r\nGET /a HTTP/1.0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01 anything \n\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nframes\n",
        ] {
            assert_eq!(run(ok.as_bytes()), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn smuggling_corpus_is_refused() {
        let cases = [
            ("GET /a HTTP/1.1\nHost: x\n\n", "bare LF line ending"),
            ("GET /a HTTP/1.1\r\nHost: x\n\r\n", "bare LF line ending"),
            ("GET /a HTTP/1.1\r\nHost: x\rY: 1\r\n\r\n", "bare CR in a line"),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                "several Content-Length headers",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
                "Content-Length is not a plain number",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
                "Content-Length is not a plain number",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "several Transfer-Encoding headers",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
                "whitespace before a header's colon",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
                "control character in the request head",
            ),
            (
                "POST /a HTTP/1.1\r\nHost: x\r\nX: 1\r\n chunked\r\n\r\n",
                "obsolete line folding",
            ),
            (
                "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in HTTP/1.0",
            ),
            ("GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "several Host headers"),
            ("GET  /a HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request line"),
            ("GET /a HTTP/1.2\r\nHost: x\r\n\r\n", "unsupported HTTP version"),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "unsupported HTTP version"),
        ];
        for (input, want) in cases {
            assert_eq!(refused(input), want, "{input:?}");
        }
        let chunked = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, want) in [
            ("0x3\r\nabc\r\n0\r\n\r\n", "chunk size is not hexadecimal"),
            ("+3\r\nabc\r\n0\r\n\r\n", "chunk size is not hexadecimal"),
            ("1_0\r\n", "chunk size is not hexadecimal"),
            (" 3\r\nabc\r\n0\r\n\r\n", "chunk size is not hexadecimal"),
            ("3;a\rb\r\nabc\r\n", "bare CR in a line"),
            ("3\nabc\r\n", "bare LF line ending"),
            ("3\r\nabcd\r\n", "chunk data not followed by CRLF"),
            (
                "3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
                "header line without a colon",
            ),
            ("11111111111111111\r\n", "chunk size too large"),
        ] {
            assert_eq!(refused(&format!("{chunked}{body}")), want, "{body:?}");
        }
    }

    #[test]
    fn a_bad_head_is_delivered_to_its_end_and_nothing_after() {
        let input = b"GET /a HTTP/1.1\nHost: x\n\nGET /smuggled HTTP/1.1\r\n\r\n";
        let (deliver, _) = run(input).unwrap_err();
        assert_eq!(&input[..deliver], b"GET /a HTTP/1.1\nHost: x\n\n");
        let input =
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x";
        let (deliver, _) = run(input).unwrap_err();
        assert!(input[..deliver].ends_with(b"chunked\r\n\r\n"));
        // In a body, the stream ends right before the bad byte.
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n";
        let (deliver, _) = run(input).unwrap_err();
        assert_eq!(&input[deliver..], b"zz\r\n");
    }

    #[test]
    fn heads_over_the_limit_stop_at_the_byte_past_it() {
        // Clean or poisoned (a bare LF), whole or in pieces, after a first request or not:
        // the stop comes at the byte that makes the head 101 bytes long.
        let first = "GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for head in ["GET /a HTTP/1.1\r\nX: ", "GET /a HTTP/1.1\nX: "] {
            for before in ["", "\r\n", first] {
                let big = format!("{before}{head}{}\r\n\r\n", "a".repeat(200));
                let expect = Feed::Stop {
                    deliver: before.len() + 101,
                    violation: HEAD_TOO_LARGE,
                    in_head: true,
                };
                let mut f = RequestFraming::new(100);
                assert_eq!(f.feed(big.as_bytes()), expect, "{big:?}");
                let mut f = RequestFraming::new(100);
                let (a, b) = big.as_bytes().split_at(before.len() + 50);
                assert_eq!(f.feed(a), Feed::Pass);
                assert_eq!(f.head_buffered(), 50);
                let Feed::Stop { deliver, .. } = f.feed(b) else {
                    panic!("no stop")
                };
                assert_eq!(a.len() + deliver, before.len() + 101);
            }
        }
        // A head of exactly the limit passes, and nothing is held after it.
        let mut f = RequestFraming::new(100);
        let head = format!("GET /a HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100 - 24));
        assert_eq!(head.len(), 100);
        assert_eq!(f.feed(head.as_bytes()), Feed::Pass);
        assert_eq!(f.head_buffered(), 0);
    }

    proptest::proptest! {
        /// Any split gives the verdict of the whole, at the same absolute offset.
        #[test]
        fn splits_never_change_the_verdict(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
            prefix in proptest::sample::select(vec![
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                "GET / HTTP/1.1\r\n",
                "",
            ]),
        ) {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(&input);
            proptest::prop_assert_eq!(crate::h1::fuzz_split(&data, &cuts), Ok(()));
        }
    }
}
