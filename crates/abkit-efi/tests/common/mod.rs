//! Helpers shared by the integration tests: fixtures and the independent
//! reader `virt-fw-vars` (PyPI virt-firmware) to cross-check ours.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use abkit_efi::store::{OvmfVarsFile, VarStore};

/// (vendor GUID, name) → (attributes, hex data)
pub type Dump = BTreeMap<(String, String), (u32, String)>;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A file Debian's `ovmf` package ships; `make deps` installs it.
pub fn debian_ovmf(name: &str) -> PathBuf {
    let p = Path::new("/usr/share/OVMF").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make deps` (Debian package ovmf)",
        p.display()
    );
    p
}

pub fn dump_ours(store: &dyn VarStore) -> Dump {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|n| {
            let v = store.get(&n).unwrap().unwrap();
            (
                (n.vendor.to_string(), n.name.clone()),
                (v.attributes, hex::encode(v.data)),
            )
        })
        .collect()
}

pub fn dump_file_ours(path: &Path) -> Dump {
    dump_ours(&OvmfVarsFile::open(path).unwrap())
}

fn virt_fw_vars() -> Command {
    let found = Command::new("virt-fw-vars")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "virt-fw-vars not found: run `make deps` (PyPI package virt-firmware)"
    );
    Command::new("virt-fw-vars")
}

/// What virt-fw-vars reads from `path`.
pub fn dump_virt(path: &Path) -> Dump {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("vars.json");
    let out = virt_fw_vars()
        .arg("-i")
        .arg(path)
        .arg("--output-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virt-fw-vars failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    v["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|var| {
            (
                (
                    var["guid"].as_str().unwrap().to_string(),
                    var["name"].as_str().unwrap().to_string(),
                ),
                (
                    var["attr"].as_u64().unwrap() as u32,
                    var["data"].as_str().unwrap().to_lowercase(),
                ),
            )
        })
        .collect()
}

/// virt-fw-vars' human-readable listing of `path`.
pub fn print_virt(path: &Path) -> String {
    let out = virt_fw_vars()
        .arg("-i")
        .arg(path)
        .arg("--print")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
