//! Replacing a file on the host so that a reader, or a machine that loses
//! power, sees either the old file or the whole new one: a temporary file
//! in the same folder, flushed, renamed over the target, then the folder
//! flushed so that the rename itself is durable.
//!
//! Every abkit crate that writes a host file it must not lose (keys,
//! bundles, OVMF VARS files, efivarfs-format folders, loaders) goes through
//! here. (The ESP is not a host file: abkit-update writes it through its
//! `EspFiles` seam, one step per crash point.) Scratch folders beside an
//! output, swept when their process was killed, are here too
//! ([`ScratchDir`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod scratch;
pub use scratch::{ScratchDir, sweep};

/// A new version of `path` being written; [`commit`](AtomicFile::commit)
/// puts it in place, dropping it leaves `path` untouched and removes the
/// temporary file.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

/// The folder of `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes the folder that holds `path`, so a rename or removal in it is
/// durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

impl AtomicFile {
    /// Starts a new version of `path`: a hidden temporary file in the same
    /// folder (same file system, so the rename is atomic).
    pub fn new(path: &Path) -> io::Result<AtomicFile> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".abkit-tmp")
            .tempfile_in(parent_dir(path))?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The temporary file, to write into.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Sets the permission bits the file will have.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        self.tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Flushes the file, renames it over the target (a symlink there is
    /// replaced, not followed) and flushes the folder.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        let path = self.path;
        self.tmp.persist(&path).map_err(|e| e.error)?;
        sync_parent(&path)
    }
}

/// Replaces `path` with `bytes`, atomically and durably. `mode` sets the
/// permission bits; `None` keeps those of the file being replaced (0600
/// for a new file, as `tempfile` creates it).
pub fn replace(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let mut new = AtomicFile::new(path)?;
    new.file().write_all(bytes)?;
    match mode {
        Some(mode) => new.set_mode(mode)?,
        None => {
            if let Ok(meta) = std::fs::metadata(path) {
                new.set_mode(meta.permissions().mode() & 0o7777)?;
            }
        }
    }
    new.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replace_writes_the_whole_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        replace(&path, b"one", Some(0o644)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        // None keeps the mode of the file it replaces.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace(&path, b"two", None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key"]);
    }

    #[test]
    fn a_dropped_new_version_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vars.fd");
        std::fs::write(&path, b"old").unwrap();
        {
            let mut new = AtomicFile::new(&path).unwrap();
            new.file().write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        replace(&path, b"new", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }
}
