//! `BundleReader::signed_sha256` is the SHA-256 of the signed bytes as they
//! were read, not of a re-serialisation: a manifest written with other
//! whitespace and key order gives the hash of its own bytes.

mod common;

use abkit_bundle::format::{HEADER_LEN, SIGNATURE_CONTEXT, SIGNATURE_ENTRY_LEN};
use abkit_bundle::writer::write_head;
use abkit_bundle::{BundleHead, BundleReader, Compression};
use common::*;
use sha2::{Digest as _, Sha256};

/// SHA-256 of what a signature over `manifest` covers, computed by hand
/// from the documented layout.
fn expected(manifest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SIGNATURE_CONTEXT);
    h.update(b"ABKITBDL");
    h.update(3u32.to_le_bytes()); // format version
    h.update(0u32.to_le_bytes()); // flags
    h.update((manifest.len() as u64).to_le_bytes());
    h.update(manifest);
    h.finalize().into()
}

#[test]
fn signed_sha256_hashes_the_manifest_bytes_as_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _, _) = make_bundle(
        dir.path(),
        5_000,
        40_000,
        Compression::None,
        4096,
        &[key(1)],
    );
    let head = BundleHead::read(&mut &bytes[..]).unwrap();
    let payloads = &bytes[HEADER_LEN + head.raw.manifest_bytes.len() + SIGNATURE_ENTRY_LEN..];

    // The same manifest, pretty-printed with its keys in another order.
    let value: serde_json::Value = serde_json::from_slice(&head.raw.manifest_bytes).unwrap();
    let mut reordered = serde_json::Map::new();
    let object = value.as_object().unwrap();
    let mut keys: Vec<&String> = object.keys().collect();
    keys.reverse();
    for k in keys {
        reordered.insert(k.clone(), object[k].clone());
    }
    let mut other = serde_json::to_vec_pretty(&serde_json::Value::Object(reordered)).unwrap();
    other.extend_from_slice(b"\n\n");
    assert_ne!(other, head.raw.manifest_bytes);
    let mut rewritten = Vec::new();
    write_head(&mut rewritten, &other, &[key(1)]).unwrap();
    rewritten.extend_from_slice(payloads);

    let ring = ring(&[&key(1)]);
    let original = BundleReader::open(&bytes[..], &ring).unwrap();
    let reader = BundleReader::open(&rewritten[..], &ring).unwrap();
    assert_eq!(reader.manifest(), original.manifest(), "same manifest");
    assert_eq!(original.signed_sha256(), expected(&head.raw.manifest_bytes));
    assert_eq!(reader.signed_sha256(), expected(&other), "its own bytes");
    assert_ne!(reader.signed_sha256(), original.signed_sha256());
    let canonical = reader.manifest().to_json().unwrap();
    assert_ne!(
        reader.signed_sha256(),
        expected(&canonical),
        "not a re-serialisation"
    );
    assert_eq!(
        BundleHead::read(&mut &rewritten[..])
            .unwrap()
            .raw
            .signed_sha256(),
        reader.signed_sha256()
    );
    // Another signature set over the same bytes: the same value.
    let mut two = Vec::new();
    write_head(&mut two, &other, &[key(2), key(1)]).unwrap();
    two.extend_from_slice(payloads);
    let both = BundleReader::open(&two[..], &ring).unwrap();
    assert_eq!(both.signed_sha256(), reader.signed_sha256());
    reader.verify_all().unwrap();
}
