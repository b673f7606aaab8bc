//! `abkit efi list` as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn abkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../abkit-efi/tests/fixtures/ovmf-vars-2m-after-boot.fd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn lists_a_real_firmware_store_like_efibootmgr() {
    let out = abkit(&["efi", "list", "--ovmf-vars", fixture().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "BootCurrent: -\n\
         BootNext: -\n\
         BootOrder: 0000,0001\n\
         Boot0000* UiApp [hidden,app]\tFv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n\
         Boot0001* EFI Internal Shell\tFv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\n"
    );
}

#[test]
fn json_output_carries_the_same_facts() {
    let out = abkit(&[
        "efi",
        "list",
        "--json",
        "--ovmf-vars",
        fixture().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["boot_order"], serde_json::json!([0, 1]));
    assert_eq!(v["boot_next"], serde_json::Value::Null);
    assert_eq!(v["entries"][1]["name"], "Boot0001");
    assert_eq!(v["entries"][1]["description"], "EFI Internal Shell");
    assert_eq!(v["entries"][1]["active"], true);
    assert_eq!(v["entries"][0]["hidden"], true);
    assert_eq!(v["entries"][0]["category"], "app");
    assert_eq!(v["skipped"], serde_json::json!([]));
    assert_eq!(v["noncompliant"], serde_json::json!([]));
}

#[test]
fn efivars_directory_with_garbage_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let g = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    // A good entry, an undecodable entry, and a BootOrder of odd length.
    let mut good = vec![7, 0, 0, 0];
    good.extend([1, 0, 0, 0, 4, 0]);
    good.extend("x".encode_utf16().chain([0]).flat_map(|u| u.to_le_bytes()));
    good.extend([0x7f, 0xff, 4, 0]);
    std::fs::write(dir.path().join(format!("Boot0003-{g}")), &good).unwrap();
    std::fs::write(dir.path().join(format!("Boot0004-{g}")), [7, 0, 0, 0, 1]).unwrap();
    std::fs::write(
        dir.path().join(format!("BootOrder-{g}")),
        [7, 0, 0, 0, 3, 0, 4],
    )
    .unwrap();
    std::fs::write(dir.path().join(format!("BootNext-{g}")), [7, 0, 0, 0, 4, 0]).unwrap();
    let out = abkit(&["efi", "list", "--efivars", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("BootNext: 0004\n"), "{text}");
    assert!(text.contains("BootOrder: -\n"), "{text}");
    assert!(text.contains("Boot0003* x\t\n"), "{text}");
    assert!(
        text.contains("Boot0004? (unreadable: load option is 1 bytes"),
        "{text}"
    );
    // Reported once, not once more per internal listing as a log warning.
    let both = format!("{text}{}", stderr(&out));
    assert_eq!(both.matches("Boot0004").count(), 1, "{both}");
    assert!(
        stderr(&out).contains("BootOrder is 3 bytes; it must be an array of 16-bit entry numbers"),
        "{}",
        stderr(&out)
    );
}

/// The bytes of a minimal active entry booting an empty path.
fn entry_bytes(description: &str) -> Vec<u8> {
    let mut data = vec![1, 0, 0, 0, 4, 0];
    data.extend(
        description
            .encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes()),
    );
    data.extend([0x7f, 0xff, 4, 0]);
    data
}

/// Writes `name` into an efivars directory (4 attribute bytes + data).
fn write_var(dir: &Path, name: &str, data: &[u8]) {
    let g = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let mut bytes = vec![7, 0, 0, 0];
    bytes.extend_from_slice(data);
    std::fs::write(dir.join(format!("{name}-{g}")), bytes).unwrap();
}

#[test]
fn lower_case_entry_names_are_listed_as_non_compliant() {
    let dir = tempfile::tempdir().unwrap();
    write_var(dir.path(), "Boot0003", &entry_bytes("good"));
    write_var(dir.path(), "Boot001a", &entry_bytes("look-alike"));
    let out = abkit(&["efi", "list", "--efivars", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Boot0003* good\t\n"), "{text}");
    assert!(
        text.contains("Boot001a? (non-compliant, not an entry: lower-case hex digits"),
        "{text}"
    );
    assert!(!text.contains("Boot001A"), "{text}");
    assert!(!text.contains("look-alike"), "{text}");

    let out = abkit(&[
        "efi",
        "list",
        "--json",
        "--efivars",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["entries"][0]["name"], "Boot0003");
    assert_eq!(v["noncompliant"][0]["name"], "Boot001a");
    assert!(
        v["noncompliant"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("upper-case"),
        "{v}"
    );
}

#[test]
fn control_characters_are_escaped_in_text_and_exact_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let evil = "evil\x1b[2J\nBoot0000* fake\tHD()";
    write_var(dir.path(), "Boot0001", &entry_bytes(evil));
    // An entry whose file path carries an OSC sequence (ESC ] ... BEL).
    let path = "\\EFI\x1b]0;pwned\x07.efi";
    let units: Vec<u8> = path
        .encode_utf16()
        .chain([0])
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut node = vec![4, 4];
    node.extend(u16::try_from(4 + units.len()).unwrap().to_le_bytes());
    node.extend(&units);
    node.extend([0x7f, 0xff, 4, 0]);
    let mut data = vec![1, 0, 0, 0];
    data.extend(u16::try_from(node.len()).unwrap().to_le_bytes());
    data.extend("p".encode_utf16().chain([0]).flat_map(|u| u.to_le_bytes()));
    data.extend(&node);
    write_var(dir.path(), "Boot0002", &data);

    let out = abkit(&["efi", "list", "--efivars", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !out.stdout.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw control bytes in {:?}",
        stdout(&out)
    );
    assert_eq!(
        stdout(&out),
        "BootCurrent: -\n\
         BootNext: -\n\
         BootOrder: -\n\
         Boot0001* evil\\u{1b}[2J\\nBoot0000* fake\\tHD()\t\n\
         Boot0002* p\t\\EFI\\u{1b}]0;pwned\\u{7}.efi\n"
    );

    let out = abkit(&[
        "efi",
        "list",
        "--json",
        "--efivars",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!out.stdout.iter().any(|&b| b == 0x1b || b == 0x07));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"][0]["description"], evil);
    assert_eq!(v["entries"][1]["device_path"], path);
}

#[test]
fn entry_with_bytes_after_its_file_path_nul_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    // FilePath "\a", its NUL, then two stray bytes.
    let node = [
        4, 4, 12, 0, 0x5C, 0, 0x61, 0, 0, 0, 0xAA, 0xBB, 0x7f, 0xff, 4, 0,
    ];
    let mut data = vec![1, 0, 0, 0, 16, 0];
    data.extend("x".encode_utf16().chain([0]).flat_map(|u| u.to_le_bytes()));
    data.extend(node);
    write_var(dir.path(), "Boot0001", &data);
    let out = abkit(&["efi", "list", "--efivars", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with("Boot0001* x\tPath(4,4,5C0061000000AABB)\n"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("unreadable"), "{}", stdout(&out));
}

#[test]
fn errors_name_the_problem() {
    let out = abkit(&["efi", "list", "--ovmf-vars", "/nonexistent/vars.fd"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/vars.fd") && err.contains("No such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.fd");
    std::fs::write(&junk, vec![0xffu8; 8192]).unwrap();
    let out = abkit(&["efi", "list", "--ovmf-vars", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no firmware volume signature"),
        "{}",
        stderr(&out)
    );

    let out = abkit(&["efi", "list", "--efivars", "/x", "--ovmf-vars", "/y"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}
