//! The layout of the test OS inside its initrd: `/init`, the kernel modules
//! it loads (in `/lib/modules`, listed in load order in `/etc/modules`), any
//! extra files (the `abkit` binary, the test keyring) and the empty
//! directories init mounts on.

use std::collections::BTreeSet;
use std::io::Write;

use crate::cpio::{CpioError, CpioWriter};

/// Where the modules go, and the file listing them in load order.
pub const MODULES_DIR: &str = "lib/modules";
pub const MODULE_LIST: &str = "etc/modules";

/// Where the VM tests put the `abkit` binary and the trusted keys.
pub const ABKIT_PATH: &str = "bin/abkit";
pub const KEYRING_DIR: &str = "etc/abkit/keyring";

/// The kernel modules the test OS needs from Debian's kernel, leaves first
/// (dependencies from `modinfo -F depends`): virtio disks and network, the
/// fw_cfg reader (the test's instructions), efivarfs, and FAT with the code
/// page and character sets of the kernel's defaults (cp437, ascii, utf8).
pub const TESTOS_MODULES: [&str; 16] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "qemu_fw_cfg",
    "efivarfs",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// The modules that map and mount the verified root and DATA, leaves first
/// (`modinfo -F depends` on Debian's 6.1 kernel): CRC32C for erofs and ext4
/// (the kernel asks for the `crc32c` algorithm, and nothing would load it
/// on demand), erofs, device-mapper and dm-verity, ext4.
pub const ROOT_MODULES: [&str; 11] = [
    "crc32c_generic",
    "libcrc32c",
    "erofs",
    "dm-mod",
    "dm-bufio",
    "reed_solomon",
    "dm-verity",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
];

/// Present in every initrd this module writes (systemd's convention): the
/// init knows it runs from the initrd and, given `roothash=`, switches to
/// the slot's root.
pub const INITRD_RELEASE: &str = "etc/initrd-release";

/// The slot root's own init (what the initrd executes after switching root).
pub const ROOT_INIT: &str = "sbin/init";
/// The first line of this file in the root names the variant (the VM tests
/// check that the root came from the slot they expect).
pub const ROOT_MARKER: &str = "etc/abkit-testos-system";
/// The test OS's health check for `abkit agent` (in its default health
/// folder): a symbolic link to the init, which, started under this name,
/// exits 0 for a variant built healthy and 1 for one built to fail
/// (`testos.health=` on the command line).
pub const HEALTH_CHECK: &str = "etc/abkit/health.d/testos-health";

/// Directories the root filesystem needs: mount points (it is read-only).
pub const ROOT_DIRS: [&str; 10] = [
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "data",
    "mnt",
    "mnt/bundles",
    "etc",
    "sbin",
];

/// Mount points and directories init expects.
const DIRS: [&str; 10] = [
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "etc",
    "lib",
    "bin",
    MODULES_DIR,
    "mnt",
];

/// One kernel module: its file name (e.g. `efivarfs.ko`) and contents.
pub struct Module<'a> {
    pub file_name: &'a str,
    pub data: &'a [u8],
}

/// Any other file: relative `path` (parents are created), permissions, data.
pub struct ExtraFile<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// Writes the test OS initrd: `init` as `/init`, `modules` into
/// `/lib/modules` and their names, in the given (load) order, into
/// `/etc/modules`, then each of `extra` with its parent directories.
pub fn write_initrd<W: Write>(
    out: W,
    init: &[u8],
    modules: &[Module<'_>],
    extra: &[ExtraFile<'_>],
) -> Result<W, CpioError> {
    let mut cpio = CpioWriter::new(out);
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for dir in DIRS {
        cpio.dir(dir, 0o755)?;
        dirs.insert(dir.to_string());
    }
    cpio.file("init", 0o755, init)?;
    cpio.file(INITRD_RELEASE, 0o644, b"NAME=abkit-testos-initrd\n")?;
    let mut list = String::new();
    for module in modules {
        if module.file_name.contains('/') || module.file_name.contains('\n') {
            return Err(CpioError::BadName(module.file_name.to_string()));
        }
        cpio.file(
            &format!("{MODULES_DIR}/{}", module.file_name),
            0o644,
            module.data,
        )?;
        list.push_str(module.file_name);
        list.push('\n');
    }
    cpio.file(MODULE_LIST, 0o644, list.as_bytes())?;
    for file in extra {
        if file
            .path
            .split('/')
            .any(|part| part.is_empty() || part == "..")
        {
            return Err(CpioError::BadName(file.path.to_string()));
        }
        let mut parent = String::new();
        let parts: Vec<&str> = file.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs.insert(parent.clone()) {
                cpio.dir(&parent, 0o755)?;
            }
        }
        cpio.file(file.path, file.mode, file.data)?;
    }
    cpio.finish()
}

/// Lays out the test OS root filesystem in `dir` (which `abkit bundle
/// create --rootfs` turns into an erofs image): the init as `/sbin/init`,
/// the marker line in `/etc/abkit-testos-system`, the mount points, the
/// agent's health check ([`HEALTH_CHECK`], a link to the init), and each of
/// `extra` (the `abkit` binary, the keyring).
pub fn write_root_tree(
    dir: &std::path::Path,
    init: &[u8],
    marker: &str,
    extra: &[ExtraFile<'_>],
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for d in ROOT_DIRS {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let put = |path: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
        if path.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad path {path}"),
            ));
        }
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
    };
    put(ROOT_INIT, 0o755, init)?;
    put(ROOT_MARKER, 0o644, format!("{marker}\n").as_bytes())?;
    let check = dir.join(HEALTH_CHECK);
    if let Some(parent) = check.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(&check) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(format!("/{ROOT_INIT}"), &check)?;
    for file in extra {
        put(file.path, file.mode, file.data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_tree_layout() {
        let dir = tempfile::tempdir().unwrap();
        let extra = [ExtraFile {
            path: ABKIT_PATH,
            mode: 0o755,
            data: b"abkit",
        }];
        write_root_tree(dir.path(), b"init", "MARK x", &extra).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sbin/init")).unwrap(),
            b"init"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ROOT_MARKER)).unwrap(),
            "MARK x\n"
        );
        assert!(dir.path().join("data").is_dir());
        assert!(dir.path().join("mnt/bundles").is_dir());
        assert_eq!(
            std::fs::read_link(dir.path().join(HEALTH_CHECK)).unwrap(),
            std::path::Path::new("/sbin/init")
        );
        assert_eq!(
            std::fs::read(dir.path().join("bin/abkit")).unwrap(),
            b"abkit"
        );
        let bad = [ExtraFile {
            path: "../x",
            mode: 0o644,
            data: b"",
        }];
        assert!(write_root_tree(dir.path(), b"", "", &bad).is_err());
    }

    fn unpack(bytes: Vec<u8>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, bytes).unwrap();
        let status = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&path)
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    #[test]
    fn layout_lists_modules_in_order() {
        let modules = [
            Module {
                file_name: "b.ko",
                data: b"bbb",
            },
            Module {
                file_name: "a.ko",
                data: b"aa",
            },
        ];
        let dir = unpack(write_initrd(Vec::new(), b"\x7fELF", &modules, &[]).unwrap());
        assert_eq!(std::fs::read(dir.path().join("init")).unwrap(), b"\x7fELF");
        assert_eq!(
            std::fs::read(dir.path().join("lib/modules/b.ko")).unwrap(),
            b"bbb"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/modules")).unwrap(),
            "b.ko\na.ko\n"
        );
        assert!(dir.path().join("proc").is_dir());
    }

    #[test]
    fn extra_files_get_their_parent_directories() {
        let extra = [
            ExtraFile {
                path: ABKIT_PATH,
                mode: 0o755,
                data: b"abkit",
            },
            ExtraFile {
                path: "etc/abkit/keyring/test.pub",
                mode: 0o644,
                data: b"key",
            },
            ExtraFile {
                path: "etc/abkit/keyring/other.pub",
                mode: 0o644,
                data: b"key2",
            },
        ];
        let dir = unpack(write_initrd(Vec::new(), b"", &[], &extra).unwrap());
        assert_eq!(
            std::fs::read(dir.path().join("bin/abkit")).unwrap(),
            b"abkit"
        );
        let keyring = dir.path().join(KEYRING_DIR);
        assert_eq!(std::fs::read(keyring.join("test.pub")).unwrap(), b"key");
        assert_eq!(std::fs::read(keyring.join("other.pub")).unwrap(), b"key2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("bin/abkit"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn bad_names_are_refused() {
        let modules = [Module {
            file_name: "../x.ko",
            data: b"",
        }];
        assert!(write_initrd(Vec::new(), b"", &modules, &[]).is_err());
        for path in ["../etc/x", "etc//x", "/etc/x", "etc/"] {
            let extra = [ExtraFile {
                path,
                mode: 0o644,
                data: b"",
            }];
            assert!(
                write_initrd(Vec::new(), b"", &[], &extra).is_err(),
                "{path} accepted"
            );
        }
    }
}
