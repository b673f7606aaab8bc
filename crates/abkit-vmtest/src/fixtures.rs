//! Everything the VM tests boot, built once per run into a work folder: the
//! test OS initrd (init and kernel modules only), one root filesystem folder
//! per variant (the init again as /sbin/init, static `abkit`, test keyring,
//! the variant's marker line) made into a signed bundle by `abkit bundle
//! create --rootfs` (erofs + dm-verity, the UKI carrying the root hash; two
//! tampered copies of Y's), the bundle disk, and the base disk image with X
//! on slot A, DATA formatted ext4, and its OVMF VARS file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use testos::initrd::{
    ABKIT_PATH, ExtraFile, KEYRING_DIR, Module, ROOT_MODULES, TESTOS_MODULES, write_initrd,
    write_root_tree,
};

use crate::qemu::OVMF_VARS;

/// The product name in every test bundle.
pub const COMPATIBLE: &str = "abkit-testos";
/// Size of each variant's system image in the old marker format (kept for
/// [`system_image`]; the bundles now carry erofs roots).
pub const SYSTEM_SIZE: usize = 16 << 20;
/// The DATA partition's ext4 filesystem UUID (fixed: reproducible images).
pub const DATA_UUID: &str = "a8c0a7d4-5d2b-4c53-9a51-5b0d0a7a0d47";

/// A build of the test OS: its name, version and health behaviour.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub version: &'static str,
    pub healthy: bool,
}

impl Variant {
    const fn healthy(name: &'static str, version: &'static str) -> Variant {
        Variant {
            name,
            version,
            healthy: true,
        }
    }
    /// The same version, built to fail its health check.
    const fn broken(self, name: &'static str) -> Variant {
        Variant {
            name,
            healthy: false,
            ..self
        }
    }
    /// File stem: `x`, `y-broken`.
    pub fn stem(&self) -> String {
        self.name.to_ascii_lowercase().replace("broken", "-broken")
    }
    pub fn bundle(&self) -> String {
        format!("{}.abb", self.stem())
    }
    /// The first line of its system image (the guest prints it back).
    pub fn system_line(&self) -> String {
        format!(
            "ABKIT-TESTOS-SYSTEM variant={} version={}",
            self.name, self.version
        )
    }
}

pub const X: Variant = Variant::healthy("X", "1.0.0");
pub const Y: Variant = Variant::healthy("Y", "1.1.0");
pub const Z: Variant = Variant::healthy("Z", "1.2.0");
/// Y that fails its health check.
pub const Y_BROKEN: Variant = Y.broken("Ybroken");
/// Z that fails its health check (the demo's bad update).
pub const Z_BROKEN: Variant = Z.broken("Zbroken");
pub const VARIANTS: [Variant; 5] = [X, Y, Z, Y_BROKEN, Z_BROKEN];

/// Y's bundle with one manifest byte changed: the signature no longer matches.
pub const BAD_SIGNATURE: &str = "y-bad-signature.abb";
/// Y's bundle with one byte of the system payload changed: a chunk hash fails mid-stream.
pub const BAD_CHUNK: &str = "y-bad-chunk.abb";

/// Inputs found on the build machine.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// A static `abkit` (runs on the host and in the guest).
    pub abkit: PathBuf,
    /// The static test OS init.
    pub init: PathBuf,
    /// The loader stub (`make stub`).
    pub stub: PathBuf,
    /// Debian's kernel package unpacked (`make deps`: build/kernel).
    pub kernel_dir: PathBuf,
}

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// Folder with every bundle (also what the HTTP server serves).
    pub bundle_dir: PathBuf,
    /// FAT image of `bundle_dir`, the guest's second disk.
    pub bundle_disk: PathBuf,
    /// Fresh disk with X on slot A, and its VARS file: copy before booting.
    pub base_disk: PathBuf,
    pub base_vars: PathBuf,
    /// How the bundles and the base disk were made (to make more): the
    /// abkit binary, the work folder, the stub and the kernel.
    pub release: Release,
}

impl Fixtures {
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.bundle_dir.join(name)
    }

    /// A machine's own copies of the base disk and VARS file in `dir`.
    pub fn fresh_machine(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let disk = dir.join("disk.img");
        let vars = dir.join("vars.fd");
        copy_sparse(&self.base_disk, &disk)?;
        std::fs::copy(&self.base_vars, &vars)
            .with_context(|| format!("copying {}", self.base_vars.display()))?;
        Ok((disk, vars))
    }
}

/// Builds all fixtures into `dir` (emptied first), logging each step.
pub fn build(inputs: &Inputs, dir: &Path, log: &mut dyn FnMut(String)) -> anyhow::Result<Fixtures> {
    for (what, path) in [
        ("abkit", &inputs.abkit),
        ("testos-init", &inputs.init),
        ("loader stub (make stub)", &inputs.stub),
        ("kernel folder (make deps)", &inputs.kernel_dir),
    ] {
        if !path.exists() {
            bail!("{what} not found at {}", path.display());
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let bundle_dir = dir.join("bundles");
    std::fs::create_dir_all(&bundle_dir)?;
    let abkit = &inputs.abkit;
    let t = Instant::now();

    // Test key; its public half is the guest's keyring.
    let key = dir.join("testkey");
    run(Command::new(abkit).arg("keygen").arg("--out").arg(&key))?;
    let pub_key = std::fs::read(dir.join("testkey.pub")).context("reading testkey.pub")?;

    // The initrd: one for every variant (the variant is in the command line).
    let kernel = find_kernel(&inputs.kernel_dir)?;
    let mut modules = Vec::new();
    for name in TESTOS_MODULES.iter().chain(&ROOT_MODULES) {
        let path = find_module(&inputs.kernel_dir, name)?;
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        modules.push((format!("{name}.ko"), data));
    }
    let modules: Vec<Module<'_>> = modules
        .iter()
        .map(|(file_name, data)| Module { file_name, data })
        .collect();
    let init = std::fs::read(&inputs.init)?;
    let abkit_bytes = std::fs::read(abkit)?;
    let keyring_file = format!("{KEYRING_DIR}/testkey.pub");
    // abkit and the keyring live in the verified root, not in the initrd.
    let extra = [
        ExtraFile {
            path: ABKIT_PATH,
            mode: 0o755,
            data: &abkit_bytes,
        },
        ExtraFile {
            path: &keyring_file,
            mode: 0o644,
            data: &pub_key,
        },
    ];
    let initrd = dir.join("initrd.cpio");
    let bytes = write_initrd(Vec::new(), &init, &modules, &[])?;
    std::fs::write(&initrd, &bytes)?;
    let osrel = dir.join("os-release");
    std::fs::write(&osrel, "ID=abkit-testos\nPRETTY_NAME=\"abkit test OS\"\n")?;
    log(format!(
        "initrd {} KiB (init, {} modules)",
        bytes.len() >> 10,
        modules.len()
    ));

    // Per variant: a root folder, made into erofs + verity + UKI + bundle.
    let release = Release {
        abkit: abkit.clone(),
        dir: dir.to_path_buf(),
        stub: inputs.stub.clone(),
        kernel: kernel.clone(),
        kernel_dir: inputs.kernel_dir.clone(),
    };
    for v in VARIANTS {
        let root = dir.join(format!("root-{}", v.stem()));
        write_root_tree(&root, &init, &v.system_line(), &extra)?;
        run(&mut release.bundle_create(&v, &bundle_dir.join(v.bundle())))?;
    }
    log(format!(
        "{} root filesystems, UKIs and bundles",
        VARIANTS.len()
    ));

    // Tampered copies of Y's bundle.
    let y = std::fs::read(bundle_dir.join(Y.bundle()))?;
    let mut bad_sig = y.clone();
    // Inside the manifest (it starts at byte 32): the signature covers it.
    bad_sig[40] ^= 0x01;
    std::fs::write(bundle_dir.join(BAD_SIGNATURE), &bad_sig)?;
    let mut bad_chunk = y.clone();
    // Halfway through the system payload, the last one in the bundle.
    let at = y.len() - (system_verity(abkit, &bundle_dir.join(Y.bundle()))?.size / 2) as usize;
    bad_chunk[at] ^= 0x01;
    std::fs::write(bundle_dir.join(BAD_CHUNK), &bad_chunk)?;

    let bundle_disk = dir.join("bundles.img");
    let names = make_bundle_disk(&bundle_dir, &bundle_disk)?;
    log(format!("bundle disk with {}", names.join(", ")));

    // The base machine: X on slot A, boot entries for A and B in the VARS file.
    let base_disk = dir.join("base-disk.img");
    let base_vars = dir.join("base-vars.fd");
    // The factory path: slot A from X's bundle (verified, recorded as
    // installed with its version), like `abkit install` would.
    let keyring = dir.join("keyring");
    std::fs::create_dir_all(&keyring)?;
    std::fs::write(keyring.join("testkey.pub"), &pub_key)?;
    release.base_image(
        &bundle_dir.join(X.bundle()),
        &base_disk,
        &base_vars,
        BASE_SYSTEM_SIZE,
        &[],
    )?;
    log(format!(
        "base disk: X on slot A, DATA ext4 ({:.1} s in all)",
        t.elapsed().as_secs_f64()
    ));

    Ok(Fixtures {
        bundle_dir,
        bundle_disk,
        base_disk,
        base_vars,
        release,
    })
}

/// The slot size of the test OS's base machine (its releases are a few MiB).
pub const BASE_SYSTEM_SIZE: &str = "40M";

/// What builds a test release and a disk from it: the inputs of `abkit
/// bundle create --rootfs` and `abkit image build --bundle`, and the work
/// folder holding the initrd, os-release, root folders, key and keyring.
#[derive(Debug, Clone)]
pub struct Release {
    pub abkit: PathBuf,
    /// The work folder: the test OS's initrd is `dir/initrd.cpio`, its
    /// os-release `dir/os-release`.
    pub dir: PathBuf,
    /// The loader stub and Debian's kernel the UKIs are built from.
    pub stub: PathBuf,
    pub kernel: PathBuf,
    /// Debian's kernel package unpacked (`build/kernel`): the kernel is in
    /// its `boot/`, the modules in its `lib/modules/`.
    pub kernel_dir: PathBuf,
}

impl Release {
    /// `abkit bundle create --rootfs` for variant `v` into `out`, as the
    /// fixtures build it; callers may add arguments (`--uki-key`, ...).
    pub fn bundle_create(&self, v: &Variant, out: &Path) -> Command {
        // no_timer_check: on a busy host TCG can be too slow for the
        // kernel's IO-APIC timer test, which then panics ("IO-APIC + timer
        // doesn't work!", seen with six builds sharing two cores).
        let cmdline = format!(
            "console=ttyS0 ro panic=-1 quiet no_timer_check testos.variant={} testos.version={} testos.health={}",
            v.name,
            v.version,
            if v.healthy { "good" } else { "bad" }
        );
        self.rootfs_bundle(
            &self.dir.join(format!("root-{}", v.stem())),
            &self.dir.join("os-release"),
            &cmdline,
            v.version,
            COMPATIBLE,
            out,
        )
    }

    /// `abkit uki inspect --json` of the UKI in `bundle`, extracted into
    /// `dir/extracted` (checked against the test keyring).
    pub fn uki_info(&self, bundle: &Path, dir: &Path) -> anyhow::Result<serde_json::Value> {
        let out = dir.join("extracted");
        let _ = std::fs::remove_dir_all(&out);
        run(Command::new(&self.abkit)
            .args(["bundle", "extract"])
            .arg(bundle)
            .arg("--keyring")
            .arg(self.dir.join("keyring"))
            .arg("--out")
            .arg(&out))?;
        let info = run(Command::new(&self.abkit)
            .args(["uki", "inspect", "--json"])
            .arg(out.join("efi")))?;
        serde_json::from_str(&info).context("abkit uki inspect --json printed no JSON")
    }

    /// `abkit bundle create --rootfs ROOT` with this release's stub, kernel,
    /// initrd and test key and a fixed creation time: the release of any
    /// root folder (the test OS's, Debian's).
    pub fn rootfs_bundle(
        &self,
        root: &Path,
        osrel: &Path,
        cmdline: &str,
        version: &str,
        compatible: &str,
        out: &Path,
    ) -> Command {
        let mut cmd = Command::new(&self.abkit);
        cmd.args(["bundle", "create", "--rootfs"])
            .arg(root)
            .arg("--stub")
            .arg(&self.stub)
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(self.dir.join("initrd.cpio"))
            .arg("--osrel")
            .arg(osrel)
            .arg("--cmdline")
            .arg(cmdline)
            .args(["--created", "1700000000"])
            .args(["--version", version, "--compatible", compatible, "--key"])
            .arg(self.dir.join("testkey.key"))
            .arg("-o")
            .arg(out);
        cmd
    }

    /// A disk with `bundle` on slot A (factory path, verified against the
    /// test keyring) and DATA formatted, its boot entries in `vars` (a
    /// fresh copy of OVMF's VARS is made there), slots of `system_size`
    /// (`BASE_SYSTEM_SIZE` unless the release is larger); `extra` goes to
    /// `abkit image build` (`--secure-boot DIR`).
    pub fn base_image(
        &self,
        bundle: &Path,
        disk: &Path,
        vars: &Path,
        system_size: &str,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<()> {
        std::fs::copy(OVMF_VARS, vars).with_context(|| format!("copying {OVMF_VARS}"))?;
        run(Command::new(&self.abkit)
            .args(["image", "build", "--bundle"])
            .arg(bundle)
            .arg("--keyring")
            .arg(self.dir.join("keyring"))
            .arg("-o")
            .arg(disk)
            .arg("--ovmf-vars")
            .arg(vars)
            .args([
                "--esp-size",
                "96M",
                "--system-size",
                system_size,
                "--data-size",
                "8M",
                "--seed",
                "1",
            ])
            .args(extra))?;
        format_data(disk)
    }
}

/// A FAT volume without partition table holding every file of
/// `bundle_dir` (the guest's second disk); returns the names.
pub fn make_bundle_disk(bundle_dir: &Path, bundle_disk: &Path) -> anyhow::Result<Vec<String>> {
    let total: u64 = std::fs::read_dir(bundle_dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let kib = (total / 1024) * 11 / 10 + 40 * 1024;
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "BUNDLES", "-C"])
        .arg(bundle_disk)
        .arg(kib.to_string()))?;
    let mut names: Vec<String> = std::fs::read_dir(bundle_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(bundle_disk)
            .arg(bundle_dir.join(name))
            .arg(format!("::/{name}")))?;
    }
    Ok(names)
}

/// The system payload of a bundle as its manifest describes it.
#[derive(Debug, Clone, Copy)]
pub struct SystemPayload {
    /// Bytes written to the slot (filesystem, padding, hash area).
    pub size: u64,
    /// Where the hash area starts (= the filesystem's padded size).
    pub hash_offset: u64,
}

/// Reads the system payload's size and verity hash offset from a bundle's
/// manifest (`abkit bundle inspect --json`).
pub fn system_verity(abkit: &Path, bundle: &Path) -> anyhow::Result<SystemPayload> {
    let out = run(Command::new(abkit)
        .args(["bundle", "inspect", "--json"])
        .arg(bundle))?;
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    let system = doc["manifest"]["payloads"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "system"))
        .with_context(|| format!("{} has no system payload", bundle.display()))?;
    Ok(SystemPayload {
        size: system["size"].as_u64().context("system size")?,
        hash_offset: system["verity"]["hash_offset"]
            .as_u64()
            .context("system verity hash_offset")?,
    })
}

/// One partition of a disk image: (first byte, length in bytes), from
/// `sgdisk -i N`.
pub fn partition_extent(disk: &Path, number: u32) -> anyhow::Result<(u64, u64)> {
    let out = run(Command::new("sgdisk")
        .arg("-i")
        .arg(number.to_string())
        .arg(disk))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("sgdisk -i {number}: no {name:?} in {out}"))
    };
    let (first, last) = (field("First sector: ")?, field("Last sector: ")?);
    Ok((first * 512, (last - first + 1) * 512))
}

/// Formats the DATA partition (4) of a built image as ext4, from the host:
/// the test OS initrd stays one static program (no mke2fs and its
/// libraries), and a factory image is complete before its first boot.
pub fn format_data(disk: &Path) -> anyhow::Result<()> {
    let (offset, len) = partition_extent(disk, 4)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ABKIT-DATA", "-U", DATA_UUID])
        .args(["-E", &format!("offset={offset},root_owner=0:0")])
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .arg(disk)
        .arg(format!("{}k", len / 1024)))?;
    Ok(())
}

/// A variant's system image: its marker line, then bytes that differ per
/// variant and do not compress (xorshift from the variant's name).
pub fn system_image(v: &Variant) -> Vec<u8> {
    let mut image = Vec::with_capacity(SYSTEM_SIZE);
    image.extend_from_slice(v.system_line().as_bytes());
    image.push(b'\n');
    let mut state: u64 = v.name.bytes().fold(0x9e37_79b9_7f4a_7c15, |s, b| {
        (s ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    while image.len() < SYSTEM_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        image.extend_from_slice(&state.to_le_bytes());
    }
    image.truncate(SYSTEM_SIZE);
    image
}

/// Runs a command; its stderr becomes the error.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_kernel(kernel_dir: &Path) -> anyhow::Result<PathBuf> {
    let boot = kernel_dir.join("boot");
    std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// `NAME.ko` anywhere under `<kernel_dir>/lib/modules` (Debian ships them
/// uncompressed in 6.1; a compressed one is reported, not guessed at).
fn find_module(kernel_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    fn walk(dir: &Path, file: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, file, found);
            } else if entry.file_name().to_string_lossy().starts_with(file) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &kernel_dir.join("lib/modules"),
        &format!("{name}.ko"),
        &mut found,
    );
    found.sort();
    match found
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "ko"))
    {
        Some(path) => Ok(path.clone()),
        None if !found.is_empty() => bail!(
            "module {name} is compressed ({}): unpack it first",
            found[0].display()
        ),
        None => bail!(
            "module {name} not found under {}/lib/modules",
            kernel_dir.display()
        ),
    }
}

/// Copies a mostly empty disk image without filling its holes.
fn copy_sparse(from: &Path, to: &Path) -> anyhow::Result<()> {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_images_differ_and_start_with_their_line() {
        let x = system_image(&X);
        let y = system_image(&Y);
        assert_eq!(x.len(), SYSTEM_SIZE);
        assert!(x.starts_with(b"ABKIT-TESTOS-SYSTEM variant=X version=1.0.0\n"));
        assert!(y.starts_with(b"ABKIT-TESTOS-SYSTEM variant=Y version=1.1.0\n"));
        assert_ne!(x[4096..8192], y[4096..8192]);
    }

    #[test]
    fn variant_files() {
        assert_eq!(Y_BROKEN.bundle(), "y-broken.abb");
        assert_eq!(X.bundle(), "x.abb");
    }
}
