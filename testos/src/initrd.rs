//! The layout of the test OS inside its initrd: `/init`, the kernel modules
//! it loads (in `/lib/modules`, listed in load order in `/etc/modules`) and
//! the empty directories init mounts on.

use std::io::Write;

use crate::cpio::{CpioError, CpioWriter};

/// Where the modules go, and the file listing them in load order.
pub const MODULES_DIR: &str = "lib/modules";
pub const MODULE_LIST: &str = "etc/modules";

/// Mount points and directories init expects.
const DIRS: [&str; 9] = [
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "etc",
    "lib",
    MODULES_DIR,
    "mnt",
];

/// One kernel module: its file name (e.g. `efivarfs.ko`) and contents.
pub struct Module<'a> {
    pub file_name: &'a str,
    pub data: &'a [u8],
}

/// Writes the test OS initrd: `init` as `/init`, `modules` into
/// `/lib/modules` and their names, in the given (load) order, into
/// `/etc/modules`.
pub fn write_initrd<W: Write>(out: W, init: &[u8], modules: &[Module<'_>]) -> Result<W, CpioError> {
    let mut cpio = CpioWriter::new(out);
    for dir in DIRS {
        cpio.dir(dir, 0o755)?;
    }
    cpio.file("init", 0o755, init)?;
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
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let bytes = write_initrd(Vec::new(), b"\x7fELF", &modules).unwrap();
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
    fn module_names_with_slashes_are_refused() {
        let modules = [Module {
            file_name: "../x.ko",
            data: b"",
        }];
        assert!(write_initrd(Vec::new(), b"", &modules).is_err());
    }
}
