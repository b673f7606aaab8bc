//! Releases built from a root filesystem folder: an erofs image made by
//! `mkfs.erofs` (erofs-utils) so that the same folder gives the same bytes,
//! and the dm-verity tree of that image computed *before* the bundle is
//! written, so the root hash can go into the UKI's command line (the UKI is
//! itself a payload of the bundle).
//!
//! Reproducibility: every inode gets the timestamp [`ErofsOptions::timestamp`]
//! (`-T`), the filesystem UUID is fixed (`-U`, by default derived from the
//! product and version: [`fs_uuid_for`]); mkfs.erofs sorts directory entries
//! itself, so the order in which the folder was filled does not matter. The
//! verity salt is derived from the image bytes ([`verity_salt_for`]) and the
//! verity superblock's UUID from the salt, so the hash tree is a function of
//! the image. What stays input: file contents, modes, owners, xattrs, and the
//! version of erofs-utils (tested with 1.5).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::verity::{VerityBuilder, VerityTree};
use crate::{Error, Result};

/// How [`mkfs_erofs`] builds the image.
#[derive(Debug, Clone)]
pub struct ErofsOptions {
    /// Seconds since the epoch given to every inode and the superblock (`-T`).
    pub timestamp: u64,
    /// The filesystem UUID (`-U`).
    pub uuid: [u8; 16],
    /// An erofs compressor (`lz4` or `lz4hc`, `-z`); none by default.
    pub compressor: Option<String>,
}

/// The filesystem UUID for a product and version: the first 16 bytes of
/// SHA-256 over both, marked as an RFC 9562 version 8 (custom) UUID.
pub fn fs_uuid_for(compatible: &str, version: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"abkit-rootfs-uuid-v1\0")
        .chain_update(compatible.as_bytes())
        .chain_update(b"\0")
        .chain_update(version.as_bytes())
        .finalize();
    uuid_from_digest(&digest)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Builds an erofs image of `dir` at `image` with `mkfs.erofs`.
pub fn mkfs_erofs(dir: &Path, image: &Path, opts: &ErofsOptions) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::InvalidInput(format!("root filesystem {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!(
            "root filesystem {} is not a folder",
            dir.display()
        )));
    }
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet")
        .arg(format!("-T{}", opts.timestamp))
        .arg(format!("-U{}", uuid_text(&opts.uuid)));
    if let Some(z) = &opts.compressor {
        if !matches!(z.as_str(), "lz4" | "lz4hc") {
            return Err(Error::InvalidInput(format!(
                "erofs compressor {z:?}: use lz4 or lz4hc"
            )));
        }
        cmd.arg(format!("-z{z}"));
    }
    cmd.arg(image).arg(dir);
    let out = cmd.output().map_err(|e| {
        Error::InvalidInput(format!(
            "cannot run mkfs.erofs ({e}); it comes with erofs-utils"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "mkfs.erofs {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Reads `image` start to end in 1 MiB blocks, handing each to `f`.
fn for_each_block(image: &Path, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut file = File::open(image)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

/// The verity salt for an image: SHA-256 of a context string and the image.
pub fn verity_salt_for(image: &Path) -> Result<Vec<u8>> {
    let mut hasher = Sha256::new().chain_update(b"abkit-rootfs-verity-salt-v1\0");
    for_each_block(image, |block| hasher.update(block))?;
    Ok(hasher.finalize().to_vec())
}

/// A version 8 (custom), RFC 4122 variant UUID from the first 16 bytes of
/// a digest.
fn uuid_from_digest(digest: &[u8]) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// The verity superblock's UUID for a salt.
pub fn verity_uuid_for(salt: &[u8]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"abkit-rootfs-verity-uuid-v1\0")
        .chain_update(salt)
        .finalize();
    uuid_from_digest(&digest)
}

/// The dm-verity tree `bundle create` appends to `image` when given this
/// salt and UUID (see [`crate::CreateOptions::verity_salt`]).
pub fn verity_tree(image: &Path, salt: &[u8], uuid: [u8; 16]) -> Result<VerityTree> {
    let mut builder = VerityBuilder::new(salt)?.with_uuid(uuid);
    for_each_block(image, |block| builder.update(block))?;
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_uuid_depends_on_product_and_version() {
        let a = fs_uuid_for("demo", "1.0.0");
        assert_eq!(a, fs_uuid_for("demo", "1.0.0"));
        assert_ne!(a, fs_uuid_for("demo", "1.0.1"));
        assert_ne!(a, fs_uuid_for("demo2", "1.0.0"));
        let text = uuid_text(&a);
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "8");
    }

    #[test]
    fn verity_tree_is_a_function_of_salt_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        std::fs::write(&image, vec![7u8; 3 * 4096 + 5]).unwrap();
        let salt = verity_salt_for(&image).unwrap();
        let uuid = verity_uuid_for(&salt);
        let a = verity_tree(&image, &salt, uuid).unwrap();
        let b = verity_tree(&image, &salt, uuid).unwrap();
        assert_eq!(a.root_hash, b.root_hash);
        assert_eq!(a.hash_area, b.hash_area);
        assert_eq!(a.padding, 4096 - 5);
        std::fs::write(&image, vec![8u8; 3 * 4096 + 5]).unwrap();
        assert_ne!(verity_salt_for(&image).unwrap(), salt);
    }
}
