//! dm-verity hash trees in the layout of `veritysetup format` (format 1,
//! sha256, 4096-byte blocks, superblock in front of the tree), built while
//! streaming the image once, so the kernel and `veritysetup verify` accept
//! the system payload as written to a slot.
//!
//! Hash area layout (starting at `hash_offset` = data size):
//! one 4096-byte block holding the 512-byte superblock, then the tree levels
//! from the top (one block) down to level 0 (one digest per data block).
//! Each digest is `SHA-256(salt || block)`; a hash block holds 128 digests
//! padded with zeros; the root hash is the digest of the top block (or of the
//! only data block when the image is one block long).

use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::manifest::{Digest, HexBytes, VERITY_BLOCK_SIZE, VerityParams};
use crate::{Error, Result};

/// Longest salt the superblock can hold.
pub const MAX_SALT_LEN: usize = 256;
const BLOCK: usize = VERITY_BLOCK_SIZE as usize;
const DIGEST_LEN: usize = 32;
const DIGESTS_PER_BLOCK: u64 = (BLOCK / DIGEST_LEN) as u64;
const SUPERBLOCK_LEN: usize = 512;
const SUPERBLOCK_MAGIC: &[u8; 8] = b"verity\0\0";

/// Number of hash blocks in each tree level, level 0 (hashes of data blocks)
/// first. Empty for a single data block, as in cryptsetup.
pub fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(DIGESTS_PER_BLOCK);
        sizes.push(n);
    }
    sizes
}

/// Bytes of the hash area (superblock block + tree) for `data_blocks` blocks.
pub fn hash_area_size(data_blocks: u64) -> u64 {
    let tree_blocks: u64 = level_sizes(data_blocks).iter().sum();
    (1 + tree_blocks) * BLOCK as u64
}

/// A finished tree: what `bundle create` appends to the system image.
#[derive(Debug, Clone)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    /// Zero bytes appended to the image to reach a 4096-byte boundary.
    pub padding: usize,
    /// Superblock block followed by the tree levels, top level first.
    pub hash_area: Vec<u8>,
}

impl VerityTree {
    /// Data size after padding: where the hash area begins.
    pub fn data_size(&self) -> u64 {
        self.data_blocks * BLOCK as u64
    }

    /// The manifest entry's verity parameters for this tree.
    pub fn params(&self) -> VerityParams {
        VerityParams {
            algorithm: "sha256".into(),
            root_hash: Digest(self.root_hash),
            salt: HexBytes(self.salt.clone()),
            data_block_size: VERITY_BLOCK_SIZE,
            hash_block_size: VERITY_BLOCK_SIZE,
            data_size: self.data_size(),
            hash_offset: self.data_size(),
        }
    }
}

/// Builds a tree from data fed in pieces of any size.
pub struct VerityBuilder {
    salt: Vec<u8>,
    salted: Sha256,
    level0: Vec<u8>,
    data_blocks: u64,
    partial: Vec<u8>,
    uuid: Option<[u8; 16]>,
}

impl VerityBuilder {
    /// Starts a tree with the given salt (at most 256 bytes).
    pub fn new(salt: &[u8]) -> Result<VerityBuilder> {
        if salt.len() > MAX_SALT_LEN {
            return Err(Error::Verity(format!(
                "salt of {} bytes is longer than 256",
                salt.len()
            )));
        }
        let mut salted = Sha256::new();
        salted.update(salt);
        Ok(VerityBuilder {
            salt: salt.to_vec(),
            salted,
            level0: Vec::new(),
            data_blocks: 0,
            partial: Vec::with_capacity(BLOCK),
            uuid: None,
        })
    }

    /// Uses `uuid` in the superblock instead of a random one (reproducible
    /// images: the UUID does not enter the root hash, but it is part of the
    /// hash area's bytes).
    pub fn with_uuid(mut self, uuid: [u8; 16]) -> VerityBuilder {
        self.uuid = Some(uuid);
        self
    }

    /// Feeds the next data bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == BLOCK {
                let block = std::mem::take(&mut self.partial);
                self.hash_data_block(&block);
                self.partial = block;
                self.partial.clear();
            }
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            self.hash_data_block(block);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    fn hash_data_block(&mut self, block: &[u8]) {
        let digest = self.salted.clone().chain_update(block).finalize();
        self.level0.extend_from_slice(&digest);
        self.data_blocks += 1;
    }

    fn digest(&self, block: &[u8]) -> [u8; 32] {
        self.salted.clone().chain_update(block).finalize().into()
    }

    /// Pads the last partial block with zeros, builds the upper levels and
    /// the superblock. Refuses empty data.
    pub fn finish(mut self) -> Result<VerityTree> {
        let padding = if self.partial.is_empty() {
            0
        } else {
            BLOCK - self.partial.len()
        };
        if padding > 0 {
            let mut block = std::mem::take(&mut self.partial);
            block.resize(BLOCK, 0);
            self.hash_data_block(&block);
        }
        if self.data_blocks == 0 {
            return Err(Error::Verity("the image is empty".into()));
        }
        let uuid = match self.uuid {
            Some(uuid) => uuid,
            None => {
                let mut uuid = [0u8; 16];
                getrandom::fill(&mut uuid)
                    .map_err(|e| Error::Verity(format!("no randomness: {e}")))?;
                uuid
            }
        };
        let (root_hash, levels) = if self.data_blocks == 1 {
            // No tree: the root hash is the digest of the only data block.
            let mut root = [0u8; 32];
            root.copy_from_slice(&self.level0[..DIGEST_LEN]);
            (root, Vec::new())
        } else {
            let mut levels = vec![pad_to_block(std::mem::take(&mut self.level0))];
            while levels.last().map_or(0, Vec::len) > BLOCK {
                let below = levels.last().map(Vec::as_slice).unwrap_or_default();
                let mut next = Vec::with_capacity(below.len() / DIGESTS_PER_BLOCK as usize + BLOCK);
                for block in below.chunks_exact(BLOCK) {
                    next.extend_from_slice(&self.digest(block));
                }
                levels.push(pad_to_block(next));
            }
            let top = levels.last().map(Vec::as_slice).unwrap_or_default();
            (self.digest(top), levels)
        };
        // The hash area is the superblock's block, then the levels from the
        // top down: level 0 (all but 1/127 of the tree) is last, so its
        // buffer becomes the area and only the small rest is put in front
        // (one tree in memory, not two: 8 MiB per GiB of data).
        let mut head = encode_superblock(self.data_blocks, &self.salt, &uuid).to_vec();
        head.resize(BLOCK, 0);
        let mut levels = levels.into_iter();
        let level0 = levels.next().unwrap_or_default();
        for level in levels.rev() {
            head.extend_from_slice(&level);
        }
        let mut hash_area = level0;
        hash_area.splice(0..0, head);
        debug_assert_eq!(hash_area.len() as u64, hash_area_size(self.data_blocks));
        Ok(VerityTree {
            root_hash,
            salt: self.salt,
            uuid,
            data_blocks: self.data_blocks,
            padding,
            hash_area,
        })
    }
}

fn pad_to_block(mut level: Vec<u8>) -> Vec<u8> {
    let len = level.len().div_ceil(BLOCK) * BLOCK;
    level.resize(len, 0);
    level
}

/// The 512-byte superblock of `veritysetup format` (all integers little-endian):
/// magic `verity\0\0`, version 1, hash type 1, uuid, algorithm name (32 bytes),
/// data and hash block sizes, data block count, salt size, 6 bytes padding,
/// salt (256 bytes), 168 bytes padding.
pub fn encode_superblock(data_blocks: u64, salt: &[u8], uuid: &[u8; 16]) -> [u8; SUPERBLOCK_LEN] {
    let mut sb = [0u8; SUPERBLOCK_LEN];
    sb[0..8].copy_from_slice(SUPERBLOCK_MAGIC);
    sb[8..12].copy_from_slice(&1u32.to_le_bytes());
    sb[12..16].copy_from_slice(&1u32.to_le_bytes());
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[68..72].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    let salt_len = salt.len().min(MAX_SALT_LEN);
    sb[80..82].copy_from_slice(&(salt_len as u16).to_le_bytes());
    sb[88..88 + salt_len].copy_from_slice(&salt[..salt_len]);
    sb
}

/// Where an image laid out as `data || hash area` first disagrees with its
/// signed verity parameters ([`check_image`]). Offsets are from the start
/// of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMismatch {
    /// Data block `index` (bytes `offset..offset + 4096`) does not hash to
    /// its digest in the stored tree, and the data's root hash is not the
    /// signed one: the data was damaged.
    DataBlock { index: u64, offset: u64 },
    /// The data is intact (its root hash is the signed one) but the stored
    /// hash area differs from the tree of that data, first at `offset`.
    HashArea { offset: u64 },
    /// The data's root hash is not the signed one, yet each data block
    /// matches the stored tree: data and tree were both replaced.
    RootHash,
}

impl std::fmt::Display for ImageMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageMismatch::DataBlock { index, offset } => write!(
                f,
                "data block {index} (bytes {offset}..{}) does not match the signed hash tree",
                offset + BLOCK as u64
            ),
            ImageMismatch::HashArea { offset } => write!(
                f,
                "the hash tree or superblock is damaged from byte {offset} (the data itself matches the signed root hash)"
            ),
            ImageMismatch::RootHash => f.write_str(
                "data and hash tree agree with each other but not with the signed root hash",
            ),
        }
    }
}

/// Recomputes the tree of an image laid out as `data || hash area` and checks
/// it against `params`: root hash, superblock fields and every tree byte.
/// Reads the image once, in order, with bounded memory apart from the tree
/// itself. `Ok(Some(..))` names the first place that disagrees.
pub fn check_image(mut image: impl Read, params: &VerityParams) -> Result<Option<ImageMismatch>> {
    // A fixed UUID: the stored one is taken as it is, and a random one
    // would make an early-boot check (mark-good on a trial boot) wait for
    // the kernel's entropy pool, minutes on a VM without a hardware RNG.
    let mut builder = VerityBuilder::new(&params.salt.0)?.with_uuid([0; 16]);
    // Unit tests read in single blocks, so that their small trees still
    // stream through several pieces.
    let mut buf = vec![0u8; if cfg!(test) { BLOCK } else { 1 << 20 }];
    let mut left = params.data_size;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        image
            .read_exact(&mut buf[..n])
            .map_err(|e| Error::from_read(e, "verity data"))?;
        builder.update(&buf[..n]);
        left -= n as u64;
    }
    let tree = builder.finish()?;
    let hash_offset = params.data_size;
    let level0 = tree.data_blocks as usize * DIGEST_LEN;
    let level0_start = tree.hash_area.len() - level0.div_ceil(BLOCK) * BLOCK;
    let mut expected = tree.hash_area;
    // The stored hash area streams through `buf` (it is 8 MiB per GiB of
    // data: never held twice): the first byte that differs anywhere, and
    // the first one in level 0 (the data blocks' own digests).
    let (mut first_diff, mut first_level0_diff) = (None, None);
    let mut pos = 0;
    while pos < expected.len() {
        let n = buf.len().min(expected.len() - pos);
        let piece = &mut buf[..n];
        image
            .read_exact(piece)
            .map_err(|e| Error::from_read(e, "verity hash area"))?;
        if pos == 0 {
            // The superblock's uuid is free, and the rest of its block is
            // not checked (as before).
            let mut sb = encode_superblock(tree.data_blocks, &params.salt.0, &[0; 16]);
            sb[16..32].copy_from_slice(&piece[16..32]);
            expected[..SUPERBLOCK_LEN].copy_from_slice(&sb);
            expected[SUPERBLOCK_LEN..BLOCK].copy_from_slice(&piece[SUPERBLOCK_LEN..BLOCK]);
        }
        let differs = |from: usize, to: usize| {
            expected[from..to]
                .iter()
                .zip(&piece[from - pos..to - pos])
                .position(|(a, b)| a != b)
                .map(|i| from + i)
        };
        first_diff = first_diff.or_else(|| differs(pos, pos + n));
        let (lo, hi) = (level0_start.max(pos), (level0_start + level0).min(pos + n));
        if lo < hi {
            first_level0_diff = first_level0_diff.or_else(|| differs(lo, hi));
        }
        pos += n;
    }
    if tree.root_hash != params.root_hash.0 {
        // The data is not what was signed: name the first data block whose
        // digest differs from the stored level 0 (the last level of the
        // hash area). One block and no tree: the root hash is that block's
        // digest.
        if tree.data_blocks == 1 {
            return Ok(Some(ImageMismatch::DataBlock {
                index: 0,
                offset: 0,
            }));
        }
        return Ok(Some(match first_level0_diff {
            Some(at) => {
                let i = ((at - level0_start) / DIGEST_LEN) as u64;
                ImageMismatch::DataBlock {
                    index: i,
                    offset: i * BLOCK as u64,
                }
            }
            None => ImageMismatch::RootHash,
        }));
    }
    Ok(first_diff.map(|at| ImageMismatch::HashArea {
        offset: hash_offset + at as u64,
    }))
}

/// [`check_image`] as an error: `Error::Verity` saying what disagrees.
pub fn verify_image(image: impl Read, params: &VerityParams) -> Result<()> {
    match check_image(image, params)? {
        None => Ok(()),
        Some(m @ ImageMismatch::HashArea { offset })
            if offset < params.data_size + SUPERBLOCK_LEN as u64 =>
        {
            Err(Error::Verity(format!(
                "superblock does not match the parameters: {m}"
            )))
        }
        Some(m @ ImageMismatch::HashArea { .. }) => Err(Error::Verity(format!(
            "hash tree does not match the data: {m}"
        ))),
        Some(m) => Err(Error::Verity(format!(
            "root hash of the data does not match: {m}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_follow_cryptsetup() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128), vec![128, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
        assert_eq!(hash_area_size(129), 4 * 4096);
    }

    #[test]
    fn piecewise_feeding_equals_one_shot_and_pads() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut one = VerityBuilder::new(b"salt").unwrap();
        one.update(&data);
        let one = one.finish().unwrap();
        let mut many = VerityBuilder::new(b"salt").unwrap();
        for piece in data.chunks(1000) {
            many.update(piece);
        }
        let many = many.finish().unwrap();
        assert_eq!(one.root_hash, many.root_hash);
        assert_eq!(one.hash_area[4096..], many.hash_area[4096..]);
        assert_eq!(one.data_blocks, 74); // 300001 bytes -> 73.24 blocks
        assert_eq!(one.padding, 74 * 4096 - 300_001);
    }

    #[test]
    fn single_block_root_is_the_block_digest() {
        let mut b = VerityBuilder::new(&[1, 2]).unwrap();
        b.update(&[9u8; 4096]);
        let t = b.finish().unwrap();
        let expected: [u8; 32] = Sha256::new()
            .chain_update([1, 2])
            .chain_update([9u8; 4096])
            .finalize()
            .into();
        assert_eq!(t.root_hash, expected);
        assert_eq!(t.hash_area.len(), 4096);
    }

    #[test]
    fn empty_data_and_long_salt_are_refused() {
        assert!(matches!(
            VerityBuilder::new(b"").unwrap().finish(),
            Err(Error::Verity(_))
        ));
        assert!(VerityBuilder::new(&[0; 257]).is_err());
    }

    #[test]
    fn verify_image_detects_a_flipped_tree_byte() {
        let data = vec![5u8; 4096 * 200];
        let mut b = VerityBuilder::new(&[3; 32]).unwrap();
        b.update(&data);
        let tree = b.finish().unwrap();
        let mut image = data.clone();
        image.extend_from_slice(&tree.hash_area);
        verify_image(&image[..], &tree.params()).unwrap();
        image[4096 * 200 + 4096 + 5] ^= 1;
        assert!(
            verify_image(&image[..], &tree.params())
                .unwrap_err()
                .to_string()
                .contains("hash tree")
        );
        assert_eq!(
            check_image(&image[..], &tree.params()).unwrap(),
            Some(ImageMismatch::HashArea {
                offset: 4096 * 200 + 4096 + 5
            })
        );
        image[4096 * 200 + 4096 + 5] ^= 1;
        image[4096 * 7 + 9] ^= 1;
        assert_eq!(
            check_image(&image[..], &tree.params()).unwrap(),
            Some(ImageMismatch::DataBlock {
                index: 7,
                offset: 4096 * 7
            })
        );
        image[4096 * 7 + 9] ^= 1;
        image[0] ^= 1;
        assert!(
            verify_image(&image[..], &tree.params())
                .unwrap_err()
                .to_string()
                .contains("root hash")
        );
    }
}
