//! Whole bundles whose manifest is fuzzer-chosen but correctly signed: the
//! input is `manifest length (u16 LE) || manifest || payload bytes`. Drives
//! manifest validation, chunk verification and zstd decoding past the
//! signature check, and asserts that a payload read to a verified end has the
//! signed size and BLAKE3 (bundle format 3).
#![no_main]

use std::io::Read;

use abkit_bundle::writer::write_head;
use abkit_bundle::{BundleReader, Keyring, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (manifest, payloads) = data[2..].split_at(len);
    if manifest.is_empty() {
        return;
    }
    let key = SecretKey::from_seed(&[1; 32]);
    let mut bundle = Vec::new();
    write_head(&mut bundle, manifest, std::slice::from_ref(&key)).expect("write to Vec");
    bundle.extend_from_slice(payloads);
    let ring = Keyring::from_keys(vec![key.public_key()]);
    let Ok(mut reader) = BundleReader::open(&bundle[..], &ring) else { return };
    let entries = reader.manifest().payloads.clone();
    let mut index = 0;
    while let Ok(Some(mut payload)) = reader.next_payload() {
        let mut bytes = Vec::new();
        if payload.read_to_end(&mut bytes).is_err() {
            return;
        }
        let entry = &entries[index];
        assert_eq!(bytes.len() as u64, entry.size, "verified EOF with the wrong size");
        let digest = payload.finish().expect("finish after verified EOF");
        assert_eq!(digest, entry.blake3.0);
        let hash = abkit_bundle::manifest::content_hash(&bytes);
        assert_eq!(digest, hash.0, "the digest is the BLAKE3 of the bytes");
        index += 1;
    }
});
