//! kexec activation (`abkit install --activate kexec`): the trial boot of a
//! freshly installed slot without the firmware (issue 18, for machines
//! whose firmware takes minutes to reboot).
//!
//! The kernel, initrd and command line come from the slot's own loader (a
//! UKI) with `SYSTEM-X` rewritten to the slot, as the loader would boot it,
//! plus [`KEXEC_WORD`] (the loader did not run, so its `AbkitBootedSlot`
//! still names the old slot; the word tells `live::running_slot` why). The
//! trial semantics stay: [`boot_policy::start_kexec_trial`] counts the
//! kexec as the trial's one attempt (BootNext, or the loader state's try,
//! is used up), BootOrder still names the old slot, so a trial that fails
//! and reboots through the firmware comes back to it. Limits:
//! docs/update.md ("kexec activation").

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::boot_policy;
use crate::machine::Machine;
use crate::{Result, Slot, UpdateError};

/// Appended to the command line of a kexec'd trial.
pub const KEXEC_WORD: &str = "abkit.kexec=1";

/// What was loaded for the jump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KexecLoaded {
    pub slot: Slot,
    pub kernel_bytes: usize,
    pub initrd_bytes: usize,
    pub cmdline: String,
}

/// The loader's command line (`SYSTEM-X` already rewritten) plus [`KEXEC_WORD`].
fn cmdline_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    if text.is_empty() {
        KEXEC_WORD.to_string()
    } else {
        format!("{text} {KEXEC_WORD}")
    }
}

/// Loads `slot`'s kernel for kexec (`kexec_file_load`), then marks the
/// jump as the slot's trial attempt. The machine must be the running
/// system and `slot` must hold a freshly installed version (its trial
/// armed by the install). Nothing of the boot variables changes when the
/// load fails (say, under Secure Boot lockdown without a signed kernel):
/// the trial stays armed for an ordinary reboot.
pub fn load(m: &mut dyn Machine, slot: Slot) -> Result<KexecLoaded> {
    if !m.is_live() {
        return Err(UpdateError::Kexec(
            "kexec activation needs the running system (not an offline disk image)".into(),
        ));
    }
    let loader = m.esp().read(slot.loader_path())?.ok_or_else(|| {
        UpdateError::Kexec(format!(
            "slot {}'s loader {} is missing",
            slot.letter(),
            slot.loader_path()
        ))
    })?;
    let parts = abkit_uki::boot_parts(&loader, slot)
        .map_err(|e| UpdateError::Kexec(format!("{}: {e}", slot.loader_path())))?;
    let cmdline = cmdline_of(&parts.cmdline);
    kexec_file_load(parts.kernel, parts.initrd, &cmdline)?;
    boot_policy::start_kexec_trial(m, slot)?;
    Ok(KexecLoaded {
        slot,
        kernel_bytes: parts.kernel.len(),
        initrd_bytes: parts.initrd.map_or(0, <[u8]>::len),
        cmdline,
    })
}

/// Syncs the filesystems and jumps into the loaded kernel. Returns only
/// on failure.
pub fn jump() -> UpdateError {
    // SAFETY: sync and reboot take no pointers; reboot(KEXEC) returns only
    // when it failed.
    unsafe { libc::sync() };
    let rc = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
    UpdateError::Kexec(format!(
        "reboot(LINUX_REBOOT_CMD_KEXEC) failed (rc {rc}): {}",
        std::io::Error::last_os_error()
    ))
}

/// `bytes` in an anonymous memory file (what `kexec_file_load` reads).
fn memfd(name: &str, bytes: &[u8]) -> Result<OwnedFd> {
    let cname = CString::new(name).expect("a name without NUL");
    // SAFETY: `cname` is a valid NUL-terminated string for the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(UpdateError::Kexec(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)
        .map_err(|e| UpdateError::Kexec(format!("writing the {name} to memory: {e}")))?;
    Ok(file.into())
}

/// `kexec_file_load(2)`: the kernel checks and loads the images (and,
/// under lockdown, their signatures).
fn kexec_file_load(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Result<()> {
    let kernel_fd = memfd("kernel", kernel)?;
    let initrd_fd = initrd.map(|i| memfd("initrd", i)).transpose()?;
    let cmd = CString::new(cmdline)
        .map_err(|_| UpdateError::Kexec("the command line holds a NUL byte".into()))?;
    let flags: libc::c_ulong = if initrd_fd.is_none() {
        libc::KEXEC_FILE_NO_INITRAMFS as libc::c_ulong
    } else {
        0
    };
    // SAFETY: both descriptors are open for the call; `cmd` is a valid
    // NUL-terminated string whose length (with the NUL) is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel_fd.as_raw_fd(),
            initrd_fd.as_ref().map_or(-1, |f| f.as_raw_fd()),
            cmd.as_bytes_with_nul().len() as libc::c_ulong,
            cmd.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => {
                " (needs CAP_SYS_BOOT; under Secure Boot lockdown, or with kexec disabled by kernel.kexec_load_disabled, the kernel refuses)"
            }
            Some(libc::EKEYREJECTED) | Some(libc::EBADMSG) | Some(libc::ENOKEY) => {
                " (the kernel's signature is not trusted: lockdown or CONFIG_KEXEC_SIG_FORCE)"
            }
            Some(libc::ENOSYS) => " (this kernel has no kexec_file_load)",
            _ => "",
        };
        return Err(UpdateError::Kexec(format!(
            "kexec_file_load failed: {e}{hint}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_the_loaders_with_the_slot_and_the_word() {
        assert_eq!(
            cmdline_of(b"root=PARTLABEL=ABKIT-SYSTEM-B ro"),
            "root=PARTLABEL=ABKIT-SYSTEM-B ro abkit.kexec=1"
        );
        assert_eq!(cmdline_of(b""), "abkit.kexec=1");
    }
}
