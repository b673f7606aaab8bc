//! `testos-init`: `/init` of the test OS. It mounts proc, sys, devtmpfs and
//! efivarfs (loading the modules listed in /etc/modules first), prints the
//! kernel command line and the loader's EFI variables as `testos: NAME=VALUE`
//! lines on the console for the VM tests to check, and powers off.
//!
//! It refuses to run unless it is PID 1, so starting it on a host is harmless.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use abkit_loader_core::guid::{ABKIT_VENDOR_GUID_STR, LOADER_INTERFACE_GUID_STR};
use abkit_loader_core::vars::{
    ABKIT_BOOTED_SLOT, LOADER_DEVICE_PART_UUID, LOADER_IMAGE_IDENTIFIER,
};
use testos::initrd::{MODULE_LIST, MODULES_DIR};

const EFIVARS: &str = "/sys/firmware/efi/efivars";

fn main() {
    if std::process::id() != 1 {
        eprintln!("testos-init: not PID 1; this is the test OS init, refusing to run");
        std::process::exit(2);
    }
    if let Err(e) = boot() {
        println!("testos: error: {e}");
    }
    power_off();
}

fn boot() -> io::Result<()> {
    mount("devtmpfs", "/dev", "devtmpfs")?;
    attach_console()?;
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    load_modules()?;
    if let Err(e) = mount("efivarfs", EFIVARS, "efivarfs") {
        println!("testos: error: cannot mount efivarfs: {e}");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    println!("testos: cmdline={}", cmdline.trim_end());
    for (name, vendor) in [
        (LOADER_DEVICE_PART_UUID, LOADER_INTERFACE_GUID_STR),
        (LOADER_IMAGE_IDENTIFIER, LOADER_INTERFACE_GUID_STR),
        (ABKIT_BOOTED_SLOT, ABKIT_VENDOR_GUID_STR),
    ] {
        match read_text_variable(name, vendor) {
            Ok(value) => println!("testos: {name}={value}"),
            Err(e) => println!("testos: {name} missing ({e})"),
        }
    }
    println!("testos: done, powering off");
    io::stdout().flush()
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let cstr =
        |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (source, target_c, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: three valid NUL-terminated strings that outlive the call; no
    // filesystem-specific data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mount {target}: {e}")));
    }
    Ok(())
}

/// Makes /dev/console stdin, stdout and stderr (an initramfs has none).
fn attach_console() -> io::Result<()> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")?;
    for fd in 0..3 {
        // SAFETY: both descriptors are open; dup2 only replaces `fd`.
        if unsafe { libc::dup2(console.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Loads each module named in /etc/modules, in order, with finit_module.
fn load_modules() -> io::Result<()> {
    let list = std::fs::read_to_string(format!("/{MODULE_LIST}")).unwrap_or_default();
    for name in list.lines().filter(|l| !l.is_empty()) {
        let file = File::open(format!("/{MODULES_DIR}/{name}"))?;
        let params = c"";
        // SAFETY: finit_module(fd, params, flags) with an open descriptor and
        // a NUL-terminated (empty) parameter string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(e.kind(), format!("load module {name}: {e}")));
            }
        }
    }
    Ok(())
}

/// An EFI variable holding NUL-terminated UCS-2 text, from efivarfs (4 bytes
/// of attributes, then the data).
fn read_text_variable(name: &str, vendor: &str) -> io::Result<String> {
    let bytes = std::fs::read(format!("{EFIVARS}/{name}-{vendor}"))?;
    let data = bytes.get(4..).unwrap_or_default();
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Ok(String::from_utf16_lossy(&units))
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot failed: PID 1 must not exit (the kernel would panic).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
