//! Bundles made by `create_bundle` read back byte for byte, and the system
//! payload is a dm-verity image that the real `veritysetup` accepts.

mod common;

use std::process::Command;

use abkit_bundle::verity::{VerityBuilder, verify_image};
use abkit_bundle::{BundleHead, BundleReader, Compression, SignatureStatus};
use common::*;

fn veritysetup(args: &[&str]) -> (bool, String) {
    let out = Command::new("veritysetup")
        .args(args)
        .output()
        .expect("veritysetup is installed (make deps)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn plain_and_zstd_bundles_round_trip_and_pass_veritysetup() {
    for compression in [Compression::None, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let k = key(1);
        // 3 MiB + 1234 bytes: not a multiple of 4096, so the image is padded.
        let (bytes, efi, system) = make_bundle(
            dir.path(),
            100_000,
            3 * 1024 * 1024 + 1234,
            compression,
            65536,
            &[k],
        );
        let k = key(1);
        let outcome = consume(&bytes[..], &ring(&[&k]));
        assert!(
            outcome.error.is_none(),
            "{compression:?}: {:?}",
            outcome.error
        );
        assert_eq!(outcome.finished.len(), 2);
        assert_eq!(outcome.finished[0].0, "efi");
        assert_eq!(outcome.finished[0].1, efi);
        let (name, payload) = &outcome.finished[1];
        assert_eq!(name, "system");
        assert_eq!(&payload[..system.len()], &system[..]);
        let padded = system.len().div_ceil(4096) * 4096;
        assert!(
            payload[system.len()..padded].iter().all(|&b| b == 0),
            "padding is zeros"
        );

        let head = BundleHead::read(&mut &bytes[..]).unwrap();
        // Format 3: the whole-payload hash and every chunk hash are BLAKE3
        // (computed here with the blake3 crate, not the reader's code).
        assert_eq!(head.raw.header.format_version, 3);
        let mut at = abkit_bundle::format::HEADER_LEN
            + head.raw.manifest_bytes.len()
            + 96 * head.raw.signatures.len()
            + head
                .manifest
                .payloads
                .iter()
                .map(|p| p.index.size as usize)
                .sum::<usize>();
        for (p, (_, plain)) in head.manifest.payloads.iter().zip(&outcome.finished) {
            assert_eq!(&p.blake3.0, blake3::hash(plain).as_bytes(), "{}", p.name);
            let stored = &bytes[at..at + p.stored_size as usize];
            let expected: Vec<[u8; 32]> = stored
                .chunks(head.manifest.chunk_size as usize)
                .map(|c| *blake3::hash(c).as_bytes())
                .collect();
            let found: Vec<[u8; 32]> = p.chunks.iter().map(|d| d.0).collect();
            assert_eq!(found, expected, "{} chunks", p.name);
            at += p.stored_size as usize;
        }
        assert_eq!(at, bytes.len());
        let v = head
            .manifest
            .payload("system")
            .unwrap()
            .verity
            .clone()
            .unwrap();
        assert_eq!(v.data_size, padded as u64);
        assert_eq!(
            head.manifest.payload("system").unwrap().compression,
            compression
        );
        if compression == Compression::Zstd {
            assert!(head.manifest.payload("system").unwrap().stored_size < payload.len() as u64);
        }
        verify_image(&payload[..], &v).unwrap();

        let img = dir.path().join("slot.img");
        std::fs::write(&img, payload).unwrap();
        let img = img.to_str().unwrap();
        let root = v.root_hash.to_string();
        let offset = format!("--hash-offset={}", v.hash_offset);
        let (ok, text) = veritysetup(&["verify", img, img, &root, &offset]);
        assert!(ok, "veritysetup verify failed: {text}");
        let (ok, text) = veritysetup(&["dump", img, &offset]);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("Data blocks:     \t{}", padded / 4096)),
            "{text}"
        );
        assert!(text.contains(&hex::encode(&v.salt.0)), "{text}");
        assert!(text.contains("Hash type:       \t1"), "{text}");
        // And the negative: a flipped data byte makes veritysetup refuse.
        let mut bad = payload.clone();
        bad[4096 * 3 + 7] ^= 0x40;
        std::fs::write(img, &bad).unwrap();
        let (ok, _) = veritysetup(&["verify", img, img, &root, &offset]);
        assert!(!ok, "veritysetup accepted a corrupted image");
    }
}

#[test]
fn root_hash_equals_veritysetup_format_for_tree_shapes() {
    // 1 block (no tree), 2, 128 (one full hash block), 129 (two levels), odd sizes.
    for len in [4096usize, 8192, 128 * 4096, 129 * 4096, 5000, 700_001] {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(len, len as u64);
        let salt = noise(32, 9);
        let mut b = VerityBuilder::new(&salt).unwrap();
        b.update(&data);
        let tree = b.finish().unwrap();
        let mut padded = data.clone();
        padded.resize(len.div_ceil(4096) * 4096, 0);
        let data_path = dir.path().join("data");
        let hash_path = dir.path().join("hash");
        std::fs::write(&data_path, &padded).unwrap();
        let (ok, text) = veritysetup(&[
            "format",
            data_path.to_str().unwrap(),
            hash_path.to_str().unwrap(),
            &format!("--salt={}", hex::encode(&salt)),
        ]);
        assert!(ok, "{text}");
        let root_line = text.lines().find(|l| l.starts_with("Root hash:")).unwrap();
        assert_eq!(
            root_line.split_whitespace().last().unwrap(),
            hex::encode(tree.root_hash),
            "len {len}"
        );
        // Same tree bytes as veritysetup's hash file (after its superblock block).
        let theirs = std::fs::read(&hash_path).unwrap();
        assert_eq!(theirs[4096..], tree.hash_area[4096..], "len {len}");
        assert_eq!(
            theirs[..16],
            tree.hash_area[..16],
            "superblock head, len {len}"
        );
        assert_eq!(
            theirs[32..512],
            tree.hash_area[32..512],
            "superblock tail, len {len}"
        );
    }
}

#[test]
fn dribbling_source_and_two_signers() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, efi, _) = make_bundle(
        dir.path(),
        5000,
        200_000,
        Compression::Zstd,
        4096,
        &[key(7), key(8)],
    );
    // Only the second signer is trusted: one good signature is enough.
    let mut source = Dribble {
        inner: &bytes[..],
        max: 7,
        calls: 0,
    };
    let outcome = consume(&mut source, &ring(&[&key(8)]));
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.finished[0].1, efi);
    assert!(source.calls > 1000, "the dribble reader was used");
    let head = BundleHead::read(&mut &bytes[..]).unwrap();
    let status = head.signature_status(Some(&ring(&[&key(8)])));
    assert_eq!(
        status[0],
        (key(7).public_key().key_id(), SignatureStatus::UntrustedKey)
    );
    assert_eq!(
        status[1],
        (key(8).public_key().key_id(), SignatureStatus::Valid)
    );
}

#[test]
fn unfinished_payload_is_skipped_and_verify_all_reports_digests() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _, system) = make_bundle(
        dir.path(),
        70_000,
        100_000,
        Compression::None,
        4096,
        &[key(1)],
    );
    let mut bundle = BundleReader::open(&bytes[..], &ring(&[&key(1)])).unwrap();
    {
        let mut efi = bundle.next_payload().unwrap().unwrap();
        let mut first = [0u8; 10];
        std::io::Read::read_exact(&mut efi, &mut first).unwrap();
    }
    let mut sys = bundle.next_payload().unwrap().unwrap();
    assert_eq!(sys.entry().name, "system");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut sys, &mut got).unwrap();
    assert_eq!(&got[..system.len()], &system[..]);
    drop(sys);
    assert!(bundle.next_payload().unwrap().is_none());

    let digests = BundleReader::open(&bytes[..], &ring(&[&key(1)]))
        .unwrap()
        .verify_all()
        .unwrap();
    let head = BundleHead::read(&mut &bytes[..]).unwrap();
    assert_eq!(digests.len(), 2);
    for ((name, digest), entry) in digests.iter().zip(&head.manifest.payloads) {
        assert_eq!(name, &entry.name);
        assert_eq!(digest, &entry.blake3.0);
    }
}

#[test]
fn write_to_hands_over_whole_verified_chunks() {
    struct Writes(Vec<usize>, Vec<u8>);
    impl std::io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.len());
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (bytes, efi, _) = make_bundle(
        dir.path(),
        50_000,
        100_000,
        Compression::None,
        16384,
        &[key(1)],
    );
    let head = BundleHead::read(&mut &bytes[..]).unwrap();
    let mut bundle = BundleReader::open(&bytes[..], &ring(&[&key(1)])).unwrap();
    let mut sink = Writes(Vec::new(), Vec::new());
    let digest = bundle
        .next_payload()
        .unwrap()
        .unwrap()
        .write_to(&mut sink)
        .unwrap();
    assert_eq!(sink.1, efi);
    assert_eq!(
        sink.0,
        vec![16384, 16384, 16384, 50_000 - 3 * 16384],
        "one write per chunk"
    );
    assert_eq!(digest, head.manifest.payloads[0].blake3.0);
}
