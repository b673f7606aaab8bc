//! What the engine acts on: a machine's firmware variables, the files of its
//! ESP, and the block devices of its two slots.
//!
//! Two real backends implement [`Machine`]: [`crate::live::LiveMachine`] (the
//! running Linux system) and [`crate::offline::OfflineMachine`] (a disk image
//! with a variable store). [`crate::fault::FaultyMachine`] wraps either to
//! cut the power after any single write, for crash-consistency tests.

use std::io::{self, Read};

use abkit_disk::{EspLocation, Slot};
use abkit_efi::VarStore;

use crate::Result;

/// Files on the ESP, by firmware path (`\EFI\abkit\boot-a.efi`).
pub trait EspFiles {
    /// The whole file, or `None` if it does not exist.
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Creates or truncates `path` (and its directories), copies `source`
    /// into it and flushes it. Not atomic: callers write a temporary name
    /// and [`rename`](EspFiles::rename) it into place.
    fn write(&mut self, path: &str, source: &mut dyn Read) -> Result<u64>;
    /// Moves `from` to `to`, replacing `to`; flushed when it returns.
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;
    /// Removes a file; `false` if it did not exist.
    fn remove(&mut self, path: &str) -> Result<bool>;
    /// Free bytes on the ESP.
    fn free_bytes(&mut self) -> Result<u64>;
    /// The size of a file, or `None` if it does not exist. Backends that can
    /// answer without reading the file override this.
    fn size(&mut self, path: &str) -> Result<Option<u64>> {
        Ok(self.read(path)?.map(|b| b.len() as u64))
    }
    /// Whether a file exists.
    fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.size(path)?.is_some())
    }
}

/// A slot's partition as a byte array. `Send`: the install writes it from
/// a thread of its own while the next block is being verified.
pub trait SlotDevice: Send {
    /// Capacity in bytes.
    fn size(&self) -> u64;
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Drops cached pages of the partition, so that the next reads come
    /// from the device (the read-back check then checks the media, not the
    /// page cache). Best effort.
    fn drop_cache(&mut self) {}
    /// Starts writing `len` bytes at `offset` back to the media without
    /// waiting, so that the device works while later blocks are written
    /// (steady flushing instead of one big flush at the end). Best effort:
    /// only `flush` makes writes durable.
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}
    /// Waits until `len` bytes at `offset` reached the media and drops them
    /// from the page cache, so that reading them back reads the media, not
    /// the cache (a file or block device also starts that read in the
    /// background). Best effort.
    fn settle(&mut self, _offset: u64, _len: u64) {}
    /// The reads that follow are single blocks far apart (a delta looking
    /// at the target slot's old contents): no readahead, which would read
    /// (or, in a sparse image, zero) 128 KiB around each. Affects this
    /// handle only. Best effort.
    fn expect_scattered_reads(&mut self) {}
    /// Like [`settle`](SlotDevice::settle) for a range that will not be
    /// read back now: waits until it reached the media and drops it from
    /// the page cache, without reading it again. Best effort.
    fn retire(&mut self, _offset: u64, _len: u64) {}
}

/// One machine with two slots.
pub trait Machine {
    /// The slot this system runs from (from the kernel command line, or
    /// given for an offline image).
    fn running_slot(&self) -> Slot;
    /// Where the ESP is, for boot entries' `HD()` nodes.
    fn esp_location(&self) -> EspLocation;
    fn vars(&mut self) -> &mut dyn VarStore;
    fn esp(&mut self) -> &mut dyn EspFiles;
    /// Opens a slot's partition. The engine never asks for the running slot
    /// during an install (invariant I1).
    fn slot_device(&mut self, slot: Slot) -> Result<Box<dyn SlotDevice + '_>>;
    /// Opens a slot's partition for reading only, on a handle of its own:
    /// a delta install reads the blocks the machine already holds from the
    /// running slot (never opened for writing, I1) and the target slot.
    fn slot_reader(&self, slot: Slot) -> Result<Box<dyn SlotDevice>>;
    /// Whether this is the running system (so a reboot means something).
    fn is_live(&self) -> bool {
        false
    }
    /// An id of the current boot (Linux's `/proc/sys/kernel/random/boot_id`
    /// live; what a test set offline): the `auto` boot control compares
    /// it to tell a reboot happened since a trial was armed. `None`: unknown.
    fn boot_id(&self) -> Option<String> {
        None
    }
    /// Takes the machine's exclusive operation lock (held until the machine
    /// is dropped, released by the kernel if the process dies): two
    /// commands that change one machine never interleave. Taking it twice
    /// is a no-op.
    fn lock(&mut self) -> Result<()>;
}

/// Writes `bytes` to `path` atomically: a temporary file, flushed, renamed
/// over the old one.
pub fn write_atomically(esp: &mut dyn EspFiles, path: &str, bytes: &[u8]) -> Result<()> {
    let temp = temp_path(path);
    esp.write(&temp, &mut &bytes[..])?;
    esp.rename(&temp, path)
}

/// The temporary name abkit writes before renaming into `path` (the same
/// suffix abkit-disk's ESP writer uses).
pub fn temp_path(path: &str) -> String {
    format!("{path}{}", abkit_disk::TEMP_SUFFIX)
}
