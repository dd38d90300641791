//! Push-style decoders for HTTP content codings, so that a compressed response can be scrubbed
//! as it streams (A4).
//!
//! Three rules keep them safe for scrubbing:
//! * **Only what is positively understood is decoded.** [`for_headers`] reads the raw header
//!   bytes: a label that is not ASCII, an unknown or stacked coding, or any transfer coding but
//!   `chunked` is [`Encoding::Unsupported`], and the proxy withholds the response rather than
//!   pass bytes it cannot check (a non-ASCII label is not "identity").
//! * **Nothing waits for the next chunk.** Every [`Decoder::push`] returns all the bytes its
//!   input decodes to (the decoders are flushed after each chunk), so a compressed event stream
//!   keeps its timing.
//! * **Output is bounded by the input.** A decoder never produces more than
//!   [`DecodeLimit::allowed`] bytes for the compressed bytes seen so far; past it, `push` fails
//!   with [`DecodeError::TooLarge`] before the excess is even buffered (a decompression bomb
//!   costs at most the bound in memory and time, and is reported, never silently truncated).

use std::io::{self, Write};

/// Bound on decoded output: at most `floor + ratio × compressed bytes so far`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimit {
    /// Bytes any response may decode to regardless of ratio.
    pub floor: u64,
    /// Decoded bytes allowed per compressed byte beyond the floor.
    pub ratio: u64,
}

impl DecodeLimit {
    /// 16 MiB, then 256 decoded bytes per compressed byte. Text and JSON compress 5–50:1, so
    /// legitimate responses stay far below; gzip and deflate cannot exceed about 1032:1, so a
    /// gzip bomb is stopped after about 21 MiB, a brotli or zstd bomb after about 16 MiB.
    pub const DEFAULT: DecodeLimit = DecodeLimit {
        floor: 16 << 20,
        ratio: 256,
    };

    /// Decoded bytes allowed after `input` compressed bytes.
    pub fn allowed(&self, input: u64) -> u64 {
        self.floor.saturating_add(self.ratio.saturating_mul(input))
    }
}

impl Default for DecodeLimit {
    fn default() -> Self {
        DecodeLimit::DEFAULT
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the {encoding} body is corrupt or truncated")]
    Corrupt {
        encoding: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {encoding} body decodes to more than {allowed} bytes from {input} compressed bytes (limit: {floor} + {ratio} per compressed byte)"
    )]
    TooLarge {
        encoding: &'static str,
        input: u64,
        allowed: u64,
        floor: u64,
        ratio: u64,
    },
}

/// What a response's headers say about its body's encoding.
#[derive(Debug)]
pub enum Encoding {
    Identity,
    Decode(Box<Decoder>),
    /// Not decodable here: the label as received (lossily, for messages).
    Unsupported(String),
}

/// Interpret a response's `Content-Encoding` and `Transfer-Encoding` header values (raw
/// bytes, every value of each). `chunked` is the HTTP/1.1 framing the client library already
/// removed; any other transfer coding, any label that is not an ASCII token list, and any
/// coding other than one of `gzip`/`x-gzip`, `deflate`, `br`, `zstd` (or several stacked) is
/// unsupported.
pub fn for_headers<'a>(
    content_encoding: impl IntoIterator<Item = &'a [u8]>,
    transfer_encoding: impl IntoIterator<Item = &'a [u8]>,
    limit: DecodeLimit,
) -> Encoding {
    let mut tokens = Vec::new();
    for v in content_encoding {
        match tokens_of(v) {
            Some(t) => tokens.extend(t),
            None => return Encoding::Unsupported(String::from_utf8_lossy(v).into_owned()),
        }
    }
    for v in transfer_encoding {
        match tokens_of(v) {
            Some(t) if t.iter().all(|t| t == "chunked") => {}
            _ => {
                return Encoding::Unsupported(format!(
                    "transfer-encoding {}",
                    String::from_utf8_lossy(v)
                ))
            }
        }
    }
    tokens.retain(|t| t != "identity");
    match tokens.as_slice() {
        [] => Encoding::Identity,
        [one] => match Decoder::new(one, limit) {
            Some(d) => Encoding::Decode(Box::new(d)),
            None => Encoding::Unsupported(one.clone()),
        },
        many => Encoding::Unsupported(many.join(", ")),
    }
}

/// The comma-separated tokens of a header value, lower-cased, empty ones dropped; `None` if
/// the value holds anything but ASCII token characters, commas and whitespace.
fn tokens_of(v: &[u8]) -> Option<Vec<String>> {
    if !v
        .iter()
        .all(|&b| is_tchar(b) || matches!(b, b',' | b' ' | b'\t'))
    {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    Some(
        s.split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The coding names [`for_headers`] can decode, for `Accept-Encoding`.
pub const DECODABLE: &[&str] = &["gzip", "x-gzip", "deflate", "br", "zstd"];

/// The `Accept-Encoding` to send upstream for an agent's: its codings that the proxy can
/// decode, with their parameters, in its order; `None` when nothing remains (the upstream then
/// sends identity). The agent receives decoded bodies either way.
pub fn accept_encoding(agent: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(agent).ok()?;
    let kept: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|item| {
            let name = item.split(';').next().unwrap_or("").trim();
            DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(name))
                || name.eq_ignore_ascii_case("identity")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Collects decoded bytes, refusing (with [`LimitExceeded`]) any write past `limit` total.
struct Sink {
    buf: Vec<u8>,
    written: u64,
    limit: u64,
}

#[derive(Debug)]
struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decoded output limit exceeded")
    }
}

impl std::error::Error for LimitExceeded {}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len() as u64;
        if self.written.saturating_add(n) > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        self.written += n;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Kind {
    Gzip(flate2::write::GzDecoder<Sink>),
    /// `deflate` is zlib-wrapped by the specification, but some servers send raw deflate;
    /// which one is decided by the first two bytes.
    Deflate(Option<DeflateKind>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

enum DeflateKind {
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Raw(flate2::write::DeflateDecoder<Sink>),
}

/// One streaming decoder.
pub struct Decoder {
    kind: Kind,
    name: &'static str,
    limit: DecodeLimit,
    input: u64,
    /// The first bytes of a deflate body, until the wrapper can be told.
    pending: Vec<u8>,
    failed: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("encoding", &self.name)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

fn sink() -> Sink {
    Sink {
        buf: Vec::new(),
        written: 0,
        limit: 0,
    }
}

impl Decoder {
    /// A decoder for one coding name (lower case), if supported.
    pub fn new(name: &str, limit: DecodeLimit) -> Option<Decoder> {
        let (kind, name) = match name {
            "gzip" | "x-gzip" => (Kind::Gzip(flate2::write::GzDecoder::new(sink())), "gzip"),
            "deflate" => (Kind::Deflate(None), "deflate"),
            "br" => (
                Kind::Brotli(Box::new(brotli::DecompressorWriter::new(sink(), 8192))),
                "br",
            ),
            "zstd" => (
                Kind::Zstd(zstd::stream::write::Decoder::new(sink()).ok()?),
                "zstd",
            ),
            _ => return None,
        };
        Some(Decoder {
            kind,
            name,
            limit,
            input: 0,
            pending: Vec::new(),
            failed: false,
        })
    }

    /// The coding's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Compressed bytes pushed so far.
    pub fn input(&self) -> u64 {
        self.input
    }

    fn sink_mut(&mut self) -> Option<&mut Sink> {
        Some(match &mut self.kind {
            Kind::Gzip(d) => d.get_mut(),
            Kind::Deflate(Some(DeflateKind::Zlib(d))) => d.get_mut(),
            Kind::Deflate(Some(DeflateKind::Raw(d))) => d.get_mut(),
            Kind::Deflate(None) => return None,
            Kind::Brotli(d) => d.get_mut(),
            Kind::Zstd(d) => d.get_mut(),
        })
    }

    fn writer(&mut self) -> Option<&mut dyn Write> {
        Some(match &mut self.kind {
            Kind::Gzip(d) => d,
            Kind::Deflate(Some(DeflateKind::Zlib(d))) => d,
            Kind::Deflate(Some(DeflateKind::Raw(d))) => d,
            Kind::Deflate(None) => return None,
            Kind::Brotli(d) => d.as_mut(),
            Kind::Zstd(d) => d,
        })
    }

    fn error(&mut self, e: io::Error) -> DecodeError {
        self.failed = true;
        let exceeded = e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>())
            || self.sink_mut().is_some_and(|s| s.written >= s.limit);
        if exceeded {
            DecodeError::TooLarge {
                encoding: self.name,
                input: self.input,
                allowed: self.limit.allowed(self.input),
                floor: self.limit.floor,
                ratio: self.limit.ratio,
            }
        } else {
            DecodeError::Corrupt {
                encoding: self.name,
                source: e,
            }
        }
    }

    /// Decode a chunk; returns every byte it decodes to (nothing is held for the next chunk).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Corrupt {
                encoding: self.name,
                source: io::Error::other("the decoder failed earlier"),
            });
        }
        self.input += chunk.len() as u64;
        let mut data = chunk;
        let joined;
        if let Kind::Deflate(None) = self.kind {
            self.pending.extend_from_slice(chunk);
            if self.pending.len() < 2 {
                return Ok(Vec::new());
            }
            let (a, b) = (self.pending[0], self.pending[1]);
            let zlib = a & 0x0f == 8 && (u16::from(a) << 8 | u16::from(b)) % 31 == 0;
            self.kind = Kind::Deflate(Some(if zlib {
                DeflateKind::Zlib(flate2::write::ZlibDecoder::new(sink()))
            } else {
                DeflateKind::Raw(flate2::write::DeflateDecoder::new(sink()))
            }));
            joined = std::mem::take(&mut self.pending);
            data = &joined;
        }
        let allowed = self.limit.allowed(self.input);
        if let Some(s) = self.sink_mut() {
            s.limit = allowed;
        }
        let result = match self.writer() {
            Some(w) => w.write_all(data).and_then(|()| w.flush()),
            None => Ok(()),
        };
        if let Err(e) = result {
            return Err(self.error(e));
        }
        Ok(self
            .sink_mut()
            .map(|s| std::mem::take(&mut s.buf))
            .unwrap_or_default())
    }

    /// End of input: what remains, failing on a truncated stream. A body with no bytes at
    /// all (`HEAD`, `204`, `304`) decodes to nothing.
    pub fn finish(&mut self) -> Result<Vec<u8>, DecodeError> {
        if self.input == 0 {
            return Ok(Vec::new());
        }
        if self.failed {
            return Err(DecodeError::Corrupt {
                encoding: self.name,
                source: io::Error::other("the decoder failed earlier"),
            });
        }
        if let Kind::Deflate(None) = self.kind {
            // A single byte is no deflate stream.
            return Err(self.error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated deflate stream",
            )));
        }
        let result = match &mut self.kind {
            Kind::Gzip(d) => d.try_finish(),
            Kind::Deflate(Some(DeflateKind::Zlib(d))) => d.try_finish(),
            Kind::Deflate(Some(DeflateKind::Raw(d))) => d.try_finish(),
            Kind::Deflate(None) => Ok(()),
            Kind::Brotli(d) => d.close(),
            Kind::Zstd(d) => d.flush(),
        };
        if let Err(e) = result {
            return Err(self.error(e));
        }
        Ok(self
            .sink_mut()
            .map(|s| std::mem::take(&mut s.buf))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(name: &str, plain: &[u8]) -> Vec<u8> {
        match name {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            "raw-deflate" => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            "br" => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    w.write_all(plain).unwrap();
                }
                out
            }
            "zstd" => zstd::encode_all(plain, 3).unwrap(),
            _ => unreachable!(),
        }
    }

    fn decoder(name: &str) -> Decoder {
        match for_headers([name.as_bytes()], [], DecodeLimit::DEFAULT) {
            Encoding::Decode(d) => *d,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn decodes_every_supported_encoding_in_small_chunks() {
        let plain: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for (label, name) in [
            ("gzip", "gzip"),
            ("deflate", "deflate"),
            ("raw-deflate", "deflate"),
            ("br", "br"),
            ("zstd", "zstd"),
        ] {
            let compressed = compress(label, &plain);
            let mut d = decoder(name);
            let mut out = Vec::new();
            for c in compressed.chunks(7) {
                out.extend(d.push(c).unwrap());
            }
            out.extend(d.finish().unwrap());
            assert_eq!(out, plain, "{label}");
        }
    }

    /// Each flushed piece of a stream decodes in the push that delivers it, not one later.
    #[test]
    fn a_flushed_piece_decodes_in_the_same_push() {
        for name in ["gzip", "deflate", "br", "zstd"] {
            let pieces = [b"data: event 0\n\n".to_vec(), b"data: event 1\n\n".to_vec()];
            let flushed = flushed_pieces(name, &pieces);
            let mut d = decoder(name);
            for (i, z) in flushed.iter().enumerate() {
                assert_eq!(d.push(z).unwrap(), pieces[i], "{name} piece {i}");
            }
        }
    }

    /// The compressed bytes after writing and flushing each piece.
    fn flushed_pieces(name: &str, pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        macro_rules! run {
            ($enc:expr) => {{
                let mut e = $enc;
                for p in pieces {
                    e.write_all(p).unwrap();
                    e.flush().unwrap();
                    out.push(std::mem::take(e.get_mut()));
                }
            }};
        }
        match name {
            "gzip" => run!(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast()
            )),
            "deflate" => run!(flate2::write::ZlibEncoder::new(
                Vec::new(),
                flate2::Compression::fast()
            )),
            "br" => run!(brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22)),
            _ => run!(zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap()),
        }
        out
    }

    #[test]
    fn output_is_bounded_by_the_input() {
        let zeros = vec![0u8; 64 << 20];
        let limit = DecodeLimit {
            floor: 1 << 20,
            ratio: 16,
        };
        for name in ["gzip", "deflate", "br", "zstd"] {
            let bomb = compress(name, &zeros);
            let mut d = Decoder::new(name, limit).unwrap();
            let mut out = 0u64;
            let mut err = None;
            for c in bomb.chunks(4096) {
                match d.push(c) {
                    Ok(o) => out += o.len() as u64,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            let e = err.unwrap_or_else(|| panic!("{name}: the bomb decoded"));
            assert!(matches!(e, DecodeError::TooLarge { .. }), "{name}: {e}");
            assert!(out <= limit.allowed(d.input()), "{name}: {out}");
            assert!(format!("{e}").contains("decodes to more than"));
            // A failed decoder stays failed.
            assert!(d.push(b"x").is_err());
        }
    }

    #[test]
    fn labels_are_read_strictly() {
        let l = DecodeLimit::DEFAULT;
        let unsupported = |ce: &[&[u8]], te: &[&[u8]]| {
            matches!(
                for_headers(ce.iter().copied(), te.iter().copied(), l),
                Encoding::Unsupported(_)
            )
        };
        assert!(unsupported(&[b"compress"], &[]));
        assert!(unsupported(&[b"gzip, br"], &[]));
        assert!(unsupported(&[b"gzip", b"br"], &[]));
        assert!(unsupported(&[b"gzip\xc3\xa9"], &[]));
        assert!(unsupported(&[b"gzip;q=1"], &[]));
        assert!(unsupported(&[], &[b"gzip, chunked"]));
        assert!(unsupported(&[], &[b"chunked\xff"]));
        assert!(matches!(
            for_headers([&b"identity"[..]], [&b"chunked"[..]], l),
            Encoding::Identity
        ));
        assert!(matches!(
            for_headers([&b" GZIP "[..]], [], l),
            Encoding::Decode(_)
        ));
        assert!(matches!(for_headers([], [], l), Encoding::Identity));
        assert!(matches!(for_headers([&b""[..]], [], l), Encoding::Identity));
    }

    #[test]
    fn truncated_and_corrupt_bodies_fail_and_empty_bodies_are_empty() {
        let data = compress("gzip", &[7u8; 10_000]);
        let mut d = decoder("gzip");
        let _ = d.push(&data[..data.len() / 2]).unwrap();
        assert!(matches!(d.finish(), Err(DecodeError::Corrupt { .. })));
        for name in ["gzip", "deflate", "br", "zstd"] {
            assert_eq!(decoder(name).finish().unwrap(), b"", "{name}");
            let mut d = decoder(name);
            let r = d.push(b"this is not compressed at all, not even a little bit");
            assert!(r.is_err() || d.finish().is_err(), "{name}");
        }
    }

    #[test]
    fn accept_encoding_keeps_only_what_decodes() {
        assert_eq!(
            accept_encoding(b"gzip, deflate, br, zstd, dcb, dcz").as_deref(),
            Some("gzip, deflate, br, zstd")
        );
        assert_eq!(
            accept_encoding(b"br;q=1.0, compress;q=0.5, *;q=0.1").as_deref(),
            Some("br;q=1.0")
        );
        assert_eq!(accept_encoding(b"compress"), None);
        assert_eq!(accept_encoding(b"identity").as_deref(), Some("identity"));
    }
}
