//! `abkit image build`: writes a sparse A/B disk around a loader and a
//! system image.
//!
//! The GPT and the ESP are first built in a [`SparseDisk`] in memory (only
//! the blocks the GPT and FAT code actually write are kept), then copied
//! out; the system image is streamed into slot A, skipping all-zero 4 KiB
//! blocks. On a regular file everything else stays a hole; on a block
//! device the regions that must read as zero are zeroed explicitly.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::boot_entries::InstalledEntries;
use crate::esp::{Esp, Storage};
use crate::fat_time::{FIXED_TIME, UTC_CLOCK};
use crate::image::{EspLocation, Partition, PartitionRole};
use crate::layout::{ALIGNMENT, Layout, LayoutOptions, PlannedPartition, SECTOR_SIZE};
use crate::sparse::{BLOCK, Slice, SparseDisk};
use crate::{DiskError, FALLBACK_LOADER_PATH, LOADER_PATH_A, Result};

/// Copy buffer for the system image: small enough to stay in the CPU
/// cache between the read and the write (1 MiB measured 2-3x slower).
const CHUNK: usize = 128 << 10;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The EFI loader for slot A (also the removable-media fallback).
    pub loader: PathBuf,
    /// The system image for slot A.
    pub system: PathBuf,
    /// The disk image file or block device to write.
    pub output: PathBuf,
    pub layout: LayoutOptions,
    /// Makes GUIDs, the FAT volume ID and timestamps, and so the whole
    /// image, reproducible.
    pub seed: Option<u64>,
    /// Allows overwriting an existing block device.
    pub force: bool,
}

/// A file the build placed in the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspFile {
    pub path: String,
    pub size: u64,
}

/// What the build wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub output: PathBuf,
    pub disk_size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<Partition>,
    pub esp_files: Vec<EspFile>,
    pub system_image_size: u64,
    /// Bytes actually written (the rest of a file output is holes).
    pub bytes_written: u64,
    pub block_device: bool,
    /// The boot entries written into an OVMF VARS file, when the caller
    /// (abkit-update's factory, through its boot policy) wrote them.
    pub boot_entries: Option<InstalledEntries>,
}

impl std::fmt::Display for BuildReport {
    /// What was built: the disk, its partitions, the ESP's files, slot A and
    /// the boot entries, one line each.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::inspect::{PartitionTable, human_size};
        writeln!(
            f,
            "{}: {} disk, GUID {}, {} written",
            self.output.display(),
            human_size(self.disk_size),
            self.disk_guid,
            human_size(self.bytes_written)
        )?;
        write!(f, "{}", PartitionTable(&self.partitions))?;
        for file in &self.esp_files {
            writeln!(f, "ESP {}  {} bytes", file.path, file.size)?;
        }
        writeln!(
            f,
            "slot A: system image of {} bytes",
            self.system_image_size
        )?;
        if let Some(entries) = &self.boot_entries {
            let order: Vec<String> = entries
                .boot_order
                .iter()
                .map(|n| format!("{n:04X}"))
                .collect();
            writeln!(
                f,
                "boot entries: Boot{:04X} \"abkit slot A\", Boot{:04X} \"abkit slot B\" (inactive); BootOrder {}",
                entries.slot_a,
                entries.slot_b,
                order.join(",")
            )?;
        }
        Ok(())
    }
}

impl BuildReport {
    /// Where the ESP is, for boot entries' `HD()` nodes.
    pub fn esp_location(&self) -> EspLocation {
        let esp = &self.partitions[0];
        EspLocation {
            partition_number: esp.number,
            partition_guid: esp.guid,
            start_lba: esp.first_lba,
            size_lba: esp.size_lba(),
        }
    }
}

/// Source of GUIDs and the FAT volume ID: seeded (reproducible) or random.
struct Ids {
    seed: Option<u64>,
}

impl Ids {
    fn bytes(&self, what: &str) -> [u8; 16] {
        match self.seed {
            Some(seed) => {
                let mut hash = Sha256::new();
                hash.update(b"abkit-disk id\0");
                hash.update(seed.to_le_bytes());
                hash.update(what.as_bytes());
                let digest = hash.finalize();
                let mut out = [0u8; 16];
                out.copy_from_slice(&digest[..16]);
                out
            }
            None => *Uuid::new_v4().as_bytes(),
        }
    }
    fn guid(&self, what: &str) -> Uuid {
        uuid::Builder::from_random_bytes(self.bytes(what)).into_uuid()
    }
    fn volume_id(&self) -> u32 {
        let b = self.bytes("fat volume id");
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// How the output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A fresh regular file: unwritten ranges are holes that read as zero.
    File,
    /// An existing block device: old contents must be overwritten.
    BlockDevice,
}

fn size_of(file: &mut File, path: &Path) -> Result<u64> {
    file.seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(DiskError::io(format!("size of {}", path.display())))
}

fn is_all_zero(bytes: &[u8]) -> bool {
    // OR-fold without early exit: the compiler vectorizes it.
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Opens an input that must be a regular file or a block device. The type
/// is checked on the path before opening (opening a FIFO for reading blocks
/// until a writer comes), and again on the open file (O_NONBLOCK, so that a
/// FIFO swapped in between cannot block either).
fn open_input(path: &Path, what: &'static str) -> Result<File> {
    let refuse = || DiskError::InputNotFileOrBlockDevice {
        what,
        path: path.to_path_buf(),
    };
    let is_file_or_block = |kind: std::fs::FileType| kind.is_file() || kind.is_block_device();
    let meta = std::fs::metadata(path)
        .map_err(DiskError::io(format!("open the {what} {}", path.display())))?;
    if !is_file_or_block(meta.file_type()) {
        return Err(refuse());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NONBLOCK)
        .open(path)
        .map_err(DiskError::io(format!("open the {what} {}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(DiskError::io(format!("open the {what} {}", path.display())))?;
    if !is_file_or_block(meta.file_type()) {
        return Err(refuse());
    }
    Ok(file)
}

/// Opens a block device for writing, exclusively (`O_EXCL`): the kernel
/// refuses while a filesystem on it or on one of its partitions is mounted,
/// or device-mapper, RAID or swap holds it, and no one else can claim it
/// while the returned handle is open. `--force` allows overwriting a
/// device, never one that is in use (a typo of `/dev/sda` for `/dev/sdb`
/// would otherwise overwrite the running system).
pub fn open_block_device_exclusive(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                DiskError::BlockDeviceInUse(path.to_path_buf())
            } else {
                DiskError::io(format!("open {}", path.display()))(e)
            }
        })
}

/// Checks the output path: returns the target kind and, for a block
/// device, its size.
fn check_output(options: &BuildOptions, inputs: &[&File]) -> Result<(Target, Option<u64>)> {
    let path = &options.output;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Target::File, None)),
        Err(e) => return Err(DiskError::io(format!("inspect {}", path.display()))(e)),
    };
    for input in inputs {
        if let Ok(input) = input.metadata()
            && input.dev() == meta.dev()
            && input.ino() == meta.ino()
        {
            return Err(DiskError::OutputIsInput(path.clone()));
        }
    }
    let kind = meta.file_type();
    if kind.is_block_device() {
        if !options.force {
            return Err(DiskError::BlockDeviceWithoutForce(path.clone()));
        }
        let mut dev = open_block_device_exclusive(path)?;
        let size = size_of(&mut dev, path)?;
        Ok((Target::BlockDevice, Some(size)))
    } else if kind.is_file() {
        Ok((Target::File, None))
    } else {
        Err(DiskError::NotFileOrBlockDevice(path.clone()))
    }
}

fn gpt_partition(p: &PlannedPartition, guid: Uuid) -> gpt::partition::Partition {
    gpt::partition::Partition {
        part_type_guid: gpt::partition_types::Type {
            guid: p.type_guid,
            os: gpt::partition_types::OperatingSystem::Custom("abkit".into()),
        },
        part_guid: guid,
        first_lba: p.first_lba,
        last_lba: p.last_lba,
        flags: 0,
        name: p.name.clone(),
    }
}

/// Writes the protective MBR and both GPTs into `disk`.
fn write_gpt(
    disk: &mut SparseDisk,
    partitions: &[Partition],
    disk_guid: Uuid,
    disk_size: u64,
) -> Result<()> {
    let gpt_err = |e: gpt::GptError| DiskError::Io {
        context: "write the GPT".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let sectors_after_mbr = u32::try_from(disk_size / SECTOR_SIZE - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(sectors_after_mbr)
        .overwrite_lba0(&mut *disk)
        .map_err(|e| DiskError::Io {
            context: "write the protective MBR".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *disk, Some(disk_guid))
        .map_err(gpt_err)?;
    let entries = partitions
        .iter()
        .map(|p| {
            let planned = PlannedPartition {
                number: p.number,
                name: p.name.clone(),
                type_guid: p.type_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
            };
            (p.number, gpt_partition(&planned, p.guid))
        })
        .collect();
    table.update_partitions(entries).map_err(gpt_err)?;
    table.write().map_err(gpt_err)?;
    Ok(())
}

/// Formats the ESP as FAT32 inside `disk` and places the loader files.
fn write_esp(
    disk: &Rc<RefCell<SparseDisk>>,
    esp: &Partition,
    loader: &[u8],
    ids: &Ids,
    reproducible: bool,
) -> Result<Vec<EspFile>> {
    let mut memory = disk.borrow_mut();
    let slice = Slice::new(&mut *memory, esp.start(), esp.size());
    let format = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .volume_id(ids.volume_id())
        .volume_label(*b"ESP        ");
    fatfs::format_volume(slice, format).map_err(|source| DiskError::Fat {
        context: format!("format FAT32 in {} bytes", esp.size()),
        source,
    })?;
    drop(memory);
    let clock: &'static dyn fatfs::TimeProvider = if reproducible {
        &FIXED_TIME
    } else {
        &UTC_CLOCK
    };
    let fs = Esp::mount(
        Storage::Memory(disk.clone()),
        esp.start(),
        esp.size(),
        clock,
    )?;
    let mut files = Vec::new();
    for path in [LOADER_PATH_A, FALLBACK_LOADER_PATH] {
        fs.write_file(path, loader)?;
        files.push(EspFile {
            path: path.to_string(),
            size: loader.len() as u64,
        });
    }
    fs.close()?;
    Ok(files)
}

/// Zeroes `range` of a block device (the device may be able to do it
/// without transferring the zeros).
fn zero_range(file: &File, start: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    if crate::sys::zero_range(file, start, len).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], start + done)
            .map_err(DiskError::io("zero a range of the output"))?;
        done += n as u64;
    }
    Ok(())
}

/// Streams `system` into `out` at `offset`; on a file target all-zero
/// blocks are skipped (left as holes). Returns (image size, bytes written).
fn copy_system(system: &mut File, out: &File, offset: u64, target: Target) -> Result<(u64, u64)> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut written = 0u64;
    loop {
        // Fill the whole buffer (short reads happen on pipes and devices).
        let mut filled = 0;
        while filled < buf.len() {
            let n = system
                .read(&mut buf[filled..])
                .map_err(DiskError::io("read the system image"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let data = &buf[..filled];
        let write = |run: &[u8], at: u64| {
            out.write_all_at(run, offset + at)
                .map_err(DiskError::io("write the system image into slot A"))
        };
        match target {
            Target::BlockDevice => {
                write(data, pos)?;
                written += data.len() as u64;
            }
            Target::File => {
                // Write runs of non-zero blocks with one call each.
                let mut run_start: Option<usize> = None;
                for (i, block) in data.chunks(BLOCK).enumerate() {
                    let at = i * BLOCK;
                    match (is_all_zero(block), run_start) {
                        (false, None) => run_start = Some(at),
                        (true, Some(s)) => {
                            write(&data[s..at], pos + s as u64)?;
                            written += (at - s) as u64;
                            run_start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(s) = run_start {
                    write(&data[s..], pos + s as u64)?;
                    written += (data.len() - s) as u64;
                }
            }
        }
        pos += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((pos, written))
}

/// Builds the disk described by `options`. Nothing is written to the
/// output before every input has been checked.
pub fn build(options: &BuildOptions) -> Result<BuildReport> {
    let mut loader_file = open_input(&options.loader, "loader")?;
    let mut loader_bytes = Vec::new();
    loader_file
        .read_to_end(&mut loader_bytes)
        .map_err(DiskError::io(format!(
            "read the loader {}",
            options.loader.display()
        )))?;
    abkit_loader_core::check_efi_application(&loader_bytes)?;
    let mut system = open_input(&options.system, "system image")?;
    let system_size = size_of(&mut system, &options.system)?;
    if system_size == 0 {
        return Err(DiskError::EmptySystemImage(options.system.clone()));
    }

    let (target, device_size) = check_output(options, &[&loader_file, &system])?;
    let mut layout_options = options.layout.clone();
    if let Some(size) = device_size {
        // On a block device the data partition fills the device.
        layout_options.disk_size = Some(size);
    }
    let layout = Layout::plan(&layout_options)?;
    if system_size > layout.slot_a.size() {
        return Err(DiskError::SystemImageTooLarge {
            image: system_size,
            slot: layout.slot_a.size(),
        });
    }

    let ids = Ids { seed: options.seed };
    let disk_guid = ids.guid("disk");
    let partitions: Vec<Partition> = layout
        .partitions()
        .iter()
        .map(|p| Partition {
            number: p.number,
            name: p.name.clone(),
            type_guid: p.type_guid,
            role: PartitionRole::from_type(p.type_guid),
            guid: ids.guid(&format!("partition {}", p.number)),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        })
        .collect();

    let mut sparse = SparseDisk::new(layout.disk_size);
    write_gpt(&mut sparse, &partitions, disk_guid, layout.disk_size)?;
    let sparse = Rc::new(RefCell::new(sparse));
    let esp_files = write_esp(
        &sparse,
        &partitions[0],
        &loader_bytes,
        &ids,
        options.seed.is_some(),
    )?;

    let out_path = &options.output;
    let out = match target {
        Target::File => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(out_path)
            .map_err(DiskError::io(format!("open {}", out_path.display()))),
        Target::BlockDevice => open_block_device_exclusive(out_path),
    }?;
    // Write in ascending offsets (GPT and ESP, slot A, backup GPT) so a
    // file output grows like a plain copy; its final length is set last.
    let slot_a = &layout.slot_a;
    let write_blocks = |before_slot_a: bool| -> Result<u64> {
        let mut written = 0u64;
        for (offset, block) in sparse.borrow().blocks() {
            if (offset < slot_a.start()) != before_slot_a
                || (target == Target::File && is_all_zero(block))
            {
                continue;
            }
            out.write_all_at(block, offset)
                .map_err(DiskError::io(format!("write {}", out_path.display())))?;
            written += block.len() as u64;
        }
        Ok(written)
    };
    let mut written = write_blocks(true)?;
    let (copied, system_written) = copy_system(&mut system, &out, slot_a.start(), target)?;
    written += system_written;
    written += write_blocks(false)?;
    drop(sparse);
    if target == Target::File {
        out.set_len(layout.disk_size)
            .map_err(DiskError::io(format!("size {}", out_path.display())))?;
    }
    if target == Target::BlockDevice {
        // Old contents must not look like a system image.
        zero_range(&out, slot_a.start() + copied, slot_a.size() - copied)?;
        zero_range(&out, layout.slot_b.start(), layout.slot_b.size())?;
        // The data partition's first MiB holds the signatures of ext4,
        // XFS and btrfs (at 64 KiB): no stale file system is found there.
        zero_range(&out, layout.data.start(), ALIGNMENT.min(layout.data.size()))?;
        // A device may be unplugged right after: make it durable now. An
        // image file is left to the page cache, as `cp` does.
        out.sync_all()
            .map_err(DiskError::io(format!("flush {}", out_path.display())))?;
    }

    Ok(BuildReport {
        boot_entries: None,
        output: out_path.clone(),
        disk_size: layout.disk_size,
        disk_guid,
        partitions,
        esp_files,
        system_image_size: copied,
        bytes_written: written,
        block_device: target == Target::BlockDevice,
    })
}
