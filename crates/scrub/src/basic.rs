//! Decoding HTTP `Basic` credentials, so that a placeholder hidden in `user:password` is seen.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// Standard alphabet, padding optional: clients differ, and a strict decoder would let a
/// placeholder slip past detection merely by dropping the `=`.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode the credentials of an HTTP `Basic` authorization value ("Basic <b64>", scheme
/// case-insensitive, surrounding whitespace ignored); None if not Basic or not valid base64.
pub fn decode_basic(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ' || b == b'\t')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let encoded = rest.trim_ascii();
    if encoded.is_empty() {
        return None;
    }
    LENIENT.decode(encoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic() {
        assert_eq!(decode_basic(b"Basic dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(
            decode_basic(b"bAsIc   dXNlcjpwYXNz  ").unwrap(),
            b"user:pass"
        );
        assert_eq!(decode_basic(b" BASIC\tdXNlcjpwYXM=").unwrap(), b"user:pas");
        assert_eq!(decode_basic(b"Basic dXNlcjpwYXM").unwrap(), b"user:pas");
    }

    #[test]
    fn rejects_other_schemes_and_bad_base64() {
        assert_eq!(decode_basic(b"Bearer dXNlcjpwYXNz"), None);
        assert_eq!(decode_basic(b"Basic"), None);
        assert_eq!(decode_basic(b"Basic "), None);
        assert_eq!(decode_basic(b"Basicx dXNl"), None);
        assert_eq!(decode_basic(b"Basic dXNl*cjp"), None);
        assert_eq!(decode_basic(b"Basic dXNlcjpwYXNz dXNl"), None);
        assert_eq!(decode_basic(b""), None);
    }
}
