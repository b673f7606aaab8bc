//! Variables as files: Linux efivarfs, or any directory in its format.
//!
//! File name `Name-vendor-guid`; content = 4-byte little-endian attributes
//! followed by the data. On the real efivarfs a value is written with one
//! `write()` and files carry the immutable flag, which is cleared first; in
//! a plain directory a value is replaced atomically (temporary file, rename).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{StoreError, VarName, VarStore, Variable, check_name};

/// Where Linux mounts efivarfs.
pub const EFIVARFS_PATH: &str = "/sys/firmware/efi/efivars";

/// Whether `dir` is a mounted efivarfs (where writes reach firmware NVRAM,
/// so [`EfivarfsStore::kernel`] fits), by its file system's magic number;
/// false anywhere else, and on systems other than Linux.
pub fn is_efivarfs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        const EFIVARFS_MAGIC: i64 = 0xde5e81e4;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs is a plain C struct for which all-zero bytes are a
        // valid value; `c` is a NUL-terminated path and `st` a live,
        // writable struct that the call fills in.
        let (rc, st) = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            (libc::statfs(c.as_ptr(), &mut st), st)
        };
        // f_type is i64 here but narrower on some targets.
        #[allow(clippy::useless_conversion)]
        let f_type = i64::from(st.f_type);
        rc == 0 && f_type == EFIVARFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The kernel's efivarfs: writes go to firmware NVRAM.
    Kernel,
    /// An ordinary directory in the same format.
    Directory,
}

/// A variable store backed by efivarfs or a directory of efivarfs-format files.
#[derive(Debug, Clone)]
pub struct EfivarfsStore {
    root: PathBuf,
    kind: Kind,
}

impl EfivarfsStore {
    /// The running system's firmware variables at `/sys/firmware/efi/efivars`.
    pub fn system() -> EfivarfsStore {
        EfivarfsStore::kernel(EFIVARFS_PATH)
    }

    /// A mounted efivarfs at another path.
    pub fn kernel(root: impl Into<PathBuf>) -> EfivarfsStore {
        EfivarfsStore {
            root: root.into(),
            kind: Kind::Kernel,
        }
    }

    /// A plain directory holding files in efivarfs format (created on first
    /// write if missing). For tests, simulation and offline work.
    pub fn directory(root: impl Into<PathBuf>) -> EfivarfsStore {
        EfivarfsStore {
            root: root.into(),
            kind: Kind::Directory,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &VarName) -> PathBuf {
        self.root.join(name.to_string())
    }

    fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn write_kernel(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        if path.exists() {
            immutable::clear(path).map_err(Self::io_err(path))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            // efivarfs replaces the whole value on write and has no
            // truncate: never ask for one.
            .truncate(false)
            .open(path)
            .map_err(Self::io_err(path))?;
        // efivarfs takes a value in a single write(); a short write would
        // leave a partial variable, so it is an error, never retried.
        let written = file.write(content).map_err(Self::io_err(path))?;
        if written != content.len() {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {} bytes", content.len()),
                ),
            });
        }
        Ok(())
    }

    fn write_directory(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        fs::create_dir_all(&self.root).map_err(Self::io_err(&self.root))?;
        abkit_atomic::replace(path, content, None).map_err(Self::io_err(path))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(EfivarfsStore::io_err(dir))
}

/// Splits an efivarfs file name `Name-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn parse_file_name(file_name: &str) -> Option<VarName> {
    const GUID_LEN: usize = 36;
    let split = file_name.len().checked_sub(GUID_LEN + 1)?;
    if !file_name.is_char_boundary(split) || file_name.as_bytes()[split] != b'-' || split == 0 {
        return None;
    }
    let vendor = Uuid::try_parse(&file_name[split + 1..]).ok()?;
    Some(VarName::new(vendor, &file_name[..split]))
}

impl VarStore for EfivarfsStore {
    fn get(&self, name: &VarName) -> Result<Option<Variable>, StoreError> {
        check_name(name)?;
        let path = self.path_of(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io_err(&path)(e)),
        };
        if bytes.len() < 4 {
            return Err(StoreError::Malformed {
                path,
                reason: format!(
                    "{} bytes, shorter than the 4-byte attribute prefix",
                    bytes.len()
                ),
            });
        }
        Ok(Some(Variable {
            attributes: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            data: bytes[4..].to_vec(),
        }))
    }

    fn set(&mut self, name: &VarName, value: &Variable) -> Result<bool, StoreError> {
        check_name(name)?;
        if self.get(name)?.as_ref() == Some(value) {
            return Ok(false);
        }
        let path = self.path_of(name);
        let mut content = Vec::with_capacity(4 + value.data.len());
        content.extend_from_slice(&value.attributes.to_le_bytes());
        content.extend_from_slice(&value.data);
        match self.kind {
            Kind::Kernel => self.write_kernel(&path, &content)?,
            Kind::Directory => self.write_directory(&path, &content)?,
        }
        Ok(true)
    }

    fn delete(&mut self, name: &VarName) -> Result<bool, StoreError> {
        check_name(name)?;
        let path = self.path_of(name);
        if !path.exists() {
            return Ok(false);
        }
        if self.kind == Kind::Kernel {
            immutable::clear(&path).map_err(Self::io_err(&path))?;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Self::io_err(&path)(e)),
        }
        if self.kind == Kind::Directory {
            sync_dir(&self.root)?;
        }
        Ok(true)
    }

    fn list(&self) -> Result<Vec<VarName>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.kind == Kind::Directory => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Self::io_err(&self.root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Self::io_err(&self.root))?;
            if let Some(name) = entry.file_name().to_str().and_then(parse_file_name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// The inode immutable flag (`chattr -i`) that efivarfs sets on its files.
mod immutable {
    use std::path::Path;

    /// Clears FS_IMMUTABLE_FL on `path`. Filesystems without inode flags
    /// (tmpfs, overlay) answer ENOTTY/EOPNOTSUPP: nothing to clear there.
    #[cfg(target_os = "linux")]
    pub fn clear(path: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        const FS_IMMUTABLE_FL: libc::c_int = 0x10;
        let file = std::fs::File::open(path)?;
        let fd = file.as_raw_fd();
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which
        // points at a live local; fd stays open for the call.
        let rc = unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) };
        if rc != 0 {
            return ignore_unsupported(std::io::Error::last_os_error());
        }
        if flags & FS_IMMUTABLE_FL == 0 {
            return Ok(());
        }
        flags &= !FS_IMMUTABLE_FL;
        // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, a live local.
        let rc = unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn ignore_unsupported(e: std::io::Error) -> std::io::Result<()> {
        match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(()),
            _ => Err(e),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn clear(_path: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::attributes;

    #[test]
    fn directory_store_honours_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EfivarfsStore::directory(dir.path().join("vars"));
        crate::store::contract::check_store_contract(&mut store);
    }

    #[test]
    fn file_format_is_efivarfs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EfivarfsStore::directory(dir.path());
        let name = VarName::global("BootNext");
        store
            .set(
                &name,
                &Variable {
                    attributes: attributes::BOOT_VARIABLE,
                    data: vec![0x10, 0],
                },
            )
            .unwrap();
        let file = dir
            .path()
            .join("BootNext-8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(fs::read(&file).unwrap(), [7, 0, 0, 0, 0x10, 0]);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unchanged_value_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EfivarfsStore::directory(dir.path());
        let name = VarName::global("BootOrder");
        let v = Variable {
            attributes: 7,
            data: vec![1, 0],
        };
        store.set(&name, &v).unwrap();
        let file = dir.path().join(name.to_string());
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&file).unwrap());
        assert!(!store.set(&name, &v).unwrap());
        // A rewrite would have renamed a new inode into place.
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&file).unwrap()),
            inode
        );
    }

    #[test]
    fn reads_files_written_by_others_and_skips_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path()
                .join("Boot0003-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            [7, 0, 0, 0, 0xAA],
        )
        .unwrap();
        fs::write(dir.path().join("README"), "not a variable").unwrap();
        fs::write(
            dir.path()
                .join("x-not-a-guid-at-all-nope-nope-nope-nopenope"),
            "",
        )
        .unwrap();
        fs::write(
            dir.path()
                .join("Short-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            [7, 0],
        )
        .unwrap();
        let store = EfivarfsStore::directory(dir.path());
        let names = store.list().unwrap();
        assert_eq!(
            names,
            vec![VarName::global("Boot0003"), VarName::global("Short")]
        );
        assert_eq!(
            store.get(&names[0]).unwrap().unwrap(),
            Variable {
                attributes: 7,
                data: vec![0xAA]
            }
        );
        let err = store.get(&names[1]).unwrap_err();
        assert!(
            err.to_string()
                .contains("shorter than the 4-byte attribute prefix"),
            "{err}"
        );
    }

    /// Sets FS_IMMUTABLE_FL the way efivarfs does; false where the
    /// filesystem or our privileges do not allow it.
    fn make_immutable(path: &Path) -> bool {
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn kernel_mode_clears_the_immutable_flag_before_write_and_delete() {
        // A directory on a filesystem with inode flags (ext4 under /work or
        // /var/tmp) stands in for efivarfs, whose files carry this flag.
        let dir = tempfile::Builder::new()
            .prefix(".immutable-test-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR"))
            .unwrap();
        let name = VarName::global("BootOrder");
        let file = dir.path().join(name.to_string());
        fs::write(&file, [7, 0, 0, 0, 1, 0]).unwrap();
        if !make_immutable(&file) {
            eprintln!("skipping: cannot set the immutable flag here (not root, or no inode flags)");
            return;
        }
        assert!(
            fs::write(&file, [0]).is_err(),
            "the flag really blocks writes"
        );
        let mut store = EfivarfsStore::kernel(dir.path());
        let v = Variable {
            attributes: 7,
            data: vec![2, 0, 1, 0],
        };
        assert!(store.set(&name, &v).unwrap());
        assert_eq!(fs::read(&file).unwrap(), [7, 0, 0, 0, 2, 0, 1, 0]);
        assert!(make_immutable(&file));
        assert!(store.delete(&name).unwrap());
        assert!(!file.exists());
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(
            parse_file_name("Boot0001-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            Some(VarName::global("Boot0001"))
        );
        assert_eq!(
            parse_file_name("With-Dash-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            Some(VarName::global("With-Dash"))
        );
        assert_eq!(
            parse_file_name("-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            None
        );
        assert_eq!(parse_file_name("short"), None);
    }
}
