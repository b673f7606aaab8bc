//! The offline backend: a whole disk image (or an unmounted block device)
//! with a variable store beside it (an OVMF VARS file or an efivarfs-format
//! directory), and the slot that is taken to be running.
//!
//! The ESP is read and written inside the image without mounting it. This
//! is how tests, factories and our own checks drive the engine.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "testing")]
use std::sync::Arc;

use abkit_disk::{DiskError, DiskImage, Esp, EspLocation, Slot};
use abkit_efi::VarStore;

#[cfg(feature = "testing")]
use crate::fault::{FaultyEsp, FaultySlot, FaultyVars, PowerCut};
use crate::lock::OperationLock;
use crate::machine::{EspFiles, Machine, SlotDevice};
use crate::{Result, UpdateError};

/// A disk image taken as a machine.
pub struct OfflineMachine {
    disk: DiskImage,
    vars: Box<dyn VarStore>,
    esp: Box<dyn EspFiles>,
    running: Slot,
    #[cfg(feature = "testing")]
    power: Option<Arc<PowerCut>>,
    path: PathBuf,
    lock: Option<OperationLock>,
    boot_id: Option<String>,
}

impl OfflineMachine {
    /// Says which boot this is (tests of the `auto` boot control: a new
    /// id is a reboot).
    pub fn with_boot_id(mut self, id: impl Into<String>) -> OfflineMachine {
        self.boot_id = Some(id.into());
        self
    }

    /// Opens `disk` read-write, with `vars` as its firmware variables and
    /// `running` as the slot it runs.
    pub fn open(disk: &Path, vars: Box<dyn VarStore>, running: Slot) -> Result<OfflineMachine> {
        let path = disk.to_path_buf();
        let disk = DiskImage::open(disk)?;
        let esp: Box<dyn EspFiles> = Box::new(ImageEsp(disk.esp()?));
        Ok(OfflineMachine {
            disk,
            vars,
            esp,
            running,
            #[cfg(feature = "testing")]
            power: None,
            path,
            lock: None,
            boot_id: None,
        })
    }

    /// Like [`open`](OfflineMachine::open), with every mutation routed
    /// through `power` so that a test can cut it on cue (`testing` feature).
    #[cfg(feature = "testing")]
    pub fn open_with_power_cut(
        disk: &Path,
        vars: Box<dyn VarStore>,
        running: Slot,
        power: Option<Arc<PowerCut>>,
    ) -> Result<OfflineMachine> {
        let path = disk.to_path_buf();
        let disk = DiskImage::open(disk)?;
        let esp: Box<dyn EspFiles> = Box::new(ImageEsp(disk.esp()?));
        let (vars, esp): (Box<dyn VarStore>, Box<dyn EspFiles>) = match &power {
            Some(power) => (
                Box::new(FaultyVars {
                    inner: vars,
                    gate: power.clone(),
                }),
                Box::new(FaultyEsp {
                    inner: esp,
                    power: power.clone(),
                }),
            ),
            None => (vars, esp),
        };
        Ok(OfflineMachine {
            disk,
            vars,
            esp,
            running,
            power,
            path,
            lock: None,
            boot_id: None,
        })
    }

    pub fn disk(&self) -> &DiskImage {
        &self.disk
    }
}

impl OfflineMachine {
    /// Slot `slot`'s byte range of the disk image, on its own handle.
    fn slot_range(&self, slot: Slot) -> Result<FileRange> {
        let range = self.disk.slot_range(slot);
        let file = self
            .disk
            .file()
            .try_clone()
            .map_err(UpdateError::io("duplicate the disk handle"))?;
        Ok(FileRange {
            file,
            start: range.start,
            size: range.end - range.start,
        })
    }
}

impl Machine for OfflineMachine {
    fn boot_id(&self) -> Option<String> {
        self.boot_id.clone()
    }

    fn running_slot(&self) -> Slot {
        self.running
    }
    fn esp_location(&self) -> EspLocation {
        self.disk.esp_location()
    }
    fn vars(&mut self) -> &mut dyn VarStore {
        self.vars.as_mut()
    }
    fn esp(&mut self) -> &mut dyn EspFiles {
        self.esp.as_mut()
    }
    fn slot_device(&mut self, slot: Slot) -> Result<Box<dyn SlotDevice + '_>> {
        let dev = Box::new(self.slot_range(slot)?);
        #[cfg(feature = "testing")]
        if let Some(power) = &self.power {
            return Ok(Box::new(FaultySlot {
                inner: dev,
                power: power.clone(),
            }));
        }
        Ok(dev)
    }
    fn slot_reader(&self, slot: Slot) -> Result<Box<dyn SlotDevice>> {
        // Opened again (not a duplicate of the disk handle): read advice
        // given to it (`expect_scattered_reads`) stays its own.
        let range = self.disk.slot_range(slot);
        let file = File::open(&self.path).map_err(UpdateError::io(format!(
            "open {} for reading",
            self.path.display()
        )))?;
        Ok(Box::new(FileRange {
            file,
            start: range.start,
            size: range.end - range.start,
        }))
    }
    fn lock(&mut self) -> Result<()> {
        if self.lock.is_none() {
            self.lock = Some(OperationLock::on_file(&self.path)?);
        }
        Ok(())
    }
}

/// A byte range of a file or block device.
pub struct FileRange {
    pub file: File,
    pub start: u64,
    pub size: u64,
}

impl FileRange {
    fn check(&self, offset: u64, len: usize) -> io::Result<u64> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(self.start + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} run past the end of the {}-byte partition",
                    self.size
                ),
            )),
        }
    }
}

impl FileRange {
    /// `sync_file_range(2)` on a range of the partition, then (if `drop`)
    /// `POSIX_FADV_DONTNEED` on it. Best effort: failures are ignored (the
    /// final flush reports what matters).
    /// `sync_file_range` of a range; with `drop` its pages are dropped from
    /// the cache, and with `reread` read again from the media in the
    /// background.
    fn sync_range(&self, offset: u64, len: u64, flags: libc::c_uint, drop: bool, reread: bool) {
        use std::os::fd::AsRawFd;
        let Ok(n) = usize::try_from(len) else { return };
        let Ok(at) = self.check(offset, n) else {
            return;
        };
        let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
            return;
        };
        // SAFETY: both calls only read their integer arguments; the fd is
        // open for the duration of the calls.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), at, len, flags);
            if drop {
                libc::posix_fadvise(self.file.as_raw_fd(), at, len, libc::POSIX_FADV_DONTNEED);
            }
            if reread {
                libc::posix_fadvise(self.file.as_raw_fd(), at, len, libc::POSIX_FADV_WILLNEED);
            }
        }
    }
}

/// `sync_file_range` flags that wait until a range is on the media.
const SYNC_ALL: libc::c_uint = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;

impl SlotDevice for FileRange {
    fn size(&self) -> u64 {
        self.size
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        self.file.write_all_at(buf, at)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, at)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn drop_cache(&mut self) {
        use std::os::fd::AsRawFd;
        let (Ok(start), Ok(len)) = (i64::try_from(self.start), i64::try_from(self.size)) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is
        // open for the duration of the call. Advice failing is harmless.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), start, len, libc::POSIX_FADV_DONTNEED);
        }
    }
    fn start_writeback(&mut self, offset: u64, len: u64) {
        self.sync_range(offset, len, libc::SYNC_FILE_RANGE_WRITE, false, false);
    }
    fn expect_scattered_reads(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is
        // open for the duration of the call. Advice failing is harmless.
        // Linux applies it to the whole open file: `slot_reader` opens one
        // of its own.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
        }
    }
    fn settle(&mut self, offset: u64, len: u64) {
        self.sync_range(offset, len, SYNC_ALL, true, true);
    }
    fn retire(&mut self, offset: u64, len: u64) {
        self.sync_range(offset, len, SYNC_ALL, true, false);
    }
}

/// The ESP inside a disk image, through the FAT driver of abkit-disk.
pub struct ImageEsp(pub Esp);

impl EspFiles for ImageEsp {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.0.read_file(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DiskError::EspFileNotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn write(&mut self, path: &str, source: &mut dyn Read) -> Result<u64> {
        Ok(self.0.write_file_from(path, source)?)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        Ok(self.0.rename(from, to)?)
    }
    fn remove(&mut self, path: &str) -> Result<bool> {
        match self.0.remove(path) {
            Ok(()) => Ok(true),
            Err(DiskError::EspFileNotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    fn free_bytes(&mut self) -> Result<u64> {
        Ok(self.0.free_bytes()?)
    }
    fn size(&mut self, path: &str) -> Result<Option<u64>> {
        Ok(self.0.file_size(path)?)
    }
}
