//! Files inside the ESP, read and written without mounting it.
//!
//! Paths use `\` or `/` (`\EFI\abkit\boot-a.efi`); FAT compares names
//! without regard to case. Each change is flushed to the disk before the
//! call returns.
//!
//! The FAT library (`fatfs`) follows cluster chains without a bound, so
//! every operation first checks the chains of the paths it touches with a
//! bounded walk (`fat_guard`): a damaged FAT gives
//! [`DiskError::BadClusterChain`] naming the file or directory, never a
//! hang, and nothing is written.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;

use fatfs::{FileSystem, FsOptions, TimeProvider};
use serde::Serialize;

use crate::fat_guard::{FatGuard, Geometry, RawEntry};
use crate::sparse::{Slice, SparseDisk, seek_position};
use crate::{DiskError, Result};

/// `list` refuses deeper trees and more entries (a damaged FAT can loop).
const MAX_LIST_DEPTH: usize = 16;
const MAX_LIST_ENTRIES: usize = 100_000;

/// Suffix of the temporary file `write_file` writes before renaming it
/// (owned by abkit-loader-core: the loader writes its state file the same way).
pub const TEMP_SUFFIX: &str = abkit_loader_core::TEMP_SUFFIX;

/// What the ESP's file system sits on: the disk file, or the builder's
/// in-memory disk (shared, so that `Esp` can also reach raw bytes).
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    File(Arc<File>),
    Memory(Rc<RefCell<SparseDisk>>),
}

/// Positional I/O on either storage, so that callers use the same
/// `read_exact_at` / `write_all_at` (and the stream below the same
/// `read_at` / `write_at`) on a file and on the in-memory disk.
impl FileExt for Storage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Storage::File(f) => f.read_at(buf, offset),
            Storage::Memory(m) => m.borrow_mut().read_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        match self {
            Storage::File(f) => f.write_at(buf, offset),
            Storage::Memory(m) => m.borrow_mut().write_at(buf, offset),
        }
    }
}

/// The stream the FAT library reads and writes: a position over `Storage`.
#[derive(Debug)]
pub(crate) struct StorageStream {
    storage: Storage,
    pos: u64,
}

impl Read for StorageStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.storage.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for StorageStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.storage.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for StorageStream {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_position(self.pos, None, pos)?;
        Ok(self.pos)
    }
}

/// One file or directory of the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspEntry {
    /// Full path with `\` separators, as firmware writes it.
    pub path: String,
    pub is_dir: bool,
    /// Bytes (0 for directories).
    pub size: u64,
}

/// The ESP's FAT file system, opened from a disk image or block device.
pub struct Esp {
    fs: FileSystem<Slice<StorageStream>>,
    /// The same disk, for flushing and for raw fix-ups.
    storage: Storage,
    /// Byte offset of the ESP on the disk.
    start: u64,
}

/// Splits an ESP path into its names, refusing empty paths and `.`/`..`.
fn components(path: &str) -> Result<Vec<&str>> {
    let names: Vec<&str> = path.split(['/', '\\']).filter(|c| !c.is_empty()).collect();
    if names.is_empty() || names.iter().any(|c| *c == "." || *c == "..") {
        return Err(DiskError::BadEspPath(path.to_string()));
    }
    Ok(names)
}

fn not_found_or(path: &str, context: &str) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_string();
    let context = context.to_string();
    move |err| {
        if err.kind() == io::ErrorKind::NotFound {
            DiskError::EspFileNotFound(path)
        } else {
            DiskError::Fat {
                context: format!("{context} {path}"),
                source: err,
            }
        }
    }
}

impl Esp {
    pub(crate) fn mount(
        storage: Storage,
        start: u64,
        size: u64,
        clock: &'static dyn TimeProvider,
    ) -> Result<Esp> {
        let stream = StorageStream {
            storage: storage.clone(),
            pos: 0,
        };
        let options = FsOptions::new()
            .update_accessed_date(false)
            .time_provider(clock);
        let fs = FileSystem::new(Slice::new(stream, start, size), options)
            .map_err(DiskError::fat("mount the FAT file system"))?;
        Ok(Esp { fs, storage, start })
    }

    /// Writes everything to the disk (the FAT library writes through; this
    /// makes it durable on a real file or device).
    fn sync(&self) -> Result<()> {
        if let Storage::File(file) = &self.storage {
            file.sync_data().map_err(DiskError::io("flush the disk"))?;
        }
        Ok(())
    }

    /// Checks the cluster chains along `names`, from the root directory to
    /// the final entry, before `fatfs` may follow them (see `fat_guard`).
    /// Returns the final entry if it exists.
    fn check(&self, names: &[&str]) -> Result<Option<RawEntry>> {
        FatGuard::new(&self.storage, self.start)?.check(names)
    }

    /// Reads the active FAT (raw bytes).
    fn read_fat(&self, geometry: &Geometry) -> io::Result<Vec<u8>> {
        let len = usize::try_from(geometry.fat_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "FAT too large"))?;
        let mut fat = vec![0u8; len];
        self.storage
            .read_exact_at(&mut fat, geometry.active_fat_offset)?;
        Ok(fat)
    }

    /// Creates directory `name` in `parent` and repairs what fatfs 0.3.6
    /// gets wrong (rafalh/rust-fatfs#100, #99): it puts long-name entries
    /// before `.` and `..` (fsck.fat then reports the directory broken), and
    /// points `..` of a top-level directory at the root's cluster instead
    /// of 0. The new directory's cluster is the one the FAT allocated.
    fn create_dir_in<'d>(
        &'d self,
        parent: &fatfs::Dir<'d, Slice<StorageStream>>,
        name: &str,
        parent_is_root: bool,
    ) -> io::Result<fatfs::Dir<'d, Slice<StorageStream>>> {
        for entry in parent.iter() {
            let entry = entry?;
            if entry.file_name().eq_ignore_ascii_case(name) {
                if entry.is_dir() {
                    return Ok(entry.to_dir());
                }
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file has this name",
                ));
            }
        }
        let geometry = Geometry::read(&self.storage, self.start)?;
        let before = self.read_fat(&geometry)?;
        let dir = parent.create_dir(name)?;
        let after = self.read_fat(&geometry)?;
        let new_clusters: Vec<u64> = before
            .chunks_exact(4)
            .zip(after.chunks_exact(4))
            .enumerate()
            .filter(|(_, (b, a))| b == &[0; 4] && a != &[0; 4])
            .map(|(i, _)| i as u64)
            .collect();
        let [cluster] = new_clusters[..] else {
            return Err(io::Error::other(format!(
                "expected one new cluster for directory {name}, found {}",
                new_clusters.len()
            )));
        };
        let offset = geometry.data_offset + (cluster - 2) * geometry.cluster_bytes;
        let mut entries = [0u8; 128];
        self.storage.read_exact_at(&mut entries, offset)?;
        const LFN: u8 = 0x0f;
        let (lfn_dot, dot, lfn_dotdot, dotdot) = (
            &entries[..32],
            &entries[32..64],
            &entries[64..96],
            &entries[96..],
        );
        if lfn_dot[11] == LFN
            && &dot[..11] == b".          "
            && lfn_dotdot[11] == LFN
            && &dotdot[..11] == b"..         "
        {
            let mut fixed = [0u8; 128];
            fixed[..32].copy_from_slice(dot);
            fixed[32..64].copy_from_slice(dotdot);
            if parent_is_root {
                // `..` cluster, high word at 20, low word at 26.
                fixed[32 + 20..32 + 22].fill(0);
                fixed[32 + 26..32 + 28].fill(0);
            }
            self.storage.write_all_at(&fixed, offset)?;
        } else if &entries[..11] != b".          " {
            return Err(io::Error::other(format!(
                "unexpected layout of new directory {name}"
            )));
        }
        Ok(dir)
    }

    fn dir(&self, names: &[&str], create: bool) -> Result<fatfs::Dir<'_, Slice<StorageStream>>> {
        let mut dir = self.fs.root_dir();
        for (i, name) in names.iter().enumerate() {
            let path = names[..=i].join("\\");
            dir = if create {
                self.create_dir_in(&dir, name, i == 0)
                    .map_err(DiskError::fat(format!("create directory \\{path}")))?
            } else {
                dir.open_dir(name)
                    .map_err(not_found_or(&format!("\\{path}"), "open directory"))?
            };
        }
        Ok(dir)
    }

    /// Every file and directory, depth first, with sizes.
    pub fn list(&self) -> Result<Vec<EspEntry>> {
        let guard = FatGuard::new(&self.storage, self.start)?;
        guard.check(&[])?;
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), 0usize, self.fs.root_dir())];
        while let Some((prefix, depth, dir)) = pending.pop() {
            for entry in dir.iter() {
                let entry = entry.map_err(DiskError::fat(format!("list \\{prefix}")))?;
                let name = entry.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                // A damaged FAT can make a directory contain its ancestor.
                if depth >= MAX_LIST_DEPTH || out.len() >= MAX_LIST_ENTRIES {
                    return Err(DiskError::Fat {
                        context: format!("list \\{prefix}"),
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "directory tree too deep or too large (damaged file system?)",
                        ),
                    });
                }
                let path = format!("{prefix}\\{name}");
                let is_dir = entry.is_dir();
                if is_dir {
                    let names: Vec<&str> = path.split('\\').skip(1).collect();
                    guard.check(&names)?;
                    pending.push((path.clone(), depth + 1, entry.to_dir()));
                }
                out.push(EspEntry {
                    path,
                    is_dir,
                    size: if is_dir { 0 } else { entry.len() },
                });
            }
        }
        out.sort_by_key(|e| e.path.to_lowercase());
        Ok(out)
    }

    /// Whether a file or directory exists at `path`.
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.check(&components(path)?)?.is_some())
    }

    /// The size of the file at `path`, `None` if there is none, without
    /// reading its contents (its cluster chain is checked, so a `Some`
    /// file reads back whole). A directory at `path` is an error.
    pub fn file_size(&self, path: &str) -> Result<Option<u64>> {
        match self.check(&components(path)?)? {
            None => Ok(None),
            Some(entry) if entry.is_dir => Err(DiskError::Fat {
                context: format!("size of {path}"),
                source: io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"),
            }),
            Some(entry) => Ok(Some(entry.size)),
        }
    }

    /// The bytes of the file at `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let names = components(path)?;
        self.check(&names)?;
        let mut file = self
            .fs
            .root_dir()
            .open_file(&names.join("/"))
            .map_err(not_found_or(path, "open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(DiskError::fat(format!("read {path}")))?;
        Ok(bytes)
    }

    /// Creates the directory `path` and its parents where missing.
    pub fn create_dir_all(&self, path: &str) -> Result<()> {
        let names = components(path)?;
        self.check(&names)?;
        self.dir(&names, true)?;
        self.sync()
    }

    /// Creates or truncates the file at `path` (creating its directories),
    /// copies `source` into it and flushes it. Not atomic: a file that must
    /// never be seen half-written is written under a temporary name and
    /// then [`rename`](Esp::rename)d into place.
    pub fn write_file_from(&self, path: &str, source: &mut dyn Read) -> Result<u64> {
        let names = components(path)?;
        self.check(&names)?;
        let (name, parents) = names
            .split_last()
            .ok_or(DiskError::BadEspPath(path.into()))?;
        let dir = self.dir(parents, true)?;
        let written = {
            let mut file = dir
                .create_file(name)
                .map_err(DiskError::fat(format!("create {path}")))?;
            file.truncate()
                .and_then(|()| io::copy(source, &mut file))
                .and_then(|n| file.flush().map(|()| n))
                .map_err(DiskError::fat(format!("write {path}")))?
        };
        self.sync()?;
        Ok(written)
    }

    /// Replaces (or creates) the file at `path`, creating its directories.
    ///
    /// FAT has no atomic replace, so this writes `<path>.abkit-new`
    /// completely and flushes it, then removes the old file and renames the
    /// new one into place, flushing again. A crash leaves either the old
    /// file, or the complete new file under the temporary name (and no file
    /// at `path`): never a partly written file at `path`.
    pub fn write_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let names = components(path)?;
        let (name, parents) = names
            .split_last()
            .ok_or(DiskError::BadEspPath(path.into()))?;
        let temp = format!("{name}{TEMP_SUFFIX}");
        self.check(&names)?;
        self.check(&[parents, &[temp.as_str()]].concat())?;
        let dir = self.dir(parents, true)?;
        match dir.remove(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(not_found_or(path, "remove stale temporary of")(e)),
        }
        {
            let mut file = dir
                .create_file(&temp)
                .map_err(DiskError::fat(format!("create {path}{TEMP_SUFFIX}")))?;
            file.truncate()
                .and_then(|()| file.write_all(bytes))
                .and_then(|()| file.flush())
                .map_err(DiskError::fat(format!("write {path}{TEMP_SUFFIX}")))?;
        }
        self.sync()?;
        match dir.remove(name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(not_found_or(path, "remove old")(e)),
        }
        dir.rename(&temp, &dir, name)
            .map_err(DiskError::fat(format!(
                "rename {path}{TEMP_SUFFIX} to {path}"
            )))?;
        self.sync()
    }

    /// Renames (moves) `from` to `to`, replacing a file at `to`. The parent
    /// directory of `to` must exist.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let from_names = components(from)?;
        let to_names = components(to)?;
        let (to_name, to_parents) = to_names
            .split_last()
            .ok_or(DiskError::BadEspPath(to.into()))?;
        self.check(&from_names)?;
        self.check(&to_names)?;
        let root = self.fs.root_dir();
        // Make sure the source exists before removing the destination.
        root.open_file(&from_names.join("/"))
            .map_err(not_found_or(from, "open"))?;
        let to_dir = self.dir(to_parents, false)?;
        match to_dir.remove(to_name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(not_found_or(to, "remove")(e)),
        }
        root.rename(&from_names.join("/"), &to_dir, to_name)
            .map_err(DiskError::fat(format!("rename {from} to {to}")))?;
        self.sync()
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, path: &str) -> Result<()> {
        let names = components(path)?;
        self.check(&names)?;
        self.fs
            .root_dir()
            .remove(&names.join("/"))
            .map_err(not_found_or(path, "remove"))?;
        self.sync()
    }

    /// Free bytes left in the ESP. Counting reads the FAT once from start
    /// to end (no chain is followed), so a damaged chain cannot stall it.
    pub fn free_bytes(&self) -> Result<u64> {
        let stats = self.fs.stats().map_err(DiskError::fat("read usage"))?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }

    /// Unmounts: writes the FAT's bookkeeping and flushes it to the disk.
    pub fn close(self) -> Result<()> {
        let Esp { fs, storage, .. } = self;
        // Counting the free clusters records the count in the FSInfo
        // sector, which fsck.fat otherwise reports as uninitialized.
        fs.stats().map_err(DiskError::fat("count free clusters"))?;
        fs.unmount().map_err(DiskError::fat("unmount"))?;
        if let Storage::File(file) = storage {
            file.sync_data().map_err(DiskError::io("flush the disk"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_both_separators() {
        assert_eq!(
            components("\\EFI/abkit\\x.efi").unwrap(),
            ["EFI", "abkit", "x.efi"]
        );
        for bad in ["", "\\", "/a/../b", "./x"] {
            assert!(
                matches!(components(bad), Err(DiskError::BadEspPath(_))),
                "{bad}"
            );
        }
    }
}
