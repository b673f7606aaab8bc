//! The live backend: the running Linux system abkit is installed on.
//!
//! Variables through efivarfs; the running slot from `/proc/cmdline`
//! (`<PREFIX>-SYSTEM-A` / `-B`, which the loader put there); the boot disk
//! from the ESP partition GUID the loader published in
//! `LoaderDevicePartUUID` (else the disk that carries our slot partition
//! types); slot partitions opened as block devices; the ESP through its
//! mount point, or mounted by abkit in a private temporary directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use abkit_disk::{DiskImage, EspLocation, Slot};
use abkit_efi::{VarName, VarStore};
use uuid::Uuid;

use crate::lock::{LIVE_LOCK_PATH, OperationLock};
use crate::machine::{EspFiles, Machine, SlotDevice};
use crate::offline::FileRange;
use crate::{Result, UpdateError};

/// Boot Loader Interface vendor GUID (systemd's), where the loader puts
/// `LoaderDevicePartUUID`.
pub const LOADER_INTERFACE_VENDOR: Uuid =
    Uuid::from_bytes(abkit_loader_core::guid::LOADER_INTERFACE_GUID);

/// abkit's vendor GUID, where the loader puts `AbkitBootedSlot`.
pub const ABKIT_VENDOR: Uuid = Uuid::from_bytes(abkit_loader_core::ABKIT_VENDOR_GUID);

/// Where to find things on a live system (defaults in brackets).
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// Kernel command line file [/proc/cmdline].
    pub cmdline: Option<PathBuf>,
    /// Mounted ESP [the ESP's mount point if mounted, else a private mount].
    pub esp_mount: Option<PathBuf>,
    /// The operation lock file [/run/abkit/lock].
    pub lock_path: Option<PathBuf>,
}

/// The running system.
pub struct LiveMachine {
    vars: Box<dyn VarStore>,
    esp: DirEsp,
    running: Slot,
    location: EspLocation,
    slots: [PathBuf; 2],
    lock_path: PathBuf,
    lock: Option<OperationLock>,
    _mount: Option<PrivateMount>,
}

/// The slot a partition label names: `<PREFIX>-SYSTEM-A` / `-B` exactly
/// (a non-empty prefix of letters, digits, `_` and `-`).
fn slot_of_label(label: &str) -> Option<Slot> {
    let (prefix, letter) = label.rsplit_once("-SYSTEM-")?;
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    match letter {
        "A" => Some(Slot::A),
        "B" => Some(Slot::B),
        _ => None,
    }
}

/// The slot named in a kernel command line: every `KEY=PARTLABEL=<PREFIX>-SYSTEM-A|B`
/// (as in `root=PARTLABEL=ABKIT-SYSTEM-B`, and systemd's
/// `systemd.verity_root_data=`) or `KEY=/dev/disk/by-partlabel/<PREFIX>-SYSTEM-A|B`
/// word, matched exactly. `Ok(None)` when no word names a slot; an error
/// when two words name different slots.
pub fn slot_from_cmdline(cmdline: &str) -> Result<Option<Slot>> {
    let mut found: Option<(Slot, &str)> = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((_, value)) = word.split_once('=') else {
            continue;
        };
        let label = value
            .strip_prefix("PARTLABEL=")
            .or_else(|| value.strip_prefix("/dev/disk/by-partlabel/"));
        let Some(slot) = label.and_then(slot_of_label) else {
            continue;
        };
        match found {
            Some((s, first)) if s != slot => {
                return Err(UpdateError::UnknownRunningSlot(format!(
                    "the kernel command line names both slots: {first} and {word}"
                )));
            }
            Some(_) => {}
            None => found = Some((slot, word)),
        }
    }
    Ok(found.map(|(s, _)| s))
}

/// `AbkitBootedSlot`, which abkit's loader sets: the slot it booted.
fn loader_booted_slot(vars: &dyn VarStore) -> Option<String> {
    let var = vars
        .get(&VarName::new(
            ABKIT_VENDOR,
            abkit_loader_core::vars::ABKIT_BOOTED_SLOT,
        ))
        .ok()??;
    let (text, _) = abkit_efi::ucs2::decode_nul_terminated(&var.data).ok()?;
    Some(text)
}

/// The running slot: from the command line, cross-checked with the
/// loader's `AbkitBootedSlot` when it is set.
pub fn running_slot(cmdline: &str, vars: &dyn VarStore) -> Result<Slot> {
    let slot = slot_from_cmdline(cmdline)?.ok_or_else(|| {
        UpdateError::UnknownRunningSlot(format!(
            "the kernel command line names no <PREFIX>-SYSTEM-A or -B partition label: {}",
            cmdline.trim()
        ))
    })?;
    // A kernel started by kexec (`abkit install --activate kexec`) was not
    // booted by the loader: its AbkitBootedSlot names the slot before.
    let kexeced = cmdline
        .split_whitespace()
        .any(|w| w == crate::kexec::KEXEC_WORD);
    match loader_booted_slot(vars) {
        Some(loader) if !kexeced && loader != slot.letter().to_string() => {
            Err(UpdateError::UnknownRunningSlot(format!(
                "the kernel command line says slot {} but the loader says it booted slot {loader:?} (AbkitBootedSlot)",
                slot.letter()
            )))
        }
        _ => Ok(slot),
    }
}

/// `LoaderDevicePartUUID`: a UCS-2 GUID string, upper or lower case.
fn loader_esp_guid(vars: &dyn VarStore) -> Option<Uuid> {
    let var = vars
        .get(&VarName::new(
            LOADER_INTERFACE_VENDOR,
            "LoaderDevicePartUUID",
        ))
        .ok()??;
    let (text, _) = abkit_efi::ucs2::decode_nul_terminated(&var.data).ok()?;
    Uuid::try_parse(text.trim()).ok()
}

/// Whole disks in /sys/class/block (not partitions), as `(name, /dev path)`.
fn whole_disks() -> Vec<(String, PathBuf)> {
    let mut disks = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/class/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().join("partition").exists()
                || name.starts_with("loop")
                || name.starts_with("ram")
            {
                continue;
            }
            disks.push((name.clone(), Path::new("/dev").join(&name)));
        }
    }
    disks.sort();
    disks
}

/// The block device of partition `number` of disk `name` (`vda2`, `nvme0n1p2`).
fn partition_device(disk: &str, number: u32) -> Result<(PathBuf, String)> {
    let dir = Path::new("/sys/class/block").join(disk);
    let entries = fs::read_dir(&dir).map_err(UpdateError::io(format!("list {}", dir.display())))?;
    for e in entries.flatten() {
        let p = e.path().join("partition");
        if fs::read_to_string(&p).is_ok_and(|n| n.trim() == number.to_string()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let devnum = fs::read_to_string(e.path().join("dev")).unwrap_or_default();
            return Ok((Path::new("/dev").join(&name), devnum.trim().to_string()));
        }
    }
    Err(UpdateError::NoBootDisk(format!(
        "partition {number} of {disk} has no block device"
    )))
}

/// The name every private ESP mount point starts with ([`PrivateMount`]).
const PRIVATE_MOUNT_PREFIX: &str = "abkit-esp-";

/// The mount point of the block device `major:minor`, from mountinfo.
fn mount_point_of(devnum: &str) -> Option<PathBuf> {
    mount_point_in(&fs::read_to_string("/proc/self/mountinfo").ok()?, devnum)
}

/// The first mount point of `devnum` in a mountinfo text that is not
/// another abkit's private mount: that one belongs to a command (or an
/// agent thread) that unmounts it when it is done, maybe in the middle of
/// our work; we make our own instead (the kernel shares one FAT superblock
/// between them).
fn mount_point_in(info: &str, devnum: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(2) != Some(&devnum) {
            return None;
        }
        let path = PathBuf::from(fields.get(4)?.replace("\\040", " "));
        let private = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(PRIVATE_MOUNT_PREFIX));
        (!private).then_some(path)
    })
}

impl LiveMachine {
    /// Opens the running system with `vars` as its firmware variables
    /// (normally [`abkit_efi::EfivarfsStore::system`]).
    pub fn open(opts: &LiveOptions, vars: Box<dyn VarStore>) -> Result<LiveMachine> {
        let cmdline_path = opts
            .cmdline
            .clone()
            .unwrap_or_else(|| "/proc/cmdline".into());
        let cmdline = fs::read_to_string(&cmdline_path)
            .map_err(UpdateError::io(format!("read {}", cmdline_path.display())))?;
        let running = running_slot(&cmdline, vars.as_ref())?;
        let wanted = loader_esp_guid(vars.as_ref());
        let mut chosen = None;
        let mut tried = Vec::new();
        for (name, dev) in whole_disks() {
            match DiskImage::open_read_only(&dev) {
                Ok(disk) if wanted.is_none_or(|g| disk.esp_partition().guid == g) => {
                    chosen = Some((name, disk));
                    break;
                }
                Ok(_) => tried.push(format!("{}: another ESP", dev.display())),
                Err(e) => tried.push(format!("{}: {e}", dev.display())),
            }
        }
        let (disk_name, disk) = chosen.ok_or_else(|| {
            UpdateError::NoBootDisk(format!(
                "no disk has {} ({})",
                wanted.map_or("the abkit slot partitions".to_string(), |g| format!(
                    "the ESP {g}"
                )),
                if tried.is_empty() {
                    "no disks".to_string()
                } else {
                    tried.join("; ")
                }
            ))
        })?;
        let location = disk.esp_location();
        let (esp_dev, esp_devnum) = partition_device(&disk_name, location.partition_number)?;
        let slot_a = partition_device(&disk_name, disk.slot(Slot::A).number)?.0;
        let slot_b = partition_device(&disk_name, disk.slot(Slot::B).number)?.0;
        let (root, mount) = match &opts.esp_mount {
            Some(dir) => (dir.clone(), None),
            None => match mount_point_of(&esp_devnum) {
                Some(dir) => (dir, None),
                None => {
                    let m = PrivateMount::vfat(&esp_dev)?;
                    (m.path().to_path_buf(), Some(m))
                }
            },
        };
        Ok(LiveMachine {
            vars,
            esp: DirEsp { root },
            running,
            location,
            slots: [slot_a, slot_b],
            lock_path: opts
                .lock_path
                .clone()
                .unwrap_or_else(|| LIVE_LOCK_PATH.into()),
            lock: None,
            _mount: mount,
        })
    }
}

impl LiveMachine {
    /// Slot `slot`'s whole partition, for writing or only for reading.
    fn open_slot(&self, slot: Slot, write: bool) -> Result<FileRange> {
        let path = &self.slots[if slot == Slot::A { 0 } else { 1 }];
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(UpdateError::io(format!(
                "open slot {} ({}){}",
                slot.letter(),
                path.display(),
                if write { "" } else { " for reading" }
            )))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(UpdateError::io(format!("size of {}", path.display())))?;
        Ok(FileRange {
            file,
            start: 0,
            size,
        })
    }
}

impl Machine for LiveMachine {
    fn running_slot(&self) -> Slot {
        self.running
    }
    fn esp_location(&self) -> EspLocation {
        self.location
    }
    fn vars(&mut self) -> &mut dyn VarStore {
        self.vars.as_mut()
    }
    fn esp(&mut self) -> &mut dyn EspFiles {
        &mut self.esp
    }
    fn slot_device(&mut self, slot: Slot) -> Result<Box<dyn SlotDevice + '_>> {
        Ok(Box::new(self.open_slot(slot, true)?))
    }
    fn slot_reader(&self, slot: Slot) -> Result<Box<dyn SlotDevice>> {
        Ok(Box::new(self.open_slot(slot, false)?))
    }

    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn is_live(&self) -> bool {
        true
    }
    fn lock(&mut self) -> Result<()> {
        if self.lock.is_none() {
            self.lock = Some(OperationLock::live(&self.lock_path)?);
        }
        Ok(())
    }
}

/// A mounted ESP, by firmware paths mapped onto the directory tree.
pub struct DirEsp {
    pub root: PathBuf,
}

impl DirEsp {
    fn path(&self, firmware_path: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in firmware_path
            .split(['\\', '/'])
            .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        {
            p.push(part);
        }
        p
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

impl EspFiles for DirEsp {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(path);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io(format!("read {}", p.display()))(e)),
        }
    }
    fn write(&mut self, path: &str, source: &mut dyn Read) -> Result<u64> {
        let p = self.path(path);
        let ctx = || format!("write {}", p.display());
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(UpdateError::io(ctx()))?;
        }
        let mut file = File::create(&p).map_err(UpdateError::io(ctx()))?;
        let n = io::copy(source, &mut file).map_err(UpdateError::io(ctx()))?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(UpdateError::io(ctx()))?;
        Ok(n)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.path(from), self.path(to));
        // On vfat, rename writes the new directory entry with size 0 and no
        // first cluster; the real ones reach the disk only when the file's
        // inode is written back. Fsync the file under its new name too, or a
        // power cut after the rename leaves an empty file (seen in the VM
        // power-cut test: slot-b.json of 0 bytes).
        fs::rename(&f, &t)
            .and_then(|()| File::open(&t)?.sync_all())
            .and_then(|()| sync_parent(&t))
            .map_err(UpdateError::io(format!(
                "rename {} to {}",
                f.display(),
                t.display()
            )))
    }
    fn remove(&mut self, path: &str) -> Result<bool> {
        let p = self.path(path);
        match fs::remove_file(&p) {
            Ok(()) => {
                sync_parent(&p).map_err(UpdateError::io(format!("sync {}", p.display())))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(UpdateError::io(format!("remove {}", p.display()))(e)),
        }
    }
    fn size(&mut self, path: &str) -> Result<Option<u64>> {
        let p = self.path(path);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io(format!("stat {}", p.display()))(e)),
        }
    }
    fn free_bytes(&mut self) -> Result<u64> {
        statvfs_free(&self.root).map_err(UpdateError::io(format!(
            "free space of {}",
            self.root.display()
        )))
    }
}

fn statvfs_free(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs is a plain C struct for which all-zero bytes are
    // valid; `c` is NUL-terminated and `st` is live and writable.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// The ESP mounted by abkit in a private temporary directory, unmounted
/// when dropped.
struct PrivateMount {
    /// Always `Some` until dropped.
    dir: Option<tempfile::TempDir>,
}

impl PrivateMount {
    fn vfat(device: &Path) -> Result<PrivateMount> {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::Builder::new()
            .prefix(PRIVATE_MOUNT_PREFIX)
            .tempdir()
            .map_err(UpdateError::io("create a mount point for the ESP"))?;
        let dev = std::ffi::CString::new(device.as_os_str().as_bytes())
            .map_err(|e| UpdateError::io("ESP device path")(e.into()))?;
        let target = std::ffi::CString::new(dir.path().as_os_str().as_bytes())
            .map_err(|e| UpdateError::io("ESP mount point")(e.into()))?;
        // SAFETY: all pointers are NUL-terminated strings that outlive the
        // call; no mount data is passed.
        let rc = unsafe {
            libc::mount(
                dev.as_ptr(),
                target.as_ptr(),
                c"vfat".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(UpdateError::io(format!(
                "mount the ESP {} (vfat) at {}",
                device.display(),
                dir.path().display()
            ))(io::Error::last_os_error()));
        }
        Ok(PrivateMount { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }
}

impl Drop for PrivateMount {
    /// Detaches the mount (`MNT_DETACH`: it leaves the namespace at once,
    /// even while a file under it is still open), then removes the empty
    /// mount point. If the unmount fails the folder is kept: the temporary
    /// folder's recursive removal must never run into a mounted ESP (it
    /// would delete the loaders and records).
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let Some(dir) = self.dir.take() else { return };
        let failed = match std::ffi::CString::new(dir.path().as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            Ok(target) => match unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } {
                0 => None,
                _ => Some(io::Error::last_os_error()),
            },
            Err(e) => Some(io::Error::other(e)),
        };
        match failed {
            None => drop(dir),
            Some(e) => {
                let kept = dir.keep();
                log::warn!(
                    "cannot unmount the ESP at {}: {e}; the mount point is left",
                    kept.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_abkit_private_esp_mount_is_never_adopted() {
        let info = "\
22 1 8:1 / /tmp/abkit-esp-Xy12 rw,nosuid - vfat /dev/sda1 rw
23 1 8:1 / /boot/efi rw - vfat /dev/sda1 rw
24 1 8:2 / /tmp/abkit-esp-Zz rw - vfat /dev/sda2 rw
25 1 8:3 / /mnt/my\\040esp rw - vfat /dev/sda3 rw
";
        assert_eq!(
            mount_point_in(info, "8:1"),
            Some(PathBuf::from("/boot/efi"))
        );
        assert_eq!(mount_point_in(info, "8:2"), None);
        assert_eq!(
            mount_point_in(info, "8:3"),
            Some(PathBuf::from("/mnt/my esp"))
        );
    }

    #[test]
    fn running_slot_comes_from_the_command_line() {
        let slot = |c: &str| slot_from_cmdline(c).unwrap();
        assert_eq!(
            slot("console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-B ro"),
            Some(Slot::B)
        );
        assert_eq!(slot("root=PARTLABEL=OS-SYSTEM-A quiet"), Some(Slot::A));
        assert_eq!(
            slot("root=/dev/disk/by-partlabel/ABKIT-SYSTEM-B"),
            Some(Slot::B)
        );
        assert_eq!(
            slot("systemd.verity_root_data=PARTLABEL=ABKIT-SYSTEM-B root=/dev/mapper/root"),
            Some(Slot::B)
        );
        assert_eq!(slot("root=/dev/sda1 quiet"), None);
        assert_eq!(slot("root=PARTLABEL=ABKIT-SYSTEM-X"), None);
    }

    #[test]
    fn loose_mentions_of_a_slot_do_not_count() {
        let slot = |c: &str| slot_from_cmdline(c).unwrap();
        // Found by the never-brick review: the first word *containing*
        // SYSTEM-B used to mean slot B.
        assert_eq!(slot("rootSYSTEM-Bogus root=/dev/sda1"), None);
        assert_eq!(slot("root=PARTLABEL=ABKIT-SYSTEM-Bogus"), None);
        assert_eq!(slot("SYSTEM-B"), None);
        assert_eq!(slot("root=PARTLABEL=SYSTEM-B"), None);
        assert_eq!(slot("root=PARTLABEL=A B-SYSTEM-B"), None);
        assert_eq!(slot("x=PARTLABEL=AB?-SYSTEM-A"), None);
    }

    #[test]
    fn a_command_line_naming_both_slots_is_refused() {
        let err = slot_from_cmdline(
            "root=PARTLABEL=ABKIT-SYSTEM-A systemd.verity_root_data=PARTLABEL=ABKIT-SYSTEM-B",
        )
        .unwrap_err();
        assert!(err.to_string().contains("names both slots"), "{err}");
    }

    #[test]
    fn the_loader_variable_must_agree_with_the_command_line() {
        let mut vars = abkit_efi::MemoryStore::new();
        let cmdline = "root=PARTLABEL=ABKIT-SYSTEM-B";
        assert_eq!(running_slot(cmdline, &vars).unwrap(), Slot::B);
        let name = VarName::new(ABKIT_VENDOR, abkit_loader_core::vars::ABKIT_BOOTED_SLOT);
        let set = |vars: &mut abkit_efi::MemoryStore, text: &str| {
            vars.set(
                &name,
                &abkit_efi::Variable {
                    attributes: 6,
                    data: abkit_efi::ucs2::encode_nul_terminated(text),
                },
            )
            .unwrap();
        };
        set(&mut vars, "B");
        assert_eq!(running_slot(cmdline, &vars).unwrap(), Slot::B);
        set(&mut vars, "A");
        let err = running_slot(cmdline, &vars).unwrap_err();
        assert!(err.to_string().contains("AbkitBootedSlot"), "{err}");
        // After a kexec the loader's variable is the old boot's.
        let kexeced = format!("{cmdline} {}", crate::kexec::KEXEC_WORD);
        assert_eq!(running_slot(&kexeced, &vars).unwrap(), Slot::B);
        assert!(running_slot("root=/dev/sda1", &vars).is_err());
    }

    #[test]
    fn dir_esp_maps_firmware_paths_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut esp = DirEsp {
            root: dir.path().to_path_buf(),
        };
        esp.write("\\EFI\\abkit\\x.new", &mut &b"hello"[..])
            .unwrap();
        esp.rename("\\EFI\\abkit\\x.new", "/EFI/abkit/x").unwrap();
        assert_eq!(fs::read(dir.path().join("EFI/abkit/x")).unwrap(), b"hello");
        assert_eq!(esp.read("\\EFI\\abkit\\x").unwrap().unwrap(), b"hello");
        assert_eq!(esp.read("\\EFI\\abkit\\x.new").unwrap(), None);
        assert!(esp.remove("\\EFI\\abkit\\x").unwrap());
        assert!(!esp.remove("\\EFI\\abkit\\x").unwrap());
        assert!(esp.free_bytes().unwrap() > 0);
    }
}
