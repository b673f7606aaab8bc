//! `abkit image build --bundle FILE --keyring DIR` as a factory runs it:
//! the disk holds the bundle's payloads (checked with sgdisk and mtools),
//! `image inspect` and `status` show slot A's bundle, and the engine takes
//! over from there. Bad bundles leave no output behind.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// The scratch folder plus what this file's tests need.
struct World(common::Workdir);

impl std::ops::Deref for World {
    type Target = common::Workdir;
    fn deref(&self) -> &common::Workdir {
        &self.0
    }
}

impl World {
    /// A bundle for `compatible` whose loader and system image carry `tag`.
    fn bundle(&self, compatible: &str, version: &str, tag: u8) -> String {
        let system: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8 ^ tag).collect();
        self.release(version, &system, &[tag])
            .compatible(compatible)
            .args(&["--chunk-kib", "64"])
            .create(&format!("{compatible}-{version}.abb"))
    }

    /// `image build --bundle` with small partitions; extra args appended.
    fn build(&self, bundle: &str, keyring: &str, output: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "image",
            "build",
            "--bundle",
            bundle,
            "--keyring",
            keyring,
            "-o",
            output,
        ];
        args.extend(common::SMALL_PARTITIONS);
        args.extend_from_slice(extra);
        self.abkit(&args)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn world() -> World {
    let w = World(common::Workdir::new());
    w.ok(&["keygen", "--out", "release"]);
    std::fs::create_dir(w.p("keyring")).unwrap();
    std::fs::copy(w.p("release.pub"), w.p("keyring/release.pub")).unwrap();
    w
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Byte offset of partition `number` (1-based) as sgdisk reports it.
fn partition_offset(disk: &Path, number: u32) -> u64 {
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg(number.to_string())
        .arg(disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("First sector:"))
        .unwrap_or_else(|| panic!("sgdisk -i {number}: {text}"));
    let sector: u64 = line
        .trim_start_matches("First sector:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    sector * 512
}

#[test]
fn a_disk_built_from_a_bundle_is_an_installed_slot_a_the_engine_updates() {
    let w = world();
    let bundle = w.bundle("demo-os", "1.4.0", b'F');
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", w.p("vars.fd"))
        .expect("Debian's OVMF is needed: run `make deps`");
    let built = json(&w.build(
        &bundle,
        "keyring",
        "disk.img",
        &["--ovmf-vars", "vars.fd", "--seed", "5", "--json"],
    ));
    assert_eq!(built["slot_a"]["state"], "installed");
    assert_eq!(built["slot_a"]["compatible"], "demo-os");
    assert_eq!(built["slot_a"]["version"], "1.4.0");
    assert_eq!(built["partitions"][1]["name"], "ABKIT-SYSTEM-A");
    assert!(built["boot_entries"]["slot_a"].is_number());

    // Independent tools: the GPT is sound, the payloads are where they belong.
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(w.p("disk.img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    w.ok(&[
        "bundle",
        "extract",
        "--keyring",
        "keyring",
        "--out",
        "payloads",
        &bundle,
    ]);
    let system = std::fs::read(w.p("payloads/system")).unwrap();
    let efi = std::fs::read(w.p("payloads/efi")).unwrap();
    assert!(system.len() > 1 << 20, "with its verity tree");
    let disk = std::fs::read(w.p("disk.img")).unwrap();
    let slot_a = partition_offset(&w.p("disk.img"), 2) as usize;
    assert_eq!(&disk[slot_a..slot_a + system.len()], &system[..]);
    let esp = partition_offset(&w.p("disk.img"), 1);
    let image = format!("{}@@{esp}", w.s("disk.img"));
    for file in ["::/EFI/abkit/boot-a.efi", "::/EFI/BOOT/BOOTX64.EFI"] {
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &image, file])
            .output()
            .unwrap();
        assert!(out.status.success(), "mtype {file}");
        assert_eq!(out.stdout, efi, "{file}");
    }
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &image, "::/EFI/abkit/slot-a.json"])
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record, built["slot_a"]);
    let system = std::fs::read(w.p("payloads/system")).unwrap();
    assert_eq!(
        record["system_blake3"].as_str(),
        Some(blake3::hash(&system).to_hex().as_str())
    );
    assert!(record.get("system_sha256").is_none(), "{record}");

    // inspect shows slot A's bundle; slot B has no record.
    let report = json(&w.abkit(&["image", "inspect", "--json", "disk.img"]));
    assert_eq!(report["slots"][0]["slot"], "A");
    assert_eq!(report["slots"][0]["record"], built["slot_a"]);
    assert_eq!(report["slots"][0]["used_bytes"], system.len());
    assert_eq!(report["slots"][1]["record"], serde_json::Value::Null);
    let text = w.ok(&["image", "inspect", "disk.img"]);
    let sha = built["slot_a"]["bundle_sha256"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "slot A record: installed demo-os 1.4.0, bundle manifest sha256 {sha}"
        )),
        "{text}"
    );

    // The engine takes over.
    let machine = [
        "--disk",
        "disk.img",
        "--ovmf-vars",
        "vars.fd",
        "--booted-slot",
        "a",
    ];
    let st = json(&w.abkit(&[&["status", "--json"][..], &machine].concat()));
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(st["slots"]["A"]["state"], "installed");
    assert_eq!(st["slots"]["A"]["version"], "1.4.0");
    let foreign = w.bundle("other-os", "2.0.0", b'Q');
    let out = w.abkit(&[&["install", "--keyring", "keyring", &foreign][..], &machine].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to install another product"), "{err}");
    let newer = w.bundle("demo-os", "1.5.0", b'N');
    w.ok(&[&["install", "--keyring", "keyring", &newer][..], &machine].concat());
    let st = json(&w.abkit(&[&["status", "--json"][..], &machine].concat()));
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["slots"]["B"]["version"], "1.5.0");
    assert_eq!(st["trial_pending"], true);
}

#[test]
fn bad_bundles_are_refused_by_name_and_leave_no_file() {
    let w = world();
    let bundle = w.bundle("demo-os", "1.0.0", b'G');
    let bytes = std::fs::read(w.p(&bundle)).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() - 3000; // inside the system payload, the last one
    flipped[at] ^= 0x01;
    std::fs::write(w.p("flipped.abb"), &flipped).unwrap();
    std::fs::write(w.p("truncated.abb"), &bytes[..bytes.len() - 3000]).unwrap();
    w.ok(&["keygen", "--out", "stranger"]);
    std::fs::create_dir(w.p("other-keyring")).unwrap();
    std::fs::copy(w.p("stranger.pub"), w.p("other-keyring/stranger.pub")).unwrap();

    let cases = [
        (
            bundle.as_str(),
            "other-keyring",
            "no signature from a key in the keyring",
        ),
        (
            "flipped.abb",
            "keyring",
            "BLAKE3 does not match the manifest",
        ),
        ("truncated.abb", "keyring", "bundle is truncated"),
    ];
    for (file, keyring, message) in cases {
        let before = w.names();
        let out = w.build(file, keyring, "disk.img", &[]);
        assert!(!out.status.success(), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("abkit: error: building disk.img from") && err.contains(message),
            "{file}: {err}"
        );
        assert!(!w.p("disk.img").exists(), "{file}: output created");
        assert_eq!(w.names(), before, "{file}: files left behind");
    }
}

/// A loop device over a 64 MiB file, holding a mounted ext4 with a file in
/// it; detached and unmounted on drop. `None` (with a message) where loop
/// devices or mounts are not allowed (no root).
struct MountedLoop {
    device: String,
    mount: tempfile::TempDir,
}

impl MountedLoop {
    fn new(backing: &Path) -> Option<MountedLoop> {
        std::fs::write(backing, vec![0u8; 64 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()
            .filter(|o| o.status.success());
        let Some(out) = out else {
            eprintln!("SKIPPED: cannot attach a loop device (needs root)");
            return None;
        };
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mount = tempfile::tempdir().unwrap();
        let mounted = MountedLoop { device, mount };
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("mkfs.ext4").args(["-q", &mounted.device])));
        if !ok(Command::new("mount")
            .arg(&mounted.device)
            .arg(mounted.mount.path()))
        {
            eprintln!("SKIPPED: cannot mount (needs root)");
            return None;
        }
        std::fs::write(mounted.mount.path().join("precious"), b"kept").unwrap();
        Some(mounted)
    }
}

impl Drop for MountedLoop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn a_block_device_in_use_is_never_overwritten_even_with_force() {
    let w = world();
    let bundle = w.bundle("demo-os", "1.0.0", 7);
    let Some(disk) = MountedLoop::new(&w.p("backing.raw")) else {
        return;
    };
    std::fs::write(w.p("x.img"), vec![b'X'; 1 << 20]).unwrap();
    std::fs::write(
        w.p("x.efi"),
        abkit_disk::fixtures::tiny_efi_application(b"X"),
    )
    .unwrap();
    let raw_files = ["image", "build", "--loader", "x.efi", "--system", "x.img"];
    for (how, out) in [
        (
            "from a bundle",
            w.build(&bundle, "keyring", &disk.device, &["--force"]),
        ),
        ("from raw files", {
            let mut args = raw_files.to_vec();
            args.extend(["-o", &disk.device, "--force"]);
            args.extend(common::SMALL_PARTITIONS);
            w.abkit(&args)
        }),
    ] {
        assert!(!out.status.success(), "{how}: built onto a mounted device");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{} is in use", disk.device))
                && err.contains("even with --force"),
            "{how}: {err}"
        );
    }
    // The filesystem keeps its own writes going (journal, lazy inode
    // tables): what must not be there is ours, a GPT header at LBA 1.
    let backing = std::fs::read(w.p("backing.raw")).unwrap();
    assert!(&backing[512..520] != b"EFI PART", "a GPT was written");
    let kept = std::fs::read(disk.mount.path().join("precious")).unwrap();
    assert_eq!(kept, b"kept");
    // Unmounted, --force builds onto it.
    drop(
        std::process::Command::new("umount")
            .arg(disk.mount.path())
            .status(),
    );
    let out = w.build(&bundle, "keyring", &disk.device, &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_killed_build_leaves_a_scratch_folder_the_next_build_removes() {
    use std::io::Write;
    let w = world();
    let bundle = std::fs::read(w.bundle("demo-os", "1.0.0", 7)).unwrap();
    // The bundle comes through a FIFO, half of it: the build waits inside
    // its payload stream, its scratch folder made, until it is killed.
    let fifo = w.p("bundle.fifo");
    common::mkfifo(&fifo);
    let mut build = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "image",
            "build",
            "--bundle",
            "bundle.fifo",
            "--keyring",
            "keyring",
        ])
        .args(["-o", "disk.img"])
        .args(common::SMALL_PARTITIONS)
        .current_dir(w.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&bundle[..bundle.len() / 2]).unwrap();
    let scratch = |w: &World| -> Vec<String> {
        w.names()
            .into_iter()
            .filter(|n| n.starts_with(".abkit-build-"))
            .collect()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scratch(&w).is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "no scratch folder: {:?}",
            w.names()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    build.kill().unwrap();
    build.wait().unwrap();
    drop(writer);
    let left = scratch(&w);
    assert_eq!(left.len(), 1, "{left:?}");
    // Folders younger than a minute are spared (their maker may not hold
    // its lock yet): age this one.
    std::fs::File::open(w.p(&left[0]))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();

    std::fs::write(w.p("os.abb"), &bundle).unwrap();
    json(&w.build("os.abb", "keyring", "disk.img", &["--json"]));
    assert_eq!(scratch(&w), Vec::<String>::new(), "{:?}", w.names());
    assert!(w.p("disk.img").exists());
}
