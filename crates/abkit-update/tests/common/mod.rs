//! A simulated machine for engine tests: a real A/B disk image built by
//! abkit-disk, a copy of Debian's OVMF VARS file as its NVRAM, bundles made
//! with a test key, and the firmware model to "boot" it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abkit_bundle::{CreateOptions, Keyring, PayloadSpec, SecretKey, create_bundle};
use abkit_disk::{BuildOptions, LayoutOptions, Slot};
use abkit_efi::{OvmfVarsFile, VarStore};
use abkit_update::fault::PowerCut;
use abkit_update::firmware::{FirmwareModel, SimulatedBoot, simulate_boot};
use abkit_update::offline::OfflineMachine;
use abkit_update::progress::Silent;
use abkit_update::record::{SlotRecord, SlotState, record_copy_path, record_path, write_record};
use abkit_update::{InstallOptions, InstallReport, Machine};

pub const COMPATIBLE: &str = "abkit-test";
pub const SLOT_SIZE: u64 = 4 << 20;

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub vars: PathBuf,
    pub key: SecretKey,
    pub keyring: Keyring,
}

/// Deterministic, non-repeating bytes that identify a version.
pub fn system_image(tag: u8, len: usize) -> Vec<u8> {
    abkit_disk::fixtures::noise(len, u64::from(tag))
}

pub fn loader(tag: &str) -> Vec<u8> {
    abkit_disk::fixtures::tiny_efi_application(tag.as_bytes())
}

impl Rig {
    /// A disk with version X (raw files, no bundle) on slot A, boot entries
    /// in NVRAM, slot A committed.
    pub fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("x.img");
        std::fs::write(&system, system_image(b'X', 256 << 10)).unwrap();
        let loader_path = dir.path().join("x.efi");
        std::fs::write(&loader_path, loader("X")).unwrap();
        let vars = dir.path().join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("Debian's OVMF is needed: run `make deps`");
        let disk = dir.path().join("disk.img");
        abkit_update::factory::build_raw(
            &BuildOptions {
                loader: loader_path,
                system,
                output: disk.clone(),
                layout: LayoutOptions {
                    esp_size: abkit_disk::MIN_ESP_SIZE,
                    system_size: SLOT_SIZE,
                    data_size: 1 << 20,
                    ..LayoutOptions::default()
                },
                seed: Some(7),
                force: false,
            },
            Some(&vars),
        )
        .unwrap();
        let key = SecretKey::from_seed(&[7; 32]);
        let keyring = Keyring::from_keys(vec![key.public_key()]);
        let rig = Rig {
            dir,
            disk,
            vars,
            key,
            keyring,
        };
        // What a factory records for the version it put on slot A.
        let mut record = SlotRecord::bare(SlotState::Good);
        record.compatible = Some(COMPATIBLE.to_string());
        record.version = Some(semver::Version::new(1, 0, 0));
        write_record(rig.machine(Slot::A).esp(), Slot::A, &record).unwrap();
        rig
    }

    /// A disk built from raw files: no slot records at all.
    pub fn unrecorded() -> Rig {
        let rig = Rig::new();
        let mut m = rig.machine(Slot::A);
        for path in [record_path(Slot::A), record_copy_path(Slot::A)] {
            m.esp().remove(path).unwrap();
        }
        drop(m);
        rig
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle of `version` whose system image and loader carry `tag`.
    pub fn bundle(&self, version: &str, tag: u8) -> PathBuf {
        self.bundle_with(version, COMPATIBLE, tag, 200 << 10)
    }

    pub fn bundle_with(&self, version: &str, compatible: &str, tag: u8, size: usize) -> PathBuf {
        let sys = self.path(&format!("sys-{version}.img"));
        std::fs::write(&sys, system_image(tag, size)).unwrap();
        let efi = self.path(&format!("boot-{version}.efi"));
        std::fs::write(&efi, loader(&format!("{}", tag as char))).unwrap();
        let out = self.path(&format!("{compatible}-{version}.abb"));
        let mut opts = CreateOptions::new(compatible, semver::Version::parse(version).unwrap());
        opts.chunk_size = 16 << 10;
        create_bundle(
            &out,
            &[
                PayloadSpec {
                    name: "efi".into(),
                    path: efi,
                    verity: false,
                },
                PayloadSpec {
                    name: "system".into(),
                    path: sys,
                    verity: true,
                },
            ],
            &opts,
            std::slice::from_ref(&self.key),
            &mut |_| {},
        )
        .unwrap();
        out
    }

    /// A bundle with the given payload bytes; `verity` adds a hash tree to
    /// the system payload.
    pub fn bundle_from(&self, name: &str, efi: &[u8], system: &[u8], verity: bool) -> PathBuf {
        let sys = self.path(&format!("{name}.sys"));
        std::fs::write(&sys, system).unwrap();
        let efi_path = self.path(&format!("{name}.efi"));
        std::fs::write(&efi_path, efi).unwrap();
        let out = self.path(&format!("{name}.abb"));
        let mut opts = CreateOptions::new(COMPATIBLE, semver::Version::new(1, 1, 0));
        opts.chunk_size = 16 << 10;
        create_bundle(
            &out,
            &[
                PayloadSpec {
                    name: "efi".into(),
                    path: efi_path,
                    verity: false,
                },
                PayloadSpec {
                    name: "system".into(),
                    path: sys,
                    verity,
                },
            ],
            &opts,
            std::slice::from_ref(&self.key),
            &mut |_| {},
        )
        .unwrap();
        out
    }

    pub fn machine(&self, running: Slot) -> OfflineMachine {
        self.machine_with_power(running, None)
    }

    pub fn machine_with_power(
        &self,
        running: Slot,
        power: Option<Arc<PowerCut>>,
    ) -> OfflineMachine {
        let vars = Box::new(OvmfVarsFile::open(&self.vars).unwrap());
        OfflineMachine::open_with_power_cut(&self.disk, vars, running, power).unwrap()
    }

    /// Installs `bundle` offline on a machine running `running` (with
    /// default options), the power cut as `power` says.
    pub fn install(
        &self,
        running: Slot,
        bundle: &Path,
        power: Option<Arc<PowerCut>>,
    ) -> abkit_update::Result<InstallReport> {
        abkit_update::install(
            &mut self.machine_with_power(running, power),
            std::fs::File::open(bundle).unwrap(),
            &self.keyring,
            &InstallOptions::default(),
            &mut Silent,
        )
    }

    /// Powers on: the firmware model picks what boots.
    pub fn boot(&self) -> SimulatedBoot {
        let mut m = self.machine(Slot::A);
        simulate_boot(&mut m).unwrap().expect("nothing bootable")
    }

    /// Powers on with firmware that behaves as `model` says; `None` when
    /// nothing was bootable.
    pub fn boot_with(&self, model: &FirmwareModel) -> Option<SimulatedBoot> {
        model.boot(&mut self.machine(Slot::A)).unwrap()
    }

    /// The machine's VARS file as a variable store.
    pub fn open_vars(&self) -> Box<dyn VarStore> {
        Box::new(OvmfVarsFile::open(&self.vars).unwrap())
    }

    /// The machine running `running`, with `wrap` around its variable
    /// store (say, a full NVRAM).
    pub fn machine_with_vars(
        &self,
        running: Slot,
        wrap: impl FnOnce(Box<dyn VarStore>) -> Box<dyn VarStore>,
    ) -> OfflineMachine {
        OfflineMachine::open(&self.disk, wrap(self.open_vars()), running).unwrap()
    }

    /// The bytes of the disk and the VARS file: "the machine" for
    /// nothing-changed assertions.
    pub fn snapshot(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.disk).unwrap(),
            std::fs::read(&self.vars).unwrap(),
        )
    }

    /// Copies disk and VARS to `dir` (sparse-aware for the disk).
    pub fn save(&self, dir: &Path) {
        copy_sparse(&self.disk, &dir.join("disk.img"));
        std::fs::copy(&self.vars, dir.join("vars.fd")).unwrap();
    }

    pub fn restore(&self, dir: &Path) {
        copy_sparse(&dir.join("disk.img"), &self.disk);
        std::fs::copy(dir.join("vars.fd"), &self.vars).unwrap();
    }
}

/// Copies `from` to `to`, leaving holes where `from` has zero blocks.
/// In-process on purpose: a `cp` child forked by one test thread inherits
/// (until it execs) the flock of a machine another thread just dropped, and
/// that thread's next operation is then refused as locked.
fn copy_sparse(from: &Path, to: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(from).unwrap();
    let mut dst = std::fs::File::create(to).unwrap();
    let mut block = vec![0u8; 64 << 10];
    loop {
        let n = src.read(&mut block).unwrap();
        if n == 0 {
            break;
        }
        if block[..n].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            dst.write_all(&block[..n]).unwrap();
        }
    }
    dst.set_len(src.metadata().unwrap().len()).unwrap();
}
