//! Scratch folders beside an output (the factory's payloads, a release's
//! erofs image, an extract's staging) that do not pile up when abkit is
//! killed: each holder keeps an exclusive lock on its folder while it
//! lives, and the next one made with the same prefix in that folder removes
//! every such folder whose lock it can take (its owner is gone).

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A folder younger than this is never swept: its creator may be between
/// making it and locking it.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

/// A scratch folder, removed with its contents on drop.
pub struct ScratchDir {
    dir: tempfile::TempDir,
    /// An open handle of the folder, locked exclusively (`flock`) until
    /// dropped; declared after `dir`, so the folder goes first.
    _lock: File,
}

impl ScratchDir {
    /// Makes `parent/PREFIXxxxxxx` (mode 0700) after removing the folders
    /// of that prefix left by killed processes.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<ScratchDir> {
        sweep(parent, prefix);
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
        let lock = File::open(dir.path())?;
        lock.lock()?;
        Ok(ScratchDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the folder to `target` (it becomes the output, lock still
    /// held); on failure the folder is removed.
    pub fn persist_as(self, target: &Path) -> io::Result<()> {
        let ScratchDir { dir, _lock } = self;
        let path: PathBuf = dir.keep();
        std::fs::rename(&path, target).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&path);
        })
    }
}

/// Removes the `PREFIX*` folders in `parent` that nobody holds and that
/// are older than [`SWEEP_MIN_AGE`]; returns how many. Best effort: what
/// cannot be read or removed is left.
pub fn sweep(parent: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        // Not followed: a link named like ours is not ours.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !meta.is_dir() || !old {
            continue;
        }
        let Ok(handle) = File::open(&path) else {
            continue;
        };
        match handle.try_lock() {
            Ok(()) => {
                if std::fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            }
            Err(TryLockError::WouldBlock | TryLockError::Error(_)) => {}
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A folder `name` in `parent` last changed `age` ago.
    fn folder(parent: &Path, name: &str, age: Duration) -> PathBuf {
        let path = parent.join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("payload"), b"left behind").unwrap();
        File::open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        path
    }

    #[test]
    fn only_old_unheld_folders_of_the_prefix_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let hour = Duration::from_secs(3600);
        let dead = folder(p, ".abkit-build-dead", hour);
        let held = folder(p, ".abkit-build-held", hour);
        let young = folder(p, ".abkit-build-young", Duration::ZERO);
        let other = folder(p, ".abkit-rootfs-other", hour);
        // A live owner: an exclusive lock on its own handle of the folder.
        let owner = File::open(&held).unwrap();
        owner.lock().unwrap();
        // A link named like ours, to a folder that is not ours.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), p.join(".abkit-build-link")).unwrap();
        std::fs::write(p.join(".abkit-build-file"), b"x").unwrap();

        assert_eq!(sweep(p, ".abkit-build-"), 1);
        assert!(!dead.exists());
        assert!(held.join("payload").exists() && young.exists() && other.exists());
        assert!(p.join(".abkit-build-link").exists() && p.join(".abkit-build-file").exists());
        assert!(elsewhere.path().exists());
        // Its owner gone, the held folder goes too.
        drop(owner);
        assert_eq!(sweep(p, ".abkit-build-"), 1);
        assert!(!held.exists());
    }

    #[test]
    fn a_scratch_folder_is_locked_while_it_lives_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let dead = folder(parent.path(), ".abkit-x-dead", Duration::from_secs(3600));
        let scratch = ScratchDir::new_in(parent.path(), ".abkit-x-").unwrap();
        assert!(!dead.exists(), "made after sweeping");
        let path = scratch.path().to_path_buf();
        File::open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            sweep(parent.path(), ".abkit-x-"),
            0,
            "a live folder is kept"
        );
        drop(scratch);
        assert!(!path.exists());

        let scratch = ScratchDir::new_in(parent.path(), ".abkit-x-").unwrap();
        std::fs::write(scratch.path().join("a"), b"1").unwrap();
        let target = parent.path().join("out");
        scratch.persist_as(&target).unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
    }
}
