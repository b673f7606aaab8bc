//! The block index of a payload (format version 2): the BLAKE3 of every
//! `block_size` block of the payload's decompressed bytes, and for a zstd
//! payload where each independently compressed frame starts in the stored
//! bytes. The manifest carries each index's length and BLAKE3, so the
//! signature covers every block hash; a delta install checks every block it
//! fetches or reuses against it, and finds a compressed block's frame by it.
//!
//! ```text
//! index = BLAKE3(block 0) || BLAKE3(block 1) || ...        32 bytes x ceil(size / block_size)
//!         [zstd only] frame 0 offset || frame 1 offset ... u64 LE x ceil(size / chunk_size)
//! ```

use crate::manifest::{Compression, Manifest, PayloadEntry};
use crate::{Error, Result};

/// Bytes of one block hash.
pub const HASH_LEN: usize = 32;

/// Exact length of the block index of `p` (saturating: a manifest that
/// declares absurd sizes fails the length limit instead of wrapping).
pub fn index_len(p: &PayloadEntry, block_size: u32, chunk_size: u32) -> u64 {
    let blocks = p
        .size
        .div_ceil(u64::from(block_size))
        .saturating_mul(HASH_LEN as u64);
    match p.compression {
        Compression::None => blocks,
        Compression::Zstd => {
            blocks.saturating_add(p.size.div_ceil(u64::from(chunk_size)).saturating_mul(8))
        }
    }
}

/// BLAKE3 of one block.
pub fn block_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The BLAKE3 of every whole `block_size` block of `bytes`, appended to
/// `out` in order: the same hashes as [`block_hash`] of each (a partial
/// block at the end is left out). A 4 KiB block is four BLAKE3 chunks, so
/// hashed alone it fills 4 of the 16 lanes of AVX-512 (2.4 GB/s here
/// against 4.9 GB/s for 1 MiB inputs); this hashes the chunks of many
/// blocks side by side, then their parent nodes, with the `blake3` crate's
/// own SIMD kernels (`blake3::platform`, the layer under its public API,
/// which `blake3::hash` itself calls): 4.6 GB/s for 4 KiB blocks. Block
/// sizes that are not 2, 4, 8... BLAKE3 chunks are hashed one by one.
pub fn block_hashes(bytes: &[u8], block_size: usize, out: &mut Vec<[u8; 32]>) {
    use blake3::platform::Platform;
    use blake3::{CHUNK_LEN, IncrementCounter, OUT_LEN};
    // The BLAKE3 specification's constants: IV (unkeyed hashing) and the
    // domain flags of chunk starts and ends, parent nodes and the root.
    const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    const CHUNK_START: u8 = 1;
    const CHUNK_END: u8 = 2;
    const PARENT: u8 = 4;
    const ROOT: u8 = 8;
    /// Blocks hashed together (bounds the scratch space to 32 KiB).
    const BATCH: usize = 256;
    let chunks = block_size / CHUNK_LEN;
    if !block_size.is_multiple_of(CHUNK_LEN) || chunks < 2 || !chunks.is_power_of_two() {
        out.extend(bytes.chunks_exact(block_size.max(1)).map(block_hash));
        return;
    }
    let platform = Platform::detect();
    let mut inputs: Vec<&[u8; CHUNK_LEN]> = Vec::with_capacity(BATCH);
    let mut lane = vec![0u8; BATCH * OUT_LEN];
    // Chaining values of one tree level, block by block.
    let mut cvs = vec![0u8; BATCH * chunks * OUT_LEN];
    let mut next = vec![0u8; BATCH * chunks / 2 * OUT_LEN];
    for group in bytes.chunks(BATCH * block_size) {
        let n = group.len() / block_size;
        if n == 0 {
            break;
        }
        // Chunk j of every block: one call, counter j for all of them.
        for j in 0..chunks {
            inputs.clear();
            inputs.extend((0..n).map(|k| {
                let at = k * block_size + j * CHUNK_LEN;
                <&[u8; CHUNK_LEN]>::try_from(&group[at..at + CHUNK_LEN]).expect("a whole chunk")
            }));
            platform.hash_many(
                &inputs,
                &IV,
                j as u64,
                IncrementCounter::No,
                0,
                CHUNK_START,
                CHUNK_END,
                &mut lane[..n * OUT_LEN],
            );
            for k in 0..n {
                let at = (k * chunks + j) * OUT_LEN;
                cvs[at..at + OUT_LEN].copy_from_slice(&lane[k * OUT_LEN..(k + 1) * OUT_LEN]);
            }
        }
        // Pairs of chaining values up the tree; the last pair is the root.
        let mut width = chunks;
        while width >= 2 {
            let pairs = n * width / 2;
            let parents: Vec<&[u8; 2 * OUT_LEN]> = cvs[..pairs * 2 * OUT_LEN]
                .chunks_exact(2 * OUT_LEN)
                .map(|p| <&[u8; 2 * OUT_LEN]>::try_from(p).expect("a pair"))
                .collect();
            let flags = if width == 2 { PARENT | ROOT } else { PARENT };
            platform.hash_many(
                &parents,
                &IV,
                0,
                IncrementCounter::No,
                flags,
                0,
                0,
                &mut next[..pairs * OUT_LEN],
            );
            drop(parents);
            std::mem::swap(&mut cvs, &mut next);
            width /= 2;
        }
        out.extend(
            cvs[..n * OUT_LEN]
                .chunks_exact(OUT_LEN)
                .map(|h| <[u8; OUT_LEN]>::try_from(h).expect("a hash")),
        );
    }
}

/// Where the parts of a bundle are, from its verified head: the index
/// section follows the signatures, the payloads follow the indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Header, manifest and signatures.
    pub head_len: u64,
    /// Offset of each payload's block index, in manifest order.
    pub index_offsets: Vec<u64>,
    /// Offset of each payload's stored bytes, in manifest order.
    pub payload_offsets: Vec<u64>,
    /// Size of the whole bundle.
    pub total_len: u64,
}

impl Layout {
    /// The layout of a bundle with this manifest, `manifest_len` bytes of
    /// manifest and `signatures` signatures.
    pub fn new(manifest: &Manifest, manifest_len: u64, signatures: u32) -> Layout {
        let head_len = crate::format::HEADER_LEN as u64
            + manifest_len
            + u64::from(signatures) * crate::format::SIGNATURE_ENTRY_LEN as u64;
        let mut at = head_len;
        let mut index_offsets = Vec::new();
        for p in &manifest.payloads {
            index_offsets.push(at);
            at = at.saturating_add(p.index.size);
        }
        let mut payload_offsets = Vec::new();
        for p in &manifest.payloads {
            payload_offsets.push(at);
            at = at.saturating_add(p.stored_size);
        }
        Layout {
            head_len,
            index_offsets,
            payload_offsets,
            total_len: at,
        }
    }

    /// Bytes from the start of the bundle to the end of the last index.
    pub fn indexes_end(&self) -> u64 {
        self.payload_offsets
            .first()
            .copied()
            .unwrap_or(self.head_len)
    }
}

/// A payload's block index, checked against the signed manifest.
#[derive(Debug, Clone)]
pub struct BlockIndex {
    payload: String,
    block_size: u32,
    chunk_size: u32,
    size: u64,
    stored_size: u64,
    compression: Compression,
    hashes: Vec<[u8; 32]>,
    frames: Vec<u64>,
}

impl BlockIndex {
    /// Parses `bytes` as the index of payload `p`: length and BLAKE3 as the
    /// manifest says, and (zstd) frame offsets that start at 0, increase and
    /// stay inside the stored bytes.
    pub fn parse(manifest: &Manifest, p: &PayloadEntry, bytes: &[u8]) -> Result<BlockIndex> {
        let len = index_len(p, manifest.block_size, manifest.chunk_size);
        if bytes.len() as u64 != len || len != p.index.size {
            return Err(Error::IndexInvalid {
                payload: p.name.clone(),
                reason: format!("{} bytes, expected {len}", bytes.len()),
            });
        }
        if *blake3::hash(bytes).as_bytes() != p.index.blake3.0 {
            return Err(Error::IndexHashMismatch {
                payload: p.name.clone(),
            });
        }
        let count = p.size.div_ceil(u64::from(manifest.block_size)) as usize;
        let (hash_bytes, frame_bytes) = bytes.split_at(count * HASH_LEN);
        let hashes = hash_bytes
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let frames: Vec<u64> = frame_bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect();
        let bad = |reason: String| {
            Err(Error::IndexInvalid {
                payload: p.name.clone(),
                reason,
            })
        };
        if let Some(&first) = frames.first()
            && first != 0
        {
            return bad(format!("frame 0 starts at stored byte {first}, not 0"));
        }
        for (i, pair) in frames.windows(2).enumerate() {
            if pair[1] <= pair[0] || pair[1] >= p.stored_size {
                return bad(format!(
                    "frame {} starts at stored byte {}, after frame {i} at {} and before {}",
                    i + 1,
                    pair[1],
                    pair[0],
                    p.stored_size
                ));
            }
        }
        Ok(BlockIndex {
            payload: p.name.clone(),
            block_size: manifest.block_size,
            chunk_size: manifest.chunk_size,
            size: p.size,
            stored_size: p.stored_size,
            compression: p.compression,
            hashes,
            frames,
        })
    }

    pub fn payload(&self) -> &str {
        &self.payload
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    /// Decompressed size of the payload.
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
    /// The signed BLAKE3 of block `i`.
    pub fn hash(&self, i: usize) -> &[u8; 32] {
        &self.hashes[i]
    }
    /// Offset of block `i` in the decompressed payload.
    pub fn block_offset(&self, i: usize) -> u64 {
        i as u64 * u64::from(self.block_size)
    }
    /// Length of block `i` (the last one may be short).
    pub fn block_len(&self, i: usize) -> usize {
        (self.size - self.block_offset(i)).min(u64::from(self.block_size)) as usize
    }

    /// Checks `bytes` as block `i` (length and BLAKE3).
    pub fn check_block(&self, i: usize, bytes: &[u8]) -> Result<()> {
        if i >= self.hashes.len()
            || bytes.len() != self.block_len(i)
            || block_hash(bytes) != self.hashes[i]
        {
            return Err(Error::BlockHashMismatch {
                payload: self.payload.clone(),
                block: i as u64,
            });
        }
        Ok(())
    }

    /// zstd: the frame holding block `i` (frames are `chunk_size` bytes of
    /// decompressed data, a multiple of the block size).
    pub fn frame_of_block(&self, i: usize) -> usize {
        (self.block_offset(i) / u64::from(self.chunk_size)) as usize
    }
    /// zstd: number of frames.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
    /// zstd: stored byte range (relative to the payload's stored start) of
    /// frame `f`.
    pub fn frame_stored_range(&self, f: usize) -> std::ops::Range<u64> {
        let end = self.frames.get(f + 1).copied().unwrap_or(self.stored_size);
        self.frames[f]..end
    }
    /// zstd: the first block of frame `f` and its decompressed length.
    pub fn frame_blocks(&self, f: usize) -> (usize, u64) {
        let start = f as u64 * u64::from(self.chunk_size);
        let len = (self.size - start).min(u64::from(self.chunk_size));
        ((start / u64::from(self.block_size)) as usize, len)
    }
}

/// Computes block hashes of a byte stream given in pieces of any size.
#[derive(Debug)]
pub(crate) struct BlockHasher {
    block_size: usize,
    partial: Vec<u8>,
    pub(crate) out: Vec<u8>,
}

impl BlockHasher {
    pub(crate) fn new(block_size: u32) -> BlockHasher {
        BlockHasher {
            block_size: block_size as usize,
            partial: Vec::new(),
            out: Vec::new(),
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        if !self.partial.is_empty() {
            let take = (self.block_size - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == self.block_size {
                self.out.extend_from_slice(&block_hash(&self.partial));
                self.partial.clear();
            }
        }
        let whole = data.len() / self.block_size * self.block_size;
        let mut hashes = Vec::with_capacity(whole / self.block_size);
        block_hashes(&data[..whole], self.block_size, &mut hashes);
        self.out.extend(hashes.iter().flatten());
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// The block hashes (the last, short block included).
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if !self.partial.is_empty() {
            self.out.extend_from_slice(&block_hash(&self.partial));
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BundleHead, CreateOptions, PayloadSpec, SecretKey};

    /// A bundle of one `system` payload (not verity), its bytes and head.
    fn bundle(data: &[u8], compression: Compression) -> (Vec<u8>, BundleHead) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.img"), data).unwrap();
        let mut opts = CreateOptions::new("demo-os", "1.0.0".parse().unwrap());
        opts.compression = compression;
        opts.chunk_size = 64 * 1024;
        let spec = PayloadSpec {
            name: "system".into(),
            path: dir.path().join("s.img"),
            verity: false,
        };
        let out = dir.path().join("b.abb");
        crate::create_bundle(
            &out,
            &[spec],
            &opts,
            &[SecretKey::from_seed(&[3; 32])],
            &mut |_| {},
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let head = BundleHead::read(&mut &bytes[..]).unwrap();
        (bytes, head)
    }

    fn index_of(bytes: &[u8], head: &BundleHead) -> (Layout, BlockIndex) {
        let m = &head.manifest;
        let layout = Layout::new(m, head.raw.manifest_bytes.len() as u64, 1);
        let at = layout.index_offsets[0] as usize;
        let p = &m.payloads[0];
        let index = BlockIndex::parse(m, p, &bytes[at..at + p.index.size as usize]).unwrap();
        (layout, index)
    }

    #[test]
    fn every_block_and_every_zstd_frame_can_be_read_alone() {
        // Compressible and not, with a short last block.
        let mut data: Vec<u8> = (0..300_000u32).map(|i| (i / 700) as u8).collect();
        data.extend((0..5_000u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8));
        for compression in [Compression::None, Compression::Zstd] {
            let (bytes, head) = bundle(&data, compression);
            let (layout, index) = index_of(&bytes, &head);
            assert_eq!(layout.total_len, bytes.len() as u64);
            assert_eq!(index.len(), data.len().div_ceil(4096));
            for i in 0..index.len() {
                let at = index.block_offset(i) as usize;
                index
                    .check_block(i, &data[at..at + index.block_len(i)])
                    .unwrap();
            }
            let wrong = index.check_block(3, &[0; 4096]).unwrap_err();
            assert_eq!(wrong.code(), "block-hash-mismatch");
            if compression == Compression::Zstd {
                assert_eq!(index.frame_count(), data.len().div_ceil(64 * 1024));
                let start = layout.payload_offsets[0];
                for f in 0..index.frame_count() {
                    let r = index.frame_stored_range(f);
                    let frame = &bytes[(start + r.start) as usize..(start + r.end) as usize];
                    let plain = zstd::bulk::decompress(frame, 64 * 1024).unwrap();
                    let (first, len) = index.frame_blocks(f);
                    assert_eq!(plain.len() as u64, len);
                    assert_eq!(index.frame_of_block(first), f);
                    for (j, block) in plain.chunks(4096).enumerate() {
                        index.check_block(first + j, block).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_index_is_refused_by_name() {
        let data = vec![7u8; 200_000];
        let (bytes, head) = bundle(&data, Compression::Zstd);
        let (layout, _) = index_of(&bytes, &head);
        let m = &head.manifest;
        let p = &m.payloads[0];
        let at = layout.index_offsets[0] as usize;
        let good = &bytes[at..at + p.index.size as usize];
        let short = BlockIndex::parse(m, p, &good[1..]).unwrap_err();
        assert_eq!(short.code(), "index-invalid");
        let mut flipped = good.to_vec();
        flipped[5] ^= 1;
        let err = BlockIndex::parse(m, p, &flipped).unwrap_err();
        assert_eq!(err.code(), "index-hash-mismatch");
        // Frame offsets that go backwards, even when signed, are refused.
        let mut backwards = good.to_vec();
        let frames_at = good.len() - 8 * 4;
        backwards[frames_at + 8..frames_at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut p2 = p.clone();
        p2.index.blake3 = crate::manifest::Digest(block_hash(&backwards));
        let err = BlockIndex::parse(m, &p2, &backwards).unwrap_err();
        assert_eq!(err.code(), "index-invalid", "{err}");
    }

    #[test]
    fn block_hasher_splits_at_block_size_whatever_the_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut a = BlockHasher::new(4096);
        a.update(&data);
        let mut b = BlockHasher::new(4096);
        for piece in data.chunks(333) {
            b.update(piece);
        }
        let (a, b) = (a.finish(), b.finish());
        assert_eq!(a, b);
        assert_eq!(a.len(), 3 * 32);
        assert_eq!(&a[64..], blake3::hash(&data[8192..]).as_bytes());
    }

    #[test]
    fn block_hashes_side_by_side_equal_one_by_one_for_every_size_and_count() {
        let data = abkit_disk::fixtures::noise(300 * 4096 + 1000, 15);
        // Not whole chunks, one chunk, 2..64 chunks (the batched path).
        for bs in [512, 1024, 3000, 2048, 4096, 8192, 65536] {
            for blocks in [0usize, 1, 3, 15, 16, 17, 255, 256, 257, 300] {
                let len = (blocks * bs + 1000).min(data.len());
                let bytes = &data[..len];
                let mut got = Vec::new();
                block_hashes(bytes, bs, &mut got);
                let want: Vec<[u8; 32]> = bytes.chunks_exact(bs).map(block_hash).collect();
                assert_eq!(got, want, "{bs}-byte blocks, {len} bytes");
            }
        }
    }
}
