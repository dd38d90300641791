//! Push-style decoders for response content encodings, so a compressed response can be
//! scrubbed as it streams. An encoding not listed here cannot be scrubbed, and the
//! response is withheld rather than passed through unchecked.

use std::io::Write;

/// One streaming decoder. `push` takes compressed bytes and returns what decoded so far.
pub enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Gzip(_) => "Decoder::Gzip",
            Decoder::Deflate(_) => "Decoder::Deflate",
            Decoder::Brotli(_) => "Decoder::Brotli",
            Decoder::Zstd(_) => "Decoder::Zstd",
        })
    }
}

/// What `Content-Encoding` says about a response.
#[derive(Debug)]
pub enum Encoding {
    Identity,
    Decode(Box<Decoder>),
    /// Not decodable here (unknown, or several stacked encodings).
    Unsupported(String),
}

/// Interpret a response's `Content-Encoding` header values.
pub fn for_header(values: &[&str]) -> Encoding {
    let tokens: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "identity")
        .collect();
    match tokens.as_slice() {
        [] => Encoding::Identity,
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Encoding::Decode(Box::new(Decoder::Gzip(
                flate2::write::GzDecoder::new(Vec::new()),
            ))),
            "deflate" => Encoding::Decode(Box::new(Decoder::Deflate(
                flate2::write::ZlibDecoder::new(Vec::new()),
            ))),
            "br" => Encoding::Decode(Box::new(Decoder::Brotli(Box::new(
                brotli::DecompressorWriter::new(Vec::new(), 8192),
            )))),
            "zstd" => match zstd::stream::write::Decoder::new(Vec::new()) {
                Ok(d) => Encoding::Decode(Box::new(Decoder::Zstd(d))),
                Err(_) => Encoding::Unsupported(one.clone()),
            },
            other => Encoding::Unsupported(other.to_string()),
        },
        many => Encoding::Unsupported(many.join(", ")),
    }
}

impl Decoder {
    /// Decode a chunk; returns the plain bytes available so far.
    pub fn push(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.write_all(chunk)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.write_all(chunk)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zstd(d) => {
                d.write_all(chunk)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    /// End of input: flush what remains, failing on a truncated stream.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zstd(d) => {
                d.flush()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(name: &str, compressed: Vec<u8>, plain: &[u8]) {
        let Encoding::Decode(mut d) = for_header(&[name]) else {
            panic!("{name} not decodable")
        };
        let mut out = Vec::new();
        for c in compressed.chunks(7) {
            out.extend(d.push(c).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, plain, "{name}");
    }

    #[test]
    fn decodes_every_supported_encoding_in_small_chunks() {
        let plain: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        roundtrip("gzip", gz.finish().unwrap(), &plain);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&plain).unwrap();
        roundtrip("deflate", z.finish().unwrap(), &plain);
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&plain).unwrap();
        }
        roundtrip("br", br, &plain);
        roundtrip("zstd", zstd::encode_all(&plain[..], 3).unwrap(), &plain);
    }

    #[test]
    fn unknown_or_stacked_encodings_are_unsupported() {
        assert!(matches!(
            for_header(&["compress"]),
            Encoding::Unsupported(_)
        ));
        assert!(matches!(
            for_header(&["gzip, br"]),
            Encoding::Unsupported(_)
        ));
        assert!(matches!(for_header(&["identity"]), Encoding::Identity));
        assert!(matches!(for_header(&[]), Encoding::Identity));
    }

    #[test]
    fn truncated_gzip_fails() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 10_000]).unwrap();
        let data = gz.finish().unwrap();
        let Encoding::Decode(mut d) = for_header(&["gzip"]) else {
            panic!()
        };
        let _ = d.push(&data[..data.len() / 2]).unwrap();
        assert!(d.finish().is_err());
    }
}
