//! Device-mapper through its ioctls (`<linux/dm-ioctl.h>`, interface 4):
//! just what the test OS needs to map its slot through dm-verity (create a
//! device, load a read-only table, resume it) and to show the table of the
//! running root.
//!
//! A small module of our own rather than the `devicemapper` crate: that
//! crate generates its ioctl bindings with bindgen (libclang at build time)
//! and brings nix, semver, serde and more into a static PID 1; the four
//! ioctls here are 200 lines with the kernel header's layout checked by
//! tests. The verity superblock reader is here too: the kernel's verity
//! target takes salt and block count as parameters, so like `veritysetup
//! open` we read them from the superblock at the hash offset (an attacker
//! who changes them only changes the root hash the tree must reach, so the
//! trusted `roothash=` still decides).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

/// `struct dm_ioctl` is 312 bytes; `struct dm_target_spec` 40.
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_CONTROL: &str = "/dev/mapper/control";

// Command numbers of `enum { DM_VERSION_CMD = 0, ... }`.
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
const DM_TABLE_STATUS: u8 = 12;

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_request(nr: u8) -> libc::c_ulong {
    (3 << 30) | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | nr as libc::c_ulong
}

/// A `struct dm_ioctl` header (version 4.0.0) naming `name`, followed by
/// `payload`, in a buffer of at least `size` bytes.
fn request(
    name: &str,
    flags: u32,
    targets: u32,
    payload: &[u8],
    size: usize,
) -> io::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= 128 || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad device name",
        ));
    }
    let len = size.max(DM_IOCTL_SIZE + payload.len());
    let mut buf = vec![0u8; len];
    buf[0..4].copy_from_slice(&4u32.to_ne_bytes());
    buf[12..16].copy_from_slice(&(len as u32).to_ne_bytes()); // data_size
    buf[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
    buf[20..24].copy_from_slice(&targets.to_ne_bytes()); // target_count
    buf[28..32].copy_from_slice(&flags.to_ne_bytes());
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    buf[DM_IOCTL_SIZE..DM_IOCTL_SIZE + payload.len()].copy_from_slice(payload);
    Ok(buf)
}

fn ioctl(control: &File, nr: u8, buf: &mut [u8], what: &str) -> io::Result<()> {
    // SAFETY: `buf` starts with a dm_ioctl header whose data_size is the
    // buffer's length; the kernel reads and writes only inside it.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), dm_request(nr) as _, buf.as_mut_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("device-mapper {what}: {e}"),
        ));
    }
    Ok(())
}

fn control() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(DM_CONTROL)
        .map_err(|e| io::Error::new(e.kind(), format!("{DM_CONTROL}: {e} (is dm-mod loaded?)")))
}

/// One target line: `start length type params` (in 512-byte sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

/// A `struct dm_target_spec` followed by its NUL-terminated parameters,
/// padded to 8 bytes (`next` is the offset to the following spec).
fn encode_target(t: &Target) -> io::Result<Vec<u8>> {
    if t.kind.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "target type too long",
        ));
    }
    let mut spec = vec![0u8; DM_TARGET_SPEC_SIZE];
    spec[0..8].copy_from_slice(&t.start.to_ne_bytes());
    spec[8..16].copy_from_slice(&t.length.to_ne_bytes());
    spec[24..24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
    spec.extend_from_slice(t.params.as_bytes());
    spec.push(0);
    spec.resize(spec.len().div_ceil(8) * 8, 0);
    let next = spec.len() as u32;
    spec[20..24].copy_from_slice(&next.to_ne_bytes());
    Ok(spec)
}

/// Creates device `name` with one read-only `target` and activates it.
pub fn create_readonly(name: &str, target: &Target) -> io::Result<()> {
    let control = control()?;
    let mut buf = request(name, 0, 0, &[], 0)?;
    ioctl(&control, DM_DEV_CREATE, &mut buf, "create")?;
    let spec = encode_target(target)?;
    let mut buf = request(name, DM_READONLY_FLAG, 1, &spec, 0)?;
    ioctl(&control, DM_TABLE_LOAD, &mut buf, "load table")?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the table goes live.
    let mut buf = request(name, 0, 0, &[], 0)?;
    ioctl(&control, DM_DEV_SUSPEND, &mut buf, "resume")
}

/// The table (`table = true`) or the status of device `name`.
pub fn status(name: &str, table: bool) -> io::Result<Vec<Target>> {
    let control = control()?;
    let flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
    let mut buf = request(name, flags, 0, &[], 16 << 10)?;
    ioctl(&control, DM_TABLE_STATUS, &mut buf, "status")?;
    let u32_at =
        |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or_default());
    if u32_at(&buf, 28) & DM_BUFFER_FULL_FLAG != 0 {
        return Err(io::Error::other("device-mapper status: buffer too small"));
    }
    let count = u32_at(&buf, 20) as usize;
    let mut at = u32_at(&buf, 16) as usize;
    let mut targets = Vec::new();
    for _ in 0..count {
        let spec = buf
            .get(at..at + DM_TARGET_SPEC_SIZE)
            .ok_or_else(|| io::Error::other("device-mapper status: short reply"))?;
        let start = u64::from_ne_bytes(spec[0..8].try_into().unwrap_or_default());
        let length = u64::from_ne_bytes(spec[8..16].try_into().unwrap_or_default());
        let next = u32_at(spec, 20) as usize;
        let kind = cstr(&spec[24..40]);
        let params = cstr(buf.get(at + DM_TARGET_SPEC_SIZE..).unwrap_or_default());
        targets.push(Target {
            start,
            length,
            kind,
            params,
        });
        // In replies `next` is relative to the start of the data.
        at = u32_at(&buf, 16) as usize + next;
    }
    Ok(targets)
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// What a verity superblock (format of `veritysetup format`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySuperblock {
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl VeritySuperblock {
    /// Parses the 512-byte superblock.
    pub fn parse(b: &[u8]) -> Result<VeritySuperblock, String> {
        if b.len() < 512 || &b[0..8] != b"verity\0\0" {
            return Err("no verity superblock at the hash offset".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        if u32_at(8) != 1 {
            return Err(format!("verity superblock version {}", u32_at(8)));
        }
        let salt_len = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_len > 256 {
            return Err(format!("verity salt of {salt_len} bytes"));
        }
        let sb = VeritySuperblock {
            hash_type: u32_at(12),
            algorithm: cstr(&b[32..64]),
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(b[72..80].try_into().unwrap_or_default()),
            salt: b[88..88 + salt_len].to_vec(),
        };
        if !sb.data_block_size.is_power_of_two()
            || !sb.hash_block_size.is_power_of_two()
            || sb.data_block_size < 512
            || sb.hash_block_size < 512
            || sb.data_blocks == 0
            || !sb.algorithm.bytes().all(|c| c.is_ascii_alphanumeric())
        {
            return Err("verity superblock has impossible values".into());
        }
        Ok(sb)
    }

    /// Reads the superblock of `device` at `hash_offset`.
    pub fn read(device: &str, hash_offset: u64) -> io::Result<VeritySuperblock> {
        let mut f = File::open(device)?;
        f.seek(SeekFrom::Start(hash_offset))?;
        let mut b = [0u8; 512];
        f.read_exact(&mut b)?;
        VeritySuperblock::parse(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The verity target over `device` (`major:minor`) with the hash area at
    /// `hash_offset` bytes (superblock first, then the tree).
    pub fn target(&self, device: &str, hash_offset: u64, root_hash: &str) -> Target {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            self.salt.iter().map(|b| format!("{b:02x}")).collect()
        };
        let hash_start = hash_offset / u64::from(self.hash_block_size) + 1;
        Target {
            start: 0,
            length: self.data_blocks * u64::from(self.data_block_size) / 512,
            kind: "verity".into(),
            params: format!(
                "{} {device} {device} {} {} {} {hash_start} {} {root_hash} {salt}",
                self.hash_type,
                self.data_block_size,
                self.hash_block_size,
                self.data_blocks,
                self.algorithm
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // DM_DEV_CREATE = 0xc138fd03, DM_TABLE_LOAD = 0xc138fd09 on x86-64.
        assert_eq!(dm_request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(dm_request(DM_TABLE_LOAD), 0xc138_fd09);
        assert_eq!(dm_request(DM_TABLE_STATUS), 0xc138_fd0c);
    }

    #[test]
    fn header_and_target_layout() {
        let t = Target {
            start: 0,
            length: 16,
            kind: "verity".into(),
            params: "1 a".into(),
        };
        let spec = encode_target(&t).unwrap();
        assert_eq!(spec.len(), 48);
        assert_eq!(&spec[24..30], b"verity");
        assert_eq!(&spec[40..44], b"1 a\0");
        assert_eq!(u32::from_ne_bytes(spec[20..24].try_into().unwrap()), 48);
        let buf = request("root", DM_READONLY_FLAG, 1, &spec, 0).unwrap();
        assert_eq!(buf.len(), 312 + 48);
        assert_eq!(&buf[48..53], b"root\0");
        assert_eq!(u32::from_ne_bytes(buf[12..16].try_into().unwrap()), 360);
        assert!(request("a/b", 0, 0, &[], 0).is_err());
    }

    #[test]
    fn superblock_from_veritysetup_format() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, vec![0x5a; 64 * 4096]).unwrap();
        let out = std::process::Command::new("veritysetup")
            .args(["format", "--hash-offset=262144", "--salt=00112233"])
            .arg(&img)
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let root = text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim()
            .to_string();
        let sb = VeritySuperblock::read(img.to_str().unwrap(), 262_144).unwrap();
        assert_eq!(sb.data_blocks, 64);
        assert_eq!(sb.salt, vec![0x00, 0x11, 0x22, 0x33]);
        assert_eq!(sb.algorithm, "sha256");
        let t = sb.target("254:2", 262_144, &root);
        assert_eq!(t.length, 512);
        assert_eq!(
            t.params,
            format!("1 254:2 254:2 4096 4096 64 65 sha256 {root} 00112233")
        );
        assert!(VeritySuperblock::read(img.to_str().unwrap(), 0).is_err());
    }
}
