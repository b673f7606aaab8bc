//! `PayloadReader::next_block` (verified blocks handed out without a copy)
//! and `rely_on_chunk_hashes` (one BLAKE3 pass per byte for plain payloads).

mod common;

use abkit_bundle::{BundleReader, Compression, Error, VerifiedBlock};
use common::*;

/// Every payload drained through `next_block`, keeping every block alive
/// until the end (so the pool must not reuse a buffer that is still held).
fn drain_blocks(bytes: &[u8], rely: bool) -> (Vec<Vec<u8>>, Vec<bool>) {
    let mut bundle = BundleReader::open(bytes, &ring(&[&key(1)])).unwrap();
    let (mut out, mut relied) = (Vec::new(), Vec::new());
    while let Some(mut p) = bundle.next_payload().unwrap() {
        if rely {
            relied.push(p.rely_on_chunk_hashes());
        }
        let mut held: Vec<VerifiedBlock> = Vec::new();
        while let Some(block) = p.next_block().unwrap() {
            assert!(!block.is_empty());
            held.push(block);
        }
        let sha = p.finish().unwrap();
        let data: Vec<u8> = held.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(sha, *blake3::hash(&data).as_bytes());
        out.push(data);
    }
    (out, relied)
}

#[test]
fn next_block_hands_out_exactly_the_signed_bytes_and_never_reuses_a_held_block() {
    let dir = tempfile::tempdir().unwrap();
    for compression in [Compression::None, Compression::Zstd] {
        // 40 chunks of 4 KiB: more blocks than the pool keeps.
        let (bytes, efi, _) = make_bundle(dir.path(), 9_000, 160_000, compression, 4096, &[key(1)]);
        let expected = consume(&bytes[..], &ring(&[&key(1)]));
        assert!(expected.error.is_none());
        for rely in [false, true] {
            let (got, relied) = drain_blocks(&bytes, rely);
            assert_eq!(got[0], efi);
            assert_eq!(
                got[1], expected.finished[1].1,
                "{compression:?} rely={rely}"
            );
            if rely {
                // Only a plain payload may drop its whole-payload hash.
                let plain = compression == Compression::None;
                assert_eq!(relied, vec![plain, plain]);
            }
        }
    }
}

#[test]
fn next_block_refuses_a_tampered_chunk_before_handing_out_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, efi, _) = make_bundle(
        dir.path(),
        3 * 4096,
        4096,
        Compression::None,
        4096,
        &[key(1)],
    );
    // The efi payload comes first; flip a byte of its second chunk.
    let payload_start = bytes.len() - efi.len() - consume_system_len(&bytes);
    bytes[payload_start + 4096 + 7] ^= 1;
    let mut bundle = BundleReader::open(&bytes[..], &ring(&[&key(1)])).unwrap();
    let mut p = bundle.next_payload().unwrap().unwrap();
    assert!(p.rely_on_chunk_hashes());
    let first = p.next_block().unwrap().unwrap();
    assert_eq!(&first[..], &efi[..4096]);
    let err = p.next_block().unwrap_err();
    assert!(
        matches!(err, Error::ChunkHashMismatch { chunk: 1, .. }),
        "{err}"
    );
    // A failed payload keeps failing.
    assert!(matches!(p.next_block(), Err(Error::PayloadFailed { .. })));
}

/// Stored size of the system payload (the last one) of a plain bundle.
fn consume_system_len(bytes: &[u8]) -> usize {
    let head = abkit_bundle::BundleHead::read(&mut &bytes[..]).unwrap();
    head.manifest.payloads[1].stored_size as usize
}

#[test]
fn rely_on_chunk_hashes_is_refused_once_bytes_were_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, efi, _) = make_bundle(
        dir.path(),
        3 * 4096,
        4096,
        Compression::None,
        4096,
        &[key(1)],
    );
    let mut bundle = BundleReader::open(&bytes[..], &ring(&[&key(1)])).unwrap();
    let mut p = bundle.next_payload().unwrap().unwrap();
    let first = p.next_block().unwrap().unwrap();
    assert!(!p.rely_on_chunk_hashes());
    drop(first);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut p, &mut rest).unwrap();
    assert_eq!(rest, efi[4096..]);
}
