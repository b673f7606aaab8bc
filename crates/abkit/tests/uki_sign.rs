//! `abkit uki sign` and `abkit uki verify`, cross-checked with Debian's
//! `sbverify`/`sbsign` (sbsigntool) and keys from `scripts/test-pki.sh`
//! (openssl), on a loader built from `abkit_uki::fixture`'s stub.
//!
//! Findings pinned here (docs/secure-boot.md): sbverify 0.9.4 accepts a file
//! when any signature verifies, but walks the table in order and gives up at
//! the first entry it cannot parse as PKCS#7 — a signature *behind* our slot
//! stamp is invisible to it (EDK2 and our verifier skip the stamp); sbsign on
//! a file with no signature replaces the whole table, dropping a stamp.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PKCS7: u16 = 0x0002;
const GUID: u16 = 0x0EF1;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A temp dir with an unsigned loader `boot.efi` and two test PKIs,
    /// `pki/` (the trusted one) and `other/` (a stranger).
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let kernel = vec![0x4b; 20_000];
        let uki = abkit_uki::build(
            &abkit_uki::fixture::minimal_stub(),
            &abkit_uki::UkiParts {
                linux: &kernel,
                initrd: Some(&[0x49; 3000]),
                cmdline: Some(b"console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X"),
                osrel: None,
            },
        )
        .unwrap();
        std::fs::write(dir.path().join("boot.efi"), uki).unwrap();
        let env = Env { dir };
        for (name, cn) in [("pki", "abkit test"), ("other", "stranger")] {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-pki.sh");
            let out = Command::new("bash")
                .arg(script)
                .arg(env.path(name))
                .arg(cn)
                .output()
                .expect("run scripts/test-pki.sh");
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs abkit with `args`, names resolved inside the temp dir.
    fn abkit(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_abkit"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run abkit")
    }

    fn sign(&self, input: &str, pki: &str, output: &str) {
        let (key, cert) = (format!("{pki}/db.key"), format!("{pki}/db.crt"));
        let out = self.abkit(&[
            "uki", "sign", "--key", &key, "--cert", &cert, input, "-o", output,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn stamp(&self, slot: &str, input: &str, output: &str) {
        let out = self.abkit(&["uki", "stamp", "--slot", slot, input, "-o", output]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// Our verdict: (accepted, stdout).
    fn verify(&self, pki: &str, file: &str) -> (bool, String) {
        let cert = format!("{pki}/db.crt");
        let out = self.abkit(&["uki", "verify", "--cert", &cert, file]);
        (out.status.success(), text(&out.stdout))
    }

    /// Debian's verdict, by exit code (it is noisy on stamped files).
    fn sbverify(&self, pki: &str, file: &str) -> bool {
        Command::new("sbverify")
            .arg("--cert")
            .arg(self.path(pki).join("db.crt"))
            .arg(self.path(file))
            .output()
            .expect("run sbverify (sbsigntool; scripts/deps.sh installs it)")
            .status
            .success()
    }

    /// Both verifiers agree; returns the verdict.
    fn both(&self, pki: &str, file: &str) -> bool {
        let (ours, stdout) = self.verify(pki, file);
        let theirs = self.sbverify(pki, file);
        assert_eq!(
            ours, theirs,
            "abkit and sbverify disagree on {file} ({pki}):\n{stdout}"
        );
        ours
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn digest(&self, name: &str) -> [u8; 32] {
        abkit_uki::authenticode_sha256(&self.read(name)).unwrap()
    }

    /// The certificate-table entry types of a file, in order.
    fn table(&self, name: &str) -> Vec<u16> {
        table_types(&self.read(name))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// `wCertificateType` of each entry (PE32+: directory 4 at e_lfanew + 24 + 144).
fn table_types(pe: &[u8]) -> Vec<u16> {
    let dir = u32_at(pe, 0x3c) + 24 + 112 + 4 * 8;
    let (start, size) = (u32_at(pe, dir), u32_at(pe, dir + 4));
    let mut types = Vec::new();
    let mut at = start;
    while at < start + size {
        types.push(u16::from_le_bytes([pe[at + 6], pe[at + 7]]));
        at += u32_at(pe, at).next_multiple_of(8);
    }
    assert_eq!(at, start + size);
    assert_eq!(start + size, pe.len());
    types
}

fn have_sbsigntool() -> bool {
    Path::new("/usr/bin/sbverify").exists() && Path::new("/usr/bin/sbsign").exists()
}

#[test]
fn sbverify_accepts_our_signature_and_both_refuse_unsigned_and_strangers() {
    assert!(have_sbsigntool(), "sbsigntool missing: run scripts/deps.sh");
    let env = Env::new();
    assert!(!env.both("pki", "boot.efi"), "unsigned must be refused");
    let (_, stdout) = env.verify("pki", "boot.efi");
    assert!(stdout.starts_with("authenticode sha256: "), "{stdout}");

    env.sign("boot.efi", "pki", "signed.efi");
    assert_eq!(env.table("signed.efi"), [PKCS7]);
    assert!(env.both("pki", "signed.efi"));
    assert!(
        !env.both("other", "signed.efi"),
        "a stranger's db must refuse"
    );
    let (_, stdout) = env.verify("pki", "signed.efi");
    assert!(
        stdout.contains("signature 1: CN=abkit test db: valid, trusted"),
        "{stdout}"
    );
    // Signing pads nothing here (the UKI ends aligned) and hashes the same bytes.
    assert_eq!(env.digest("signed.efi"), env.digest("boot.efi"));
    let info = env.abkit(&["uki", "inspect", "--json", "signed.efi"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["checksum_stored"], info["checksum_computed"]);

    // A stranger's signature on top: either db accepts (any valid one counts).
    env.sign("signed.efi", "other", "twice.efi");
    assert_eq!(env.table("twice.efi"), [PKCS7, PKCS7]);
    assert!(env.both("pki", "twice.efi"));
    assert!(env.both("other", "twice.efi"));
}

#[test]
fn a_flipped_byte_in_a_section_makes_both_refuse() {
    let env = Env::new();
    env.sign("boot.efi", "pki", "signed.efi");
    let signed = env.read("signed.efi");
    let image = abkit_uki::inspect(&signed).unwrap();
    for name in [".linux", ".cmdline", ".text"] {
        let s = image.sections.iter().find(|s| s.name == name).unwrap();
        let mut tampered = signed.clone();
        tampered[s.file_offset as usize + 5] ^= 0x01;
        std::fs::write(env.path("tampered.efi"), &tampered).unwrap();
        assert!(!env.both("pki", "tampered.efi"), "{name} tampered");
        let (_, stdout) = env.verify("pki", "tampered.efi");
        assert!(
            stdout.contains("is not the file's Authenticode digest"),
            "{stdout}"
        );
    }
    // A byte in the signature itself (inside the RSA signature, the last
    // bytes of the PKCS#7 blob): both refuse, ours names the RSA check.
    let mut tampered = signed.clone();
    let end = signed.len() - 1 - signed.iter().rev().take_while(|&&b| b == 0).count();
    tampered[end - 3] ^= 0x01;
    std::fs::write(env.path("badsig.efi"), &tampered).unwrap();
    assert!(!env.both("pki", "badsig.efi"));
    let (_, stdout) = env.verify("pki", "badsig.efi");
    assert!(stdout.contains("RSA signature does not verify"), "{stdout}");
}

#[test]
fn stamping_a_signed_loader_keeps_the_signature_and_the_digest() {
    let env = Env::new();
    env.sign("boot.efi", "pki", "signed.efi");
    env.stamp("A", "signed.efi", "a.efi");
    env.stamp("B", "signed.efi", "b.efi");
    env.stamp("A", "b.efi", "ba.efi"); // restamp in place of the old stamp
    for f in ["a.efi", "b.efi", "ba.efi"] {
        assert_eq!(env.table(f), [PKCS7, GUID], "{f}");
        assert!(env.both("pki", f), "{f}");
        assert!(!env.both("other", f), "{f}");
    }
    let digest = env.digest("boot.efi");
    for f in ["signed.efi", "a.efi", "b.efi", "ba.efi"] {
        assert_eq!(env.digest(f), digest, "{f}");
    }
    assert_eq!(
        abkit_uki::read_stamp(&env.read("b.efi")).unwrap(),
        Some(abkit_uki::Slot::B)
    );
    // Tampering a stamped copy is still caught by both.
    let mut tampered = env.read("b.efi");
    tampered[0x400 + 3] ^= 0x80;
    std::fs::write(env.path("tampered.efi"), &tampered).unwrap();
    assert!(!env.both("pki", "tampered.efi"));
}

#[test]
fn signing_a_stamped_loader_puts_the_signature_before_the_stamp() {
    let env = Env::new();
    env.stamp("B", "boot.efi", "b.efi");
    env.sign("b.efi", "pki", "b-signed.efi");
    assert_eq!(env.table("b-signed.efi"), [PKCS7, GUID]);
    assert_eq!(
        abkit_uki::read_stamp(&env.read("b-signed.efi")).unwrap(),
        Some(abkit_uki::Slot::B)
    );
    assert!(env.both("pki", "b-signed.efi"));
    assert_eq!(env.digest("b-signed.efi"), env.digest("boot.efi"));
    // A second signature also goes in front of the stamp, so sbverify sees it.
    env.sign("b-signed.efi", "other", "b-twice.efi");
    assert_eq!(env.table("b-twice.efi"), [PKCS7, PKCS7, GUID]);
    assert!(env.both("other", "b-twice.efi"));
    assert!(env.both("pki", "b-twice.efi"));
}

#[test]
fn sbsign_signatures_verify_with_ours_and_sbverify_stops_at_the_stamp() {
    assert!(have_sbsigntool(), "sbsigntool missing: run scripts/deps.sh");
    let env = Env::new();
    let sbsign = |pki: &str, input: &str, output: &str| {
        let out = Command::new("sbsign")
            .args(["--key", &format!("{pki}/db.key")])
            .args(["--cert", &format!("{pki}/db.crt")])
            .args(["--output", output, input])
            .current_dir(env.path(""))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    // sbsign's own signature: our verifier accepts it, with its digest.
    sbsign("pki", "boot.efi", "sb.efi");
    assert_eq!(env.table("sb.efi"), [PKCS7]);
    assert!(env.both("pki", "sb.efi"));
    assert!(!env.both("other", "sb.efi"));
    assert_eq!(env.digest("sb.efi"), env.digest("boot.efi"));

    // sbsign on an unsigned, stamped file replaces the table: the stamp is
    // gone. Stamp after signing (or sign with abkit, which keeps it).
    env.stamp("B", "boot.efi", "b.efi");
    sbsign("pki", "b.efi", "b-sb.efi");
    assert_eq!(env.table("b-sb.efi"), [PKCS7]);
    assert_eq!(abkit_uki::read_stamp(&env.read("b-sb.efi")).unwrap(), None);

    // sbsign on a signed, stamped file appends after the stamp. EDK2 (and
    // we) skip the stamp and check the signature behind it; sbverify stops
    // at the stamp and never sees it.
    env.stamp("A", "sb.efi", "a.efi");
    sbsign("other", "a.efi", "a-sb.efi");
    assert_eq!(env.table("a-sb.efi"), [PKCS7, GUID, PKCS7]);
    assert!(env.both("pki", "a-sb.efi"));
    assert!(env.verify("other", "a-sb.efi").0);
    assert!(!env.sbverify("other", "a-sb.efi"));
    // Restamping does not reorder foreign entries; signing with abkit instead
    // keeps signatures first (see the test above).
}

#[test]
fn sign_refuses_a_key_that_is_not_the_certificates() {
    let env = Env::new();
    let out = env.abkit(&[
        "uki",
        "sign",
        "--key",
        "other/db.key",
        "--cert",
        "pki/db.crt",
        "boot.efi",
        "-o",
        "x.efi",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("the key does not belong to the certificate"),
        "{err}"
    );
    assert!(!env.path("x.efi").exists());

    let out = env.abkit(&["uki", "verify", "--cert", "pki/db.key", "boot.efi"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read the certificate"));

    let out = env.abkit(&["uki", "verify", "--cert", "pki/db.crt", "boot.efi"]);
    assert!(text(&out.stderr).contains("boot.efi is not signed"));
}

#[test]
fn uki_build_with_key_and_cert_writes_a_signed_loader() {
    let env = Env::new();
    std::fs::write(env.path("stub.efi"), abkit_uki::fixture::minimal_stub()).unwrap();
    std::fs::write(env.path("vmlinuz"), vec![0x4b; 20_000]).unwrap();
    let build = |extra: &[&str], out: &str| {
        let mut args = vec![
            "uki",
            "build",
            "--stub",
            "stub.efi",
            "--kernel",
            "vmlinuz",
            "--cmdline",
            "console=ttyS0",
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        env.abkit(&args)
    };
    let out = build(
        &["--key", "pki/db.key", "--cert", "pki/db.crt"],
        "built.efi",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.table("built.efi"), [PKCS7]);
    assert!(env.both("pki", "built.efi"));
    // The same as building, then `uki sign`.
    assert!(build(&[], "plain.efi").status.success());
    env.sign("plain.efi", "pki", "plain-signed.efi");
    assert_eq!(env.digest("built.efi"), env.digest("plain-signed.efi"));
    // A key that is not the certificate's: nothing is written.
    let out = build(
        &["--key", "other/db.key", "--cert", "pki/db.crt"],
        "bad.efi",
    );
    assert!(!out.status.success());
    assert!(!env.path("bad.efi").exists());
    // --key without --cert is a usage error.
    assert!(!build(&["--key", "pki/db.key"], "bad.efi").status.success());
}
