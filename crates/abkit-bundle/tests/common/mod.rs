//! Helpers shared by the integration tests: deterministic test data, keys,
//! and a reader that drains a bundle the way the update engine will.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use abkit_bundle::{
    BundleReader, Compression, CreateOptions, Keyring, PayloadSpec, SecretKey, create_bundle,
};

pub use abkit_disk::fixtures::noise;

pub fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

pub fn ring(keys: &[&SecretKey]) -> Keyring {
    Keyring::from_keys(keys.iter().map(|k| k.public_key()).collect())
}

/// Writes efi and system inputs into `dir` and creates `dir/out.abb`.
/// Returns (bundle bytes, efi input, system input).
pub fn make_bundle(
    dir: &Path,
    efi_len: usize,
    system_len: usize,
    compression: Compression,
    chunk_size: u32,
    keys: &[SecretKey],
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let efi = noise(efi_len, 1);
    // Half noise, half zeros: compressible but not trivial.
    let mut system = noise(system_len / 2, 2);
    system.resize(system_len, 0);
    std::fs::write(dir.join("boot.efi"), &efi).unwrap();
    std::fs::write(dir.join("system.img"), &system).unwrap();
    let mut opts = CreateOptions::new("demo-os", "1.2.0".parse().unwrap());
    opts.compression = compression;
    opts.chunk_size = chunk_size;
    let specs = [
        PayloadSpec {
            name: "efi".into(),
            path: dir.join("boot.efi"),
            verity: false,
        },
        PayloadSpec {
            name: "system".into(),
            path: dir.join("system.img"),
            verity: true,
        },
    ];
    let out = dir.join("out.abb");
    create_bundle(&out, &specs, &opts, keys, &mut |_| {}).unwrap();
    (std::fs::read(&out).unwrap(), efi, system)
}

/// What a consumer saw: payloads that reached a verified end, and the error.
#[derive(Debug, Default)]
pub struct Outcome {
    pub finished: Vec<(String, Vec<u8>)>,
    pub error: Option<abkit_bundle::Error>,
}

/// Opens and drains a bundle through `Read`, like the update engine. A
/// payload counts as finished only when `read` returned end of file.
pub fn consume(source: impl Read, keyring: &Keyring) -> Outcome {
    let mut outcome = Outcome::default();
    let mut bundle = match BundleReader::open(source, keyring) {
        Ok(b) => b,
        Err(e) => {
            outcome.error = Some(e);
            return outcome;
        }
    };
    loop {
        let mut payload = match bundle.next_payload() {
            Ok(Some(p)) => p,
            Ok(None) => return outcome,
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        };
        let name = payload.entry().name.clone();
        let mut bytes = Vec::new();
        if let Err(e) = payload.read_to_end(&mut bytes) {
            outcome.error = Some(e.into());
            return outcome;
        }
        // EOF from read means verified; finish must agree.
        payload.finish().expect("finish after verified EOF");
        outcome.finished.push((name, bytes));
    }
}

/// A reader that hands out at most `max` bytes per call (a slow network).
pub struct Dribble<R> {
    pub inner: R,
    pub max: usize,
    pub calls: usize,
}

impl<R: Read> Read for Dribble<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        let n = buf.len().min(1 + self.calls % self.max);
        self.inner.read(&mut buf[..n])
    }
}
