//! `abkit image build --secure-boot DIR` against virt-fw-vars: the keys of
//! `scripts/test-pki.sh` enrolled by abkit and by `virt-fw-vars --set-pk
//! --add-kek --add-db --secure-boot` read back (virt-fw-vars' JSON dump) as
//! the same variables: names, GUIDs, attributes, timestamps and bytes.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::Workdir;

const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const MIB: usize = 1 << 20;
/// What an enrolment writes.
const KEY_VARIABLES: [&str; 6] = ["PK", "KEK", "db", "dbx", "SecureBootEnable", "CustomMode"];

fn have_tools() -> bool {
    let ok = std::path::Path::new(OVMF_VARS).exists()
        && Command::new("virt-fw-vars").arg("--help").output().is_ok();
    if !ok {
        eprintln!("skipped: needs {OVMF_VARS} and virt-fw-vars (make deps)");
    }
    ok
}

fn setup() -> Workdir {
    let w = Workdir::new();
    std::fs::write(
        w.p("boot.efi"),
        abkit_disk::fixtures::tiny_efi_application(b"sb"),
    )
    .unwrap();
    std::fs::write(w.p("system.img"), vec![7u8; 2 * MIB]).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-pki.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(w.p("pki"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(OVMF_VARS, w.p("vars.fd")).unwrap();
    w
}

fn build_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "image",
        "build",
        "--loader",
        "boot.efi",
        "--system",
        "system.img",
        "-o",
        "disk.img",
        "--esp-size",
        "64M",
        "--system-size",
        "8M",
        "--data-size",
        "4M",
        "--ovmf-vars",
        "vars.fd",
    ];
    args.extend_from_slice(extra);
    args
}

/// virt-fw-vars' view of a VARS file: name → the variable's JSON object.
fn dump(w: &Workdir, vars: &str) -> BTreeMap<String, serde_json::Value> {
    let json = w.p(&format!("{vars}.json"));
    let out = Command::new("virt-fw-vars")
        .arg("-i")
        .arg(w.p(vars))
        .arg("--output-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    doc["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

#[test]
fn enrolled_keys_read_back_as_virt_fw_vars_writes_them() {
    if !have_tools() {
        return;
    }
    let w = setup();
    w.ok(&build_args(&["--secure-boot", "pki"]));

    let owner = std::fs::read_to_string(w.p("pki/owner.guid")).unwrap();
    let owner = owner.trim();
    let out = Command::new("virt-fw-vars")
        .arg("-i")
        .arg(OVMF_VARS)
        .arg("-o")
        .arg(w.p("theirs.fd"))
        .args(["--set-pk", owner])
        .arg(w.p("pki/PK.crt"))
        .args(["--add-kek", owner])
        .arg(w.p("pki/KEK.crt"))
        .args(["--add-db", owner])
        .arg(w.p("pki/db.crt"))
        .arg("--secure-boot")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = dump(&w, "vars.fd");
    let theirs = dump(&w, "theirs.fd");
    for name in KEY_VARIABLES {
        let (a, b) = (&ours.get(name), &theirs.get(name));
        assert!(a.is_some(), "abkit wrote no {name}");
        assert!(a == b, "{name} differs from virt-fw-vars': {a:?} vs {b:?}");
    }
    assert_eq!(ours["SecureBootEnable"]["data"], "01");
    assert_eq!(ours["PK"]["attr"], 0x27);
    // Every variable virt-fw-vars writes, abkit writes too; ours adds only
    // the boot entries of the disk.
    for name in theirs.keys() {
        assert!(ours.contains_key(name), "abkit lacks {name}");
    }
}

#[test]
fn building_twice_gives_the_same_keys_and_a_bad_folder_builds_nothing() {
    if !have_tools() {
        return;
    }
    let w = setup();
    let keys = |w: &Workdir| {
        let mut d = dump(w, "vars.fd");
        d.retain(|name, _| KEY_VARIABLES.contains(&name.as_str()));
        d
    };
    w.ok(&build_args(&["--secure-boot", "pki"]));
    let first = keys(&w);
    assert_eq!(first.len(), KEY_VARIABLES.len());
    w.ok(&build_args(&["--secure-boot", "pki"]));
    assert!(first == keys(&w), "a second enrolment changed the keys");

    // A folder without a db certificate: refused before the disk is written.
    std::fs::create_dir(w.p("half")).unwrap();
    for f in ["PK.crt", "KEK.crt"] {
        std::fs::copy(w.p(&format!("pki/{f}")), w.p(&format!("half/{f}"))).unwrap();
    }
    std::fs::remove_file(w.p("disk.img")).unwrap();
    let out = w.abkit(&build_args(&["--secure-boot", "half"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("db certificate"), "{err}");
    assert!(!w.p("disk.img").exists(), "a disk was built");

    // Garbage as a certificate, a non-GUID owner, and no --ovmf-vars.
    std::fs::write(w.p("half/db.crt"), b"not a certificate").unwrap();
    let out = w.abkit(&build_args(&["--secure-boot", "half"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an X.509 certificate"));
    std::fs::copy(w.p("pki/db.crt"), w.p("half/db.crt")).unwrap();
    std::fs::write(w.p("half/owner.guid"), b"nope\n").unwrap();
    let out = w.abkit(&build_args(&["--secure-boot", "half"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold a GUID"));
    // A VARS file whose store keeps no timestamps: refused before the build.
    let mut plain = std::fs::read(OVMF_VARS).unwrap();
    let guid: [u8; 16] = [
        0x16, 0x36, 0xcf, 0xdd, 0x75, 0x32, 0x64, 0x41, 0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe,
        0x7d,
    ];
    plain[0x48..0x58].copy_from_slice(&guid);
    std::fs::write(w.p("vars.fd"), &plain).unwrap();
    let out = w.abkit(&build_args(&["--secure-boot", "pki"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no authenticated variable store"), "{err}");
    assert!(!w.p("disk.img").exists(), "a disk was built");
    assert_eq!(std::fs::read(w.p("vars.fd")).unwrap(), plain);
    let mut args = build_args(&["--secure-boot", "pki"]);
    args.retain(|a| *a != "--ovmf-vars" && *a != "vars.fd");
    assert!(
        !w.abkit(&args).status.success(),
        "--secure-boot without --ovmf-vars"
    );
}
