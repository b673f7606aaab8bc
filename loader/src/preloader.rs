//! The pre-loader role (state-file boot control, docs/loader.md): started
//! under any name but `boot-a.efi`/`boot-b.efi` (the removable-media path
//! `\EFI\BOOT\BOOTX64.EFI`, also through abkit's pre-loader Boot entry), the
//! stub reads `\EFI\abkit\loader-state`, stores one trial attempt fewer
//! (new file + rename through the firmware's file protocol) and then starts
//! the chosen slot's `boot-x.efi` from the same partition. Without a state
//! file it does nothing and the caller boots its own kernel (the stamped,
//! committed slot), as before. A slot loader started directly counts its own
//! pending trial ([`count_direct_trial`]), so the host can tell that a
//! `BootNext` trial really ran.

use alloc::vec::Vec;

use abkit_loader_core::Slot;
use abkit_loader_core::guid::ABKIT_VENDOR_GUID_EFI;
use abkit_loader_core::loader_state::{self, ChoiceReason, StateFiles};
use abkit_loader_core::vars::{ABKIT_PRELOADER, VOLATILE_BS_RT};
use uefi::boot::{self, LoadImageSource, ScopedProtocol};
use uefi::proto::BootPolicy;
use uefi::proto::device_path::build::{self, DevicePathBuilder};
use uefi::proto::device_path::{DevicePath, DeviceType};
use uefi::proto::media::file::{Directory, File, FileAttribute, FileInfo, FileMode, RegularFile};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::runtime::{self, VariableAttributes, VariableVendor};
use uefi::{CString16, Guid, Handle, Status, println};

use crate::open_shared;

/// The ESP the loader was started from, through the firmware's FAT driver.
struct Esp {
    root: Directory,
}

fn path16(path: &str) -> Result<CString16, Status> {
    CString16::try_from(path).map_err(|_| Status::INVALID_PARAMETER)
}

impl Esp {
    fn open(device: Handle) -> Result<Esp, Status> {
        // SAFETY: GetProtocol leaves the file system with its driver (an
        // exclusive open would disconnect it); the protocol is used only
        // while the device handle exists, which it does until we exit.
        let mut fs: ScopedProtocol<SimpleFileSystem> =
            unsafe { open_shared(device) }.map_err(|e| e.status())?;
        let root = fs.open_volume().map_err(|e| e.status())?;
        Ok(Esp { root })
    }

    fn open_file(&mut self, path: &str, mode: FileMode) -> Result<Option<RegularFile>, Status> {
        match self.root.open(&path16(path)?, mode, FileAttribute::empty()) {
            Ok(handle) => Ok(handle.into_regular_file()),
            Err(e) if e.status() == Status::NOT_FOUND => Ok(None),
            Err(e) => Err(e.status()),
        }
    }
}

impl StateFiles for Esp {
    type Error = Status;

    fn read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Status> {
        let Some(mut file) = self.open_file(path, FileMode::Read)? else {
            return Ok(None);
        };
        let mut done = 0;
        while done < buf.len() {
            match file.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return Err(e.status()),
            }
        }
        Ok(Some(done))
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), Status> {
        // Truncate by deleting: FAT's SetInfo can shrink, but a fresh file
        // is simpler and the name is only ever the temporary one.
        self.remove(path)?;
        let mut file = self
            .open_file(path, FileMode::CreateReadWrite)?
            .ok_or(Status::ACCESS_DENIED)?;
        file.write(bytes).map_err(|e| e.status())?;
        file.flush().map_err(|e| e.status())
    }

    fn remove(&mut self, path: &str) -> Result<bool, Status> {
        match self.open_file(path, FileMode::ReadWrite)? {
            Some(file) => file.delete().map(|()| true).map_err(|e| e.status()),
            None => Ok(false),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Status> {
        let mut file = self
            .open_file(from, FileMode::ReadWrite)?
            .ok_or(Status::NOT_FOUND)?;
        let info = file.get_boxed_info::<FileInfo>().map_err(|e| e.status())?;
        // Same directory: SetInfo takes the new name relative to it.
        let name = path16(to.rsplit('\\').next().unwrap_or(to))?;
        let mut storage = alloc::vec![0u8; 256 + 2 * to.len()];
        // FileInfo needs 8-byte alignment: start at an aligned offset.
        let offset = storage.as_ptr().align_offset(8);
        let new = FileInfo::new(
            &mut storage[offset..],
            info.file_size(),
            info.physical_size(),
            *info.create_time(),
            *info.last_access_time(),
            *info.modification_time(),
            info.attribute(),
            &name,
        )
        .map_err(|_| Status::BUFFER_TOO_SMALL)?;
        file.set_info(new).map_err(|e| e.status())?;
        file.flush().map_err(|e| e.status())
    }
}

/// Acts as the pre-loader when a state file is on the loader's partition:
/// stores the decremented state, then starts the chosen slot's loader (and,
/// if that fails, the committed slot's). Returns only when the caller
/// should boot its own kernel instead: no state file, an unreadable one, or
/// no slot loader that starts; each is printed.
pub fn run(device: Option<Handle>) {
    let Some(device) = device else {
        return;
    };
    let mut esp = match Esp::open(device) {
        Ok(esp) => esp,
        Err(status) => {
            println!("abkit: warning: pre-loader: cannot open the ESP ({status:?})");
            return;
        }
    };
    let state = match loader_state::load(&mut esp) {
        Ok(Some(state)) => state,
        Ok(None) => return,
        Err(e) => {
            println!(
                "abkit: warning: pre-loader: cannot use {} ({e:?}); booting the fallback's own slot",
                loader_state::STATE_PATH
            );
            return;
        }
    };
    let choice = state.next_boot();
    let why = match choice.reason {
        ChoiceReason::Committed => "committed",
        ChoiceReason::Trial { .. } => "trial",
        ChoiceReason::TriesExhausted => "tries-exhausted",
    };
    if let Some(next) = choice.store {
        // Count the attempt before starting it: a trial that hangs or
        // resets must not get it back.
        if let Err(status) = loader_state::store(&mut esp, &next) {
            println!(
                "abkit: warning: pre-loader: cannot store the trial attempt ({status:?}); booting the committed slot {}",
                state.committed
            );
            chain(device, state.committed, "committed");
            return;
        }
    }
    let left = match choice.reason {
        ChoiceReason::Trial { tries_left } => tries_left,
        _ => 0,
    };
    println!(
        "abkit: pre-loader: state committed {} trial {} tries left {left}: starting slot {} ({why})",
        state.committed,
        state.trial.map_or('-', Slot::letter),
        choice.slot
    );
    chain(device, choice.slot, why);
    if choice.slot != state.committed {
        println!(
            "abkit: pre-loader: falling back to the committed slot {}",
            state.committed
        );
        chain(device, state.committed, "committed");
    }
}

/// Starts `slot`'s loader from `device`; returns if it could not be
/// started or came back.
fn chain(device: Handle, slot: Slot, why: &str) {
    let mut text: Vec<u16> = alloc::format!("{slot} {why}").encode_utf16().collect();
    text.push(0);
    set_preloader_variable(&text);
    match load_slot_loader(device, slot) {
        Ok(child) => {
            if let Err(e) = boot::start_image(child) {
                println!(
                    "abkit: warning: pre-loader: slot {slot}'s loader returned ({:?})",
                    e.status()
                );
            }
        }
        Err(status) => println!(
            "abkit: warning: pre-loader: cannot load {} ({status:?})",
            slot.loader_path()
        ),
    }
    set_preloader_variable(&[]);
}

/// Loads `\EFI\abkit\boot-x.efi` by its full device path (the partition's
/// path plus the file), so the child knows its own file name and device.
fn load_slot_loader(device: Handle, slot: Slot) -> Result<Handle, Status> {
    // SAFETY: GetProtocol, read only while the handle exists (see Esp::open).
    let partition = unsafe { open_shared::<DevicePath>(device) }.map_err(|e| e.status())?;
    let file = path16(slot.loader_path())?;
    let mut buf = Vec::new();
    let mut builder = DevicePathBuilder::with_vec(&mut buf);
    for node in partition.node_iter() {
        if node.device_type() == DeviceType::END {
            break;
        }
        builder = builder.push(&node).map_err(|_| Status::OUT_OF_RESOURCES)?;
    }
    let path = builder
        .push(&build::media::FilePath { path_name: &file })
        .and_then(DevicePathBuilder::finalize)
        .map_err(|_| Status::OUT_OF_RESOURCES)?;
    boot::load_image(
        boot::image_handle(),
        LoadImageSource::FromDevicePath {
            device_path: path,
            boot_policy: BootPolicy::ExactMatch,
        },
    )
    .map_err(|e| e.status())
}

/// Sets (or, with an empty value, deletes) `AbkitPreloader`.
fn set_preloader_variable(value: &[u16]) {
    let Ok(name) = CString16::try_from(ABKIT_PRELOADER) else {
        return;
    };
    let vendor = VariableVendor(Guid::from_bytes(ABKIT_VENDOR_GUID_EFI));
    let bytes: Vec<u8> = value.iter().flat_map(|u| u.to_le_bytes()).collect();
    let attributes = VariableAttributes::from_bits_truncate(VOLATILE_BS_RT);
    if let Err(e) = runtime::set_variable(&name, &vendor, attributes, &bytes)
        && !value.is_empty()
    {
        println!(
            "abkit: warning: cannot set {ABKIT_PRELOADER}: {:?}",
            e.status()
        );
    }
}

/// Whether a pre-loader started this boot (it counted the trial already).
fn started_by_preloader() -> bool {
    let Ok(name) = CString16::try_from(ABKIT_PRELOADER) else {
        return false;
    };
    let vendor = VariableVendor(Guid::from_bytes(ABKIT_VENDOR_GUID_EFI));
    let mut buf = [0u8; 64];
    matches!(runtime::get_variable(&name, &vendor, &mut buf), Ok((data, _)) if !data.is_empty())
}

/// A slot loader started directly (by `BootNext` or the boot menu) whose
/// slot has a pending trial in the state file counts the attempt, as the
/// pre-loader would: the host then knows the trial loader ran.
pub fn count_direct_trial(device: Option<Handle>, slot: Slot) {
    let Some(device) = device else {
        return;
    };
    if started_by_preloader() {
        return;
    }
    let Ok(mut esp) = Esp::open(device) else {
        return;
    };
    let Ok(Some(state)) = loader_state::load(&mut esp) else {
        return;
    };
    if let Some(next) = state.counted_by(slot) {
        match loader_state::store(&mut esp, &next) {
            Ok(()) => println!(
                "abkit: trial of slot {slot} counted in {} ({} tries left)",
                loader_state::STATE_PATH,
                next.tries_left
            ),
            Err(status) => println!(
                "abkit: warning: cannot count the trial in {} ({status:?})",
                loader_state::STATE_PATH
            ),
        }
    }
}
