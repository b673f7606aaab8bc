//! The bad-input matrix: truncation, flipped bits per region, wrong or
//! missing keys, unknown versions, absurd sizes, trailing data, zstd bombs.
//! Every case must end in the named typed error, never a panic, and no
//! payload may reach a verified end of file with bytes that differ from what
//! was signed.

mod common;

use std::io::Write as _;

use abkit_bundle::format::{HEADER_LEN, SIGNATURE_ENTRY_LEN};
use abkit_bundle::manifest::Digest;
use abkit_bundle::writer::write_head;
use abkit_bundle::{BundleHead, Compression, Error, IndexRef, Manifest, PayloadEntry, SecretKey};
use common::*;

struct Fixture {
    bytes: Vec<u8>,
    efi: Vec<u8>,
    /// The system payload as signed (image, padding, hash area).
    system_payload: Vec<u8>,
    manifest: Manifest,
    manifest_len: usize,
}

impl Fixture {
    fn new(compression: Compression) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, efi, _) =
            make_bundle(dir.path(), 20_000, 150_000, compression, 4096, &[key(1)]);
        let outcome = consume(&bytes[..], &ring(&[&key(1)]));
        assert!(outcome.error.is_none());
        let head = BundleHead::read(&mut &bytes[..]).unwrap();
        Fixture {
            system_payload: outcome.finished[1].1.clone(),
            efi,
            manifest_len: head.raw.manifest_bytes.len(),
            manifest: head.manifest,
            bytes,
        }
    }

    /// Where the block indexes start: after the one signature.
    fn indexes_start(&self) -> usize {
        HEADER_LEN + self.manifest_len + SIGNATURE_ENTRY_LEN
    }

    fn payloads_start(&self) -> usize {
        self.indexes_start()
            + self
                .manifest
                .payloads
                .iter()
                .map(|p| p.index.size as usize)
                .sum::<usize>()
    }

    /// Reads `bytes` with the trusted key and checks the safety property.
    fn run(&self, bytes: &[u8]) -> Outcome {
        let outcome = std::panic::catch_unwind(|| consume(bytes, &ring(&[&key(1)])))
            .expect("reader panicked");
        for (name, got) in &outcome.finished {
            let expected = if name == "efi" {
                &self.efi
            } else {
                &self.system_payload
            };
            assert_eq!(
                got, expected,
                "payload {name} reached EOF with unsigned bytes"
            );
        }
        outcome
    }

    fn error(&self, bytes: &[u8]) -> Error {
        self.run(bytes)
            .error
            .expect("corrupted bundle was accepted")
    }
}

/// Signs `manifest` and appends its block indexes (all zero bytes, as
/// [`single_payload`] signs them) and the given stored payload bytes.
fn craft(manifest: &Manifest, stored: &[&[u8]], keys: &[SecretKey]) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).unwrap();
    let mut out = Vec::new();
    write_head(&mut out, &json, keys).unwrap();
    for p in &manifest.payloads {
        out.extend(std::iter::repeat_n(
            0u8,
            p.index.size.min(64 << 20) as usize,
        ));
    }
    for s in stored {
        out.write_all(s).unwrap();
    }
    out
}

fn hash(data: &[u8]) -> Digest {
    abkit_bundle::manifest::content_hash(data)
}

fn chunks(data: &[u8], chunk_size: usize) -> Vec<Digest> {
    data.chunks(chunk_size).map(hash).collect()
}

/// A signed manifest for one payload; its block index is all zero bytes
/// (what [`craft`] writes): the streaming reader checks only its BLAKE3.
fn single_payload(name: &str, data: &[u8], compression: Compression, stored: &[u8]) -> Manifest {
    let mut entry = PayloadEntry {
        name: name.into(),
        size: data.len() as u64,
        blake3: hash(data),
        compression,
        stored_size: stored.len() as u64,
        chunks: chunks(stored, 4096),
        index: IndexRef {
            size: 0,
            blake3: Digest([0; 32]),
        },
        verity: None,
    };
    let len = abkit_bundle::index::index_len(&entry, 4096, 4096);
    entry.index = IndexRef {
        size: len,
        blake3: Digest(abkit_bundle::index::block_hash(&vec![0; len as usize])),
    };
    Manifest {
        compatible: "demo-os".into(),
        version: "1.0.0".parse().unwrap(),
        min_version: None,
        created: 0,
        chunk_size: 4096,
        block_size: 4096,
        payloads: vec![entry],
    }
}

#[test]
fn truncation_at_every_section_boundary_and_random_offsets() {
    for compression in [Compression::None, Compression::Zstd] {
        let f = Fixture::new(compression);
        let start = f.payloads_start();
        let indexes = f.indexes_start();
        let efi_stored = f.manifest.payloads[0].stored_size as usize;
        let mut cuts = vec![
            (0, "header"),
            (8, "header"),
            (HEADER_LEN - 1, "header"),
            (HEADER_LEN, "manifest"),
            (HEADER_LEN + f.manifest_len / 2, "manifest"),
            (HEADER_LEN + f.manifest_len, "signature 0"),
            (indexes - 1, "signature 0"),
            (indexes, "block index of `efi`"),
            (start - 1, "block index of `system`"),
            (start, "payload `efi` chunk 0"),
            (start + 4096, "payload `efi` chunk 1"),
            (start + efi_stored - 1, "payload `efi` chunk"),
            (start + efi_stored, "payload `system` chunk 0"),
            (start + efi_stored + 4096 + 1, "payload `system` chunk 1"),
            (f.bytes.len() - 1, "payload `system` chunk"),
        ];
        let mut x = 12345u64;
        for _ in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            cuts.push(((x >> 33) as usize % f.bytes.len(), ""));
        }
        for (cut, section) in cuts {
            match f.error(&f.bytes[..cut]) {
                Error::Truncated { section: s } => {
                    assert!(s.contains(section), "cut {cut}: {s} vs {section}")
                }
                other => panic!("cut at {cut} ({compression:?}): expected Truncated, got {other}"),
            }
        }
    }
}

#[test]
fn a_flipped_bit_in_each_region_is_caught_by_name() {
    let f = Fixture::new(Compression::None);
    let start = f.payloads_start();
    let sig = HEADER_LEN + f.manifest_len;
    let efi_stored = f.manifest.payloads[0].stored_size as usize;
    let check = |offset: usize, bit: u8, expect: &dyn Fn(&Error) -> bool, what: &str| {
        let mut b = f.bytes.clone();
        b[offset] ^= 1 << bit;
        let err = f.error(&b);
        assert!(expect(&err), "{what} (byte {offset}): got {err}");
    };
    check(0, 0, &|e| matches!(e, Error::BadMagic { .. }), "magic");
    check(
        8,
        2,
        &|e| matches!(e, Error::UnsupportedFormatVersion { found: 7, .. }),
        "version",
    );
    check(
        8,
        0,
        &|e| matches!(e, Error::OldFormatVersion { found: 2, .. }),
        "version 2",
    );
    check(
        f.indexes_start() + 7,
        2,
        &|e| matches!(e, Error::IndexHashMismatch { payload } if payload == "efi"),
        "block index",
    );
    check(
        13,
        0,
        &|e| matches!(e, Error::ReservedFieldSet { field: "flags", .. }),
        "flags",
    );
    check(
        23,
        7,
        &|e| matches!(e, Error::ManifestSize { .. }),
        "manifest length high byte",
    );
    // A shifted manifest end moves the signature entry: some signature error.
    check(
        16,
        0,
        &|e| {
            matches!(
                e,
                Error::NoTrustedSignature { .. } | Error::BadSignature { .. }
            )
        },
        "manifest length low bit",
    );
    check(
        24,
        4,
        &|e| matches!(e, Error::TooManySignatures { count: 17, .. }),
        "signature count",
    );
    check(
        30,
        2,
        &|e| {
            matches!(
                e,
                Error::ReservedFieldSet {
                    field: "reserved",
                    ..
                }
            )
        },
        "reserved",
    );
    for offset in [HEADER_LEN, HEADER_LEN + f.manifest_len / 2, sig - 1] {
        check(
            offset,
            0,
            &|e| matches!(e, Error::BadSignature { .. }),
            "manifest byte",
        );
    }
    check(
        sig + 3,
        5,
        &|e| matches!(e, Error::NoTrustedSignature { .. }),
        "signer public key",
    );
    for offset in [sig + 32, sig + 70, f.indexes_start() - 1] {
        check(
            offset,
            3,
            &|e| matches!(e, Error::BadSignature { .. }),
            "signature bytes",
        );
    }
    check(
        start - 1,
        0,
        &|e| matches!(e, Error::IndexHashMismatch { payload } if payload == "system"),
        "last byte of the system block index",
    );
    let payload_cases = [
        (start, "efi", 0),
        (start + 4096 * 2 + 100, "efi", 2),
        (start + efi_stored - 1, "efi", 4),
        (start + efi_stored, "system", 0),
        (start + efi_stored + 4096 * 20, "system", 20),
        (
            f.bytes.len() - 1,
            "system",
            f.manifest.payloads[1].chunks.len() as u64 - 1,
        ),
    ];
    for (offset, name, chunk) in payload_cases {
        let mut b = f.bytes.clone();
        b[offset] ^= 0x10;
        let outcome = f.run(&b);
        match outcome.error {
            Some(Error::ChunkHashMismatch { payload, chunk: c }) => {
                assert_eq!((payload.as_str(), c), (name, chunk))
            }
            other => panic!("payload byte {offset}: {other:?}"),
        }
        // A corrupt system chunk must not stop the efi payload from having been fine.
        assert_eq!(outcome.finished.len(), usize::from(name == "system"));
    }
}

#[test]
fn zstd_payload_bit_flip_is_caught_before_decompression() {
    let f = Fixture::new(Compression::Zstd);
    let start = f.payloads_start();
    let mut b = f.bytes.clone();
    b[start + 5] ^= 1;
    assert!(matches!(
        f.error(&b),
        Error::ChunkHashMismatch { chunk: 0, .. }
    ));
}

#[test]
fn keys_signatures_versions_and_trailing_data() {
    let f = Fixture::new(Compression::None);
    // Wrong key: signed by key 1, keyring has key 2.
    let outcome = consume(&f.bytes[..], &ring(&[&key(2)]));
    match outcome.error {
        Some(Error::NoTrustedSignature { signers }) => {
            assert_eq!(signers, vec![key(1).public_key().key_id().to_string()])
        }
        other => panic!("{other:?}"),
    }
    // No signature: count set to zero and the entry removed.
    let mut b = f.bytes.clone();
    b[24] = 0;
    b.drain(HEADER_LEN + f.manifest_len..f.indexes_start());
    assert!(matches!(f.error(&b), Error::NoSignature));
    // Unknown format version.
    let mut b = f.bytes.clone();
    b[8..12].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        f.error(&b),
        Error::UnsupportedFormatVersion {
            found: 4,
            supported: 3
        }
    ));
    // Bundles of the old formats 1 and 2 (SHA-256 chunk hashes): named as
    // such, with the way out in the message.
    for old in [1u32, 2] {
        let mut b = f.bytes.clone();
        b[8..12].copy_from_slice(&old.to_le_bytes());
        let err = f.error(&b);
        assert!(
            matches!(err, Error::OldFormatVersion { found, supported: 3 } if found == old),
            "{err}"
        );
        assert_eq!(err.code(), "old-format-version");
        assert!(err.to_string().contains("rebuild the bundle"), "{err}");
    }
    // Trailing garbage after a fully valid bundle: payloads verified, then refused.
    let mut b = f.bytes.clone();
    b.extend_from_slice(b"garbage");
    let outcome = f.run(&b);
    assert!(
        matches!(outcome.error, Some(Error::TrailingData)),
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.finished.len(), 2);
    // Not a bundle at all.
    assert!(matches!(
        f.error(b"PK\x03\x04 this is a zip file, 32+ bytes long"),
        Error::BadMagic { .. }
    ));
}

#[test]
fn absurd_sizes_are_refused_without_allocating_them() {
    let f = Fixture::new(Compression::None);
    // Header claims a manifest of 2^63 bytes.
    let mut b = f.bytes.clone();
    b[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(matches!(f.error(&b), Error::ManifestSize { .. }));
    // Header claims exactly the largest allowed manifest, but the stream is short.
    let mut b = f.bytes[..HEADER_LEN].to_vec();
    b[16..24].copy_from_slice(&abkit_bundle::format::MAX_MANIFEST_LEN.to_le_bytes());
    b.extend_from_slice(&[b'{'; 100]);
    assert!(matches!(f.error(&b), Error::Truncated { section } if section == "manifest"));
    // Signed manifest with a payload size of u64::MAX and no chunks.
    let mut m = f.manifest.clone();
    m.payloads[0].size = u64::MAX;
    m.payloads[0].stored_size = u64::MAX;
    let err = f.error(&craft(&m, &[], &[key(1)]));
    assert!(
        matches!(&err, Error::ManifestInvalid(s) if s.contains("chunk hashes")),
        "{err}"
    );
    // Signed manifest with a 4 GiB chunk size.
    let mut m = f.manifest.clone();
    m.chunk_size = u32::MAX;
    let err = f.error(&craft(&m, &[], &[key(1)]));
    assert!(
        matches!(&err, Error::ManifestInvalid(s) if s.contains("chunk_size")),
        "{err}"
    );
    // Signed manifest that is not JSON.
    let mut out = Vec::new();
    write_head(&mut out, b"\xff\xfe not json", &[key(1)]).unwrap();
    assert!(matches!(f.error(&out), Error::ManifestJson(_)));
    // A zstd payload that claims 1 TiB but holds 10 bytes: size mismatch at the end.
    let data = b"0123456789";
    let stored = zstd::encode_all(&data[..], 3).unwrap();
    let mut m = single_payload("efi", data, Compression::Zstd, &stored);
    m.payloads[0].size = 1 << 40;
    m.block_size = 1 << 20;
    m.chunk_size = 4 << 20;
    let len = abkit_bundle::index::index_len(&m.payloads[0], m.block_size, m.chunk_size);
    m.payloads[0].index = IndexRef {
        size: len,
        blake3: Digest(abkit_bundle::index::block_hash(&vec![0; len as usize])),
    };
    m.payloads[0].chunks = chunks(&stored, 4 << 20);
    let err = f.error(&craft(&m, &[&stored], &[key(1)]));
    assert!(
        matches!(err, Error::PayloadSizeMismatch { expected, actual: 10, .. } if expected == 1 << 40),
        "{err}"
    );
}

#[test]
fn zstd_bombs_and_broken_streams() {
    let f = Fixture::new(Compression::None);
    // 256 MiB of zeros compress to a few KiB; the manifest says 1 MiB.
    let zeros = vec![0u8; 1 << 20];
    let mut enc = zstd::Encoder::new(Vec::new(), 19).unwrap();
    for _ in 0..256 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let m = single_payload("system", &zeros, Compression::Zstd, &bomb);
    let err = f.error(&craft(&m, &[&bomb], &[key(1)]));
    assert!(
        matches!(err, Error::DecompressedTooLarge { limit, .. } if limit == 1 << 20),
        "{err}"
    );

    // A frame that needs a 128 MiB window: refused, not allocated.
    let data = noise(300_000, 4);
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(27).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&data).unwrap();
    let wide = enc.finish().unwrap();
    let m = single_payload("efi", &data, Compression::Zstd, &wide);
    let err = f.error(&craft(&m, &[&wide], &[key(1)]));
    assert!(
        matches!(&err, Error::Decompress { reason, .. } if reason.contains("Frame requires too much memory")),
        "{err}"
    );

    // Signed garbage that is not zstd at all.
    let junk = noise(5000, 5);
    let m = single_payload("efi", &junk, Compression::Zstd, &junk);
    assert!(matches!(
        f.error(&craft(&m, &[&junk], &[key(1)])),
        Error::Decompress { .. }
    ));

    // A signed zstd stream cut inside its frame.
    let full = zstd::encode_all(&data[..], 3).unwrap();
    let cut = &full[..full.len() / 2];
    let m = single_payload("efi", &data, Compression::Zstd, cut);
    let err = f.error(&craft(&m, &[cut], &[key(1)]));
    assert!(
        matches!(&err, Error::Decompress { reason, .. } if reason.contains("ends inside")),
        "{err}"
    );
}

#[test]
fn whole_payload_hash_is_checked_before_end_of_file() {
    let f = Fixture::new(Compression::None);
    // Chunks are right, the whole-payload BLAKE3 is not: read_to_end must fail.
    let data = noise(10_000, 6);
    let mut m = single_payload("efi", &data, Compression::None, &data);
    m.payloads[0].blake3 = Digest([0; 32]);
    let outcome = f.run(&craft(&m, &[&data], &[key(1)]));
    assert!(
        matches!(outcome.error, Some(Error::PayloadHashMismatch { ref payload }) if payload == "efi")
    );
    assert!(outcome.finished.is_empty());
    // And finish() on a failed payload keeps failing with a named error.
    let bytes = craft(&m, &[&data], &[key(1)]);
    let mut bundle = abkit_bundle::BundleReader::open(&bytes[..], &ring(&[&key(1)])).unwrap();
    let payload = bundle.next_payload().unwrap().unwrap();
    assert!(matches!(
        payload.finish(),
        Err(Error::PayloadHashMismatch { .. })
    ));
}

/// Counts the bytes a reader pulled from its source.
struct Counting<'a> {
    inner: &'a [u8],
    taken: usize,
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken += n;
        Ok(n)
    }
}

#[test]
fn open_reads_only_the_head_and_a_bad_signature_stops_there() {
    let f = Fixture::new(Compression::None);
    let mut src = Counting {
        inner: &f.bytes,
        taken: 0,
    };
    let reader = abkit_bundle::BundleReader::open(&mut src, &ring(&[&key(1)])).unwrap();
    drop(reader);
    assert_eq!(
        src.taken,
        f.payloads_start(),
        "open read past the block indexes"
    );
    let mut bad = f.bytes.clone();
    bad[HEADER_LEN + 3] ^= 1;
    let mut src = Counting {
        inner: &bad,
        taken: 0,
    };
    assert!(matches!(
        abkit_bundle::BundleReader::open(&mut src, &ring(&[&key(1)])),
        Err(Error::BadSignature { .. })
    ));
    assert_eq!(src.taken, f.indexes_start());
}
