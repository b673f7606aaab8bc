//! UCS-2 / UTF-16LE strings as the firmware stores them.
//!
//! Descriptions and file paths in boot variables are NUL-terminated
//! little-endian 16-bit code units. The terminator is searched on 2-byte
//! boundaries only (a zero byte inside a code unit is not a terminator), and
//! unpaired surrogates are an error rather than a silent replacement.

use thiserror::Error;

/// A string that is not valid UCS-2/UTF-16LE.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Ucs2Error {
    #[error("odd number of bytes ({0}) in a UCS-2 string")]
    OddLength(usize),
    #[error("no NUL terminator found in {0} bytes of UCS-2 text")]
    Unterminated(usize),
    #[error("unpaired UTF-16 surrogate 0x{unit:04x} at code unit {index}")]
    UnpairedSurrogate { unit: u16, index: usize },
}

/// Decodes code units (no terminator) into a `String`, rejecting unpaired surrogates.
pub fn decode_units(units: &[u16]) -> Result<String, Ucs2Error> {
    let mut out = String::with_capacity(units.len());
    let mut index = 0;
    for item in char::decode_utf16(units.iter().copied()) {
        match item {
            Ok(c) => {
                index += c.len_utf16();
                out.push(c);
            }
            Err(e) => {
                return Err(Ucs2Error::UnpairedSurrogate {
                    unit: e.unpaired_surrogate(),
                    index,
                });
            }
        }
    }
    Ok(out)
}

/// Splits `bytes` at the first NUL code unit (on a 2-byte boundary).
///
/// Returns the decoded string and the number of bytes consumed, terminator included.
pub fn decode_nul_terminated(bytes: &[u8]) -> Result<(String, usize), Ucs2Error> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let consumed = (units.len() + 1) * 2;
    if consumed > bytes.len() {
        return Err(Ucs2Error::Unterminated(bytes.len()));
    }
    Ok((decode_units(&units)?, consumed))
}

/// Decodes a whole buffer that must be NUL-terminated exactly at its end.
///
/// An odd length, or a NUL before the end, is an error.
pub fn decode_exact(bytes: &[u8]) -> Result<String, Ucs2Error> {
    if !bytes.len().is_multiple_of(2) {
        return Err(Ucs2Error::OddLength(bytes.len()));
    }
    let (s, used) = decode_nul_terminated(bytes)?;
    if used != bytes.len() {
        // Text after the terminator cannot be represented as a string; the
        // caller keeps such data as raw bytes.
        return Err(Ucs2Error::Unterminated(bytes.len()));
    }
    Ok(s)
}

/// Encodes `s` as UTF-16LE followed by a NUL code unit.
pub fn encode_nul_terminated(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity((s.len() + 1) * 2);
    for unit in s.encode_utf16().chain(std::iter::once(0)) {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminator_is_found_on_two_byte_boundaries_only() {
        // "Ā" is 0x0100: its low byte is zero, which a byte-wise scan would take as the end.
        let bytes = [0x00, 0x01, b'x', 0x00, 0x00, 0x00, 0xAA];
        let (s, used) = decode_nul_terminated(&bytes).unwrap();
        assert_eq!(s, "\u{100}x");
        assert_eq!(used, 6);
    }

    #[test]
    fn unpaired_surrogates_are_rejected() {
        let high_alone = [0x00, 0xD8, b'a', 0x00, 0, 0];
        assert_eq!(
            decode_nul_terminated(&high_alone),
            Err(Ucs2Error::UnpairedSurrogate {
                unit: 0xD800,
                index: 0
            })
        );
        let low_alone = [b'a', 0x00, 0x00, 0xDC, 0, 0];
        assert_eq!(
            decode_nul_terminated(&low_alone),
            Err(Ucs2Error::UnpairedSurrogate {
                unit: 0xDC00,
                index: 1
            })
        );
    }

    #[test]
    fn surrogate_pairs_round_trip() {
        let s = "slot 🅰";
        let bytes = encode_nul_terminated(s);
        assert_eq!(decode_exact(&bytes).unwrap(), s);
    }

    #[test]
    fn missing_terminator_and_odd_length_are_errors() {
        assert_eq!(
            decode_nul_terminated(b"a\0b\0"),
            Err(Ucs2Error::Unterminated(4))
        );
        assert_eq!(decode_nul_terminated(b"a"), Err(Ucs2Error::Unterminated(1)));
        assert_eq!(decode_exact(b"a\0\0"), Err(Ucs2Error::OddLength(3)));
        assert_eq!(decode_exact(b"\0\0a\0"), Err(Ucs2Error::Unterminated(4)));
    }
}
