//! `abkit bundle create --rootfs`: a release built from a folder, as a user
//! runs it, checked with the real mkfs.erofs and veritysetup. The root hash
//! is taken from the UKI's command line (`abkit uki inspect`) and must open
//! the system payload; the same inputs give the same bundle bytes; a UKI whose
//! roothash= differs from the system payload's verity root fails
//! `bundle verify` with `root-hash-mismatch`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn abkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(args)
        .env_remove("ABKIT_STUB")
        .output()
        .expect("run abkit")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "abkit failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("stub.efi"), abkit_uki::fixture::minimal_stub()).unwrap();
        std::fs::write(p.join("vmlinuz"), vec![0x4b; 10_000]).unwrap();
        std::fs::write(p.join("initrd"), vec![0x49; 3_000]).unwrap();
        let root = p.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::write(root.join("etc/os-release"), "ID=demo\nVERSION_ID=1\n").unwrap();
        std::fs::write(root.join("sbin/init"), vec![0x7f; 50_000]).unwrap();
        ok(abkit(&["keygen", "--out", p.join("k").to_str().unwrap()]));
        std::fs::create_dir(p.join("keyring")).unwrap();
        std::fs::copy(p.join("k.pub"), p.join("keyring/k.pub")).unwrap();
        Work { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }

    fn create(&self, out: &str) -> String {
        ok(self.create_with(out, &[]))
    }

    fn create_with(&self, out: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "bundle",
            "create",
            "--rootfs",
            &self.s("root"),
            "--kernel",
            &self.s("vmlinuz"),
            "--initrd",
            &self.s("initrd"),
            "--stub",
            &self.s("stub.efi"),
            "--cmdline",
            "console=ttyS0 quiet",
            "--version",
            "1.0.0",
            "--compatible",
            "demo",
            "--created",
            "1700000000",
            "--key",
            &self.s("k.key"),
            "-o",
            &self.s(out),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        abkit(&args)
    }
}

fn veritysetup_verify(slot: &Path, root: &str, offset: u64) -> bool {
    Command::new("veritysetup")
        .arg("verify")
        .arg(slot)
        .arg(slot)
        .arg(root)
        .arg(format!("--hash-offset={offset}"))
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn rootfs_release_chains_uki_root_hash_to_the_system_payload() {
    let w = Work::new();
    let created = w.create("a.abb");
    assert!(created.contains("root hash: "), "{created}");

    // The UKI's command line, from `abkit uki inspect --json` on the
    // extracted efi payload.
    ok(abkit(&[
        "bundle",
        "extract",
        &w.s("a.abb"),
        "--keyring",
        &w.s("keyring"),
        "--out",
        &w.s("x"),
    ]));
    let info: serde_json::Value =
        serde_json::from_str(&ok(abkit(&["uki", "inspect", "--json", &w.s("x/efi")]))).unwrap();
    let cmdline = info["cmdline"].as_str().unwrap().to_string();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        &["console=ttyS0", "quiet", "root=/dev/mapper/root"]
    );
    let value = |key: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {cmdline}"))
            .to_string()
    };
    let root = value("roothash");
    assert_eq!(info["root_hash"].as_str(), Some(root.as_str()));
    assert_eq!(
        value("systemd.verity_root_data"),
        "PARTLABEL=ABKIT-SYSTEM-X"
    );
    assert_eq!(
        value("systemd.verity_root_hash"),
        "PARTLABEL=ABKIT-SYSTEM-X"
    );
    let offset: u64 = value("systemd.verity_root_options")
        .strip_prefix("hash-offset=")
        .unwrap()
        .parse()
        .unwrap();
    let text = ok(abkit(&["uki", "inspect", &w.s("x/efi")]));
    assert!(text.contains(&format!("root hash: {root}")), "{text}");

    // The system payload is erofs + tree; the manifest agrees.
    let system = std::fs::read(w.p("x/system")).unwrap();
    assert_eq!(&system[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    let head: serde_json::Value =
        serde_json::from_str(&ok(abkit(&["bundle", "inspect", "--json", &w.s("a.abb")]))).unwrap();
    let verity = &head["manifest"]["payloads"][1]["verity"];
    assert_eq!(verity["root_hash"].as_str(), Some(root.as_str()));
    assert_eq!(verity["hash_offset"].as_u64(), Some(offset));

    // veritysetup opens the slot with the UKI's root hash, and refuses a
    // slot with one byte of the filesystem flipped.
    assert!(veritysetup_verify(&w.p("x/system"), &root, offset));
    let mut bad = system.clone();
    bad[5000] ^= 1;
    std::fs::write(w.p("bad-slot"), &bad).unwrap();
    assert!(!veritysetup_verify(&w.p("bad-slot"), &root, offset));

    // bundle verify checks the chain and reports the root hash.
    let v: serde_json::Value = serde_json::from_str(&ok(abkit(&[
        "bundle",
        "verify",
        "--json",
        &w.s("a.abb"),
        "--keyring",
        &w.s("keyring"),
    ])))
    .unwrap();
    assert_eq!(v["root_hash"].as_str(), Some(root.as_str()));

    // Reproducible: the same folder, version and time give the same bytes.
    w.create("b.abb");
    assert!(std::fs::read(w.p("a.abb")).unwrap() == std::fs::read(w.p("b.abb")).unwrap());
    // A changed file changes the root hash.
    std::fs::write(w.p("root/etc/os-release"), "ID=demo\nVERSION_ID=2\n").unwrap();
    w.create("c.abb");
    let c: serde_json::Value =
        serde_json::from_str(&ok(abkit(&["bundle", "inspect", "--json", &w.s("c.abb")]))).unwrap();
    assert_ne!(
        c["manifest"]["payloads"][1]["verity"]["root_hash"].as_str(),
        Some(root.as_str())
    );
}

#[test]
fn a_uki_with_another_root_hash_fails_verify_by_name() {
    let w = Work::new();
    let wrong = "00".repeat(32);
    ok(abkit(&[
        "uki",
        "build",
        "--stub",
        &w.s("stub.efi"),
        "--kernel",
        &w.s("vmlinuz"),
        "--cmdline",
        &format!("roothash={wrong} systemd.verity_root_data=PARTLABEL=ABKIT-SYSTEM-X"),
        "-o",
        &w.s("boot.efi"),
    ]));
    std::fs::write(w.p("system.img"), vec![0x55; 3 * 4096]).unwrap();
    ok(abkit(&[
        "bundle",
        "create",
        "--efi",
        &w.s("boot.efi"),
        "--system",
        &w.s("system.img"),
        "--version",
        "1.0.0",
        "--compatible",
        "demo",
        "--key",
        &w.s("k.key"),
        "-o",
        &w.s("m.abb"),
    ]));
    let out = abkit(&[
        "bundle",
        "verify",
        "--json",
        &w.s("m.abb"),
        "--keyring",
        &w.s("keyring"),
    ]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "root-hash-mismatch", "{v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[root-hash-mismatch]"));

    // Without a roothash= there is nothing to compare: verify passes.
    ok(abkit(&[
        "uki",
        "build",
        "--stub",
        &w.s("stub.efi"),
        "--kernel",
        &w.s("vmlinuz"),
        "--cmdline",
        "console=ttyS0",
        "-o",
        &w.s("plain.efi"),
    ]));
    ok(abkit(&[
        "bundle",
        "create",
        "--efi",
        &w.s("plain.efi"),
        "--system",
        &w.s("system.img"),
        "--version",
        "1.0.0",
        "--compatible",
        "demo",
        "--key",
        &w.s("k.key"),
        "-o",
        &w.s("p.abb"),
    ]));
    ok(abkit(&[
        "bundle",
        "verify",
        &w.s("p.abb"),
        "--keyring",
        &w.s("keyring"),
    ]));
}

#[test]
fn rootfs_refuses_conflicting_options() {
    let w = Work::new();
    // --rootfs with --system, and a command line with its own root=.
    let out = abkit(&[
        "bundle",
        "create",
        "--rootfs",
        &w.s("root"),
        "--system",
        &w.s("x"),
        "--kernel",
        &w.s("vmlinuz"),
        "--version",
        "1.0.0",
        "--compatible",
        "demo",
        "--key",
        &w.s("k.key"),
        "-o",
        &w.s("o.abb"),
    ]);
    assert!(!out.status.success());
    let out = abkit(&[
        "bundle",
        "create",
        "--rootfs",
        &w.s("root"),
        "--kernel",
        &w.s("vmlinuz"),
        "--stub",
        &w.s("stub.efi"),
        "--cmdline",
        "root=PARTLABEL=ABKIT-SYSTEM-X",
        "--version",
        "1.0.0",
        "--compatible",
        "demo",
        "--key",
        &w.s("k.key"),
        "-o",
        &w.s("o.abb"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/mapper/root"));
    assert!(!w.p("o.abb").exists());
    // No leftover temporary folder beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".abkit-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn uki_key_signs_the_uki_inside_the_bundle_and_leaves_pcr11_alone() {
    let w = Work::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-pki.sh");
    let pki = w.s("pki");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg(&pki)
            .status()
            .unwrap()
            .success()
    );
    let (key, cert) = (format!("{pki}/db.key"), format!("{pki}/db.crt"));
    ok(w.create_with("signed.abb", &["--uki-key", &key, "--uki-cert", &cert]));
    w.create("plain.abb");
    let mut pcr11 = Vec::new();
    for (bundle, out) in [("signed.abb", "s"), ("plain.abb", "p")] {
        ok(abkit(&[
            "bundle",
            "extract",
            &w.s(bundle),
            "--keyring",
            &w.s("keyring"),
            "--out",
            &w.s(out),
        ]));
        let info: serde_json::Value = serde_json::from_str(&ok(abkit(&[
            "uki",
            "inspect",
            "--json",
            &w.s(&format!("{out}/efi")),
        ])))
        .unwrap();
        pcr11.push(info["pcr11_sha256"].as_str().unwrap().to_string());
    }
    ok(abkit(&["uki", "verify", "--cert", &cert, &w.s("s/efi")]));
    assert!(
        !abkit(&["uki", "verify", "--cert", &cert, &w.s("p/efi")])
            .status
            .success()
    );
    // Signing adds a certificate-table entry, outside every section.
    assert_eq!(pcr11[0], pcr11[1]);
    // --uki-key needs --uki-cert; a key that is not the certificate's fails
    // before anything is written.
    assert!(
        !w.create_with("bad.abb", &["--uki-key", &key])
            .status
            .success()
    );
    std::fs::write(
        w.p("other.key"),
        std::fs::read(format!("{pki}/KEK.key")).unwrap(),
    )
    .unwrap();
    let out = w.create_with(
        "bad.abb",
        &["--uki-key", &w.s("other.key"), "--uki-cert", &cert],
    );
    assert!(!out.status.success());
    assert!(!w.p("bad.abb").exists());
}
