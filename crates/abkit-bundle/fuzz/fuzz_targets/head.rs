//! Untrusted bytes into the header, manifest and signature reader: must
//! return an error or a head, never panic or allocate beyond the limits.
#![no_main]

use abkit_bundle::reader::RawHead;
use abkit_bundle::{BundleHead, Keyring, Manifest, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::from_keys(vec![SecretKey::from_seed(&[1; 32]).public_key()]);
    if let Ok(raw) = RawHead::read(&mut &data[..]) {
        let _ = raw.verify(&ring);
        let _ = raw.signature_status(Some(&ring));
        let _ = Manifest::parse(&raw.manifest_bytes);
    }
    let _ = BundleHead::read(&mut &data[..]);
    // The manifest parser on its own, for inputs that are just JSON.
    if let Ok(m) = Manifest::parse(data) {
        let json = m.to_json().expect("a parsed manifest serializes");
        assert_eq!(Manifest::parse(&json).expect("round trip"), m);
    }
});
