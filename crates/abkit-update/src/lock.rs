//! The operation lock: one command at a time changes a machine.
//!
//! An exclusive `flock(2)` on a file that names the machine: the disk image
//! (offline) or `/run/abkit/lock` (live). The kernel releases it when the
//! holder exits or dies, so a `kill -9` never leaves a stale lock. The
//! holder's pid, for the refusal message, comes from `/proc/locks` (flock
//! locks carry no owner otherwise); the live lock file also holds it as text.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Result, UpdateError};

/// Where the live system's lock lives.
pub const LIVE_LOCK_PATH: &str = "/run/abkit/lock";

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct OperationLock {
    _file: File,
    path: PathBuf,
}

impl OperationLock {
    /// Locks `path` (which must exist: a disk image) exclusively, without
    /// waiting.
    pub fn on_file(path: &Path) -> Result<OperationLock> {
        lock(OpenOptions::new().read(true), path)
    }

    /// Creates (if needed) and locks the live system's lock file at `path`,
    /// then writes this process's pid into it.
    pub fn live(path: &Path) -> Result<OperationLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(UpdateError::io(format!("create {}", dir.display())))?;
        }
        let mut held = lock(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            path,
        )?;
        let pid = std::process::id().to_string();
        (|| -> io::Result<()> {
            held._file.set_len(0)?;
            held._file.write_all(pid.as_bytes())
        })()
        .map_err(UpdateError::io(format!("write {}", path.display())))?;
        Ok(held)
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens `path` with `options` (never through a symbolic link, never
/// blocking on a FIFO) and takes the exclusive lock without waiting.
fn lock(options: &mut OpenOptions, path: &Path) -> Result<OperationLock> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(UpdateError::io(format!(
            "open {} to lock it",
            path.display()
        )))?;
    // SAFETY: flock only reads its integer arguments; the fd is open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = file
                .metadata()
                .ok()
                .and_then(|m| flock_holder(m.dev(), m.ino()));
            return Err(UpdateError::Locked {
                path: path.to_path_buf(),
                pid: holder,
            });
        }
        return Err(UpdateError::io(format!("lock {}", path.display()))(err));
    }
    Ok(OperationLock {
        _file: file,
        path: path.to_path_buf(),
    })
}

/// The pid holding a flock on the file `(dev, ino)`, from `/proc/locks`.
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    text.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:02:131074 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") || f.get(3) != Some(&"WRITE") {
            return None;
        }
        let mut id = f.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino)
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"x").unwrap();
        let first = OperationLock::on_file(&disk).unwrap();
        let err = OperationLock::on_file(&disk).unwrap_err();
        match &err {
            UpdateError::Locked { pid, path } => {
                assert_eq!(*pid, Some(std::process::id()));
                assert_eq!(path, &disk);
            }
            e => panic!("{e}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        OperationLock::on_file(&disk).unwrap();
    }

    #[test]
    fn the_live_lock_file_holds_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/abkit/lock");
        let held = OperationLock::live(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        assert!(matches!(
            OperationLock::live(&path),
            Err(UpdateError::Locked { .. })
        ));
        drop(held);
        OperationLock::live(&path).unwrap();
    }

    #[test]
    fn a_fifo_is_never_opened_for_reading_and_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // O_NONBLOCK: opening a FIFO for reading returns at once.
        let _ = OperationLock::on_file(&fifo);
    }
}
