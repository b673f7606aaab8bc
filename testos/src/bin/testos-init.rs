//! `testos-init`: `/init` of the test OS. It mounts proc, sys, devtmpfs and
//! efivarfs (loading the modules listed in /etc/modules first), prints what
//! the VM tests check (`TESTOS variant=<V> slot=<S> version=<ver>` once, the
//! command line, the loader's EFI variables, the first line of its own system
//! slot), runs `abkit mark-good` unless its variant fails health, carries out
//! the action the test passed through QEMU's fw_cfg (`opt/abkit/action`, see
//! `testos::guest`), then powers off or reboots. docs/testos.md has the
//! protocol.
//!
//! It refuses to run unless it is PID 1, so starting it on a host is harmless.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use abkit_loader_core::guid::{ABKIT_VENDOR_GUID_STR, LOADER_INTERFACE_GUID_STR};
use abkit_loader_core::vars::{
    ABKIT_BOOTED_SLOT, LOADER_DEVICE_PART_UUID, LOADER_IMAGE_IDENTIFIER,
};
use testos::guest::{Finish, Health, Params, Plan, Step, one_line};
use testos::initrd::{ABKIT_PATH, MODULE_LIST, MODULES_DIR};

const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The test's instructions: `-fw_cfg name=opt/abkit/action,string=...`.
const ACTION: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/abkit/action/raw";
/// Where a whole-disk FAT volume (the tests' bundle disk) is mounted.
const BUNDLES: &str = "/mnt/bundles";
/// abkit's test-only checkpoint variable (`abkit_update::halt`).
const HALT_AT: &str = "ABKIT_HALT_AT";
/// QEMU user networking: the guest's address; the host is 10.0.2.2.
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const NETMASK: [u8; 4] = [255, 255, 255, 0];

fn main() {
    if std::process::id() != 1 {
        eprintln!("testos-init: not PID 1; this is the test OS init, refusing to run");
        std::process::exit(2);
    }
    let finish = match boot() {
        Ok(finish) => finish,
        Err(e) => {
            println!("testos: error: {e}");
            Finish::PowerOff
        }
    };
    end(finish);
}

fn boot() -> io::Result<Finish> {
    mount("devtmpfs", "/dev", "devtmpfs", 0)?;
    attach_console()?;
    mount("proc", "/proc", "proc", 0)?;
    mount("sysfs", "/sys", "sysfs", 0)?;
    // Only emergencies on the console: kernel messages must not split our lines.
    let _ = std::fs::write("/proc/sys/kernel/printk", "1");
    load_modules();
    if let Err(e) = mount("efivarfs", EFIVARS, "efivarfs", 0) {
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
    let params = Params::from_cmdline(&cmdline);
    println!("{}", params.testos_line());
    if let Some(slot) = params.slot {
        match system_marker(slot) {
            Ok(line) => println!("testos: system={line}"),
            Err(e) => println!("testos: system unreadable ({e})"),
        }
    }
    mount_bundle_disk();
    if std::path::Path::new("/sys/class/net/eth0").exists() {
        match setup_network() {
            Ok(()) => println!("testos: network eth0 10.0.2.15/24 up"),
            Err(e) => println!("testos: error: network: {e}"),
        }
    }
    let action = match std::fs::read(ACTION) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    println!("testos: action={action}");
    let plan = match Plan::parse(&action) {
        Ok(plan) => plan,
        Err(e) => {
            println!("testos: error: action: {e}");
            return Ok(Finish::PowerOff);
        }
    };
    io::stdout().flush()?;
    if params.health == Health::Bad {
        println!("testos: health=bad: not marking good; rebooting");
        return Ok(Finish::Reboot);
    }
    println!("testos: health=good");
    let halt_at = plan.halt_at.as_deref();
    if let Some(name) = halt_at {
        println!("testos: abkit runs with ABKIT_HALT_AT={name}");
    }
    if plan.mark_good {
        run_abkit("mark-good", &["mark-good".to_string()], false, halt_at);
    } else {
        println!("testos: mark-good skipped");
    }
    for step in &plan.steps {
        match step {
            Step::Abkit { name, args } => {
                run_abkit(name, args, false, halt_at);
            }
            Step::Status => {
                let out = run_abkit(
                    "status",
                    &["status".to_string(), "--json".to_string()],
                    true,
                    halt_at,
                );
                println!("testos: status-json {}", one_line(&out));
            }
        }
    }
    Ok(plan.finish)
}

/// Runs /bin/abkit with `args`, echoing its output as `testos: out:` and
/// `testos: err:` lines as they come (the tests watch install progress live),
/// then `testos: result NAME exit=CODE`. With `capture`, stdout is returned
/// instead of echoed. `halt_at` becomes `ABKIT_HALT_AT` (a power-cut test's
/// checkpoint: abkit then never returns from it).
fn run_abkit(name: &str, args: &[String], capture: bool, halt_at: Option<&str>) -> String {
    println!("testos: run: abkit {}", args.join(" "));
    let _ = io::stdout().flush();
    let mut command = Command::new(format!("/{ABKIT_PATH}"));
    if let Some(checkpoint) = halt_at {
        command.env(HALT_AT, checkpoint);
    }
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            println!("testos: result {name} exit=spawn-failed ({e})");
            return String::new();
        }
    };
    let stderr = child.stderr.take();
    let echo_err = std::thread::spawn(move || {
        if let Some(stderr) = stderr {
            echo_lines(stderr, "err");
        }
    });
    let mut captured = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        if capture {
            let _ = stdout.read_to_string(&mut captured);
        } else {
            echo_lines(stdout, "out");
        }
    }
    let _ = echo_err.join();
    match child.wait() {
        Ok(status) => match status.code() {
            Some(code) => println!("testos: result {name} exit={code}"),
            None => println!("testos: result {name} exit=signal ({status})"),
        },
        Err(e) => println!("testos: result {name} exit=wait-failed ({e})"),
    }
    captured
}

fn echo_lines(stream: impl Read, tag: &str) {
    for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
        let mut out = io::stdout().lock();
        let _ = writeln!(
            out,
            "testos: {tag}: {}",
            String::from_utf8_lossy(&line).trim_end()
        );
        let _ = out.flush();
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let (source, target_c, fstype) = (cstring(source)?, cstring(target)?, cstring(fstype)?);
    // SAFETY: three valid NUL-terminated strings that outlive the call; no
    // filesystem-specific data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
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

/// Loads each module named in /etc/modules, in order, with finit_module; a
/// module that fails is reported and the rest still load.
fn load_modules() {
    let list = std::fs::read_to_string(format!("/{MODULE_LIST}")).unwrap_or_default();
    for name in list.lines().filter(|l| !l.is_empty()) {
        if let Err(e) = load_module(name) {
            println!("testos: error: load module {name}: {e}");
        }
    }
}

fn load_module(name: &str) -> io::Result<()> {
    let file = File::open(format!("/{MODULES_DIR}/{name}"))?;
    let params = c"";
    // SAFETY: finit_module(fd, params, flags) with an open descriptor and a
    // NUL-terminated (empty) parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
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

/// Block devices from sysfs: (name, uevent text).
fn block_devices() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut devices: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
            Some((name, uevent))
        })
        .collect();
    devices.sort();
    devices
}

/// The first line (at most 200 bytes) of this slot's system partition: the
/// VM tests' system images start with a line naming their variant.
fn system_marker(slot: char) -> io::Result<String> {
    let suffix = format!("-SYSTEM-{slot}");
    let (name, _) = block_devices()
        .into_iter()
        .find(|(_, uevent)| {
            uevent.lines().any(|l| {
                l.strip_prefix("PARTNAME=")
                    .is_some_and(|n| n.ends_with(&suffix))
            })
        })
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no partition *{suffix}"))
        })?;
    let mut head = [0u8; 200];
    let mut file = File::open(format!("/dev/{name}"))?;
    let n = file.read(&mut head)?;
    let line = head[..n]
        .split(|&b| b == b'\n' || b == 0)
        .next()
        .unwrap_or_default();
    Ok(format!("/dev/{name} {}", String::from_utf8_lossy(line)))
}

/// Mounts the first whole disk without partitions that holds FAT (the VM
/// tests' bundle disk) read-only on /mnt/bundles.
fn mount_bundle_disk() {
    let devices = block_devices();
    for (name, uevent) in &devices {
        let is_disk = uevent.lines().any(|l| l == "DEVTYPE=disk");
        let has_partitions = devices
            .iter()
            .any(|(other, _)| other != name && other.starts_with(name.as_str()));
        if !is_disk || has_partitions {
            continue;
        }
        if std::fs::create_dir_all(BUNDLES).is_err() {
            return;
        }
        if mount(&format!("/dev/{name}"), BUNDLES, "vfat", libc::MS_RDONLY).is_ok() {
            println!("testos: bundle disk /dev/{name} on {BUNDLES}");
            return;
        }
    }
}

/// lo up; eth0 10.0.2.15/24 up (QEMU user networking: the host's loopback
/// answers on 10.0.2.2, on the same subnet, so no route is needed).
fn setup_network() -> io::Result<()> {
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we own; OwnedFd closes it.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = socket.as_raw_fd();
    interface_up(fd, "lo")?;
    set_address(fd, "eth0", libc::SIOCSIFADDR, GUEST_IP)?;
    set_address(fd, "eth0", libc::SIOCSIFNETMASK, NETMASK)?;
    interface_up(fd, "eth0")
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    fd: libc::c_int,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `req` is a valid ifreq for these SIOC* requests, which read or
    // write only inside it.
    if unsafe { libc::ioctl(fd, request as _, req as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn interface_up(fd: libc::c_int, name: &str) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    ioctl(fd, libc::SIOCGIFFLAGS, &mut req, &format!("{name} flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut req, &format!("{name} up"))
}

fn set_address(
    fd: libc::c_int,
    name: &str,
    request: libc::c_ulong,
    addr: [u8; 4],
) -> io::Result<()> {
    let mut req = ifreq_for(name)?;
    // SAFETY: sockaddr_in is plain data and fits in the sockaddr member.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from_ne_bytes(addr);
    // SAFETY: sockaddr_in (16 bytes) has the size of sockaddr.
    req.ifr_ifru.ifru_addr =
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) };
    ioctl(fd, request, &mut req, &format!("{name} address"))
}

fn end(finish: Finish) -> ! {
    let (text, how) = match finish {
        Finish::PowerOff => ("testos: done, powering off", libc::RB_POWER_OFF),
        Finish::Reboot => ("testos: done, rebooting", libc::RB_AUTOBOOT),
    };
    println!("{text}");
    let _ = io::stdout().flush();
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(how);
    }
    // reboot failed: PID 1 must not exit (the kernel would panic).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
