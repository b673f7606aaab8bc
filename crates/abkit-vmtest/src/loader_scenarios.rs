//! The EFI loader on real firmware, apart from the A/B engine: one UKI
//! (stub, Debian's kernel, the test OS initrd, a command line naming
//! SYSTEM-X) is put on GPT disks by independent tools (sgdisk, mkfs.vfat,
//! mtools, virt-fw-vars) as `boot-a.efi`, `boot-b.efi` and `BOOTX64.EFI`,
//! and as slot-stamped copies; each path boots once and the guest reports
//! which slot the file name or the stamp chose. A bare stub must fail with a
//! message and hand control back to the firmware.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::fixtures::run;
use crate::qemu::{BootSpec, Cut, Machine, OVMF_VARS};
use crate::scenarios::{Scenario, Suite};

/// The command line the UKI carries; the loader rewrites `SYSTEM-X`.
const CMDLINE: &str =
    "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X ro panic=-1 quiet no_timer_check";
const PATH_A: &str = r"\EFI\abkit\boot-a.efi";
const PATH_B: &str = r"\EFI\abkit\boot-b.efi";
const PATH_FALLBACK: &str = r"\EFI\BOOT\BOOTX64.EFI";

/// Builds the UKI and its stamped copies and checks them with objdump and
/// `abkit uki inspect`; returns (plain, stamped A, stamped B).
fn build_loaders(suite: &Suite, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let fx = &suite.fx;
    let abkit = &fx.release.abkit;
    let uki = dir.join("boot.efi");
    let initrd = fx.release.dir.join("initrd.cpio");
    run(Command::new(abkit)
        .args(["uki", "build", "--stub"])
        .arg(&fx.release.stub)
        .arg("--kernel")
        .arg(&fx.release.kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--osrel")
        .arg(fx.release.dir.join("os-release"))
        .args(["--cmdline", CMDLINE, "-o"])
        .arg(&uki))?;

    // objdump (binutils) sees our sections, in ukify's order, after the stub's.
    let table = run(Command::new("objdump").arg("-h").arg(&uki))?;
    let sections: Vec<&str> = table
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let index = words.next()?;
            index.parse::<u32>().ok()?;
            words.next()
        })
        .collect();
    ensure!(
        sections.ends_with(&[
            ".abkit", ".reloc", ".osrel", ".cmdline", ".initrd", ".linux"
        ]),
        "objdump -h shows sections {sections:?}"
    );
    let info = inspect(abkit, &uki)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len());
    ensure!(
        info["cmdline"] == CMDLINE,
        "inspect cmdline: {}",
        info["cmdline"]
    );
    ensure!(
        info["initrd_size"] == size(&initrd)? && info["linux_size"] == size(&fx.release.kernel)?,
        "inspect sizes disagree with the inputs: {info}"
    );
    ensure!(
        info["stub"]
            .as_str()
            .unwrap_or("")
            .starts_with("abkit-stub "),
        "inspect stub: {}",
        info["stub"]
    );
    ensure!(info["os_pretty_name"] == "abkit test OS", "{info}");
    expect_checksum(&info, &uki)?;
    // Our PE checksum agrees with the one Debian's signing tools stored.
    expect_checksum(&inspect(abkit, &fx.release.kernel)?, &fx.release.kernel)?;

    // Stamped copies: the stamp shows, the Authenticode digest does not move.
    let stamped_a = dir.join("stamped-a.efi");
    let stamped_b = dir.join("stamped-b.efi");
    for (slot, out) in [("A", &stamped_a), ("B", &stamped_b)] {
        run(Command::new(abkit)
            .args(["uki", "stamp", "--slot", slot])
            .arg(&uki)
            .arg("-o")
            .arg(out))?;
        run(Command::new("objdump").arg("-h").arg(out))?;
    }
    let plain = inspect(abkit, &uki)?;
    ensure!(
        plain["slot_stamp"].is_null(),
        "unstamped: {}",
        plain["slot_stamp"]
    );
    for (slot, file) in [("A", &stamped_a), ("B", &stamped_b)] {
        let i = inspect(abkit, file)?;
        ensure!(
            i["slot_stamp"] == slot,
            "{}: stamp {}",
            file.display(),
            i["slot_stamp"]
        );
        ensure!(
            !i["authenticode_sha256"].is_null()
                && i["authenticode_sha256"] == plain["authenticode_sha256"],
            "{}: Authenticode digest {} differs from the unstamped {}",
            file.display(),
            i["authenticode_sha256"],
            plain["authenticode_sha256"]
        );
        expect_checksum(&i, file)?;
    }
    Ok((uki, stamped_a, stamped_b))
}

fn inspect(abkit: &Path, file: &Path) -> anyhow::Result<Value> {
    let out = run(Command::new(abkit)
        .args(["uki", "inspect", "--json"])
        .arg(file))?;
    serde_json::from_str(&out).with_context(|| format!("abkit uki inspect {}", file.display()))
}

fn expect_checksum(info: &Value, file: &Path) -> anyhow::Result<()> {
    ensure!(
        info["checksum_stored"] == info["checksum_computed"] && info["checksum_stored"] != 0,
        "{}: PE checksum stored {} computed {}",
        file.display(),
        info["checksum_stored"],
        info["checksum_computed"]
    );
    Ok(())
}

/// A GPT disk whose only partition is a FAT32 ESP with partition GUID
/// `guid`, holding `files` (source, ESP path with `/`), built and checked
/// with sgdisk, mkfs.vfat, mtools and fsck.vfat only.
fn esp_disk(disk: &Path, guid: &str, files: &[(&Path, &str)], size_mib: u64) -> anyhow::Result<()> {
    let esp = disk.with_extension("esp");
    let esp_mib = size_mib - 16;
    std::fs::File::create(disk)?.set_len(size_mib << 20)?;
    run(Command::new("sgdisk")
        .args(["-o", "-n", &format!("1:2048:+{esp_mib}M"), "-t", "1:ef00"])
        .args(["-c", "1:ESP", "-u", &format!("1:{guid}")])
        .arg(disk))?;
    let info = run(Command::new("sgdisk").args(["-i", "1"]).arg(disk))?;
    ensure!(
        info.to_ascii_uppercase()
            .contains(&format!("UNIQUE GUID: {guid}")),
        "sgdisk did not create the ESP with GUID {guid}: {info}"
    );
    std::fs::File::create(&esp)?.set_len(esp_mib << 20)?;
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-S", "512", "-s", "1", "-n", "ESP"])
        .arg(&esp))?;
    let mtools = |args: &[&str], extra: &[&Path]| {
        run(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .args(extra)
            .args(&args[1..]))
    };
    mtools(&["mmd", "::/EFI", "::/EFI/abkit", "::/EFI/BOOT"], &[])?;
    for (src, dest) in files {
        mtools(&["mcopy", &format!("::{dest}")], &[src])?;
    }
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]))?;
    let verify = run(Command::new("sgdisk").arg("-v").arg(disk))?;
    ensure!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    run(Command::new("fsck.vfat").arg("-n").arg(&esp))?;
    std::fs::remove_file(&esp)?;
    Ok(())
}

/// A fresh VARS file; with `entry`, a Boot0000 for that ESP path and
/// BootNext pointing at it (virt-fw-vars writes both). Without, the
/// firmware finds no entry and tries `\EFI\BOOT\BOOTX64.EFI`.
fn vars_for(dir: &Path, name: &str, entry: Option<&str>) -> anyhow::Result<PathBuf> {
    let vars = dir.join(format!("vars-{name}.fd"));
    std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
    if let Some(path) = entry {
        let next = dir.join("bootnext.json");
        std::fs::write(
            &next,
            r#"{ "version": 2, "variables": [ { "name": "BootNext",
                 "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "attr": 7, "data": "0000" } ] }"#,
        )?;
        run(Command::new("virt-fw-vars")
            .arg("--inplace")
            .arg(&vars)
            .args(["--append-boot-filepath", path, "--set-json"])
            .arg(&next))?;
        let listing = run(Command::new("virt-fw-vars").arg("-i").arg(&vars).arg("-p"))?;
        ensure!(
            listing
                .lines()
                .any(|l| l.starts_with("Boot0000 ")
                    && l.contains(&format!("devpath=FilePath({path})"))),
            "virt-fw-vars did not create Boot0000 for {path}"
        );
    }
    Ok(vars)
}

fn new_guid() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_ascii_uppercase())
}

/// One boot of a loader test: which file the firmware starts and what the
/// loader must make of it.
struct LoaderCase {
    name: &'static str,
    /// The ESP path the firmware starts (as LoaderImageIdentifier says it).
    path: &'static str,
    /// Boot0000 + BootNext for `path`, or none (the fallback path).
    entry: bool,
    slot: char,
    /// How the loader chose: `file name` or `stamp`.
    source: &'static str,
    stamped_disk: bool,
}

const CASES: [LoaderCase; 5] = [
    LoaderCase {
        name: "boot-a",
        path: PATH_A,
        entry: true,
        slot: 'A',
        source: "file name",
        stamped_disk: false,
    },
    LoaderCase {
        name: "boot-b",
        path: PATH_B,
        entry: true,
        slot: 'B',
        source: "file name",
        stamped_disk: false,
    },
    LoaderCase {
        name: "fallback",
        path: PATH_FALLBACK,
        entry: false,
        slot: 'A',
        source: "file name",
        stamped_disk: false,
    },
    // The stamp beats the file name.
    LoaderCase {
        name: "fallback-stamp-b",
        path: PATH_FALLBACK,
        entry: false,
        slot: 'B',
        source: "stamp",
        stamped_disk: true,
    },
    LoaderCase {
        name: "boot-b-stamp-a",
        path: PATH_B,
        entry: true,
        slot: 'A',
        source: "stamp",
        stamped_disk: true,
    },
];

/// Every boot path of one loader: file names, stamps, the fallback path.
pub fn loader_paths(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "loader-paths")?;
    let dir = s.dir.clone();
    let (uki, stamped_a, stamped_b) = build_loaders(suite, &dir)?;
    let plain = (dir.join("plain-disk.img"), new_guid()?);
    esp_disk(
        &plain.0,
        &plain.1,
        &[
            (&uki, "/EFI/abkit/boot-a.efi"),
            (&uki, "/EFI/abkit/boot-b.efi"),
            (&uki, "/EFI/BOOT/BOOTX64.EFI"),
        ],
        80,
    )?;
    let stamped = (dir.join("stamped-disk.img"), new_guid()?);
    esp_disk(
        &stamped.0,
        &stamped.1,
        &[
            (&stamped_b, "/EFI/BOOT/BOOTX64.EFI"),
            (&stamped_a, "/EFI/abkit/boot-b.efi"),
        ],
        80,
    )?;
    for case in &CASES {
        let (disk, guid) = if case.stamped_disk { &stamped } else { &plain };
        s.machine = Machine {
            disk: disk.clone(),
            vars: vars_for(&dir, case.name, case.entry.then_some(case.path))?,
            bundles: None,
            accel: suite.accel,
            firmware: Default::default(),
        };
        let (boot, _) = s.boot("poweroff")?;
        let text = std::fs::read_to_string(&boot.log)?.replace('\r', "");
        let has = |line: &str| text.lines().any(|l| l == line);
        let want = [
            format!("abkit: booting slot {} ({})", case.slot, case.source),
            format!("testos: AbkitBootedSlot={}", case.slot),
            format!("testos: LoaderImageIdentifier={}", case.path),
            format!("testos: LoaderDevicePartUUID={guid}"),
            "testos: done, powering off".to_string(),
        ];
        for line in &want {
            ensure!(
                has(line),
                "{}: no line {line:?} (log {})",
                case.name,
                boot.log.display()
            );
        }
        let cmdline = text
            .lines()
            .find_map(|l| l.strip_prefix("testos: cmdline="))
            .context("no command line printed")?;
        let expected = CMDLINE.replace("SYSTEM-X", &format!("SYSTEM-{}", case.slot));
        ensure!(
            cmdline.contains(&expected),
            "{}: command line {cmdline:?} lacks {expected:?}",
            case.name
        );
        eprintln!(
            "    {:<17} slot {} by {}, {}: ok",
            case.name, case.slot, case.source, case.path
        );
    }
    Ok(s)
}

/// A stub with no kernel says why and returns to the firmware, which sees
/// it fail and goes on to its next boot option instead of hanging (the
/// harness stops the machine there).
pub fn loader_bare_stub(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "loader-bare-stub")?;
    let dir = s.dir.clone();
    let disk = dir.join("bare-disk.img");
    esp_disk(
        &disk,
        &new_guid()?,
        &[(&suite.fx.release.stub, "/EFI/BOOT/BOOTX64.EFI")],
        56,
    )?;
    s.machine = Machine {
        disk,
        vars: vars_for(&dir, "bare", None)?,
        bundles: None,
        accel: suite.accel,
        firmware: Default::default(),
    };
    s.boots += 1;
    let log = dir.join("boot-1.log");
    suite.set_last_log(&log);
    // (No test OS runs: the action is never read.)
    let spec = BootSpec {
        action: "poweroff".into(),
        // The firmware goes on to network boot: the failure line is complete.
        cut: Some(Cut::SerialLine(">>Start ")),
        ..BootSpec::default()
    };
    let boot = s.machine.boot(&spec, &log)?;
    s.boot_time += boot.took;
    let text = std::fs::read_to_string(&log)?.replace('\r', "");
    let said = "abkit: error: the loader carries no kernel (NOT_FOUND): no .linux section: build a UKI with `abkit uki build`";
    if !text.lines().any(|l| l == said) {
        bail!(
            "the bare stub did not say why it cannot boot (log {})",
            log.display()
        );
    }
    ensure!(
        text.lines()
            .any(|l| l.starts_with("BdsDxe: failed to start ") && l.contains(": Not Found")),
        "the firmware did not see the loader fail (log {})",
        log.display()
    );
    eprintln!(
        "    bare stub: says why and returns to the firmware ({:.1} s)",
        boot.took.as_secs_f64()
    );
    Ok(s)
}
