//! `abkit image build` and `abkit image inspect` from the command line.

use std::path::Path;
use std::process::{Command, Output};

const MIB: usize = 1 << 20;

fn abkit(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("boot.efi"),
        abkit_disk::fixtures::tiny_efi_application(b"cli"),
    )
    .unwrap();
    let mut system = vec![0u8; 2 * MIB];
    for (i, b) in system.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    std::fs::write(dir.path().join("system.img"), system).unwrap();
    dir
}

const SMALL: [&str; 6] = [
    "--esp-size",
    "64M",
    "--system-size",
    "8M",
    "--data-size",
    "4M",
];

#[test]
fn build_then_inspect_as_json() {
    let dir = setup();
    let mut args = vec![
        "image",
        "build",
        "--loader",
        "boot.efi",
        "--system",
        "system.img",
        "-o",
        "disk.img",
        "--seed",
        "9",
        "--json",
    ];
    args.extend(SMALL);
    let out = abkit(&args, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built["partitions"][1]["name"], "ABKIT-SYSTEM-A");
    assert_eq!(built["system_image_size"], 2 * MIB);

    let out = abkit(&["image", "inspect", "--json", "disk.img"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["disk_guid"], built["disk_guid"]);
    let parts = report["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0]["type"], "EFI system");
    assert_eq!(parts[1]["type_guid"], abkit_disk::SLOT_A_TYPE.to_string());
    assert_eq!(parts[2]["start"], (1 + 64 + 8) * MIB);
    assert_eq!(parts[2]["size"], 8 * MIB);
    assert_eq!(report["slots"][0]["holds_data"], true);
    assert_eq!(report["slots"][0]["used_bytes"], 2 * MIB);
    assert_eq!(report["slots"][1]["holds_data"], false);
    let files: Vec<&str> = report["esp_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["is_dir"] == false)
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        ["\\EFI\\abkit\\boot-a.efi", "\\EFI\\BOOT\\BOOTX64.EFI"]
    );

    let out = abkit(&["image", "inspect", "disk.img"], dir.path());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ABKIT-SYSTEM-B"), "{text}");
    assert!(text.contains("slot B (partition 3): empty"), "{text}");
}

#[test]
fn errors_are_reported_clearly() {
    let dir = setup();
    std::fs::write(
        dir.path().join("notes.txt"),
        "this is not a loader, just a note for you",
    )
    .unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--loader", "notes.txt", "--system", "system.img"],
            "not a PE/COFF EFI application: not a PE image: no MZ",
        ),
        (
            &[
                "--loader",
                "boot.efi",
                "--system",
                "system.img",
                "--system-size",
                "1M",
            ],
            "a slot holds only 1048576 bytes",
        ),
        (
            &[
                "--loader",
                "boot.efi",
                "--system",
                "system.img",
                "--disk-size",
                "50M",
            ],
            "the partitions need a disk of at least",
        ),
        (
            &[
                "--loader",
                "boot.efi",
                "--system",
                "system.img",
                "--esp-size",
                "12X",
            ],
            "unknown size unit",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["image", "build", "-o", "disk.img"];
        args.extend(extra);
        let out = abkit(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("disk.img").exists(),
            "{args:?} wrote output"
        );
    }
    let out = abkit(&["image", "inspect", "system.img"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("abkit: error: opening system.img: "),
        "{stderr}"
    );
    assert!(stderr.contains("no valid GPT"), "{stderr}");
}

#[test]
fn build_with_ovmf_vars_reports_the_boot_entries() {
    let ovmf = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    if !ovmf.exists() {
        eprintln!("SKIPPED: {} missing", ovmf.display());
        return;
    }
    let dir = setup();
    std::fs::copy(ovmf, dir.path().join("vars.fd")).unwrap();
    let mut args = vec![
        "image",
        "build",
        "--loader",
        "boot.efi",
        "--system",
        "system.img",
        "-o",
        "disk.img",
        "--ovmf-vars",
        "vars.fd",
    ];
    args.extend(SMALL);
    let out = abkit(&args, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("boot entries: Boot0000 \"abkit slot A\", Boot0001 \"abkit slot B\" (inactive); BootOrder 0000,0001"),
        "{text}"
    );
    // `abkit efi` reads the same file back.
    let out = abkit(&["efi", "list", "--ovmf-vars", "vars.fd"], dir.path());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing.contains("abkit slot A"), "{listing}");
}

/// Runs abkit, killing it (and failing) if it has not finished in 20 s.
fn abkit_within_seconds(args: &[&str], dir: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("abkit {args:?} did not finish within 20 s (hangs)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_empty_or_special_system_image_is_refused() {
    let dir = setup();
    std::fs::write(dir.path().join("empty.img"), b"").unwrap();
    let made = Command::new("mkfifo")
        .arg(dir.path().join("system.fifo"))
        .status()
        .unwrap();
    assert!(made.success());
    let cases = [
        ("empty.img", "the system image empty.img is empty (0 bytes)"),
        (
            "/dev/null",
            "the system image /dev/null is neither a regular file nor a block device",
        ),
        (
            "system.fifo",
            "the system image system.fifo is neither a regular file nor a block device",
        ),
    ];
    for (system, expected) in cases {
        let mut args = vec![
            "image", "build", "--loader", "boot.efi", "--system", system, "-o", "disk.img",
        ];
        args.extend(SMALL);
        let out = abkit_within_seconds(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{system}: succeeded");
        assert!(stderr.contains(expected), "{system}: {stderr}");
        assert!(!dir.path().join("disk.img").exists(), "{system}: output");
    }
}

#[test]
fn inspect_shows_a_damaged_gpt_copy() {
    let dir = setup();
    let mut args = vec![
        "image",
        "build",
        "--loader",
        "boot.efi",
        "--system",
        "system.img",
        "-o",
        "disk.img",
    ];
    args.extend(SMALL);
    assert!(abkit(&args, dir.path()).status.success());
    // Flip a byte of the backup GPT header (the disk's last sector).
    let disk = dir.path().join("disk.img");
    let mut bytes = std::fs::read(&disk).unwrap();
    let at = bytes.len() - 512 + 40;
    bytes[at] ^= 0x55;
    std::fs::write(&disk, &bytes).unwrap();

    let out = abkit(&["image", "inspect", "disk.img"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning line:\n{stdout}"));
    assert!(
        warning.starts_with("warning: the backup GPT is damaged (header CRC32 ")
            && warning.ends_with("); using the primary GPT"),
        "{warning}"
    );

    let out = abkit(&["image", "inspect", "--json", "disk.img"], dir.path());
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert_eq!(warnings[0]["kind"], "gpt-copy-damaged");
    assert_eq!(warnings[0]["copy"], "backup");
    assert_eq!(warnings[0]["used"], "primary");
    assert_eq!(warnings[0]["damage"]["kind"], "header-crc");
    assert_eq!(
        warnings[0]["message"].as_str().unwrap(),
        &warning["warning: ".len()..]
    );
    assert_eq!(report["partitions"].as_array().unwrap().len(), 4);

    // The untouched disk has none.
    std::fs::write(&disk, {
        bytes[at] ^= 0x55;
        &bytes
    })
    .unwrap();
    let out = abkit(&["image", "inspect", "--json", "disk.img"], dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]));
}
