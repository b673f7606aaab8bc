//! Fixtures shared by the integration tests: a tiny EFI loader, a small
//! system image, builds with small sizes, and runners for the real tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use abkit_disk::{BuildOptions, BuildReport, LayoutOptions, build, fixtures};
use sha2::{Digest, Sha256};

pub const MIB: u64 = 1 << 20;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub loader: PathBuf,
    pub system: PathBuf,
    pub loader_bytes: Vec<u8>,
    pub system_bytes: Vec<u8>,
}

pub use abkit_disk::fixtures::noise;

/// A 3 MiB system image: 1 MiB noise, 1 MiB zeros, 1 MiB noise (its last
/// 4 KiB block is not zero, so its used part is the whole file).
pub fn system_image() -> Vec<u8> {
    let mut image = noise(MIB as usize, 7);
    image.extend(std::iter::repeat_n(0u8, MIB as usize));
    image.extend(noise(MIB as usize, 11));
    image
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let loader = dir.path().join("boot.efi");
        let system = dir.path().join("system.img");
        let loader_bytes = fixtures::tiny_efi_application(b"abkit test loader v1");
        let system_bytes = system_image();
        std::fs::write(&loader, &loader_bytes).unwrap();
        std::fs::write(&system, &system_bytes).unwrap();
        Fixture {
            dir,
            loader,
            system,
            loader_bytes,
            system_bytes,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Build options with small sizes: 64 MiB ESP, 16 MiB slots, 8 MiB data.
    pub fn options(&self, output: &Path) -> BuildOptions {
        BuildOptions {
            loader: self.loader.clone(),
            system: self.system.clone(),
            output: output.to_path_buf(),
            layout: LayoutOptions {
                esp_size: 64 * MIB,
                system_size: 16 * MIB,
                data_size: 8 * MIB,
                disk_size: None,
                label_prefix: "ABKIT".into(),
            },
            seed: Some(42),
            force: false,
        }
    }

    pub fn build(&self, name: &str) -> (PathBuf, BuildReport) {
        let out = self.path(name);
        let report = build(&self.options(&out)).unwrap();
        (out, report)
    }
}

/// Runs a tool, returning stdout; fails the test with its output on error.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a tool and returns raw stdout bytes.
pub fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Copies `len` bytes at `offset` of `disk` into a new file `dest`.
pub fn extract(disk: &Path, offset: u64, len: u64, dest: &Path) {
    let bytes = std::fs::read(disk).unwrap();
    std::fs::write(dest, &bytes[offset as usize..(offset + len) as usize]).unwrap();
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `mtools` image argument for a partition at `offset`.
pub fn mtools_image(disk: &Path, offset: u64) -> String {
    format!("{}@@{offset}", disk.display())
}

/// `fsck.vfat -n` succeeds and reports nothing but its banner and summary
/// (any finding adds lines even when the exit status is 0).
pub fn assert_fsck_clean(fat: &Path) {
    let out = run(Command::new("fsck.vfat").arg("-n").arg(fat));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "fsck.vfat found problems:\n{out}");
    assert!(lines[1].contains(" files, "), "{out}");
}

/// CRC-32 as GPT uses it (IEEE, reflected), for crafting headers.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Recomputes the CRC32 of the GPT header at byte `at` of `disk`.
pub fn fix_header_crc(disk: &mut [u8], at: usize) {
    let size = u32::from_le_bytes(disk[at + 12..at + 16].try_into().unwrap()) as usize;
    disk[at + 16..at + 20].fill(0);
    let crc = crc32(&disk[at..at + size]);
    disk[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

/// `sgdisk -v` finds nothing wrong: exit 0, "No problems found", and no
/// caution or warning on either stream (sgdisk exits 0 even then).
pub fn assert_sgdisk_clean(disk: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk -v failed:\n{text}");
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
    for bad in ["Caution", "Warning", "Problem", "corrupt", "ERROR"] {
        assert!(!text.contains(bad), "sgdisk -v:\n{text}");
    }
}
