//! The manifest: what a bundle contains (product, version, payloads with their
//! sizes, hashes, chunk hashes and dm-verity parameters). It is JSON, covered
//! by the signatures, and checked by [`Manifest::parse`] before any use.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Smallest and largest chunk size a manifest may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Chunk size `create_bundle` uses unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Block size of the block index `create_bundle` writes unless told
/// otherwise: 4 KiB, the granularity of filesystem changes (and of
/// dm-verity), so a scattered change costs one block (docs/bundle-format.md,
/// "Block index": measured against 8 and 16 KiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Largest block index of one payload (32 bytes per block, 8 per zstd
/// frame): 32 GiB of payload at 4 KiB blocks.
pub const MAX_INDEX_LEN: u64 = 256 * 1024 * 1024;
/// Most payloads a manifest may list. abkit writes two (`efi`, `system`);
/// the cap leaves room for format growth and keeps every per-payload check
/// (threads, temporary files, lookups) small whatever a bundle declares.
pub const MAX_PAYLOADS: usize = 64;
/// The only dm-verity block size (data and hash) abkit writes and accepts.
pub const VERITY_BLOCK_SIZE: u32 = 4096;

/// A 32-byte digest (BLAKE3 or SHA-256, as the field that holds it says),
/// written in JSON as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: &str = Deserialize::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Digest(out))
    }
}

/// The hash of a stored chunk (`payloads[].chunks`) and of a whole payload
/// (`payloads[].blake3`) in format 3: BLAKE3-256, key-less. Every reader
/// that checks chunks calls this, so the algorithm has one owner.
pub fn content_hash(bytes: &[u8]) -> Digest {
    Digest(*blake3::hash(bytes).as_bytes())
}

/// Bytes written in JSON as lowercase hex (the dm-verity salt).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HexBytes(pub Vec<u8>);

impl std::fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0))
    }
}

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: &str = Deserialize::deserialize(d)?;
        hex::decode(s)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// How a payload's bytes are stored in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// One or more zstd frames; chunk hashes cover the compressed bytes.
    Zstd,
}

/// The signed description of one bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Product identifier; a device installs only bundles for its own product.
    pub compatible: String,
    /// Version of the OS this bundle installs.
    pub version: semver::Version,
    /// Oldest installed version this bundle may update (none: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<semver::Version>,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created: u64,
    /// Size of every chunk of stored bytes except the last of each payload;
    /// for zstd payloads also the decompressed size of every frame but the
    /// last (each frame is compressed on its own, see the block index).
    pub chunk_size: u32,
    /// Size of the blocks of the payloads' block indexes: a power of two,
    /// 4 KiB ..= `chunk_size`.
    pub block_size: u32,
    /// The payloads, in the order their bytes follow in the bundle.
    pub payloads: Vec<PayloadEntry>,
}

/// One payload: its identity, sizes, hashes and (for the system image) verity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadEntry {
    /// `efi` (the loader/UKI) or `system` (the image with its verity tree);
    /// other names are allowed by the format: `[a-z0-9_-]{1,64}`.
    pub name: String,
    /// Size of the payload once decompressed (what lands on disk).
    pub size: u64,
    /// BLAKE3 of the decompressed payload (format 3; SHA-256 in format 2).
    pub blake3: Digest,
    pub compression: Compression,
    /// Number of bytes the payload occupies in the bundle.
    pub stored_size: u64,
    /// BLAKE3 of each `chunk_size` piece of the stored bytes, in order
    /// (format 3; SHA-256 in format 2).
    pub chunks: Vec<Digest>,
    /// The payload's block index (placed after the signatures): its length
    /// and BLAKE3, so the signature covers every block hash in it.
    pub index: IndexRef,
    /// dm-verity parameters when the payload is an image with a hash tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityParams>,
}

/// Where the signature reaches a payload's block index: its exact length
/// and its BLAKE3 (see [`crate::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRef {
    pub size: u64,
    pub blake3: Digest,
}

/// How to check a payload with dm-verity (`veritysetup verify IMG IMG ROOT --hash-offset DATA`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityParams {
    /// Always `sha256`.
    pub algorithm: String,
    pub root_hash: Digest,
    /// Salt, at most 256 bytes.
    pub salt: HexBytes,
    /// 4096.
    pub data_block_size: u32,
    /// 4096.
    pub hash_block_size: u32,
    /// Size of the (padded) filesystem data; the verity superblock starts here.
    pub data_size: u64,
    /// Byte offset of the superblock in the payload: equal to `data_size`.
    pub hash_offset: u64,
}

impl Manifest {
    /// Parses manifest JSON and checks every rule in [`Manifest::validate`].
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(Error::ManifestJson)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Serializes the manifest (compact JSON) after checking it.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate()?;
        serde_json::to_vec(self).map_err(Error::ManifestJson)
    }

    /// Finds a payload by name.
    pub fn payload(&self, name: &str) -> Option<&PayloadEntry> {
        self.payloads.iter().find(|p| p.name == name)
    }

    /// Checks the rules the JSON schema cannot express: payload count, names,
    /// chunk counts, sizes and verity parameters that agree with each other.
    /// Linear in the size of the manifest.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::ManifestInvalid(msg));
        if self.compatible.is_empty()
            || self.compatible.len() > 256
            || self.compatible.chars().any(|c| c.is_control())
        {
            return bad("`compatible` must be 1..=256 printable characters".into());
        }
        check_chunk_size(self.chunk_size)?;
        if !self.block_size.is_power_of_two()
            || self.block_size < MIN_CHUNK_SIZE
            || self.block_size > self.chunk_size
        {
            return bad(format!(
                "block_size {} must be a power of two in {MIN_CHUNK_SIZE}..=chunk_size ({})",
                self.block_size, self.chunk_size
            ));
        }
        if let Some(min) = &self.min_version
            && min > &self.version
        {
            return bad(format!(
                "min_version {min} is newer than version {}",
                self.version
            ));
        }
        if self.payloads.is_empty() {
            return bad("no payloads".into());
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(Error::TooManyPayloads {
                count: self.payloads.len(),
                max: MAX_PAYLOADS,
            });
        }
        let mut names = HashSet::with_capacity(self.payloads.len());
        for p in &self.payloads {
            if !valid_name(&p.name) {
                return bad(format!(
                    "payload name {:?} must match [a-z0-9_-]{{1,64}}",
                    p.name
                ));
            }
            if !names.insert(p.name.as_str()) {
                return bad(format!("payload `{}` appears twice", p.name));
            }
            if p.compression == Compression::None && p.stored_size != p.size {
                return bad(format!(
                    "payload `{}`: stored_size {} differs from size {} without compression",
                    p.name, p.stored_size, p.size
                ));
            }
            let expected_chunks = p.stored_size.div_ceil(u64::from(self.chunk_size));
            if p.chunks.len() as u64 != expected_chunks {
                return bad(format!(
                    "payload `{}`: {} chunk hashes for {} stored bytes, expected {expected_chunks}",
                    p.name,
                    p.chunks.len(),
                    p.stored_size
                ));
            }
            let index_len = crate::index::index_len(p, self.block_size, self.chunk_size);
            if index_len > MAX_INDEX_LEN {
                return bad(format!(
                    "payload `{}`: a block index of {index_len} bytes is over {MAX_INDEX_LEN}: use a larger block size",
                    p.name
                ));
            }
            if p.index.size != index_len {
                return bad(format!(
                    "payload `{}`: index size {} does not match {} bytes of blocks and frames ({index_len})",
                    p.name, p.index.size, p.size
                ));
            }
            if let Some(v) = &p.verity {
                v.validate(&p.name, p.size)?;
            }
        }
        Ok(())
    }
}

impl VerityParams {
    fn validate(&self, name: &str, payload_size: u64) -> Result<()> {
        let bad = |msg: &str| {
            Err(Error::ManifestInvalid(format!(
                "payload `{name}` verity: {msg}"
            )))
        };
        if self.algorithm != "sha256" {
            return bad("algorithm must be sha256");
        }
        if self.data_block_size != VERITY_BLOCK_SIZE || self.hash_block_size != VERITY_BLOCK_SIZE {
            return bad("data and hash block sizes must be 4096");
        }
        if self.salt.0.len() > crate::verity::MAX_SALT_LEN {
            return bad("salt is longer than 256 bytes");
        }
        if self.data_size == 0 || !self.data_size.is_multiple_of(u64::from(VERITY_BLOCK_SIZE)) {
            return bad("data_size must be a positive multiple of 4096");
        }
        if self.hash_offset != self.data_size {
            return bad("hash_offset must equal data_size");
        }
        let expected = self
            .data_size
            .checked_add(crate::verity::hash_area_size(self.data_size / 4096));
        if expected != Some(payload_size) {
            let expected = expected.map_or("more than 2^64".to_string(), |e| e.to_string());
            return bad(&format!(
                "payload size {payload_size} does not match data plus hash tree ({expected})"
            ));
        }
        Ok(())
    }
}

/// Chunk sizes are multiples of 4096 in 4 KiB..=4 MiB (readers keep a few
/// chunks in memory, so this bounds their memory use).
pub fn check_chunk_size(chunk_size: u32) -> Result<()> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        || !chunk_size.is_multiple_of(MIN_CHUNK_SIZE)
    {
        return Err(Error::ManifestInvalid(format!(
            "chunk_size {chunk_size} must be a multiple of {MIN_CHUNK_SIZE} in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

/// Payload names: `[a-z0-9_-]{1,64}` (they become file names in `extract`).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            compatible: "demo-os".into(),
            version: "1.2.0".parse().unwrap(),
            min_version: Some("1.0.0".parse().unwrap()),
            created: 1_700_000_000,
            chunk_size: DEFAULT_CHUNK_SIZE,
            block_size: DEFAULT_BLOCK_SIZE,
            payloads: vec![PayloadEntry {
                name: "efi".into(),
                size: 3,
                blake3: Digest([7; 32]),
                compression: Compression::None,
                stored_size: 3,
                chunks: vec![Digest([1; 32])],
                index: IndexRef {
                    size: 32,
                    blake3: Digest([2; 32]),
                },
                verity: None,
            }],
        }
    }

    #[test]
    fn json_round_trip_uses_hex_and_names() {
        let m = sample();
        let json = m.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""blake3":"0707070707"#), "{text}");
        assert!(!text.contains("sha256"), "{text}");
        assert!(text.contains(r#""compression":"none""#), "{text}");
        assert!(text.contains(r#""version":"1.2.0""#), "{text}");
        assert_eq!(Manifest::parse(&json).unwrap(), m);
    }

    #[test]
    fn validation_names_each_problem() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|m| m.compatible.clear()), "compatible"),
            (Box::new(|m| m.chunk_size = 1000), "chunk_size"),
            (Box::new(|m| m.chunk_size = u32::MAX - 4095), "chunk_size"),
            (Box::new(|m| m.block_size = 12288), "block_size"),
            (Box::new(|m| m.block_size = 2048), "block_size"),
            (
                Box::new(|m| m.block_size = 2 * DEFAULT_CHUNK_SIZE),
                "block_size",
            ),
            (Box::new(|m| m.payloads[0].index.size = 64), "index size"),
            (
                Box::new(|m| m.min_version = Some("9.0.0".parse().unwrap())),
                "min_version",
            ),
            (Box::new(|m| m.payloads.clear()), "no payloads"),
            (
                Box::new(|m| m.payloads[0].name = "../etc".into()),
                "payload name",
            ),
            (
                Box::new(|m| m.payloads.push(m.payloads[0].clone())),
                "twice",
            ),
            (Box::new(|m| m.payloads[0].stored_size = 4), "stored_size"),
            (
                Box::new(|m| m.payloads[0].chunks.push(Digest([0; 32]))),
                "chunk hashes",
            ),
            (
                Box::new(|m| {
                    m.payloads[0].size = u64::MAX;
                    m.payloads[0].stored_size = u64::MAX;
                }),
                "chunk hashes",
            ),
        ];
        for (mutate, needle) in cases {
            let mut m = sample();
            mutate(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn verity_params_must_agree_with_payload_size() {
        let mut m = sample();
        let data_size = 8 * 4096;
        m.payloads[0].verity = Some(VerityParams {
            algorithm: "sha256".into(),
            root_hash: Digest([0; 32]),
            salt: HexBytes(vec![1; 32]),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_size,
            hash_offset: data_size,
        });
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("does not match data plus hash tree"), "{err}");
        let size = data_size + crate::verity::hash_area_size(8);
        m.payloads[0].size = size;
        m.payloads[0].stored_size = size;
        m.payloads[0].index.size = size.div_ceil(4096) * 32;
        m.validate().unwrap();
        let huge = u64::MAX - 4095;
        let v = m.payloads[0].verity.as_mut().unwrap();
        (v.data_size, v.hash_offset) = (huge, huge);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("more than 2^64"), "{err}");
        let v = m.payloads[0].verity.as_mut().unwrap();
        (v.data_size, v.hash_offset) = (data_size, data_size);
        m.payloads[0].verity.as_mut().unwrap().algorithm = "md5".into();
        assert!(m.validate().unwrap_err().to_string().contains("sha256"));
    }

    #[test]
    fn unknown_fields_and_bad_hex_are_refused() {
        let json = String::from_utf8(sample().to_json().unwrap()).unwrap();
        let extra = json.replacen('{', r#"{"evil":1,"#, 1);
        assert!(matches!(
            Manifest::parse(extra.as_bytes()),
            Err(Error::ManifestJson(_))
        ));
        let badhex = json.replace("0707", "zz07");
        assert!(matches!(
            Manifest::parse(badhex.as_bytes()),
            Err(Error::ManifestJson(_))
        ));
    }
}
