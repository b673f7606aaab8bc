//! The bundle's fixed byte layout: header, signature entries and the message
//! the signatures cover. Everything variable-length is in the JSON manifest.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "ABKITBDL"
//! 8       4     format version, u32 LE (= 3)
//! 12      4     flags, u32 LE (must be 0)
//! 16      8     manifest length in bytes, u64 LE (1..=1 MiB)
//! 24      4     signature count, u32 LE (0..=16; 0 is refused by readers)
//! 28      4     reserved, u32 LE (must be 0)
//! 32      M     manifest (UTF-8 JSON)
//! 32+M    96*S  signatures: 32-byte Ed25519 public key, 64-byte signature
//! ...           block indexes, one per payload in manifest order (`index.size` bytes each)
//! ...           payloads, stored bytes, in manifest order, nothing between them
//! ```
//!
//! Version 2 (abkit 0.3) added the block indexes ([`crate::index`]) that
//! delta installs fetch ranges by; version 3 (issue 14) made the chunk
//! hashes and the whole-payload hash BLAKE3 instead of SHA-256. Versions 1
//! and 2 are refused with [`Error::OldFormatVersion`] (rebuild the bundle).
//!
//! Each signature covers [`signed_message`]: a context string, header bytes
//! 0..24 (everything but the signature count) and the manifest bytes.

use crate::{Error, Result};

/// First eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"ABKITBDL";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 3;
/// Versions this crate knows it no longer reads: refused as
/// [`Error::OldFormatVersion`] (rebuild the bundle), not as unknown.
pub const OLD_FORMAT_VERSIONS: [u32; 2] = [1, 2];
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest manifest a reader accepts (checked before allocating) and a
/// writer produces. A 4 GiB image at the default 1 MiB chunk size needs
/// about 275 KiB (67 bytes of JSON per chunk hash), so 1 MiB leaves room for
/// about 15 000 chunks (15 GiB at 1 MiB chunks, 60 GiB at 4 MiB) while
/// keeping what an unsigned head can make `inspect` parse small.
pub const MAX_MANIFEST_LEN: u64 = 1024 * 1024;
/// Most signatures a bundle may carry.
pub const MAX_SIGNATURES: u32 = 16;
/// Size of one signature entry: public key then signature.
pub const SIGNATURE_ENTRY_LEN: usize = 32 + 64;
/// Domain separation: prefix of the signed message, so a signature over a
/// bundle can never be replayed as a signature over something else.
pub const SIGNATURE_CONTEXT: &[u8] = b"abkit-bundle-signature-v1\0";
/// Size of the header prefix that signatures cover (all but the count).
pub const SIGNED_HEADER_LEN: usize = 24;

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format_version: u32,
    pub manifest_len: u64,
    pub signature_count: u32,
}

impl Header {
    /// Encodes the header (the version is always [`FORMAT_VERSION`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        // 12..16 flags: zero.
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.signature_count.to_le_bytes());
        // 28..32 reserved: zero.
        b
    }

    /// Decodes and checks a header: magic, version, zero fields and the
    /// bounds on manifest size and signature count.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let format_version = le_u32(&b[8..12]);
        if OLD_FORMAT_VERSIONS.contains(&format_version) {
            return Err(Error::OldFormatVersion {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        if format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        expect_zero("flags", &b[12..16])?;
        let manifest_len = le_u64(&b[16..24]);
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(Error::ManifestSize {
                len: manifest_len,
                max: MAX_MANIFEST_LEN,
            });
        }
        let signature_count = le_u32(&b[24..28]);
        if signature_count > MAX_SIGNATURES {
            return Err(Error::TooManySignatures {
                count: signature_count,
                max: MAX_SIGNATURES,
            });
        }
        expect_zero("reserved", &b[28..32])?;
        Ok(Header {
            format_version,
            manifest_len,
            signature_count,
        })
    }
}

/// Refuses a header field that must be zero (the flags, the reserved
/// word): a later format may give it a meaning this reader would ignore.
fn expect_zero(field: &'static str, bytes: &[u8]) -> Result<()> {
    match le_u32(bytes) {
        0 => Ok(()),
        value => Err(Error::ReservedFieldSet {
            field,
            value: value.into(),
        }),
    }
}

/// The bytes every signature signs: context, header bytes 0..24, manifest.
pub fn signed_message(header: &Header, manifest: &[u8]) -> Vec<u8> {
    let encoded = header.encode();
    let mut msg = Vec::with_capacity(SIGNATURE_CONTEXT.len() + SIGNED_HEADER_LEN + manifest.len());
    msg.extend_from_slice(SIGNATURE_CONTEXT);
    msg.extend_from_slice(&encoded[..SIGNED_HEADER_LEN]);
    msg.extend_from_slice(manifest);
    msg
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_documented_bytes() {
        let h = Header {
            format_version: FORMAT_VERSION,
            manifest_len: 0x0102,
            signature_count: 2,
        };
        let b = h.encode();
        assert_eq!(&b[..8], b"ABKITBDL");
        assert_eq!(&b[8..12], &[3, 0, 0, 0]);
        assert_eq!(&b[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..28], &[2, 0, 0, 0]);
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn header_rejects_each_bad_field() {
        let good = Header {
            format_version: FORMAT_VERSION,
            manifest_len: 10,
            signature_count: 1,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(Error::BadMagic { .. })));
        let mut b = good;
        b[8] = 4;
        assert!(matches!(
            Header::decode(&b),
            Err(Error::UnsupportedFormatVersion { found: 4, .. })
        ));
        for old in [1u8, 2] {
            let mut b = good;
            b[8] = old;
            assert!(matches!(
                Header::decode(&b),
                Err(Error::OldFormatVersion { found, supported: 3 }) if found == u32::from(old)
            ));
        }
        let mut b = good;
        b[12] = 1;
        assert!(matches!(
            Header::decode(&b),
            Err(Error::ReservedFieldSet { field: "flags", .. })
        ));
        let mut b = good;
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(Error::ManifestSize { len: u64::MAX, .. })
        ));
        let mut b = good;
        b[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(Error::ManifestSize { len: 0, .. })
        ));
        let mut b = good;
        b[24..28].copy_from_slice(&17u32.to_le_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(Error::TooManySignatures { count: 17, .. })
        ));
        let mut b = good;
        b[31] = 1;
        assert!(matches!(
            Header::decode(&b),
            Err(Error::ReservedFieldSet {
                field: "reserved",
                ..
            })
        ));
    }

    #[test]
    fn signed_message_excludes_signature_count() {
        let a = Header {
            format_version: FORMAT_VERSION,
            manifest_len: 3,
            signature_count: 1,
        };
        let b = Header {
            signature_count: 5,
            ..a
        };
        assert_eq!(signed_message(&a, b"abc"), signed_message(&b, b"abc"));
        assert!(signed_message(&a, b"abc").ends_with(b"abc"));
    }
}
