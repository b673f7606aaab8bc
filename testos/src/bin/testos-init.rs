//! `testos-init`: `/init` of the test OS. It mounts proc, sys, devtmpfs and
//! efivarfs (loading the modules listed in /etc/modules first), prints what
//! the VM tests check (`TESTOS variant=<V> slot=<S> version=<ver>` once, the
//! command line, the loader's EFI variables, the first line of its own system
//! slot), runs `abkit mark-good` unless its variant fails health, carries out
//! the action the test passed through QEMU's fw_cfg (`opt/abkit/action`, see
//! `testos::guest`), then powers off or reboots. docs/testos.md has the
//! protocol.
//!
//! The same binary runs twice on a verified boot. From the initrd (it has
//! `/etc/initrd-release`) with `roothash=` on the command line it is stage
//! one: it maps its slot partition through dm-verity with the command line's
//! root hash, reads the whole mapped root once (every block checked against
//! the tree: a tampered slot fails here, at once, with a message), mounts it
//! as the read-only erofs root, mounts DATA (ext4) on /data, moves /dev,
//! /proc and /sys over, switches root and executes the slot's own
//! `/sbin/init` (this program again), which is stage two: everything above.
//! Any failure on the way prints `testos: error: root: ...` and reboots: a
//! trial boot that cannot reach its root falls back to the committed slot.
//! Without `roothash=` the init runs everything from the initrd, as before.
//!
//! It refuses to run unless it is PID 1, so starting it on a host is harmless.
//! The one exception: started as `testos-health` (the link
//! `testos::initrd::HEALTH_CHECK`, which `abkit agent` runs as a health
//! check), it exits 0 for a variant built healthy and 1 for one built to
//! fail, as its `testos.health=` says.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use abkit_loader_core::guid::{ABKIT_VENDOR_GUID_STR, LOADER_INTERFACE_GUID_STR};
use abkit_loader_core::vars::{
    ABKIT_BOOTED_SLOT, LOADER_DEVICE_PART_UUID, LOADER_IMAGE_IDENTIFIER,
};
use testos::dm;
use testos::guest::{Finish, Health, Params, Plan, RootParams, Step, one_line};
use testos::initrd::{
    ABKIT_PATH, HEALTH_CHECK, INITRD_RELEASE, MODULE_LIST, MODULES_DIR, ROOT_INIT, ROOT_MARKER,
};

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
    if std::process::id() != 1 && started_as(HEALTH_CHECK) {
        std::process::exit(health_check());
    }
    if std::process::id() != 1 {
        eprintln!("testos-init: not PID 1; this is the test OS init, refusing to run");
        std::process::exit(2);
    }
    let in_initrd = std::path::Path::new(&format!("/{INITRD_RELEASE}")).exists();
    if in_initrd {
        if let Err(e) = early_mounts() {
            println!("testos: error: {e}");
            end(Finish::Reboot);
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        match RootParams::from_cmdline(&cmdline) {
            Ok(Some(root)) => {
                let e = switch_to_slot_root(&root);
                println!("testos: error: root: {e}");
                end(Finish::Reboot);
            }
            Ok(None) => {}
            Err(e) => {
                println!("testos: error: root: {e}");
                end(Finish::Reboot);
            }
        }
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

/// Whether argv[0] has the file name of `path`.
fn started_as(path: &str) -> bool {
    let name = |p: &str| p.rsplit('/').next().unwrap_or_default().to_string();
    std::env::args()
        .next()
        .is_some_and(|a| name(&a) == name(path))
}

/// The agent's health check: this variant's `testos.health=`.
fn health_check() -> i32 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = Params::from_cmdline(&cmdline);
    match params.health {
        Health::Good => {
            println!("testos-health: variant {} is healthy", params.variant);
            0
        }
        Health::Bad => {
            println!(
                "testos-health: variant {} is built to fail its health check",
                params.variant
            );
            1
        }
    }
}

/// devtmpfs, the console, proc, sysfs (unless a previous stage mounted and
/// moved them here), the modules of /etc/modules.
fn early_mounts() -> io::Result<()> {
    if std::path::Path::new("/proc/self").exists() {
        return attach_console();
    }
    mount("devtmpfs", "/dev", "devtmpfs", 0)?;
    attach_console()?;
    mount("proc", "/proc", "proc", 0)?;
    mount("sysfs", "/sys", "sysfs", 0)?;
    // Only emergencies on the console: kernel messages must not split our lines.
    let _ = std::fs::write("/proc/sys/kernel/printk", "1");
    load_modules();
    Ok(())
}

/// Stage one: dm-verity over the slot, erofs root, DATA, switch root, exec
/// the slot's init. Returns only on failure.
fn switch_to_slot_root(root: &RootParams) -> io::Error {
    match try_switch(root) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_switch(root: &RootParams) -> io::Result<std::convert::Infallible> {
    let t = std::time::Instant::now();
    println!(
        "testos: initrd: root hash {} on PARTLABEL={}, hash offset {}",
        root.root_hash, root.data_label, root.hash_offset
    );
    let slot = wait_for_partition(&root.data_label)?;
    let devnum = std::fs::read_to_string(format!("/sys/class/block/{slot}/dev"))?
        .trim()
        .to_string();
    let sb = dm::VeritySuperblock::read(&format!("/dev/{slot}"), root.hash_offset)
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/{slot}: verity superblock: {e}")))?;
    if sb.data_blocks * u64::from(sb.data_block_size) > root.hash_offset {
        return Err(io::Error::other(format!(
            "/dev/{slot}: the verity data area ({} blocks) overlaps the hash area",
            sb.data_blocks
        )));
    }
    dm::create_readonly(
        "root",
        &sb.target(&devnum, root.hash_offset, &root.root_hash),
    )?;
    let node = dm_node("root")?;
    std::fs::create_dir_all("/dev/mapper")?;
    let _ = std::fs::remove_file("/dev/mapper/root");
    std::os::unix::fs::symlink(format!("../{node}"), "/dev/mapper/root")?;
    let bytes = read_all("/dev/mapper/root").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "dm-verity: {e}: /dev/{slot} does not match roothash= (tampered or not this release)"
            ),
        )
    })?;
    println!(
        "testos: initrd: /dev/mapper/root = dm-verity over /dev/{slot}: {} KiB, every block verified ({} ms)",
        bytes >> 10,
        t.elapsed().as_millis()
    );
    std::fs::create_dir_all("/sysroot")?;
    mount("/dev/mapper/root", "/sysroot", "erofs", libc::MS_RDONLY)?;
    // symlink_metadata: a stock root's /sbin/init is an absolute link
    // (Debian: /lib/systemd/systemd) that only resolves after the chroot.
    if std::fs::symlink_metadata(format!("/sysroot/{ROOT_INIT}")).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the root has no /{ROOT_INIT}"),
        ));
    }
    let data_label = root
        .data_partition_label()
        .ok_or_else(|| io::Error::other("cannot tell the DATA label"))?;
    let data = wait_for_partition(&data_label)?;
    mount(
        &format!("/dev/{data}"),
        "/sysroot/data",
        "ext4",
        libc::MS_NOATIME,
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("DATA /dev/{data} (PARTLABEL={data_label}) as ext4: {e}"),
        )
    })?;
    println!("testos: initrd: DATA /dev/{data} on /data (ext4); switching root");
    for dir in ["/dev", "/proc", "/sys"] {
        move_mount(dir, &format!("/sysroot{dir}"))?;
    }
    std::env::set_current_dir("/sysroot")?;
    move_mount(".", "/")?;
    let dot = cstring(".")?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")?;
    io::stdout().flush()?;
    let init = cstring(&format!("/{ROOT_INIT}"))?;
    let argv = [init.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of valid C strings; execv only
    // returns on failure.
    unsafe { libc::execv(init.as_ptr(), argv.as_ptr()) };
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("exec /{ROOT_INIT}: {e}")))
}

fn move_mount(from: &str, to: &str) -> io::Result<()> {
    let (f, t) = (cstring(from)?, cstring(to)?);
    // SAFETY: valid NUL-terminated paths; MS_MOVE takes no type or data.
    let rc = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("move {from} to {to}: {e}"),
        ));
    }
    Ok(())
}

/// `dm-N` of the device-mapper device named `name`, from sysfs.
fn dm_node(name: &str) -> io::Result<String> {
    for entry in std::fs::read_dir("/sys/block")?.filter_map(Result::ok) {
        let node = entry.file_name().to_string_lossy().into_owned();
        if node.starts_with("dm-")
            && std::fs::read_to_string(entry.path().join("dm/name")).is_ok_and(|n| n.trim() == name)
        {
            return Ok(node);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no dm device {name}"),
    ))
}

/// Reads a whole device; returns the byte count, or the first error with
/// its offset.
fn read_all(path: &str) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {path} failed near byte {total}: {e}"),
                ));
            }
        }
    }
}

/// The block device (`vdaN`) whose partition label is `label`; waits up to
/// 10 s for it to appear, then gives up with an error (never hangs).
fn wait_for_partition(label: &str) -> io::Result<String> {
    for _ in 0..100 {
        if let Some((name, _)) = block_devices().into_iter().find(|(_, uevent)| {
            uevent
                .lines()
                .any(|l| l.strip_prefix("PARTNAME=") == Some(label))
        }) {
            return Ok(name);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no partition labelled {label} after 10 s"),
    ))
}

/// Stage two on a verified root: how / and /data are mounted, and that /
/// refuses writes (lines the VM tests check).
fn report_root() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mount_of = |target: &str| {
        mounts
            .lines()
            .rfind(|l| l.split_whitespace().nth(1) == Some(target))
            .map(str::to_string)
    };
    if let Some(line) = mount_of("/") {
        println!("testos: root-mount {line}");
    }
    match (dm::status("root", true), dm::status("root", false)) {
        (Ok(table), Ok(status)) => {
            for (t, s) in table.iter().zip(&status) {
                println!(
                    "testos: root-dm target={} status={} table={}",
                    t.kind, s.params, t.params
                );
            }
        }
        (Err(e), _) | (_, Err(e)) => println!("testos: root-dm none ({e})"),
    }
    if let (Ok(meta), Ok(node)) = (std::fs::metadata("/"), dm_node("root")) {
        use std::os::unix::fs::MetadataExt as _;
        let dev = meta.dev();
        let root_dev = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let dm_dev = std::fs::read_to_string(format!("/sys/block/{node}/dev")).unwrap_or_default();
        println!(
            "testos: root-dev {root_dev} {node}={} same={}",
            dm_dev.trim(),
            if root_dev == dm_dev.trim() {
                "yes"
            } else {
                "no"
            }
        );
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open("/.testos-write-probe")
    {
        Ok(_) => {
            let _ = std::fs::remove_file("/.testos-write-probe");
            println!("testos: root-write allowed");
        }
        Err(e) => println!("testos: root-write refused: {e}"),
    }
    match mount_of("/data") {
        Some(line) => println!("testos: data-mount {line}"),
        None => println!("testos: data-mount none"),
    }
}

fn boot() -> io::Result<Finish> {
    early_mounts()?;
    let verified_root = !std::path::Path::new(&format!("/{INITRD_RELEASE}")).exists();
    if verified_root {
        // The root is read-only: scratch space for abkit (its lock in
        // /run/abkit, the ESP's private mount point in /tmp).
        for dir in ["/run", "/tmp"] {
            if let Err(e) = mount("tmpfs", dir, "tmpfs", libc::MS_NOSUID | libc::MS_NODEV) {
                println!("testos: error: {e}");
            }
        }
        report_root();
    }
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
    if let Ok(text) = std::fs::read_to_string(format!("/{ROOT_MARKER}")) {
        let first = text.lines().next().unwrap_or_default();
        println!("testos: system=/dev/mapper/root {first}");
    } else if let Some(slot) = params.slot {
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
    let plan = match Plan::parse_for(&action, &params.variant) {
        Ok(plan) => plan,
        Err(e) => {
            println!("testos: error: action: {e}");
            return Ok(Finish::PowerOff);
        }
    };
    io::stdout().flush()?;
    let halt_at = plan.halt_at.as_deref();
    if plan.agent {
        println!("testos: health gate left to abkit agent (this variant's check: /{HEALTH_CHECK})");
    } else if params.health == Health::Bad {
        println!("testos: health=bad: not marking good; rebooting");
        return Ok(Finish::Reboot);
    } else {
        println!("testos: health=good");
    }
    if let Some(name) = halt_at {
        println!("testos: abkit runs with ABKIT_HALT_AT={name}");
    }
    if plan.agent {
        println!("testos: mark-good left to the agent");
    } else if plan.mark_good {
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
            Step::DataWrite { name, text } => match write_data(name, text) {
                Ok(()) => println!("testos: data-write {name} ok"),
                Err(e) => println!("testos: data-write {name} failed: {e}"),
            },
            Step::DataRead { name } => match std::fs::read_to_string(format!("/data/{name}")) {
                Ok(text) => println!("testos: data {name}={}", text.trim_end()),
                Err(e) => println!("testos: data {name} missing ({e})"),
            },
            Step::SecureBoot => {
                // efivarfs: 4 attribute bytes, then the 1-byte value.
                let path = format!("{EFIVARS}/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c");
                match std::fs::read(&path) {
                    Ok(v) if v.len() == 5 => println!("testos: secureboot={}", v[4]),
                    Ok(v) => println!("testos: secureboot unreadable ({} bytes)", v.len()),
                    Err(e) => println!("testos: secureboot unreadable ({e})"),
                }
            }
            Step::Pcrs => {
                for n in testos::guest::PRINTED_PCRS {
                    let path = format!("/sys/class/tpm/tpm0/pcr-sha256/{n}");
                    match std::fs::read_to_string(&path) {
                        Ok(v) => println!("testos: pcr {n}={}", v.trim().to_ascii_lowercase()),
                        Err(e) => println!("testos: pcr {n} unreadable ({path}: {e})"),
                    }
                }
            }
        }
    }
    Ok(plan.finish)
}

/// Writes /data/NAME and makes it durable (file and folder fsynced).
fn write_data(name: &str, text: &str) -> io::Result<()> {
    let mut f = File::create(format!("/data/{name}"))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    File::open("/data")?.sync_all()
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
