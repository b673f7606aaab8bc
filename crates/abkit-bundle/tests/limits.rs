//! Limits that keep a hostile head cheap: the manifest length is capped
//! before anything is read, the payload count before any per-payload check,
//! and every check is linear, so an unsigned head cannot make `inspect`
//! (which parses before any keyring is involved) spend minutes.

use std::time::{Duration, Instant};

use abkit_bundle::format::{FORMAT_VERSION, Header, MAX_MANIFEST_LEN};
use abkit_bundle::manifest::MAX_PAYLOADS;
use abkit_bundle::writer::write_head;
use abkit_bundle::{BundleHead, Error, Manifest, SecretKey};

/// Manifest JSON with `count` distinct, individually valid empty payloads.
fn manifest_with_payloads(count: usize) -> String {
    let zero = "0".repeat(64);
    let mut json = String::with_capacity(count * 140 + 200);
    json.push_str(
        r#"{"compatible":"demo-os","version":"1.0.0","created":0,"chunk_size":1048576,"block_size":4096,"payloads":["#,
    );
    for i in 0..count {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"name":"p{i:06}","size":0,"blake3":"{zero}","compression":"none","stored_size":0,"chunks":[],"index":{{"size":0,"blake3":"{zero}"}}}}"#
        ));
    }
    json.push_str("]}");
    json
}

/// A bundle head (no signature) declaring `manifest` as its manifest.
fn unsigned_head(manifest: &[u8]) -> Vec<u8> {
    let header = Header {
        format_version: FORMAT_VERSION,
        manifest_len: manifest.len() as u64,
        signature_count: 0,
    };
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(manifest);
    bytes
}

/// The report: a 16 MB unsigned manifest listing 108 000 payloads kept
/// `bundle inspect` busy for 55 s. Now its length alone refuses it.
#[test]
fn a_16_mb_manifest_with_108000_payloads_is_refused_at_once() {
    let json = manifest_with_payloads(108_000);
    assert!(json.len() > 15_000_000, "{}", json.len());
    let bytes = unsigned_head(json.as_bytes());
    let start = Instant::now();
    let err = BundleHead::read(&mut &bytes[..]).unwrap_err();
    let took = start.elapsed();
    match &err {
        Error::ManifestSize { len, max } => {
            assert_eq!(*len, json.len() as u64);
            assert_eq!(*max, MAX_MANIFEST_LEN);
        }
        other => panic!("expected manifest-size, got {other:?}"),
    }
    assert_eq!(err.code(), "manifest-size");
    assert!(
        err.to_string().contains(&MAX_MANIFEST_LEN.to_string()),
        "{err}"
    );
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

/// Under the length cap, the payload count is capped with its own error,
/// before names are compared (no quadratic work on thousands of entries).
#[test]
fn payload_count_is_capped_with_a_typed_error() {
    let json = manifest_with_payloads(3_000);
    assert!((json.len() as u64) < MAX_MANIFEST_LEN);
    let bytes = unsigned_head(json.as_bytes());
    let start = Instant::now();
    let err = BundleHead::read(&mut &bytes[..]).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, Error::TooManyPayloads { count: 3_000, max } if max == MAX_PAYLOADS),
        "{err:?}"
    );
    assert_eq!(err.code(), "too-many-payloads");
    assert!(err.to_string().contains("at most 64"), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Exactly the cap is fine; one more is not.
    Manifest::parse(manifest_with_payloads(MAX_PAYLOADS).as_bytes()).unwrap();
    assert!(matches!(
        Manifest::parse(manifest_with_payloads(MAX_PAYLOADS + 1).as_bytes()),
        Err(Error::TooManyPayloads { .. })
    ));
}

#[test]
fn duplicate_names_are_still_found() {
    let json = manifest_with_payloads(MAX_PAYLOADS).replace("p000063", "p000000");
    let err = Manifest::parse(json.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("payload `p000000` appears twice"), "{err}");
}

/// A writer never produces a head that readers refuse for its length.
#[test]
fn write_head_refuses_a_manifest_over_the_limit() {
    let key = SecretKey::from_seed(&[1; 32]);
    let too_long = vec![b' '; MAX_MANIFEST_LEN as usize + 1];
    let mut out = Vec::new();
    let err = write_head(&mut out, &too_long, &[key]).unwrap_err();
    assert!(
        matches!(err, Error::ManifestSize { len, .. } if len == MAX_MANIFEST_LEN + 1),
        "{err:?}"
    );
    assert!(out.is_empty(), "nothing written");
}
